"""Seed 002's Python training API (training/api.py): trajectories in, a trained checkpoint out,
through the same configs as `python -m learning.train`."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from episode_dataset import DatasetError, EpisodeReader
from learning.errors import ConfigError
from learning.online.loop import storage_path
from training.api import (
    train_behavioral_cloning,
    train_dreamer,
    train_policy,
    train_world_model,
)
from training.data_collection import (
    DataCollector,
    create_synthetic_dataset,
    save_trajectories,
)


def test_train_behavioral_cloning_from_collected_demonstrations(tmp_path: Path) -> None:
    demos = DataCollector("Reacher-v5", seed=3).collect_episodes(4, policy="expert")
    result = train_behavioral_cloning(
        demos,
        use_sequences=True,
        num_epochs=2,
        output_root=tmp_path,
        overrides=["batch_size=8", "~trainer.callbacks.progress_bar"],
    )
    (dataset,) = (tmp_path / "datasets").glob("bc_*.hdf5")
    assert len(EpisodeReader(dataset)) == 4  # the demonstrations, as an episode dataset
    ckpt = torch.load(result["last_ckpt"], weights_only=True)
    assert ckpt["epoch"] == 1  # num_epochs=2 reached the trainer
    assert any("lstm" in k for k in ckpt["state_dict"])  # use_sequences chose the LSTM


def test_train_world_model_from_synthetic_trajectories(tmp_path: Path) -> None:
    episodes = create_synthetic_dataset(num_episodes=6, observation_dim=4, action_dim=2)
    with pytest.raises(ConfigError, match=r"observation_shape=\(64, 64, 3\) is not the shape"):
        train_world_model(episodes, observation_shape=(64, 64, 3), output_root=tmp_path)
    assert not (tmp_path / "datasets").exists()  # refused before anything was written
    result = train_world_model(
        episodes,
        observation_shape=(4,),
        num_epochs=1,
        output_root=tmp_path,
        overrides=[
            "world_model=tiny",
            "world_model.sequence_length=10",
            "world_model.batch_size=4",
            "~trainer.callbacks.progress_bar",
        ],
    )
    assert Path(result["last_ckpt"]).is_file()
    assert torch.load(result["last_ckpt"], weights_only=True)["epoch"] == 0


def test_train_dreamer_starts_from_the_trajectories(tmp_path: Path) -> None:
    """The trajectories fill the replay before the first step: with learning_starts above
    the run's own 120 steps, only the prefilled 600 let Dreamer update at all."""
    demos = DataCollector("Pendulum-v1", seed=1).collect_episodes(3, policy="expert")
    with pytest.raises(ConfigError, match="give env_factory"):
        train_dreamer(trajectories=demos, num_steps=100)
    result = train_dreamer(
        "Pendulum-v1",
        trajectories=demos,
        observation_shape=(3,),
        num_steps=120,
        output_root=tmp_path,
        overrides=[
            "world_model=tiny",
            "world_model.batch_size=4",
            "world_model.sequence_length=8",
            "dreamer.imagine_horizon=3",
            "dreamer.learning_starts=500",
            "online.eval_episodes=1",
            "online.progress_bar=false",
        ],
    )
    assert result["env_steps"] == 120
    assert "loss/world_model" in result["metrics"]  # updates ran
    storage = torch.load(storage_path(Path(result["last_ckpt"]), 0), weights_only=True)
    assert int(storage["counts"].sum()) == 600 + 120


def test_bad_arguments_are_refused_before_the_dataset_is_written(tmp_path: Path) -> None:
    episodes = create_synthetic_dataset(num_episodes=2, observation_dim=3, action_dim=1)
    for call, expected in (
        (lambda: train_world_model(episodes, num_epochs=0, output_root=tmp_path), "num_epochs=0"),
        (
            lambda: train_behavioral_cloning(episodes, overrides=["nope=1"], output_root=tmp_path),
            "configs/train_bc.yaml: Could not override 'nope'",
        ),
        (
            lambda: train_world_model(
                episodes, overrides=["world_model.batch_size=0"], output_root=tmp_path
            ),
            "world_model.batch_size=0: must be an integer >= 1",
        ),
        (
            lambda: train_dreamer("Pendulum-v1", episodes, num_steps=-5, output_root=tmp_path),
            "num_steps=-5",
        ),
        (lambda: train_behavioral_cloning([], output_root=tmp_path), "no trajectories"),
    ):
        with pytest.raises(ConfigError, match=expected) as err:
            call()
        assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_data_shapes_and_flags_are_one_line_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """Before: trajectories of another type were an AttributeError after `datasets/` was made;
    a missing dataset path made a run folder before its DatasetError; observation_shape=3 was
    "'int' object is not iterable" and was not checked against a dataset path at all;
    use_sequences="no" trained the LSTM."""
    episodes = create_synthetic_dataset(num_episodes=2, observation_dim=3, action_dim=1)
    dataset = save_trajectories(episodes, tmp_path / "given.hdf5")
    out = tmp_path / "out"
    trajectory = "must be a training.data_collection.Trajectory, got"
    for call, error, says in (
        (
            lambda: train_world_model([1, 2], output_root=out),
            ConfigError,
            f"trajectories[0] {trajectory} int",
        ),
        (
            lambda: train_world_model(
                [*episodes, {"obs": {}}], observation_shape=(3,), output_root=out
            ),
            ConfigError,
            f"trajectories[2] {trajectory} dict",
        ),
        (
            lambda: train_world_model({"obs": {}}, output_root=out),
            ConfigError,
            "trajectories must be a list of training.data_collection.Trajectory or an episode "
            "dataset path, got dict",
        ),
        (lambda: train_behavioral_cloning(None, output_root=out), ConfigError, "got NoneType"),
        (
            lambda: train_dreamer("Pendulum-v1", trajectories=[7], output_root=out),
            ConfigError,
            f"trajectories[0] {trajectory} int",
        ),
        (
            lambda: train_behavioral_cloning(out / "nope.hdf5", output_root=out),
            DatasetError,
            f"demonstrations: {out / 'nope.hdf5'}: file not found",
        ),
        (
            lambda: train_world_model(dataset, observation_shape=4, output_root=out),
            ConfigError,
            "observation_shape=(4,) is not the shape of any observation key of the "
            "trajectories {'state': (3,)}",
        ),
        (
            lambda: train_world_model(episodes, observation_shape=(3, 0), output_root=out),
            ConfigError,
            "observation_shape[1]=0: must be an integer >= 1",
        ),
        (
            lambda: train_world_model(episodes, observation_shape="3", output_root=out),
            ConfigError,
            "observation_shape='3': must be an integer >= 1",
        ),
        (  # an int n is the shape (n,): checked, then the next argument refused
            lambda: train_world_model(
                episodes, observation_shape=3, num_epochs=0, output_root=out
            ),
            ConfigError,
            "num_epochs=0",
        ),
        (
            lambda: train_behavioral_cloning(episodes, use_sequences="no", output_root=out),
            ConfigError,
            "use_sequences='no': must be True or False",
        ),
    ):
        with pytest.raises(error, match=re.escape(says)) as err:
            call()
        assert "\n" not in str(err.value)
    assert not out.exists()  # no datasets/ folder, no run folder


def test_train_policy_refuses_bad_arguments_before_a_run_folder(tmp_path: Path) -> None:
    """Before: an env instead of a factory, or an unknown task id, made a run folder, then
    failed inside Gymnasium or the loop; num_iterations=2.7 ran 2 iterations; algorithm="bc"
    and an unknown override key were Hydra's 20-frame traceback, and one string of overrides
    was parsed character by character."""
    root = f"output_root={tmp_path}"
    for call, says in (
        (
            lambda: train_policy(gym.make("Pendulum-v1"), overrides=[root]),
            "env_factory must be a sim task id or a callable returning a Gymnasium env, "
            "got TimeLimit",
        ),
        (
            lambda: train_dreamer(gym.make("Pendulum-v1"), output_root=tmp_path),
            "env_factory must be a sim task id",
        ),
        (
            lambda: train_policy("Nope-v0", overrides=[root]),
            "env_id=Nope-v0: unknown task 'Nope-v0'",
        ),
        (
            lambda: train_policy("Pendulum-v1", num_iterations=2.7, overrides=[root]),
            "num_iterations=2.7: must be an integer >= 1",
        ),
        (
            lambda: train_policy("Pendulum-v1", algorithm="bc", overrides=[root]),
            "algorithm 'bc': no configs/train_bc.yaml with an online: block "
            "['acrlpd', 'dreamer', 'ppo', 'sac']",
        ),
        (
            lambda: train_policy("Pendulum-v1", overrides=[root, "nope=1"]),
            "configs/train_ppo.yaml: Could not override 'nope'",
        ),
        (
            lambda: train_policy("Pendulum-v1", overrides=root),
            "overrides must be a list of 'key=value' strings, got the str",
        ),
    ):
        with pytest.raises(ConfigError, match=re.escape(says)) as err:
            call()
        assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_the_training_package_is_installed() -> None:
    """`import training.api` works outside the repository root: pyproject's package list takes
    `training` in (setuptools' find, its namespaces default on in pyproject.toml)."""
    from setuptools.discovery import PackageFinder, PEP420PackageFinder

    tomllib = pytest.importorskip("tomllib")
    repo = Path(__file__).resolve().parents[1]
    find = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    finder = PEP420PackageFinder if find["find"].get("namespaces", True) else PackageFinder
    assert "training" in finder.find(str(repo), include=find["find"]["include"])
