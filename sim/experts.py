"""Scripted experts that act from the observation alone (so a ROS node can run them too)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from roboloop_runtime.policy import Policy
from sim.envs import task_spec


class ReacherExpert:
    """Inverse kinematics + joint PD for the 2-link Reacher arm.

    Observation (Gymnasium Reacher-v5): cos q (2), sin q (2), target xy (2), qdot (2),
    fingertip - target xy (2). The arm's link lengths are 0.1 m and 0.11 m (fingertip). The IK
    elbow branch nearest the current configuration is taken; torques are the PD law
    tau = Kp (q* - q) - Kd qdot, clipped to the [-1, 1] action box. Gains trade speed against
    Reacher's control penalty (-|a|^2 per step).
    """

    L1, L2 = 0.1, 0.11

    def __init__(self, kp: float = 0.5, kd: float = 0.08) -> None:
        self.kp, self.kd = kp, kd

    def reset(self) -> None:
        """Stateless: nothing to forget."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        s = np.asarray(obs["state"], dtype=np.float64)
        q = np.arctan2(s[2:4], s[0:2])
        target, qdot = s[4:6], s[6:8]
        q_goal = self._inverse_kinematics(target, q)
        error = np.arctan2(np.sin(q_goal - q), np.cos(q_goal - q))  # shortest angle
        torque = self.kp * error - self.kd * qdot
        return np.clip(torque, -1.0, 1.0).astype(np.float32)

    def _inverse_kinematics(self, target: np.ndarray, q: np.ndarray) -> np.ndarray:
        x, y = target
        r2 = x * x + y * y
        c2 = np.clip((r2 - self.L1**2 - self.L2**2) / (2 * self.L1 * self.L2), -1.0, 1.0)
        best, best_cost = q, np.inf
        for q2 in (np.arccos(c2), -np.arccos(c2)):
            elbow = np.arctan2(self.L2 * np.sin(q2), self.L1 + self.L2 * np.cos(q2))
            q1 = np.arctan2(y, x) - elbow
            cand = np.array([q1, q2])
            cost = np.abs(np.arctan2(np.sin(cand - q), np.cos(cand - q))).sum()
            if cost < best_cost:
                best, best_cost = cand, cost
        return best


class PendulumExpert:
    """Energy-pumping swing-up, then PD balance near upright (obs: cos, sin, thetadot)."""

    def __init__(self, max_torque: float = 2.0) -> None:
        self.max_torque = max_torque

    def reset(self) -> None:
        """Stateless: nothing to forget."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        cos, sin, thetadot = (float(v) for v in obs["state"])
        theta = np.arctan2(sin, cos)  # 0 = upright
        if cos > 0.85:
            torque = -10.0 * theta - 2.0 * thetadot
        else:
            # Energy relative to upright (m = l = 1, g = 10): E = 0.5 thetadot^2 + 10 (cos - 1)
            energy = 0.5 * thetadot**2 + 10.0 * (cos - 1.0)
            torque = -np.sign(thetadot * energy if thetadot != 0 else -1.0) * self.max_torque
        return np.array([np.clip(torque, -self.max_torque, self.max_torque)], dtype=np.float32)


EXPERTS: dict[str, Callable[[], Policy]] = {
    "Reacher-v5": ReacherExpert,
    "Pendulum-v1": PendulumExpert,
}


def make_expert_policy(env_id: str) -> Policy:
    """The task's scripted expert, behind the runtime's acting protocol `Policy`."""
    name = env_id.removeprefix("roboloop/")
    task_spec(name)
    if name not in EXPERTS:
        raise ValueError(f"task {env_id!r} has no scripted expert (have: {sorted(EXPERTS)})")
    return EXPERTS[name]()
