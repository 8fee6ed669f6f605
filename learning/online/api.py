"""Seed 002's Python API for online training, a thin layer over `python -m learning.train`:

from learning.online.api import train_policy
result = train_policy(env_factory=lambda: gym.make("Pendulum-v1"), algorithm="ppo",
                      num_iterations=1000)
result["last_ckpt"]   # -> python -m learning.export --ckpt ... --out policy.onnx

A bad argument (an unknown algorithm or task, an env where a factory belongs, a count out of
range, an override Hydra or learning/config_rules.py refuses) is a one-line ConfigError before
any run folder is made.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig

from episode_dataset.ranges import checked, count, one_line
from learning.config_rules import check_config
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
    known = sorted(
        p.stem.removeprefix("train_")
        for p in CONFIG_DIR.glob("train_*.yaml")
        if "online:" in p.read_text()  # the online configs (learning.online.loop)
    )
    if algorithm not in known:  # train_bc.yaml exists, but trains offline
        raise ConfigError(
            f"algorithm {algorithm!r}: no configs/train_{algorithm}.yaml with an online: block "
            f"{known}"
        )
    extra = []
    if num_iterations is not None:
        iterations = checked("num_iterations", num_iterations, count(1), ConfigError)
        extra.append(f"training.num_iterations={iterations}")
    env_id = env_id_of(env_factory)
    return run(composed(f"train_{algorithm}", [f"env_id={env_id}", *extra], overrides))


def composed(config: str, extra: Sequence[str], overrides: Sequence[str]) -> DictConfig:
    """configs/<config>.yaml with the API's `extra` and the caller's `overrides`, its numbers
    checked (learning/config_rules.py): done before any file is written, so a bad argument
    leaves nothing behind."""
    if isinstance(overrides, str):  # iterated, each of its characters would be an override
        raise ConfigError(
            f"overrides must be a list of 'key=value' strings, got the str {overrides!r}"
        )
    try:
        cfg = compose_config(config, [*extra, *overrides])
    except OverrideParseException as err:
        raise ConfigError(f"override {err.override}: {one_line(err)}") from None
    except HydraException as err:  # an unknown key: Hydra's lines, as one
        raise ConfigError(f"configs/{config}.yaml: {one_line(err)}") from None
    check_config(cfg)
    return cfg


def env_id_of(env_factory: Callable[[], gym.Env] | str) -> str:
    """A task id as is (ConfigError if no task has it); a callable returning a Gymnasium env
    registered as sim task `factory_<n>` of this process (dict observations, as every task)."""
    from sim.envs import TaskSpec, register_task, task_spec

    if isinstance(env_factory, str):
        try:
            task_spec(env_factory)
        except ValueError as err:
            raise ConfigError(f"env_id={env_factory}: {err}") from None  # as the loop says
        return env_factory
    if not callable(env_factory):  # e.g. gym.make(...) itself, not a function making it
        raise ConfigError(
            "env_factory must be a sim task id or a callable returning a Gymnasium env, "
            f"got {type(env_factory).__name__}"
        )
    factory = env_factory
    name = f"factory_{next(_FACTORY_IDS)}"
    register_task(name, TaskSpec("", factory=lambda **kwargs: factory(), mujoco=False))
    return name
