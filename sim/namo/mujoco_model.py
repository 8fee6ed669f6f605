"""MuJoCo model of a NAMO scene, to check kinematic plans physically.

Walls are static boxes of the world body, each movable object is a box body with a free joint
resting on the floor, the robot is a cylinder on two planar slide joints (x, y) hovering 1 cm
above the floor (no floor contact, so gravity and friction do not move it).

``check_state`` puts a ``NamoState`` into the model, reports every penetrating contact that
does not involve the floor, then steps the physics and reports how far objects and robot
drift (they should stay where the plan put them). ``check_plan`` does that for every state of
a plan executed by the transition model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

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
class PlanCheck:
    states: list[StateCheck]
    penetration_tol: float
    drift_tol: float

    @property
    def ok(self) -> bool:
        return all(
            s.max_penetration <= self.penetration_tol and s.max_drift <= self.drift_tol
            for s in self.states
        )

    def failures(self) -> list[str]:
        out = []
        for k, s in enumerate(self.states):
            for a, b, d in s.penetrations:
                if d > self.penetration_tol:
                    out.append(f"state {k}: {a} penetrates {b} by {d * 1000:.1f} mm")
            if s.max_drift > self.drift_tol:
                out.append(f"state {k}: {s.drift_body} drifted {s.max_drift * 1000:.1f} mm")
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


def check_plan(
    model: TransitionModel,
    proposals: list[Proposal],
    state: NamoState | None = None,
    penetration_tol: float = 1e-3,
    drift_tol: float = 5e-3,
    settle_steps: int = 100,
) -> PlanCheck:
    """Execute ``proposals`` with the transition model from ``state`` (default: the start) and
    check the start and every resulting state physically."""
    physics = NamoPhysics(model.scene)
    state = state or model.initial_state()
    checks = [physics.check_state(state, settle_steps)]
    for p in proposals:
        state = model.step(state, p).state
        checks.append(physics.check_state(state, settle_steps))
    return PlanCheck(checks, penetration_tol, drift_tol)
