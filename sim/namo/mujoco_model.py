"""MuJoCo model of a NAMO scene, to check kinematic plans physically.

Walls are static boxes of the world body, each movable object is a box body with a free joint
resting on the floor, the robot is a cylinder on two planar slide joints (x, y) hovering 1 cm
above the floor (no floor contact, so gravity and friction do not move it).

``check_state`` puts a ``NamoState`` into the model, reports every penetrating contact that
does not involve the floor, then steps the physics and reports how far objects and robot
drift (they should stay where the plan put them). ``check_plan`` does that for every state of
a plan executed by the transition model and, with ``drive_to_goal=True``, then ``drive``s the
robot to its goal: position actuators on the slide joints track a carrot moving at constant
speed along the grid path (steepest descent of the goal's geodesic distance over free C-space);
it reports the final distance to the goal, the deepest robot contact and how far any object
was pushed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from sim.namo.grid import geodesic_distance
from sim.namo.scene import Scene
from sim.namo.transition import NamoState, Proposal, TransitionModel

WALL_HALF_HEIGHT = 0.25
OBJECT_HALF_HEIGHT = 0.15
ROBOT_HALF_HEIGHT = 0.2
ROBOT_LIFT = 0.01


def scene_xml(scene: Scene) -> str:
    """MJCF text of ``scene`` (objects at their initial poses, robot at its start)."""
    w, h = scene.width, scene.height
    parts = [
        '<mujoco model="namo">',
        '  <option timestep="0.002" gravity="0 0 -9.81"/>',
        '  <default><geom friction="0.8 0.01 0.001"/></default>',
        "  <worldbody>",
        f'    <geom name="floor" type="plane" pos="{w / 2} {h / 2} 0" size="{w} {h} 0.1"/>',
    ]
    for i, wall in enumerate(scene.walls):
        parts.append(
            f'    <geom name="wall_{i}" type="box" pos="{wall.x} {wall.y} {WALL_HALF_HEIGHT}" '
            f'size="{wall.half_x} {wall.half_y} {WALL_HALF_HEIGHT}"/>'
        )
    for o in scene.objects:
        x, y, yaw = o.pose
        parts += [
            f'    <body name="{o.object_id}" pos="{x} {y} {OBJECT_HALF_HEIGHT}" '
            f'euler="0 0 {yaw}">',
            f'      <freejoint name="{o.object_id}"/>',
            f'      <geom name="{o.object_id}" type="box" mass="5" '
            f'size="{o.half_x} {o.half_y} {OBJECT_HALF_HEIGHT}"/>',
            "    </body>",
        ]
    z = ROBOT_HALF_HEIGHT + ROBOT_LIFT
    parts += [
        f'    <body name="robot" pos="0 0 {z}">',
        '      <joint name="robot_x" type="slide" axis="1 0 0" damping="50"/>',
        '      <joint name="robot_y" type="slide" axis="0 1 0" damping="50"/>',
        f'      <geom name="robot" type="cylinder" mass="20" '
        f'size="{scene.robot_radius} {ROBOT_HALF_HEIGHT}"/>',
        "    </body>",
        "  </worldbody>",
        "  <actuator>",
        '    <position name="robot_x" joint="robot_x" kp="2000" kv="400"/>',
        '    <position name="robot_y" joint="robot_y" kp="2000" kv="400"/>',
        "  </actuator>",
        "</mujoco>",
    ]
    return "\n".join(parts)


def build_model(scene: Scene) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(scene_xml(scene))


@dataclass
class StateCheck:
    penetrations: list[tuple[str, str, float]] = field(default_factory=list)  # (a, b, depth m)
    max_drift: float = 0.0  # metres, largest xy displacement after settling
    drift_body: str = ""

    @property
    def max_penetration(self) -> float:
        return max((d for _, _, d in self.penetrations), default=0.0)


@dataclass
class DriveCheck:
    path: np.ndarray  # (W, 2) waypoints (m), robot cell -> goal
    goal_error: float  # metres between robot and goal at the end
    max_penetration: float  # deepest robot contact (floor excluded) during the drive
    max_object_drift: float  # largest object xy displacement caused by the drive
    steps: int

    def failures(self, goal_tol: float, penetration_tol: float, drift_tol: float) -> list[str]:
        out = []
        if self.goal_error > goal_tol:
            out.append(f"drive: robot stopped {self.goal_error * 1000:.0f} mm from the goal")
        if self.max_penetration > penetration_tol:
            out.append(f"drive: robot penetrated by {self.max_penetration * 1000:.1f} mm")
        if self.max_object_drift > drift_tol:
            out.append(f"drive: robot pushed an object {self.max_object_drift * 1000:.1f} mm")
        return out


@dataclass
class PlanCheck:
    states: list[StateCheck]
    penetration_tol: float
    drift_tol: float
    drive: DriveCheck | None = None
    goal_tol: float = 0.05

    @property
    def ok(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        out = []
        for k, s in enumerate(self.states):
            for a, b, d in s.penetrations:
                if d > self.penetration_tol:
                    out.append(f"state {k}: {a} penetrates {b} by {d * 1000:.1f} mm")
            if s.max_drift > self.drift_tol:
                out.append(f"state {k}: {s.drift_body} drifted {s.max_drift * 1000:.1f} mm")
        if self.drive is not None:
            out += self.drive.failures(self.goal_tol, self.penetration_tol, self.drift_tol)
        return out


class NamoPhysics:
    """One MuJoCo model + data for a scene; ``check_state`` for any state of that scene."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.model = build_model(scene)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.floor = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        self.obj_qpos = [
            m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, o.object_id)]
            for o in scene.objects
        ]
        self.robot_qpos = [
            m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)]
            for n in ("robot_x", "robot_y")
        ]
        self.robot_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "robot")

    def set_state(self, state: NamoState) -> None:
        d = self.data
        mujoco.mj_resetData(self.model, d)
        for adr, (x, y, yaw) in zip(self.obj_qpos, state.poses, strict=True):
            d.qpos[adr : adr + 7] = [
                x,
                y,
                OBJECT_HALF_HEIGHT,
                math.cos(yaw / 2),
                0,
                0,
                math.sin(yaw / 2),
            ]
        d.qpos[self.robot_qpos[0]], d.qpos[self.robot_qpos[1]] = state.robot
        d.ctrl[:] = state.robot  # actuators hold the robot where it is
        mujoco.mj_forward(self.model, d)

    def _xy(self) -> np.ndarray:
        pos = [self.data.qpos[a : a + 2] for a in self.obj_qpos]
        pos.append(self.data.qpos[self.robot_qpos])
        return np.array(pos, dtype=float)

    def check_state(self, state: NamoState, settle_steps: int = 100) -> StateCheck:
        self.set_state(state)
        m, d = self.model, self.data
        out = StateCheck()
        for c in d.contact[: d.ncon]:
            if self.floor in (c.geom1, c.geom2) or c.dist >= 0:
                continue
            names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, g) for g in (c.geom1, c.geom2)]
            out.penetrations.append((names[0], names[1], float(-c.dist)))
        before = self._xy()
        for _ in range(settle_steps):
            mujoco.mj_step(m, d)
        drift = np.linalg.norm(self._xy() - before, axis=1)
        k = int(np.argmax(drift))
        names = [o.object_id for o in self.scene.objects] + ["robot"]
        out.max_drift, out.drift_body = float(drift[k]), names[k]
        return out

    def _robot_penetration(self) -> float:
        d = self.data
        depth = 0.0
        for c in d.contact[: d.ncon]:
            if self.robot_geom in (c.geom1, c.geom2) and self.floor not in (c.geom1, c.geom2):
                depth = max(depth, -float(c.dist))
        return depth

    def drive(
        self,
        model: TransitionModel,
        state: NamoState,
        speed: float = 0.3,
        physical_state: NamoState | None = None,
    ) -> DriveCheck:
        """Drive the robot from ``state`` to the scene goal along the planning grid's path.

        ``physical_state``: where the bodies really are, if not where the plan believes (tests
        use it to show that a drive through a box that was never moved fails)."""
        path = grid_path(model, state)
        self.set_state(physical_state or state)
        m, d = self.model, self.data
        objects0 = self._xy()[:-1]
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        along = np.concatenate([[0.0], np.cumsum(seg)])
        substeps = 10
        advance = speed * m.opt.timestep * substeps
        s_car, steps, max_pen = 0.0, 0, 0.0
        settle = int(1.0 / (m.opt.timestep * substeps))
        n_control = int(math.ceil(along[-1] / advance)) + settle
        for _ in range(n_control):
            s_car = min(s_car + advance, along[-1])
            d.ctrl[0] = np.interp(s_car, along, path[:, 0])
            d.ctrl[1] = np.interp(s_car, along, path[:, 1])
            for _ in range(substeps):
                mujoco.mj_step(m, d)
                steps += 1
            max_pen = max(max_pen, self._robot_penetration())
        xy = self._xy()
        goal_error = float(np.linalg.norm(xy[-1] - np.asarray(self.scene.goal)))
        drift = float(np.linalg.norm(xy[:-1] - objects0, axis=1).max(initial=0.0))
        return DriveCheck(path, goal_error, max_pen, drift, steps)


def grid_path(model: TransitionModel, state: NamoState) -> np.ndarray:
    """(W, 2) waypoints from the robot to the goal over the planning grid's free C-space
    (steepest descent of the goal's geodesic distance; ends exactly at the goal)."""
    info = model.info(state)
    if not info.goal_reached:
        raise ValueError(f"scene {model.scene.seed}: goal not reachable from {state.robot}")
    g = model.grid
    dist = geodesic_distance(g, info.free, [model.goal_cell])
    i, j = g.cell(*state.robot)
    cells = [(i, j)]
    while (i, j) != model.goal_cell:
        window = dist[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
        di, dj = np.unravel_index(np.argmin(window), window.shape)
        i, j = max(i - 1, 0) + int(di), max(j - 1, 0) + int(dj)
        cells.append((i, j))
    pts = [state.robot] + [g.center(a, b) for a, b in cells[1:-1]] + [model.scene.goal]
    return np.asarray(pts, dtype=float)


def check_plan(
    model: TransitionModel,
    proposals: list[Proposal],
    state: NamoState | None = None,
    penetration_tol: float = 1e-3,
    drift_tol: float = 5e-3,
    settle_steps: int = 100,
    drive_to_goal: bool = False,
    goal_tol: float = 0.05,
) -> PlanCheck:
    """Execute ``proposals`` with the transition model from ``state`` (default: the start) and
    check the start and every resulting state physically; optionally drive to the goal."""
    physics = NamoPhysics(model.scene)
    state = state or model.initial_state()
    checks = [physics.check_state(state, settle_steps)]
    for p in proposals:
        state = model.step(state, p).state
        checks.append(physics.check_state(state, settle_steps))
    drive = physics.drive(model, state) if drive_to_goal else None
    return PlanCheck(checks, penetration_tol, drift_tol, drive, goal_tol)
