"""NAMO scenes: a walled room split by interior walls with doorways, a disc robot, a goal, and
movable rectangular objects. ``generate_scene(seed, level=...)`` is deterministic in its seed.

Difficulty levels (``LEVELS``: name -> ``Level``): ``easy`` (one plugged wall, usually one move),
``medium`` and ``hard`` (rooms, a narrow corridor, chains of boxes to move in order and
distractor boxes; ``sim.namo.levels``).

Units are metres and radians; the world spans [0, width] x [0, height].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

Pose = tuple[float, float, float]


@dataclass(frozen=True)
class Wall:
    """A static axis-aligned box: centre (x, y) and half extents."""

    x: float
    y: float
    half_x: float
    half_y: float


@dataclass(frozen=True)
class MovableObject:
    """A movable rectangle: id, half extents along its own x/y axes, initial pose (x, y, yaw)."""

    object_id: str
    half_x: float
    half_y: float
    pose: Pose


@dataclass(frozen=True)
class Scene:
    seed: int
    width: float
    height: float
    walls: tuple[Wall, ...]
    robot_radius: float
    robot_start: tuple[float, float]
    goal: tuple[float, float]
    objects: tuple[MovableObject, ...]
    kind: str = "hand"  # "blocked" | "random" (easy) | "medium" | "hard" | "hand"
    doorways: tuple[tuple[float, float, float, str], ...] = ()  # (x, y, width, "v"|"h") centres

    def object_index(self, object_id: str) -> int:
        for k, obj in enumerate(self.objects):
            if obj.object_id == object_id:
                return k
        raise KeyError(f"scene {self.seed}: no movable object {object_id!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        try:
            return cls(
                seed=int(d["seed"]),
                width=float(d["width"]),
                height=float(d["height"]),
                walls=tuple(Wall(**w) for w in d["walls"]),
                robot_radius=float(d["robot_radius"]),
                robot_start=tuple(d["robot_start"]),
                goal=tuple(d["goal"]),
                objects=tuple(
                    MovableObject(o["object_id"], o["half_x"], o["half_y"], tuple(o["pose"]))
                    for o in d["objects"]
                ),
                kind=d.get("kind", "hand"),
                doorways=tuple(tuple(x) for x in d.get("doorways", ())),
            )
        except KeyError as err:
            raise KeyError(f"scene dict: missing key {err}") from None


@dataclass(frozen=True)
class SceneConfig:
    width: float = 5.0
    height: float = 5.0
    wall_thickness: float = 0.1
    robot_radius: float = 0.18
    door_width: tuple[float, float] = (0.6, 0.9)
    blocked_probability: float = 0.75  # else objects are scattered and may not block anything
    extra_objects: tuple[int, int] = (1, 3)  # clutter beyond door blockers, inclusive range
    object_half_size: tuple[float, float] = (0.1, 0.35)
    clearance: float = 0.08  # gap kept between generated footprints and anything else
    interior_walls: tuple[int, ...] = field(default=(1, 2))


def boundary_walls(width: float, height: float, t: float) -> list[Wall]:
    h = t / 2
    return [
        Wall(width / 2, h, width / 2, h),
        Wall(width / 2, height - h, width / 2, h),
        Wall(h, height / 2, h, height / 2),
        Wall(width - h, height / 2, h, height / 2),
    ]


def wall_with_doors(
    axis: str, at: float, length: float, t: float, doors: list[tuple[float, float]]
) -> list[Wall]:
    """Wall segments of a full-length interior wall with gaps.

    axis "v": vertical wall at x = at spanning y in [0, length]; "h": horizontal at y = at.
    doors: (centre along the wall, width), non-overlapping.
    """
    segs, start = [], 0.0
    for centre, w in sorted(doors):
        segs.append((start, centre - w / 2))
        start = centre + w / 2
    segs.append((start, length))
    walls = []
    for a, b in segs:
        if b - a <= 1e-6:
            continue
        mid, half = (a + b) / 2, (b - a) / 2
        walls.append(Wall(at, mid, t / 2, half) if axis == "v" else Wall(mid, at, half, t / 2))
    return walls


def rects_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons given as (4, 2) corner arrays."""
    for poly in (a, b):
        for k in range(4):
            edge = poly[(k + 1) % 4] - poly[k]
            normal = np.array([-edge[1], edge[0]])
            pa, pb = a @ normal, b @ normal
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _corners(x: float, y: float, yaw: float, hx: float, hy: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


def _wall_corners(w: Wall, grow: float = 0.0) -> np.ndarray:
    return _corners(w.x, w.y, 0.0, w.half_x + grow, w.half_y + grow)


@dataclass(frozen=True)
class ChainConfig:
    """Layout of a ``medium``/``hard`` scene (``sim.namo.levels.generate_chain_scene``)."""

    name: str  # level name: the scene's kind and part of its random stream
    chain: tuple[int, ...] = (2,)  # blocking chain lengths drawn from (2: corridor, 3: + room)
    distractors: tuple[int, int] = (1, 2)  # boxes whose moves open nothing, inclusive range
    reachable_distractors: int = 1  # at least this many movable from the start
    width: float = 5.0
    height: float = 5.0
    wall_thickness: float = 0.1
    corridor_wall: float = 0.2  # thick enough that nothing is grasped through it
    robot_radius: float = 0.18
    corridor_width: tuple[float, float] = (0.6, 0.7)
    corridor_length: tuple[float, float] = (0.9, 1.3)
    door_width: tuple[float, float] = (0.6, 0.8)  # the start room's doorway
    box_depth: tuple[float, float] = (0.1, 0.18)  # blockers' half extent across their doorway
    distractor_half: tuple[float, float] = (0.12, 0.3)
    clearance: float = 0.08


@dataclass(frozen=True)
class Level:
    """A difficulty level: its default config and ``generate(seed, config) -> Scene``."""

    name: str
    config: SceneConfig | ChainConfig
    generate: Callable[[int, SceneConfig | ChainConfig], Scene]
    description: str


def _chain_scene(seed: int, config: ChainConfig) -> Scene:
    from sim.namo.levels import generate_chain_scene  # levels imports the transition model

    return generate_chain_scene(seed, config)


def generate_scene(
    seed: int, config: SceneConfig | ChainConfig | None = None, *, level: str = "easy"
) -> Scene:
    """The scene of ``seed`` at difficulty ``level`` (a ``LEVELS`` name); ``config`` replaces
    the level's default config. Same seed, level and config -> identical scene."""
    if level not in LEVELS:
        raise KeyError(f"unknown NAMO level {level!r}; known: {sorted(LEVELS)}")
    chosen = LEVELS[level]
    if config is not None and type(config) is not type(chosen.config):
        raise TypeError(
            f"level {level!r} takes a {type(chosen.config).__name__}, got {type(config).__name__}"
        )
    return chosen.generate(seed, config or chosen.config)


def _easy_scene(seed: int, config: SceneConfig) -> Scene:
    """A random NAMO scene; same seed and config -> identical scene (level ``easy``).

    Interior walls (1 or 2, all vertical or all horizontal) split the room into a chain of
    rooms, each wall with 1-2 doorways. The robot starts in the first room and the goal lies in
    the last. With ``blocked_probability`` every doorway of one interior wall gets a box that
    leaves gaps narrower than the robot, so at least one move is needed; clutter boxes are
    scattered anywhere (and may block other doorways or nothing).
    """
    cfg = config or SceneConfig()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E414D4F]))
    for _attempt in range(100):
        scene = _try_generate(seed, cfg, rng)
        if scene is not None:
            return scene
    raise RuntimeError(f"generate_scene(seed={seed}): no valid scene after 100 attempts")


def _try_generate(seed: int, cfg: SceneConfig, rng: np.random.Generator) -> Scene | None:
    w_, h_, t = cfg.width, cfg.height, cfg.wall_thickness
    n_walls = int(rng.choice(cfg.interior_walls))
    axis = "v" if rng.random() < 0.5 else "h"
    length = h_ if axis == "v" else w_
    span = w_ if axis == "v" else h_
    # Interior wall positions spread over the span so every room is at least ~1.2 m deep.
    cuts = [span * (k + 1) / (n_walls + 1) + rng.uniform(-0.2, 0.2) for k in range(n_walls)]
    walls = boundary_walls(w_, h_, t)
    doorways: list[tuple[float, float, float, str]] = []
    for at in cuts:
        n_doors = int(rng.integers(1, 3))
        doors: list[tuple[float, float]] = []
        for _ in range(50):
            if len(doors) == n_doors:
                break
            dw = rng.uniform(*cfg.door_width)
            c = rng.uniform(t + dw / 2 + 0.3, length - t - dw / 2 - 0.3)
            if all(abs(c - c2) > (dw + w2) / 2 + 0.5 for c2, w2 in doors):
                doors.append((c, dw))
        walls += wall_with_doors(axis, at, length, t, doors)
        for c, dw in doors:
            x, y = (at, c) if axis == "v" else (c, at)
            doorways.append((x, y, dw, axis))

    bounds = [0.0, *cuts, span]
    placed: list[np.ndarray] = [_wall_corners(w) for w in walls]
    objects: list[MovableObject] = []

    def free_for(corners: np.ndarray) -> bool:
        grown = grow_rect(corners, cfg.clearance)
        if grown.min() < 0 or grown[:, 0].max() > w_ or grown[:, 1].max() > h_:
            return False
        return not any(rects_overlap(grown, other) for other in placed)

    kind = "blocked" if rng.random() < cfg.blocked_probability else "random"
    if kind == "blocked":
        wall_k = int(rng.integers(0, n_walls))
        at = cuts[wall_k]
        for x, y, dw, ax in doorways:
            if abs((x if ax == "v" else y) - at) > 1e-9:
                continue
            # Along the wall: leave gaps of ~clearance (far narrower than the robot) each side.
            along = dw / 2 - cfg.clearance - 0.01
            across = rng.uniform(0.1, 0.22)
            hx, hy = (across, along) if ax == "v" else (along, across)
            yaw = 0.0
            corners = _corners(x, y, yaw, hx, hy)
            objects.append(MovableObject(f"obj_{len(objects)}", hx, hy, (x, y, yaw)))
            placed.append(corners)

    n_extra = int(rng.integers(cfg.extra_objects[0], cfg.extra_objects[1] + 1))
    for _ in range(n_extra):
        for _try in range(60):
            hx, hy = rng.uniform(*cfg.object_half_size, size=2)
            x, y = rng.uniform(0.3, w_ - 0.3), rng.uniform(0.3, h_ - 0.3)
            yaw = float(rng.uniform(-math.pi / 2, math.pi / 2))
            corners = _corners(x, y, yaw, hx, hy)
            if free_for(corners):
                objects.append(
                    MovableObject(f"obj_{len(objects)}", float(hx), float(hy), (x, y, yaw))
                )
                placed.append(corners)
                break

    def sample_point(lo: float, hi: float) -> tuple[float, float] | None:
        r = cfg.robot_radius + cfg.clearance
        for _ in range(200):
            u = rng.uniform(lo + t / 2 + r, hi - t / 2 - r)
            v = rng.uniform(t + r, length - t - r)
            x, y = (u, v) if axis == "v" else (v, u)
            disc = _corners(x, y, 0.0, r, r)
            if not any(rects_overlap(disc, other) for other in placed):
                return (float(x), float(y))
        return None

    start = sample_point(bounds[0], bounds[1])
    if start is None:
        return None
    placed.append(_corners(*start, 0.0, cfg.robot_radius, cfg.robot_radius))
    goal = sample_point(bounds[-2], bounds[-1])
    if goal is None:
        return None
    return Scene(
        seed=seed,
        width=w_,
        height=h_,
        walls=tuple(walls),
        robot_radius=cfg.robot_radius,
        robot_start=start,
        goal=goal,
        objects=tuple(
            MovableObject(o.object_id, float(o.half_x), float(o.half_y), _f3(o.pose))
            for o in objects
        ),
        kind=kind,
        doorways=tuple((float(a), float(b), float(c), d) for a, b, c, d in doorways),
    )


def _f3(p: Pose) -> Pose:
    return (float(p[0]), float(p[1]), float(p[2]))


# Each corner's direction along the two edges (``grow_rect``), as (4, 1) columns.
_EDGE_SIGNS = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
_SIGNS_1, _SIGNS_2 = _EDGE_SIGNS[:, :1], _EDGE_SIGNS[:, 1:]


def grow_rect(corners: np.ndarray, d: float) -> np.ndarray:
    """Push each corner of a rectangle outward by d along both of its edges (a grown rect)."""
    centre = corners.mean(0)
    e1 = corners[0] - corners[1]
    e2 = corners[0] - corners[3]
    u1 = e1 / np.sqrt(e1.dot(e1))  # np.linalg.norm's own sum, without its checks
    u2 = e2 / np.sqrt(e2.dot(e2))
    return centre + (corners - centre) + d * (_SIGNS_1 * u1 + _SIGNS_2 * u2)


def doorway_scene(distractor: bool = False, seed: int = -1) -> Scene:
    """Hand-built 4 x 2 m scene with a known solution: a wall at x = 2 with ONE doorway
    (centre y = 1, 0.7 m wide) plugged by box ``door`` (gaps of 0.09 m, far narrower than the
    robot). Robot left at (0.7, 1.0), goal right at (3.3, 1.0). With ``distractor`` a second
    box ``side`` lies in the robot's room, where moving it opens nothing."""
    t, door_w = 0.1, 0.7
    walls = boundary_walls(4.0, 2.0, t) + wall_with_doors("v", 2.0, 2.0, t, [(1.0, door_w)])
    objects = [MovableObject("door", 0.15, door_w / 2 - 0.09, (2.0, 1.0, 0.0))]
    if distractor:
        objects.append(MovableObject("side", 0.2, 0.12, (1.0, 0.45, 0.0)))
    return Scene(
        seed=seed,
        width=4.0,
        height=2.0,
        walls=tuple(walls),
        robot_radius=0.18,
        robot_start=(0.7, 1.0),
        goal=(3.3, 1.0),
        objects=tuple(objects),
        kind="hand",
        doorways=((2.0, 1.0, door_w, "v"),),
    )


LEVELS: dict[str, Level] = {
    "easy": Level(
        "easy",
        SceneConfig(),
        _easy_scene,
        "one room split by 1-2 walls; p=0.75 every doorway of one wall plugged; 1-3 clutter",
    ),
    "medium": Level(
        "medium",
        ChainConfig("medium", chain=(2,), distractors=(1, 2)),
        _chain_scene,
        "start room, hall, corridor to the goal room: mouth box then door box (2 moves); "
        "1-2 distractors",
    ),
    "hard": Level(
        "hard",
        ChainConfig(
            "hard",
            chain=(3,),
            distractors=(3, 4),
            reachable_distractors=2,
            corridor_width=(0.58, 0.64),
        ),
        _chain_scene,
        "as medium with the start room's doorway plugged too (3 moves in order) and 3-4 "
        "distractors, 2+ movable from the start",
    ),
}
