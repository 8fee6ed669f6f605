"""Step a `sim` environment at a fixed rate, without rclpy.

The node calls `tick(external_action)` once per control period. One tick:
  1. choose the action for the current observation (topic / expert / random source),
  2. clip it to the action space and step the env (this is the applied action),
  3. on done (or `truncate`: cut short, e.g. by a reset mid-episode): pause; `restart_pending`
     tells the caller to `reset()` (next seed, `seed + episode index`) when `auto_restart`
     allows it, after it has published the step's outputs.
The result carries the applied action with the id of the observation it was applied to, the
reward and done of that step, and the next observation to publish (None after done).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from roboloop_runtime.policy import Policy


def _expert(env_id: str, env: Any, seed: int) -> Policy:
    from sim.experts import make_expert_policy

    return make_expert_policy(env_id)


def _random(env_id: str, env: Any, seed: int) -> Policy:
    from sim.evaluate import random_policy

    return random_policy(env, seed)


# action_source -> factory; "topic" has no internal source (the node supplies actions).
ACTION_SOURCES: dict[str, Callable[[str, Any, int], Policy] | None] = {
    "topic": None,
    "expert": _expert,
    "random": _random,
}


class BadAction(ValueError):
    pass


@dataclass
class TickResult:
    applied_action: np.ndarray  # (A,) float32, clipped
    applied_to: int  # observation id the action was applied to
    reward: float
    done: bool
    terminated: bool
    truncated: bool
    episode: int  # index of the episode the step belongs to
    episode_steps: int  # steps in that episode so far (incl. this one)
    obs: dict[str, np.ndarray] | None  # next observation to publish (None after done)
    obs_id: int | None


def make_env(env_id: str, camera: int, env_kwargs: dict[str, Any]) -> Any:
    import sim

    return sim.make(env_id, camera=camera or None, **env_kwargs)


class SimRunner:
    def __init__(
        self,
        env_id: str,
        *,
        seed: int = 0,
        action_source: str = "expert",
        camera: int = 0,
        auto_restart: bool = True,
        max_episodes: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        env_factory: Callable[[str, int, dict[str, Any]], Any] = make_env,
    ) -> None:
        if action_source not in ACTION_SOURCES:
            raise ValueError(f"action_source {action_source!r} not one of {list(ACTION_SOURCES)}")
        self.env_id = env_id
        self.seed = seed
        self.auto_restart = auto_restart
        self.max_episodes = max_episodes
        self.env = env_factory(env_id, camera, dict(env_kwargs or {}))
        factory = ACTION_SOURCES[action_source]
        self.source: Policy | None = None if factory is None else factory(env_id, self.env, seed)
        space = self.env.action_space
        self.low = np.asarray(space.low, np.float32)
        self.high = np.asarray(space.high, np.float32)
        self.action_dim = int(np.prod(space.shape))
        self.episode = -1
        self.episode_steps = 0
        self.obs: dict[str, np.ndarray] | None = None
        self.obs_id = -1
        self.running = False
        self.total_steps = 0
        self.restart_pending = False

    @property
    def uses_external_actions(self) -> bool:
        return self.source is None

    @property
    def finished(self) -> bool:
        return 0 < self.max_episodes <= self.episode + 1 and not self.running

    def reset(self) -> tuple[dict[str, np.ndarray], int]:
        """Start the next episode (seed = seed + episode index); returns (obs, obs_id)."""
        self.episode += 1
        obs, _ = self.env.reset(seed=self.seed + self.episode)
        if self.source is not None:
            self.source.reset()
        self.episode_steps = 0
        self.running = True
        self.restart_pending = False
        return self._new_obs(obs)

    def _new_obs(self, obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        self.obs = obs
        self.obs_id += 1
        return obs, self.obs_id

    def check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.size != self.action_dim:
            raise BadAction(
                f"action has {a.size} values, env {self.env_id} expects {self.action_dim}"
            )
        if not np.isfinite(a).all():
            raise BadAction("action has non-finite values")
        return a

    def tick(
        self, external_action: np.ndarray | None = None, truncate: bool = False
    ) -> TickResult | None:
        """One control step; None while paused. `external_action` (A,) is used for 'topic'.

        `truncate`: this step ends the episode (truncated, like a time limit): how a reset in
        the middle of an episode ends it for every consumer before the next one starts."""
        if not self.running or self.obs is None:
            return None
        if self.source is not None:
            action = self.source.select_action(self.obs)
        elif external_action is not None:
            action = external_action
        else:
            action = np.zeros(self.action_dim, np.float32)  # no fresh command: safe zero action
        applied = np.clip(self.check_action(action), self.low, self.high)
        applied_to = self.obs_id
        obs, reward, terminated, truncated, _ = self.env.step(applied)
        truncated = bool(truncated or (truncate and not terminated))
        self.episode_steps += 1
        self.total_steps += 1
        episode, steps = self.episode, self.episode_steps
        done = bool(terminated or truncated)
        if done:
            self.running = False
            self.restart_pending = self.auto_restart and not (
                0 < self.max_episodes <= self.episode + 1
            )
            obs_next, obs_id = None, None
        else:
            obs_next, obs_id = self._new_obs(obs)
        return TickResult(
            applied_action=applied,
            applied_to=applied_to,
            reward=float(reward),
            done=done,
            terminated=bool(terminated),
            truncated=bool(truncated),
            episode=episode,
            episode_steps=steps,
            obs=obs_next,
            obs_id=obs_id,
        )

    def close(self) -> None:
        self.env.close()
