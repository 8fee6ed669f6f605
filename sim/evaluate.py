"""Roll a policy out in a task and score it against random and expert on the same seeds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import sim
from roboloop_runtime.policy import Policy
from sim.experts import make_expert_policy

__all__ = [
    "EvalResult",
    "RandomPolicy",
    "evaluate_policy",
    "make_expert_policy",
    "normalized_score",
    "random_policy",
]


@dataclass
class EvalResult:
    returns: list[float]
    successes: list[bool]
    steps: list[int]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "success_rate": self.success_rate,
        }


class RandomPolicy:
    """The random baseline: uniform actions in [low, high] (arrays of the action shape), seeded
    (independent of the env's RNG). Sim evaluation, collection and the sim bridge use this one."""

    def __init__(self, low: Any, high: Any, seed: int = 0) -> None:
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if self.low.ndim != 1 or self.low.shape != self.high.shape:
            raise ValueError(
                f"RandomPolicy needs 1-D low/high of the action shape, got {self.low.shape} "
                f"and {self.high.shape}"
            )
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Stateless apart from the generator, which keeps running across episodes."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def random_policy(env: Any, seed: int = 0) -> RandomPolicy:
    """RandomPolicy over `env.action_space`."""
    return RandomPolicy(env.action_space.low, env.action_space.high, seed)


def evaluate_policy(
    env_id: str,
    policy: Policy,
    episodes: int,
    seed: int,
    camera: int | tuple[int, int] | None = None,
) -> EvalResult:
    """Run `episodes` episodes with reset seeds seed, seed+1, ...; success = last step's flag."""
    env = sim.make(env_id, camera=camera)
    result = EvalResult([], [], [])
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            policy.reset()
            total, steps, done = 0.0, 0, False
            while not done:
                action = np.asarray(policy.select_action(obs), dtype=np.float32)
                obs, reward, terminated, truncated, info = env.step(action)
                total, steps, done = total + reward, steps + 1, terminated or truncated
            result.returns.append(total)
            result.steps.append(steps)
            result.successes.append(bool(info.get("is_success", False)))
    finally:
        env.close()
    return result


def normalized_score(policy_return: float, random_return: float, expert_return: float) -> float:
    """(policy - random) / (expert - random): 0 = random, 1 = expert (returns may be negative)."""
    span = expert_return - random_return
    if abs(span) < 1e-9:
        raise ValueError("expert and random returns are equal: normalized score is undefined")
    return (policy_return - random_return) / span
