"""Harder NAMO scenes (levels ``medium`` and ``hard``) and the properties every scene has.

``generate_chain_scene(seed, config)`` builds, in a canonical frame and then under one of the
square's 8 symmetries:

- a main wall with ONE doorway into the goal room, plugged by box D (the door box);
- a narrow corridor (thick side walls, so nothing is reached through them) leading to that
  doorway; its mouth is plugged by box B1, so D cannot be reached until B1 moves;
- a start room closed by a wall whose doorway is open (chain 2: B1, D) or plugged by box B2
  (chain 3: B2, B1, D);
- distractor boxes in the start room and the hall, whose moves open nothing.

Object ids are shuffled so their order leaks nothing. A candidate is kept only when
``scene_properties`` confirms it: the shortest removal chain has the intended length, removing
every distractor shortens nothing, and a plan of exactly that many moves exists under the
transition model's own proposals (so planners can solve it). Deterministic per seed.

``scene_properties(scene)`` works on any scene (easy ones too): walls, doorways, the blocking
chain (fewest moves, by breadth-first search over sets of objects lifted out of the world, a
lower bound that the found plan makes exact), distractors and whether a plan was found.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from sim.namo.grid import distance_to
from sim.namo.scene import (
    ChainConfig,
    MovableObject,
    Scene,
    Wall,
    _corners,
    _wall_corners,
    boundary_walls,
    grow_rect,
    rects_overlap,
    wall_with_doors,
)
from sim.namo.transition import ModelConfig, NamoState, Proposal, TransitionModel

_EIGHT = np.ones((3, 3), dtype=bool)
_SALT = 0x4E414D4F


@dataclass(frozen=True)
class SceneProperties:
    """What makes a scene hard. ``chain`` lists object ids in an order that solves it with the
    fewest moves (empty: the start already reaches the goal); ``min_moves`` is -1 when even
    lifting every reachable box out does not open the goal."""

    interior_walls: int  # wall boxes besides the 4 boundary walls
    doorways: int
    objects: int
    chain: tuple[str, ...]
    min_moves: int
    distractors: tuple[str, ...]  # boxes off the chain
    distractors_open_nothing: bool  # lifting every distractor out shortens no chain
    reachable_distractors: int  # distractors the robot can move at the start
    plan: tuple[Proposal, ...]  # real moves (transition model) of length min_moves, if found

    @property
    def solvable(self) -> bool:
        return self.min_moves == 0 or len(self.plan) == self.min_moves > 0


def _removal_chain(
    model: TransitionModel, state: NamoState, lifted: frozenset[int] = frozenset()
) -> tuple[int, ...] | None:
    """Fewest boxes to lift out (each reachable when lifted) until the goal is reachable.

    A real move frees at most what lifting the box out frees, so this is a lower bound on the
    number of moves. Breadth-first over sets of lifted boxes; ``lifted`` start out of the world.
    """
    fps = [model.footprint(k, p) for k, p in enumerate(state.poses)]
    bands = [distance_to(model.grid, fp) <= model.reach_distance for fp in fps]
    robot = model.grid.cell(*state.robot)

    def region(gone: frozenset[int]) -> np.ndarray | None:
        occupied = model.static.copy()
        for k, fp in enumerate(fps):
            if k not in gone:
                occupied |= fp
        free = model.free_space(occupied)
        if not free[robot]:
            return None
        labels, _ = ndimage.label(free, structure=_EIGHT)
        return labels == labels[robot]

    queue: deque[tuple[int, ...]] = deque([()])
    seen = {lifted}
    while queue:
        order = queue.popleft()
        reach = region(lifted | set(order))
        if reach is None:
            return None
        if reach[model.goal_cell]:
            return order
        for k in range(len(fps)):
            key = lifted | set(order) | {k}
            if key not in seen and (reach & bands[k]).any():
                seen.add(key)
                queue.append((*order, k))
    return None


def _plan(
    model: TransitionModel,
    state: NamoState,
    order: tuple[int, ...],
    rng: np.random.Generator,
    candidates: int = 12,
) -> tuple[Proposal, ...] | None:
    """Real moves of the boxes in ``order`` (depth-first over sampled proposals) that end with the
    goal reachable, or None."""
    if not order:
        return () if model.goal_reached(state) else None
    k = order[0]
    for proposal in model.proposals(state, candidates, rng, objects=[k]):
        after = model.step(state, proposal).state
        rest = order[1:]
        if rest and model.info(after).reach[rest[0]] is None:
            continue
        tail = _plan(model, after, rest, rng, candidates)
        if tail is not None:
            return (proposal, *tail)
    return None


def scene_properties(scene: Scene, model_config: ModelConfig | None = None) -> SceneProperties:
    """Walls, doorways, blocking chain, distractors and a shortest plan of ``scene``."""
    model = TransitionModel(scene, model_config)
    state = model.initial_state()
    ids = [o.object_id for o in scene.objects]
    order = _removal_chain(model, state)
    interior = len(scene.walls) - 4
    if order is None:
        return SceneProperties(interior, len(scene.doorways), len(ids), (), -1, (), False, 0, ())
    off = frozenset(range(len(ids))) - set(order)
    shortest_without_off = _removal_chain(model, state, lifted=off)
    rng = np.random.default_rng(np.random.SeedSequence([scene.seed, _SALT, 1]))
    plan = _plan(model, state, order, rng) or ()
    reach = model.info(state).reach
    return SceneProperties(
        interior_walls=interior,
        doorways=len(scene.doorways),
        objects=len(ids),
        chain=tuple(ids[k] for k in order),
        min_moves=len(order),
        distractors=tuple(ids[k] for k in sorted(off)),
        distractors_open_nothing=len(shortest_without_off or ()) == len(order),
        reachable_distractors=sum(reach[k] is not None for k in off),
        plan=plan,
    )


class _Frame:
    """One of the 8 symmetries of the square world: canonical -> world coordinates."""

    def __init__(self, size: float, k: int):
        self.size = size
        self.swap, self.flip_x, self.flip_y = bool(k & 4), bool(k & 1), bool(k & 2)

    def point(self, x: float, y: float) -> tuple[float, float]:
        if self.swap:
            x, y = y, x
        return (self.size - x if self.flip_x else x, self.size - y if self.flip_y else y)

    def wall(self, w: Wall) -> Wall:
        x, y = self.point(w.x, w.y)
        hx, hy = (w.half_y, w.half_x) if self.swap else (w.half_x, w.half_y)
        return Wall(float(x), float(y), float(hx), float(hy))

    def box(self, o: MovableObject) -> MovableObject:
        x, y = self.point(o.pose[0], o.pose[1])
        yaw, hx, hy = o.pose[2], o.half_x, o.half_y
        if self.swap and yaw == 0.0:
            hx, hy = hy, hx  # axis-aligned boxes stay at yaw 0
        elif self.swap:
            yaw = math.pi / 2 - yaw
        if self.flip_x:
            yaw = math.pi - yaw
        if self.flip_y:
            yaw = -yaw
        yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2  # a box is symmetric under pi
        return MovableObject(o.object_id, float(hx), float(hy), (float(x), float(y), float(yaw)))

    def doorway(self, d: tuple[float, float, float, str]) -> tuple[float, float, float, str]:
        x, y = self.point(d[0], d[1])
        axis = {"v": "h", "h": "v"}[d[3]] if self.swap else d[3]
        return (float(x), float(y), float(d[2]), axis)


def generate_chain_scene(seed: int, config: ChainConfig) -> Scene:
    """A ``medium``/``hard`` scene (see the module docstring); same seed and config -> same
    scene. Raises RuntimeError if 200 candidates all fail the checks."""
    if config.width != config.height:
        raise ValueError(
            f"ChainConfig: world must be square, got {config.width} x {config.height}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SALT, *map(ord, config.name)]))
    for _attempt in range(200):
        chain = int(rng.choice(config.chain))
        scene = _try_chain(seed, config, chain, rng)
        if scene is None:
            continue
        props = scene_properties(scene)
        if (
            props.min_moves == chain
            and props.solvable
            and props.distractors_open_nothing
            and props.reachable_distractors >= config.reachable_distractors
        ):
            return scene
    raise RuntimeError(f"generate_scene(seed={seed}, level={config.name!r}): no valid scene")


def _try_chain(seed: int, cfg: ChainConfig, chain: int, rng: np.random.Generator) -> Scene | None:
    size, t, tc, gap = cfg.width, cfg.wall_thickness, cfg.corridor_wall, cfg.clearance
    # Canonical frame: goal room right of the main wall x = xm; corridor along x to its doorway
    # at y = yd; start room below the wall y = yh, the hall above it.
    xm = rng.uniform(3.3, 3.6)
    cw = rng.uniform(*cfg.corridor_width)
    length = rng.uniform(*cfg.corridor_length)
    yh = rng.uniform(1.4, 1.9)
    lo, hi = yh + t / 2 + 0.75 + tc + cw / 2, size - t - 0.5 - tc - cw / 2
    if lo > hi:
        return None
    yd = rng.uniform(lo, hi)
    dw = rng.uniform(*cfg.door_width)
    xs = rng.uniform(t + dw / 2 + 0.3, xm - t / 2 - dw / 2 - 0.3)

    walls = boundary_walls(size, size, t)
    walls += wall_with_doors("v", xm, size, t, [(yd, cw)])
    for side in (-1, 1):
        walls.append(Wall(xm - length / 2, yd + side * (cw + tc) / 2, length / 2, tc / 2))
    walls += wall_with_doors("h", yh, xm, t, [(xs, dw)])
    doorways = [(xm, yd, cw, "v"), (xs, yh, dw, "h")]
    placed = [_wall_corners(w) for w in walls]

    along = cw / 2 - gap - 0.01  # gaps each side far narrower than the robot
    hd = rng.uniform(*cfg.box_depth)
    boxes = [MovableObject("door", hd, along, (xm, yd, 0.0))]
    h1 = rng.uniform(*cfg.box_depth)
    boxes.append(MovableObject("mouth", h1, along, (xm - length + h1 + 0.03, yd, 0.0)))
    if chain == 3:
        h2 = rng.uniform(*cfg.box_depth)
        boxes.append(MovableObject("room", dw / 2 - gap - 0.01, h2, (xs, yh, 0.0)))
    placed += [_corners(*b.pose, b.half_x, b.half_y) for b in boxes]

    def free(corners: np.ndarray, keep_out: list[np.ndarray]) -> bool:
        grown = grow_rect(corners, gap)
        if grown.min() < t or grown.max() > size - t:
            return False
        return not any(rects_overlap(grown, other) for other in placed + keep_out)

    def disc_at(lo_x: float, hi_x: float, lo_y: float, hi_y: float) -> tuple[float, float] | None:
        r = cfg.robot_radius + gap
        for _ in range(200):
            x, y = rng.uniform(lo_x + r, hi_x - r), rng.uniform(lo_y + r, hi_y - r)
            if free(_corners(x, y, 0.0, r, r), []):
                return (float(x), float(y))
        return None

    start = disc_at(t, xm - t / 2, t, yh - t / 2)
    goal = disc_at(xm + t / 2, size - t, t, size - t)
    if start is None or goal is None:
        return None
    r = cfg.robot_radius + gap
    placed.append(_corners(*start, 0.0, r, r))
    # Distractors stay out of the corridor, off its mouth and off both sides of the start
    # room's doorway (otherwise they would join the chain instead of distracting).
    keep_out = [
        _corners(xm - length / 2 - 0.35, yd, 0.0, length / 2 + 0.4, cw / 2 + tc),
        _corners(xs, yh, 0.0, dw / 2 + 0.15, 0.55),
    ]
    n = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    for k in range(n):
        # Alternate rooms so the robot can always waste moves: start room first.
        lo_y, hi_y = (t, yh - t / 2) if k % 2 == 0 else (yh + t / 2, size - t)
        for _ in range(60):
            hx, hy = rng.uniform(*cfg.distractor_half, size=2)
            x, y = rng.uniform(t + 0.2, xm - 0.2), rng.uniform(lo_y + 0.2, hi_y - 0.2)
            yaw = float(rng.uniform(-math.pi / 2, math.pi / 2))
            corners = _corners(x, y, yaw, hx, hy)
            if free(corners, keep_out):
                boxes.append(MovableObject("distractor", float(hx), float(hy), (x, y, yaw)))
                placed.append(corners)
                break

    frame = _Frame(size, int(rng.integers(8)))
    order = rng.permutation(len(boxes))
    objects = tuple(
        replace(frame.box(boxes[k]), object_id=f"obj_{i}") for i, k in enumerate(order)
    )
    return Scene(
        seed=seed,
        width=size,
        height=size,
        walls=tuple(frame.wall(w) for w in walls),
        robot_radius=cfg.robot_radius,
        robot_start=frame.point(*start),
        goal=frame.point(*goal),
        objects=objects,
        kind=cfg.name,
        doorways=tuple(frame.doorway(d) for d in doorways),
    )
