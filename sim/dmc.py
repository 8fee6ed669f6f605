"""DeepMind Control suite tasks (dm_control) as workspace tasks: `dmc_<domain>_<task>`.

    env = sim.make("dmc_walker_walk", camera=64)  # {"state": (24,) f32, "image": (64, 64, 3) u8}

The image is rendered by the workspace's camera wrapper (headless, `MUJOCO_GL=egl` as for every
other task) from the model's own camera that the pixel benchmarks use (camera 0, quadruped 2),
with shadows and reflections off like the other cameras. `state` is dm_control's observation
dict flattened in its own key order.

Action repeat 2 for every task, as DreamerV1-V3 on DMC (their published curves count env steps,
so 1M env steps = 500k agent steps); PlaNet used per-task repeats (cartpole 8, cheetah 4):
`sim.make(..., action_repeat=8)`. Rewards are summed over the repeats. DMC ends every episode
after 1000 control steps (500 agent steps at repeat 2); these tasks never terminate early, so
episodes end truncated.

dm_control is imported when a task is first built, so the registry loads without it. Each
dm_control release is generated against one MuJoCo release (dm-control 1.0.50 <-> mujoco 3.17.0;
with mujoco 4.0.0 it fails to load any task), hence the pinned pair.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import gymnasium as gym
import numpy as np

ACTION_REPEAT = 2

# name -> (domain, task, camera id): DreamerV3's 20 DMC vision tasks.
DMC_TASKS: dict[str, tuple[str, str, int]] = {
    "dmc_acrobot_swingup": ("acrobot", "swingup", 0),
    "dmc_ball_in_cup_catch": ("ball_in_cup", "catch", 0),
    "dmc_cartpole_balance": ("cartpole", "balance", 0),
    "dmc_cartpole_balance_sparse": ("cartpole", "balance_sparse", 0),
    "dmc_cartpole_swingup": ("cartpole", "swingup", 0),
    "dmc_cartpole_swingup_sparse": ("cartpole", "swingup_sparse", 0),
    "dmc_cheetah_run": ("cheetah", "run", 0),
    "dmc_finger_spin": ("finger", "spin", 0),
    "dmc_finger_turn_easy": ("finger", "turn_easy", 0),
    "dmc_finger_turn_hard": ("finger", "turn_hard", 0),
    "dmc_hopper_hop": ("hopper", "hop", 0),
    "dmc_hopper_stand": ("hopper", "stand", 0),
    "dmc_pendulum_swingup": ("pendulum", "swingup", 0),
    "dmc_quadruped_run": ("quadruped", "run", 2),
    "dmc_quadruped_walk": ("quadruped", "walk", 2),
    "dmc_reacher_easy": ("reacher", "easy", 0),
    "dmc_reacher_hard": ("reacher", "hard", 0),
    "dmc_walker_run": ("walker", "run", 0),
    "dmc_walker_stand": ("walker", "stand", 0),
    "dmc_walker_walk": ("walker", "walk", 0),
}


class TaskUnavailableError(RuntimeError):
    """A registered task this install cannot load (one line saying what to install)."""


def _load(domain: str, task: str, random: np.random.RandomState) -> Any:
    try:
        from dm_control import suite
    except ImportError as error:
        raise ImportError(
            f"task dmc_{domain}_{task} needs dm_control ({error}): install dm-control==1.0.50 "
            "with mujoco==3.17.0"
        ) from None
    try:
        return suite.load(domain, task, task_kwargs={"random": random})
    except AttributeError as error:  # bindings generated for another MuJoCo's struct fields
        versions = {p: importlib.metadata.version(p) for p in ("dm-control", "mujoco")}
        raise TaskUnavailableError(
            f"dm-control {versions['dm-control']} cannot load dmc_{domain}_{task} with mujoco "
            f"{versions['mujoco']} ({error}): use the pair dm-control==1.0.50, mujoco==3.17.0"
        ) from None


class DMCEnv(gym.Env):
    """One dm_control suite task as a Gymnasium env: flat float64 state, float32 actions.

    Exposes the raw MuJoCo `model`/`data` so the workspace camera wrapper renders it. Seeding
    reseeds the RandomState the task draws its initial states from (same seed, same episode).
    """

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, action_repeat: int = ACTION_REPEAT) -> None:
        if int(action_repeat) < 1:
            name = f"dmc_{domain}_{task}"
            raise ValueError(f"{name}: action_repeat must be >= 1, got {action_repeat}")
        self._repeat = int(action_repeat)
        self._random = np.random.RandomState()
        self._env = _load(domain, task, self._random)
        physics = self._env.physics
        self.model, self.data = physics.model.ptr, physics.data.ptr
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(
            spec.minimum.astype(np.float32), spec.maximum.astype(np.float32), dtype=np.float32
        )
        size = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)
        self.dt = float(self._env.control_timestep()) * self._repeat

    @staticmethod
    def _flat(observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in observation.values()]).astype(np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._random.seed(seed)
        return self._flat(self._env.reset().observation), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64)
        reward = 0.0
        for _ in range(self._repeat):
            step = self._env.step(action)
            reward += float(step.reward or 0.0)
            if step.last():
                break
        terminated = bool(step.last() and step.discount == 0.0)
        truncated = bool(step.last() and not terminated)
        return self._flat(step.observation), reward, terminated, truncated, {}

    def close(self) -> None:
        self._env.close()
