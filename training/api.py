"""Seed 002's Python training API, a thin layer over `python -m learning.train` configs:

    from training.api import (
        train_behavioral_cloning, train_dreamer, train_policy, train_world_model,
    )

    result = train_world_model(trajectories=episodes, observation_shape=(64, 64, 3), num_epochs=9)
    result = train_behavioral_cloning(demonstrations=episodes, use_sequences=True)
    result = train_policy(env_factory="HalfCheetah-v5", algorithm="ppo", num_iterations=49)
    result = train_dreamer(env_factory="InvertedPendulum-v5", trajectories=episodes,
                           num_steps=20_000, overrides=["online.camera=64"])
    result["last_ckpt"]   # -> python -m learning.export --ckpt ... --out model.onnx

Trajectories (training.data_collection.Trajectory lists) are first written as an episode dataset
(`<output_root>/datasets/<name>_<time>.hdf5`, never pickles); a dataset path is used as it is.
`observation_shape` (a tuple, or an int n for (n,)) must be the shape of one observation key of
the trajectories or the dataset. The arguments and the composed config (its keys,
learning/config_rules.py's ranges) are checked before that: a bad one (an unknown override key,
trajectories that are not Trajectory objects, a flag that is not a bool) is a one-line
ConfigError, a dataset path that is no readable dataset a one-line DatasetError, and nothing is
written. Each call returns `learning.train.run`'s {"run_dir", "best_ckpt", "last_ckpt",
"metrics"}.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from episode_dataset import DatasetError, EpisodeReader
from episode_dataset.ranges import checked, checked_bool, count
from learning.config_rules import RULES
from learning.errors import ConfigError
from learning.online.api import composed, env_id_of, train_policy
from learning.train import run
from training.data_collection import Trajectory, save_trajectories

__all__ = ["train_behavioral_cloning", "train_dreamer", "train_policy", "train_world_model"]

Data = Sequence[Trajectory] | str | os.PathLike[str]


def _dataset_path(data: Data, name: str, output_root: str | os.PathLike[str]) -> str:
    """The dataset path: `data` itself, or the new file its trajectories will be written to
    (by `_write`, once the run's config has been checked)."""
    if isinstance(data, str | os.PathLike):
        return os.fspath(data)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.fspath(Path(output_root) / "datasets" / f"{name}_{stamp}_{os.getpid()}.hdf5")


def _write(data: Data, path: str) -> None:
    """The trajectories of `data` written to `path` (a dataset path: nothing to write)."""
    if not isinstance(data, str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_trajectories(list(data), path)


def _check_data(arg: str, data: Any, observation_shape: Any = None) -> None:
    """`data` (the argument `arg`) must be a non-empty list of Trajectory or the path of a
    readable episode dataset, and `observation_shape` (None: unchecked) the shape of one of its
    observation keys: one line naming the argument, before any folder or file is made."""
    if isinstance(data, str | os.PathLike):
        try:
            with EpisodeReader(data) as reader:
                shapes = {k: tuple(spec.shape) for k, spec in reader.obs_specs.items()}
        except DatasetError as err:  # before learning.train.run makes the run folder
            raise DatasetError(f"{arg}: {err}") from None
    else:
        if not isinstance(data, Sequence):
            raise ConfigError(
                f"{arg} must be a list of training.data_collection.Trajectory or an episode "
                f"dataset path, got {type(data).__name__}"
            )
        if not data:
            raise ConfigError(f"{arg}: no trajectories to train on")
        for i, trajectory in enumerate(data):
            if not isinstance(trajectory, Trajectory):
                raise ConfigError(
                    f"{arg}[{i}] must be a training.data_collection.Trajectory, got "
                    f"{type(trajectory).__name__}"
                )
        shapes = {k: tuple(v.shape[1:]) for k, v in data[0].obs.items()}
    if observation_shape is None:
        return
    shape = _shape(observation_shape)
    if shape not in shapes.values():
        raise ConfigError(
            f"observation_shape={shape} is not the shape of any observation key of the "
            f"{arg} {shapes}"
        )


def _shape(observation_shape: Any) -> tuple[int, ...]:
    """`observation_shape` as a tuple of sizes >= 1 (an int n is (n,), as numpy's shapes)."""
    if not isinstance(observation_shape, Sequence) or isinstance(observation_shape, str):
        return (checked("observation_shape", observation_shape, count(1), ConfigError),)
    if not observation_shape:
        raise ConfigError("observation_shape=(): must hold the size of each axis")
    return tuple(
        checked(f"observation_shape[{i}]", size, count(1), ConfigError)
        for i, size in enumerate(observation_shape)
    )


def train_world_model(
    trajectories: Data,
    observation_shape: Sequence[int] | int | None = None,
    num_epochs: int | None = None,
    overrides: Sequence[str] = (),
    output_root: str | os.PathLike[str] = "outputs",
) -> dict[str, Any]:
    """`configs/train_world_model.yaml` (RSSM, learning/world_model) on `trajectories`."""
    _check_data("trajectories", trajectories, observation_shape)
    dataset = _dataset_path(trajectories, "world_model", output_root)
    extra = [f"dataset={dataset}", f"output_root={output_root}"]
    if num_epochs is not None:
        epochs = checked("num_epochs", num_epochs, RULES["max_epochs"], ConfigError)
        extra.append(f"max_epochs={epochs}")
    cfg = composed("train_world_model", extra, overrides)
    _write(trajectories, dataset)
    return run(cfg)


def train_behavioral_cloning(
    demonstrations: Data,
    use_sequences: bool = False,
    num_epochs: int | None = None,
    overrides: Sequence[str] = (),
    output_root: str | os.PathLike[str] = "outputs",
) -> dict[str, Any]:
    """`configs/train_bc.yaml` on `demonstrations`: an MLP on observation windows, or an LSTM
    over observation sequences with `use_sequences=True`."""
    _check_data("demonstrations", demonstrations)
    sequences = checked_bool("use_sequences", use_sequences, ConfigError)  # "no" is truthy
    dataset = _dataset_path(demonstrations, "bc", output_root)
    extra = [f"dataset={dataset}", f"output_root={output_root}"]
    extra += [f"model.use_sequences={str(sequences).lower()}"]
    if num_epochs is not None:
        epochs = checked("num_epochs", num_epochs, RULES["max_epochs"], ConfigError)
        extra.append(f"max_epochs={epochs}")
    cfg = composed("train_bc", extra, overrides)
    _write(demonstrations, dataset)
    return run(cfg)


def train_dreamer(
    env_factory: str | Callable[[], gym.Env] | None = None,
    trajectories: Data | None = None,
    observation_shape: Sequence[int] | int | None = None,
    num_steps: int | None = None,
    overrides: Sequence[str] = (),
    output_root: str | os.PathLike[str] = "outputs",
) -> dict[str, Any]:
    """`configs/train_dreamer.yaml` in `env_factory` (a sim task id or a callable, as for
    `train_policy`) for `num_steps` env steps; `trajectories` (or a dataset path) fill the
    replay before the first step."""
    if env_factory is None:
        raise ConfigError(
            "train_dreamer: give env_factory (a sim task id or a callable returning an env): "
            "Dreamer learns by acting; trajectories only prefill its replay"
        )
    extra = [f"output_root={output_root}"]
    dataset = None
    if trajectories is not None:
        _check_data("trajectories", trajectories, observation_shape)
        dataset = _dataset_path(trajectories, "dreamer", output_root)
        extra.append(f"model.prefill_dataset={dataset}")
    if num_steps is not None:
        steps = checked("num_steps", num_steps, count(1), ConfigError)
        extra += ["training.num_iterations=1", f"training.steps_per_iteration={steps}"]
    cfg = composed("train_dreamer", [f"env_id={env_id_of(env_factory)}", *extra], overrides)
    if dataset is not None:
        _write(trajectories, dataset)
    return run(cfg)
