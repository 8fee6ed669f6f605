"""Kinematic NAMO transition model on an occupancy grid (the planner's world).

- Occupancy: static walls + movable footprints rasterized on a grid (default 0.05 m cells).
- Configuration space: a cell is free for the robot's centre when it is farther than
  ``inflation = robot_radius + inflation_cells * cell`` (1 cell) from every occupied cell centre
  (the extra cell covers rasterization error: an axis-aligned wall reaches less than one cell
  past its covered centres, so the robot at a free cell centre does not touch it; the 0.75
  used before let the robot dig ~4 mm into walls in MuJoCo).
- Reachable region: flood fill (8-connected) of free C-space from the robot's cell.
- A move ``Proposal(object_id, x, y, theta)`` is valid when (see ``check``):
  1. the object is reachable: some reachable cell lies within ``reach_distance`` of its
     footprint (``inflation + reach_margin``); the robot grasps it from the reachable cell of that
     band closest (geodesically) to where it stands: the *reach position*;
  2. the new footprint is inside the world, ``clearance_cells`` cells (cell centre to cell
     centre) clear of walls and of the other objects on the grid, AND its rectangle grown by
     ``clearance`` (0.01 m) overlaps no wall or object rectangle (exact polygon test: grid
     footprints alone let boxes sink ~1 cm into walls, which ``sim.namo.mujoco_model`` caught);
  3. the new footprint leaves the robot's disc at the reach position and the goal disc free;
  4. the new footprint is within ``reach_distance`` of the region the robot could reach with the
     object lifted out (the robot could have carried it there).
- After a move the robot STAYS AT ITS REACH POSITION (pick-and-place abstraction: carrying is not
  simulated; the robot returns to where it grasped). The goal is reached when the goal's cell is
  in the reachable region.
- Step cost (used by the MCTS reward): ``move_cost`` per move + ``object_distance_cost`` x
  displacement of the object centre (m) + ``robot_distance_cost`` x geodesic length the robot
  drove to the reach position (m); reaching the goal adds ``robot_distance_cost`` x final path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from sim.namo.grid import (
    Cut,
    Grid,
    GridGraph,
    distance_to,
    geodesic_distance,
    rasterize_disc,
    rasterize_rect,
    rect_corners,
)
from sim.namo.scene import Pose, Scene, grow_rect, rects_overlap

_EIGHT = np.ones((3, 3), dtype=bool)
POSE_CACHE_ENTRIES = 20000  # per per-pose cache (footprints, dilations, cuts); then it starts over


@dataclass(frozen=True)
class NamoState:
    """Robot centre and every movable object's pose (x, y, yaw), in ``scene.objects`` order."""

    robot: tuple[float, float]
    poses: tuple[tuple[float, float, float], ...]

    def to_dict(self) -> dict:
        return {"robot": list(self.robot), "poses": [list(p) for p in self.poses]}

    @classmethod
    def from_dict(cls, d: dict) -> NamoState:
        return cls(tuple(map(float, d["robot"])), tuple(tuple(map(float, p)) for p in d["poses"]))


@dataclass(frozen=True)
class Proposal:
    """Move object ``object_id`` to pose (x, y, theta)."""

    object_id: str
    x: float
    y: float
    theta: float

    @property
    def pose(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.theta)


@dataclass(frozen=True)
class CostConfig:
    move_cost: float = 0.1
    object_distance_cost: float = 0.02
    robot_distance_cost: float = 0.01


@dataclass(frozen=True)
class ModelConfig:
    resolution: float = 0.05
    reach_margin: float = 0.15
    proposal_radius: float = 1.5  # candidate target centres lie within this of the object
    inflation_cells: float = 1.0  # robot C-space margin beyond its radius, in cells
    clearance_cells: float = 2.0  # min centre-to-centre cells between a placed object and others
    clearance: float = 0.01  # exact (polygon) gap in metres between a placed object and others
    costs: CostConfig = field(default_factory=CostConfig)


@dataclass(frozen=True)
class StepResult:
    state: NamoState
    cost: float
    object_displacement: float
    robot_path: float
    reach_position: tuple[float, float]


class _Dilations(NamedTuple):
    """Object k's footprint at one pose, dilated (``TransitionModel._dilations``)."""

    near: np.ndarray  # within ``inflation``: robot-free cells
    crowded: np.ndarray  # closer than the placement clearance
    window: tuple[slice, slice] | None  # where both can be True (None: empty footprint)


class Lifted(NamedTuple):
    """The world of a state with one object lifted out (``TransitionModel._lifted``)."""

    blocked: np.ndarray  # cells within ``inflation`` of walls / the other objects (robot-free)
    crowded: np.ndarray  # cells closer than ``clearance_cells`` cells to walls / other objects
    region: np.ndarray  # free cells the robot reaches with the object lifted out


@dataclass
class StateInfo:
    """Everything the model derives from one state (cached per state)."""

    footprints: list[np.ndarray]
    occupied: np.ndarray
    free: np.ndarray  # free C-space for the robot centre
    reachable: np.ndarray
    robot_distance: np.ndarray  # geodesic metres from the robot over free C-space
    goal_reached: bool
    goal_path: float  # geodesic metres robot -> goal (inf if unreachable)
    reach: list[tuple[int, int] | None]  # reach cell per object (None: not reachable)
    lifted: dict[int, Lifted] = field(default_factory=dict)
    rects: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # corners, bounding boxes
    checked: dict[Proposal, str | None] = field(default_factory=dict)  # ``check``'s answers


class TransitionModel:
    """Planning model for one scene; states are ``NamoState``; caches per-state analysis."""

    def __init__(self, scene: Scene, config: ModelConfig | None = None, grid: Grid | None = None):
        self.scene = scene
        self.config = config or ModelConfig()
        self.grid = grid or Grid.with_resolution(scene.width, scene.height, self.config.resolution)
        g = self.grid
        self.cell = max(g.res_x, g.res_y)
        self.inflation = scene.robot_radius + self.config.inflation_cells * self.cell
        self.reach_distance = self.inflation + self.config.reach_margin
        self.static = np.zeros(g.shape, dtype=bool)
        for w in scene.walls:
            self.static |= rasterize_rect(g, w.x, w.y, 0.0, w.half_x, w.half_y)
        # The world border counts as occupied, so nothing leaves the world.
        self.static[0, :] = self.static[-1, :] = self.static[:, 0] = self.static[:, -1] = True
        self.goal_cell = g.cell(*scene.goal)
        self._info: dict[NamoState, StateInfo] = {}
        self._footprints: dict[tuple[int, tuple[float, float, float]], np.ndarray] = {}
        self._goal_static: np.ndarray | None = None
        self._static_graph: GridGraph | None = None
        self._dilated: dict[tuple[int, tuple[float, float, float]], _Dilations] = {}
        self._near_cuts: dict[tuple[int, tuple[float, float, float]], Cut] = {}
        self._wall_corners = [rect_corners(w.x, w.y, 0.0, w.half_x, w.half_y) for w in scene.walls]
        # Cell offsets within ``inflation`` (the robot centre's margin), for ``_is_near``: the
        # same metres as ``distance_to``.
        mi, mj = int(self.inflation / g.res_y) + 1, int(self.inflation / g.res_x) + 1
        di, dj = np.mgrid[-mi : mi + 1, -mj : mj + 1]
        offsets = np.sqrt((di * g.res_y) ** 2 + (dj * g.res_x) ** 2)
        self._disc = offsets <= self.inflation
        self._disc_half = (mi, mj)
        # Cells (rows, cols) a footprint reaches at most, for ``_within_reach``'s window.
        self._reach_half = (
            int(self.reach_distance / g.res_y) + 1,
            int(self.reach_distance / g.res_x) + 1,
        )
        self._clearance = self.cell * self.config.clearance_cells
        static_dist = distance_to(g, self.static)
        self._static_near = static_dist <= self.inflation
        self._static_close = static_dist < self._clearance

    # -- geometry ------------------------------------------------------------------------------
    def initial_state(self) -> NamoState:
        return NamoState(
            tuple(map(float, self.scene.robot_start)),
            tuple(tuple(map(float, o.pose)) for o in self.scene.objects),
        )

    @staticmethod
    def _per_pose(cache: dict, make: Callable[[int, Pose], Any], k: int, pose: Pose) -> Any:
        """``cache[(k, pose)]``, made by ``make(k, pose)`` on a miss; a cache holding
        ``POSE_CACHE_ENTRIES`` starts over."""
        key = (k, tuple(pose))
        got = cache.get(key)
        if got is None:
            if len(cache) > POSE_CACHE_ENTRIES:
                cache.clear()
            got = cache[key] = make(k, pose)
        return got

    def footprint(self, k: int, pose: tuple[float, float, float]) -> np.ndarray:
        return self._per_pose(self._footprints, self._rasterize, k, pose)

    def _rasterize(self, k: int, pose: tuple[float, float, float]) -> np.ndarray:
        o = self.scene.objects[k]
        return rasterize_rect(self.grid, pose[0], pose[1], pose[2], o.half_x, o.half_y)

    def near(self, k: int, pose: tuple[float, float, float]) -> np.ndarray:
        """Cells within ``inflation`` of object k's footprint at ``pose`` (where the robot's
        centre may not be): ``distance_to(grid, footprint) <= inflation``, in a window around
        the footprint (``_dilations``)."""
        return self._dilations(k, pose).near

    def _crowded(self, k: int, pose: tuple[float, float, float]) -> np.ndarray:
        """Cells closer than the placement clearance to object k's footprint at ``pose``."""
        return self._dilations(k, pose).crowded

    def _dilations(self, k: int, pose: tuple[float, float, float]) -> _Dilations:
        """``near`` and ``_crowded`` of object k at ``pose`` (cached per pose)."""
        return self._per_pose(self._dilated, self._dilate, k, pose)

    def _dilate(self, k: int, pose: tuple[float, float, float]) -> _Dilations:
        """One distance transform of the footprint in its window grown by ``inflation`` (every
        cell that close lies inside), the same metres as ``distance_to`` of the whole grid."""
        fp = self.footprint(k, pose)
        near = np.zeros(self.grid.shape, dtype=bool)
        crowded = np.zeros(self.grid.shape, dtype=bool)
        window = self._window(fp, self._disc_half)
        if window is not None:
            dist = ndimage.distance_transform_edt(~fp[window], sampling=self.grid.sampling)
            near[window] = dist <= self.inflation
            crowded[window] = dist < self._clearance
        return _Dilations(near, crowded, window)

    def _is_near(self, fp: np.ndarray, cell: tuple[int, int]) -> bool:
        """``near(...)[cell]`` of footprint ``fp`` for one cell: is a footprint cell within the
        disc of offsets around it (the same offsets, so the same answer)."""
        (mi, mj), (i, j) = self._disc_half, cell
        window = fp[max(i - mi, 0) : i + mi + 1, max(j - mj, 0) : j + mj + 1]
        disc = self._disc[max(mi - i, 0) :, max(mj - j, 0) :][: window.shape[0], : window.shape[1]]
        return bool((window & disc).any())

    def _within_reach(
        self, fp: np.ndarray, region: np.ndarray, cell: tuple[int, int] | None = None
    ) -> bool:
        """Is a ``region`` cell within ``reach_distance`` of a footprint cell: yes at once when
        ``cell`` (a proposal's centre: sampled from the region) is both; else a distance
        transform of the footprint in a window around it (every cell that close is inside),
        instead of one of the whole region per state."""
        if cell is not None and fp[cell] and region[cell]:
            return True  # distance 0
        window = self._window(fp, self._reach_half)
        if window is None or not region[window].any():
            return False
        dist = ndimage.distance_transform_edt(~fp[window], sampling=self.grid.sampling)
        return bool((dist[region[window]] <= self.reach_distance).any())

    def _window(self, fp: np.ndarray, half: tuple[int, int]) -> tuple[slice, slice] | None:
        """The footprint's bounding box grown by ``half`` (rows, cols) cells, clipped to the
        grid; None for an empty footprint."""
        rows, cols = np.nonzero(fp.any(1))[0], np.nonzero(fp.any(0))[0]
        if not len(rows):
            return None
        (hi, hj), (n, m) = half, self.grid.shape
        return (
            slice(max(rows[0] - hi, 0), min(rows[-1] + hi + 1, n)),
            slice(max(cols[0] - hj, 0), min(cols[-1] + hj + 1, m)),
        )

    def free_space(self, occupied: np.ndarray) -> np.ndarray:
        return distance_to(self.grid, occupied) > self.inflation

    def info(self, state: NamoState) -> StateInfo:
        got = self._info.get(state)
        if got is not None:
            return got
        if len(self._info) > 5000:
            self._info.clear()
        g = self.grid
        fps = [self.footprint(k, p) for k, p in enumerate(state.poses)]
        occupied = self.static.copy()
        for fp in fps:
            occupied |= fp
        free = self.free_space(occupied)
        rcell = g.cell(*state.robot)
        dist = geodesic_distance(g, free, [rcell])
        reachable = np.isfinite(dist)
        goal_path = float(dist[self.goal_cell])
        reach: list[tuple[int, int] | None] = []
        for fp in fps:
            band = reachable & (distance_to(g, fp) <= self.reach_distance)
            if not band.any():
                reach.append(None)
                continue
            d = np.where(band, dist, np.inf)
            reach.append(tuple(int(v) for v in np.unravel_index(np.argmin(d), d.shape)))
        info = StateInfo(
            footprints=fps,
            occupied=occupied,
            free=free,
            reachable=reachable,
            robot_distance=dist,
            goal_reached=bool(np.isfinite(goal_path)),
            goal_path=goal_path,
            reach=reach,
        )
        self._info[state] = info
        return info

    def goal_reached(self, state: NamoState) -> bool:
        return self.info(state).goal_reached

    def reachable_objects(self, state: NamoState) -> list[int]:
        return [k for k, r in enumerate(self.info(state).reach) if r is not None]

    def _lifted(self, state: NamoState, k: int) -> Lifted:
        """The state with object k lifted out (cached per state): composed from the walls' and
        each other object's cached dilations (a distance transform of a union is the minimum of
        the parts'), so no distance transform runs per state."""
        info = self.info(state)
        got = info.lifted.get(k)
        if got is None:
            blocked, crowded = self._static_near.copy(), self._static_close.copy()
            for j, pose in enumerate(state.poses):
                if j != k:
                    blocked |= self.near(j, pose)
                    crowded |= self._crowded(j, pose)
            labels, _ = ndimage.label(~blocked, structure=_EIGHT)  # the free space
            i, j = info.reach[k]
            region = labels == labels[i, j]
            got = Lifted(blocked, crowded, region)
            info.lifted[k] = got
        return got

    # -- moves ---------------------------------------------------------------------------------
    def check(self, state: NamoState, proposal: Proposal) -> str | None:
        """None if the move is valid, else a one-line reason (remembered per state: sampling
        checks every candidate, and stepping or rendering the chosen ones checks them again)."""
        checked = self.info(state).checked
        if proposal not in checked:
            checked[proposal] = self._check(state, proposal)
        return checked[proposal]

    def _check(self, state: NamoState, proposal: Proposal) -> str | None:
        try:
            k = self.scene.object_index(proposal.object_id)
        except KeyError as err:
            return str(err.args[0])
        info = self.info(state)
        if info.reach[k] is None:
            return f"{proposal.object_id} is not reachable"
        o = self.scene.objects[k]
        g = self.grid
        fp = self.footprint(k, proposal.pose)
        if not fp.any():
            return f"{proposal.object_id} target pose is outside the world"
        corners = rect_corners(*proposal.pose, o.half_x, o.half_y)
        high = corners.max(0)
        if corners.min() < 0 or high[0] > g.width or high[1] > g.height:
            return f"{proposal.object_id} target pose leaves the world"
        lifted = self._lifted(state, k)
        # Clearance to walls/other objects: the grid under-approximates footprints, so the grid
        # test is backed by an exact polygon test of the grown target rectangle.
        if lifted.crowded[fp].any():
            return f"{proposal.object_id} target pose collides with a wall or another object"
        if self._collides(state, k, grow_rect(corners, self.config.clearance)):
            return f"{proposal.object_id} target pose collides with a wall or another object"
        if self._is_near(fp, info.reach[k]):
            return f"{proposal.object_id} target pose overlaps the robot"
        if self._is_near(fp, self.goal_cell):
            return f"{proposal.object_id} target pose blocks the robot goal"
        if not self._within_reach(fp, lifted.region, g.cell(proposal.x, proposal.y)):
            return f"{proposal.object_id} target pose is out of the robot's reach"
        return None

    def _collides(self, state: NamoState, k: int, grown: np.ndarray) -> bool:
        """Exact polygon test of a grown rectangle against every wall and every object but k;
        only rectangles whose bounding boxes meet its bounding box are tested (the others
        cannot overlap it)."""
        info = self.info(state)
        if info.rects is None:
            corners = np.array(
                self._wall_corners
                + [
                    rect_corners(*pose, o.half_x, o.half_y)
                    for o, pose in zip(self.scene.objects, state.poses, strict=True)
                ]
            )
            info.rects = (corners, corners.min(1), corners.max(1))
        corners, lows, highs = info.rects
        low, high = grown.min(0), grown.max(0)
        close = ((lows <= high) & (highs >= low)).all(1)
        close[len(self._wall_corners) + k] = False
        return any(rects_overlap(grown, corners[i]) for i in np.flatnonzero(close))

    def after_distance(self, state: NamoState, proposal: Proposal) -> np.ndarray:
        """``robot_distance`` of the state after a valid move, without analysing that state:
        geodesic metres from the reach cell on one graph of the walls-only free space built per
        model, less the cells every object keeps the robot out of at its post-move pose
        (``near``; the walls' cells are not in that graph: the lifted world's ``blocked``).
        Each object's cut is cached per pose, so only the moved object's is new. Equals
        ``info(step(state, proposal).state).robot_distance`` to float rounding
        (``tests/test_namo_masks.py``). The move is not validated here."""
        k = self.scene.object_index(proposal.object_id)
        cuts = [self._near_cut(j, pose) for j, pose in enumerate(state.poses) if j != k]
        cuts.append(self._near_cut(k, proposal.pose))
        return self.static_graph().distances(self.info(state).reach[k], *cuts)

    def _near_cut(self, k: int, pose: tuple[float, float, float]) -> Cut:
        """``near(k, pose)`` as the edges it cuts from ``static_graph`` (cached per pose)."""
        return self._per_pose(self._near_cuts, self._cut_near, k, pose)

    def _cut_near(self, k: int, pose: tuple[float, float, float]) -> Cut:
        near, _, window = self._dilations(k, pose)
        if window is None:
            return self.static_graph().cut(near[:0, :0])
        return self.static_graph().cut(near[window], (window[0].start, window[1].start))

    def static_graph(self) -> GridGraph:
        """The graph of C-space free of walls only (every state's free space is a subset)."""
        if self._static_graph is None:
            self._static_graph = GridGraph(self.grid, self.free_space(self.static))
        return self._static_graph

    def step(self, state: NamoState, proposal: Proposal) -> StepResult:
        """Apply a valid move (raises ValueError naming the reason if it is not)."""
        reason = self.check(state, proposal)
        if reason is not None:
            raise ValueError(f"invalid move: {reason}")
        k = self.scene.object_index(proposal.object_id)
        info = self.info(state)
        i, j = info.reach[k]
        robot = self.grid.center(i, j)
        poses = list(state.poses)
        old = poses[k]
        poses[k] = (float(proposal.x), float(proposal.y), float(proposal.theta))
        moved = math.hypot(proposal.x - old[0], proposal.y - old[1])
        path = float(info.robot_distance[i, j])
        c = self.config.costs
        cost = c.move_cost + c.object_distance_cost * moved + c.robot_distance_cost * path
        return StepResult(NamoState(robot, tuple(poses)), cost, moved, path, robot)

    def final_cost(self, state: NamoState) -> float:
        """Cost of driving to the goal from a goal-reached state."""
        return self.config.costs.robot_distance_cost * self.info(state).goal_path

    def proposals(
        self,
        state: NamoState,
        per_object: int,
        rng: np.random.Generator,
        objects: list[int] | None = None,
        max_tries: int = 12,
    ) -> list[Proposal]:
        """Up to ``per_object`` valid random target poses per reachable object (seeded by rng).

        Candidate centres are cells of the region the robot reaches with the object lifted out,
        within ``proposal_radius`` of the object; yaw is uniform in [-pi/2, pi/2).
        """
        info = self.info(state)
        out: list[Proposal] = []
        xs, ys = self.grid.xs(), self.grid.ys()
        radius = self.config.proposal_radius
        for k in objects if objects is not None else range(len(state.poses)):
            if info.reach[k] is None:
                continue
            region = self._lifted(state, k).region
            x0, y0, _ = state.poses[k]
            # The rows and columns within the radius (and a cell), then the disc test there.
            cols = np.flatnonzero(np.abs(xs - x0) <= radius + self.grid.res_x)
            rows = np.flatnonzero(np.abs(ys - y0) <= radius + self.grid.res_y)
            if not len(cols) or not len(rows):
                continue
            i0, j0 = rows[0], cols[0]
            window = (slice(i0, rows[-1] + 1), slice(j0, cols[-1] + 1))
            near = region[window] & (
                (xs[window[1]][None, :] - x0) ** 2 + (ys[window[0]][:, None] - y0) ** 2
                <= radius**2
            )
            cells = np.argwhere(near) + (i0, j0)
            if len(cells) == 0:
                continue
            oid = self.scene.objects[k].object_id
            found = 0
            for _ in range(per_object * max_tries):
                if found == per_object:
                    break
                i, j = cells[rng.integers(len(cells))]
                x = float(xs[j] + rng.uniform(-0.5, 0.5) * self.grid.res_x)
                y = float(ys[i] + rng.uniform(-0.5, 0.5) * self.grid.res_y)
                yaw = round(float(rng.uniform(-1, 1)) * math.pi / 2, 4)
                p = Proposal(oid, round(x, 4), round(y, 4), yaw)
                if self.check(state, p) is None:
                    out.append(p)
                    found += 1
        return out

    def goal_distance_static(self) -> np.ndarray:
        """Geodesic metres from the goal over C-space free of WALLS only (movable objects can be
        moved, so they do not count); inf where walls cut a cell off. Cached per model."""
        if self._goal_static is None:
            self._goal_static = self.static_graph().distances(self.goal_cell)
        return self._goal_static

    def robot_disc(self, xy: tuple[float, float]) -> np.ndarray:
        return rasterize_disc(self.grid, xy[0], xy[1], self.scene.robot_radius)
