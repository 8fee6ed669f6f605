"""Seed 002's Python API for online training, a thin layer over `python -m learning.train`:

from learning.online.api import train_policy
result = train_policy(env_factory=lambda: gym.make("Pendulum-v1"), algorithm="ppo",
                      num_iterations=1000)
result["last_ckpt"]   # -> python -m learning.export --ckpt ... --out policy.onnx
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from learning.errors import ConfigError
from learning.train import CONFIG_DIR, compose_config, run

_FACTORY_IDS = itertools.count(1)


def train_policy(
    env_factory: Callable[[], gym.Env] | str,
    algorithm: str = "ppo",
    num_iterations: int | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """`learning.train.run` of `configs/train_<algorithm>.yaml` with `overrides`; returns its
    {"run_dir", "last_ckpt", "metrics", ...}.

    `env_factory`: a registered sim task id, or a callable returning a Gymnasium env with a
    flat Box observation and a `dt` (e.g. `lambda: gym.make("Pendulum-v1")`), which becomes a
    sim task `factory_<n>` of this process (dict observations, as every task).
    """
    if not (CONFIG_DIR / f"train_{algorithm}.yaml").is_file():
        known = sorted(
            p.stem.removeprefix("train_")
            for p in CONFIG_DIR.glob("train_*.yaml")
            if "online:" in p.read_text()  # the online configs (learning.online.loop)
        )
        raise ConfigError(f"algorithm {algorithm!r}: no configs/train_{algorithm}.yaml {known}")
    extra = [f"env_id={env_id_of(env_factory)}", *overrides]
    if num_iterations is not None:
        extra.append(f"training.num_iterations={int(num_iterations)}")
    return run(compose_config(f"train_{algorithm}", extra))


def env_id_of(env_factory: Callable[[], gym.Env] | str) -> str:
    """A task id as is; a callable returning a Gymnasium env registered as sim task
    `factory_<n>` of this process (dict observations, as every task)."""
    if isinstance(env_factory, str):
        return env_factory
    from sim.envs import TaskSpec, register_task

    factory = env_factory
    name = f"factory_{next(_FACTORY_IDS)}"
    register_task(name, TaskSpec("", factory=lambda **kwargs: factory(), mujoco=False))
    return name
