"""Vectorized rollouts: N copies of a registered task stepped in one process, batched out.

    envs = sim.make_vec("HalfCheetah-v5", num_envs=16)          # camera=64 adds "image"
    obs, infos = envs.reset(seed=0)            # env i seeded 0 + i; obs["state"]: (16, 17) f32
    obs, reward, terminated, truncated, infos = envs.step(actions)   # actions: (16, 6)

A Gymnasium `VectorEnv` (num_envs, single_/observation_space, single_/action_space) whose
observations are the dicts of `sim.make`, each key stacked to (N, ...); reward float64 (N,),
terminated/truncated bool (N,). Seeded like `SyncVectorEnv` over `sim.make`, and step for step
equal to it: same observations, rewards and episode ends (tests/test_sim_vector.py).

Autoreset is SAME-STEP (`metadata["autoreset_mode"]`): an env whose episode ends in `step` is
reset inside that call, and `obs` already holds its next episode's first observation. Then
- `infos["final_obs"]`: dict like `obs`, every row the observation that step REACHED (before
  any reset): equal to `obs` where no episode ended, so bootstrap from it for all rows:
  target = reward + gamma * (1 - terminated) * V(final_obs)  (a truncated end bootstraps).
- `infos["_final_obs"]`: bool (N,), the rows whose episode ended (terminated | truncated).
- `infos["episode"]`: {"r": float64 (N,), "l": int64 (N,)} return and length of the episodes
  that ended, valid where `infos["_episode"]` (the same mask) is set.
- `infos["is_success"]`: bool (N,) for tasks that define success (of the step reached).
Unlike Gymnasium's SAME_STEP, `final_obs` is dense arrays (not an object array of dicts); infos
hold only the keys above (no per-env `final_info`, no per-task terms such as "x_velocity").

How it steps: tasks with a kernel in `BATCHED_STEPS` step their MjData one after the other in a
tight loop (`mj_step(nstep=frame_skip)`) and compute observation, reward and termination for
all envs at once in numpy; the others (Pendulum-v1, any task without a kernel) call each env's
own `step`. Measured on 2 cores (bench/sim_rollout.py, HalfCheetah-v5 x16): 0.9-1.0 of a plain
`mj_step` loop over the same states (~90% of the time is inside mj_step), SyncVectorEnv 0.5-0.7.
`mujoco.rollout` with 2 threads reached 1.5x on an idle machine (~1x when others load it), but
it cannot carry the solver warmstart from one call to the next, so its trajectories drift from
the single env's (visibly after ~100 steps: contact dynamics are chaotic); `mj_step` holds the
GIL, so Python threads do not help; `AsyncVectorEnv` loses to subprocess overhead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from episode_dataset.ranges import checked, count
from sim.envs import REACHER_SUCCESS_DISTANCE, make, task_spec


class Batch:
    """The MjData of N envs, stepped in one loop; `fields` are copied to (N, ...) arrays."""

    def __init__(self, bases: Sequence[Any], fields: Sequence[str]) -> None:
        self.bases = list(bases)
        self.dt = float(self.bases[0].dt)
        self.frame_skip = int(self.bases[0].frame_skip)
        self.fields = tuple(fields)
        first = self.bases[0].data
        self.arrays = {
            name: np.empty((len(self.bases), *getattr(first, name).shape)) for name in self.fields
        }
        # Per env: model, data, its ctrl and (source, destination row) pairs. MjData arrays are
        # views of a buffer that never moves, so they are taken once, not per step.
        self._envs = [
            (
                base.model,
                base.data,
                base.data.ctrl,
                [(getattr(base.data, name), self.arrays[name][i]) for name in self.fields],
            )
            for i, base in enumerate(self.bases)
        ]
        for i in range(len(self.bases)):
            self.refresh(i)

    def refresh(self, i: int) -> None:
        """Copy env i's fields (after a reset)."""
        for source, row in self._envs[i][3]:
            row[...] = source

    def simulate(self, actions: np.ndarray) -> None:
        """`MujocoEnv.do_simulation` for every env, then refresh every field.

        Gymnasium also calls mj_rnePostConstraint after the step; it only fills cacc/cfrc_*,
        which no kernel reads and the next mj_step recomputes.
        """
        step, nstep = mujoco.mj_step, self.frame_skip
        for (model, data, ctrl, copies), action in zip(self._envs, actions, strict=True):
            ctrl[:] = action
            step(model, data, nstep=nstep)
            for source, row in copies:
                row[...] = source


@dataclass(frozen=True)
class BatchedStep:
    """A task's `step` for N envs at once: Gymnasium's equations, batched over rows.

    `step(batch, actions)` simulates and returns (observation (N, D), reward (N,), terminated
    (N,), success (N,) or None); `fields` are the MjData arrays it reads from `batch.arrays`.
    """

    fields: tuple[str, ...]
    step: Callable[[Batch, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, Any]]


def _step_forward(batch: Batch, actions: np.ndarray) -> tuple[Any, Any, Any, np.ndarray]:
    """Simulate one step; (first env, qpos (N, nq), qvel (N, nv), forward x velocity (N,)),
    the opening that the locomotion tasks' `step` share."""
    qpos, qvel = batch.arrays["qpos"], batch.arrays["qvel"]
    x_before = qpos[:, 0].copy()
    batch.simulate(actions)
    return batch.bases[0], qpos, qvel, (qpos[:, 0] - x_before) / batch.dt


def _half_cheetah(batch: Batch, actions: np.ndarray) -> tuple:
    """gymnasium/envs/mujoco/half_cheetah_v5.py `step`."""
    base, qpos, qvel, x_velocity = _step_forward(batch, actions)
    ctrl_cost = base._ctrl_cost_weight * np.sum(np.square(actions), axis=1)
    reward = base._forward_reward_weight * x_velocity - ctrl_cost
    position = qpos[:, 1:] if base._exclude_current_positions_from_observation else qpos
    observation = np.concatenate([position, qvel], axis=1)
    return observation, reward, np.zeros(len(reward), bool), None


def _hopper(batch: Batch, actions: np.ndarray) -> tuple:
    """gymnasium/envs/mujoco/hopper_v5.py `step`: terminates once unhealthy."""
    base, qpos, qvel, x_velocity = _step_forward(batch, actions)
    # is_healthy: state_vector()[2:], z and torso angle inside their open ranges
    state = np.concatenate([qpos, qvel], axis=1)[:, 2:]
    (min_state, max_state), (min_z, max_z), (min_angle, max_angle) = (
        base._healthy_state_range,
        base._healthy_z_range,
        base._healthy_angle_range,
    )
    healthy = (
        np.all((min_state < state) & (state < max_state), axis=1)
        & (min_z < qpos[:, 1])
        & (qpos[:, 1] < max_z)
        & (min_angle < qpos[:, 2])
        & (qpos[:, 2] < max_angle)
    )
    forward_reward = base._forward_reward_weight * x_velocity
    rewards = forward_reward + healthy * base._healthy_reward
    reward = rewards - base._ctrl_cost_weight * np.sum(np.square(actions), axis=1)
    position = qpos[:, 1:] if base._exclude_current_positions_from_observation else qpos
    observation = np.concatenate([position, np.clip(qvel, -10, 10)], axis=1)
    return observation, reward, ~healthy & base._terminate_when_unhealthy, None


def _reacher(batch: Batch, actions: np.ndarray) -> tuple:
    """gymnasium/envs/mujoco/reacher_v5.py `step` (reward and observation after the step)."""
    base = batch.bases[0]
    batch.simulate(actions)
    qpos, qvel, xpos = batch.arrays["qpos"], batch.arrays["qvel"], batch.arrays["xpos"]
    fingertip, target = base.model.body("fingertip").id, base.model.body("target").id
    vec = xpos[:, fingertip] - xpos[:, target]
    reward_dist = -np.sqrt(np.sum(vec * vec, axis=1)) * base._reward_dist_weight
    reward_ctrl = -np.sum(np.square(actions), axis=1) * base._reward_control_weight
    theta = qpos[:, :2]
    observation = np.concatenate(
        [np.cos(theta), np.sin(theta), qpos[:, 2:], qvel[:, :2], vec[:, :2]], axis=1
    )
    # sim.envs._reacher_distance, batched
    success = (vec[:, 0] ** 2 + vec[:, 1] ** 2) ** 0.5 < REACHER_SUCCESS_DISTANCE
    return observation, reward_dist + reward_ctrl, np.zeros(len(actions), bool), success


# Task name -> its batched step. Extend here; a task without one still vectorizes (slower).
BATCHED_STEPS: dict[str, BatchedStep] = {
    "HalfCheetah-v5": BatchedStep(("qpos", "qvel"), _half_cheetah),
    "Hopper-v5": BatchedStep(("qpos", "qvel"), _hopper),
    "Reacher-v5": BatchedStep(("qpos", "qvel", "xpos"), _reacher),
}


class SimVectorEnv(gym.vector.VectorEnv):
    """N envs of one task with dict observations, same-step autoreset (see module docstring)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, env_id: str, num_envs: int, camera: Any = None, **kwargs: Any) -> None:
        num_envs = checked(f"make_vec({env_id!r}): num_envs", num_envs, count(1))
        task_spec(env_id)  # clear error for unknown ids
        name = env_id.removeprefix("roboloop/")
        self.envs = [make(name, camera=camera, **kwargs) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = len(self.envs)
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_features = first.get_wrapper_attr("observation_features")
        self.spec = first.spec
        self.max_episode_steps = first.spec.max_episode_steps
        self._success = task_spec(name).success
        self._camera = camera
        kernel = BATCHED_STEPS.get(name)
        self._kernel = kernel
        self._batch = Batch([e.unwrapped for e in self.envs], kernel.fields) if kernel else None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, np.int64)
        self._obs: dict[str, np.ndarray] | None = None

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every env; an int seed gives env i `seed + i` (as SyncVectorEnv does)."""
        if seed is None or np.ndim(seed) == 0:  # a numpy integer too; Gymnasium takes ints
            first = None if seed is None else checked("seed", seed, count(0))
            seeds = [None if first is None else first + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset: {len(seeds)} seeds for {self.num_envs} envs")
        results = [
            env.reset(seed=s, options=options) for env, s in zip(self.envs, seeds, strict=True)
        ]
        if self._batch is not None:
            for i in range(self.num_envs):
                self._batch.refresh(i)
        self._returns[:] = 0
        self._lengths[:] = 0
        self._obs = {k: np.stack([obs[k] for obs, _ in results]) for k in results[0][0]}
        infos: dict[str, Any] = {}
        if self._success is not None:
            infos["is_success"] = np.array([info["is_success"] for _, info in results])
        return {k: v.copy() for k, v in self._obs.items()}, infos

    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self._obs is None:
            raise RuntimeError("step before reset: call reset() first")
        actions = np.asarray(actions)
        expected = self.action_space.shape
        if actions.shape != expected:
            raise ValueError(f"step: actions of shape {actions.shape}, expected {expected}")
        if self._kernel is not None:
            obs, reward, terminated, truncated, success = self._step_batched(actions)
        else:
            obs, reward, terminated, truncated, success = self._step_each(actions)
        self._returns += reward
        self._lengths += 1
        done = terminated | truncated
        infos: dict[str, Any] = {
            "final_obs": obs,
            "_final_obs": done,
            "episode": {"r": np.where(done, self._returns, 0.0), "l": self._lengths * done},
            "_episode": done,
        }
        if success is not None:
            infos["is_success"] = success
        if not done.any():
            self._obs = obs
            return obs, reward, terminated, truncated, infos
        next_obs = {k: v.copy() for k, v in obs.items()}
        for i in np.flatnonzero(done):
            first, _ = self.envs[i].reset()
            for key, value in first.items():
                next_obs[key][i] = value
            if self._batch is not None:
                self._batch.refresh(i)
            self._returns[i] = 0.0
            self._lengths[i] = 0
        self._obs = next_obs
        return next_obs, reward, terminated, truncated, infos

    def _step_batched(self, actions: np.ndarray) -> tuple:
        state, reward, terminated, success = self._kernel.step(self._batch, actions)
        obs = {"state": state.astype(np.float32)}
        if self._camera:
            obs["image"] = np.stack([env.get_wrapper_attr("render_image")() for env in self.envs])
        if self._success is None:
            success = None
        # TimeLimit: truncated once the episode has lasted max_episode_steps (even if terminated)
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, bool)
        else:
            truncated = self._lengths + 1 >= self.max_episode_steps
        return obs, reward, terminated, truncated, success

    def _step_each(self, actions: np.ndarray) -> tuple:
        results = [env.step(action) for env, action in zip(self.envs, actions, strict=True)]
        obs = {k: np.stack([r[0][k] for r in results]) for k in results[0][0]}
        reward = np.array([r[1] for r in results], np.float64)
        terminated = np.array([r[2] for r in results], bool)
        truncated = np.array([r[3] for r in results], bool)
        success = None
        if self._success is not None:
            success = np.array([r[4]["is_success"] for r in results], bool)
        return obs, reward, terminated, truncated, success

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute `name` of every env (anywhere in its wrapper chain), as SyncVectorEnv."""
        return tuple(env.get_wrapper_attr(name) for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def make_vec(env_id: str, num_envs: int, camera: Any = None, **kwargs: Any) -> SimVectorEnv:
    """`num_envs` copies of `sim.make(env_id, camera=camera, **kwargs)`, stepped as one batch.

    Seed through `reset(seed=...)`. See the module docstring for shapes and autoreset.
    """
    return SimVectorEnv(env_id, num_envs, camera=camera, **kwargs)
