"""Seed 002's data-collection API (training/data_collection.py): episodes of sim tasks and
synthetic systems in the workspace dataset format, never pickles."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from episode_dataset import EpisodeReader
from training.data_collection import (
    DataCollector,
    create_synthetic_dataset,
    load_trajectories,
    save_trajectories,
)


def test_collects_sim_episodes_and_saves_them_as_a_dataset(tmp_path: Path) -> None:
    collector = DataCollector("Reacher-v5", seed=5)
    expert = collector.collect_episodes(num_episodes=2, policy="expert")
    assert len(expert) == 2 and all(len(t) == 50 for t in expert)  # Reacher's time limit
    assert [t.metadata["seed"] for t in expert] == [5, 6]
    path = collector.save_trajectories(tmp_path / "reacher.hdf5")
    random = collector.collect_episodes(num_episodes=2)  # policy=None: uniform random
    assert [t.metadata["seed"] for t in random] == [7, 8]  # new episodes, not the same ones
    assert np.mean([t.rewards.sum() for t in expert]) > np.mean([t.rewards.sum() for t in random])

    reader = EpisodeReader(path)
    assert reader.env_args["env_name"] == "Reacher-v5"  # so sim.evaluate can rebuild the task
    reader.close()
    back = load_trajectories(path)
    np.testing.assert_array_equal(back[1].actions, expert[1].actions)
    for key, steps in expert[0].obs.items():
        np.testing.assert_array_equal(back[0].obs[key], steps)


def test_an_env_factory_and_a_policy_object(tmp_path: Path) -> None:
    class Constant:
        def reset(self) -> None:
            pass

        def select_action(self, obs: dict) -> np.ndarray:
            return np.array([0.5], np.float32)

    collector = DataCollector(lambda: gym.make("Pendulum-v1"))
    (episode,) = collector.collect_episodes(1, policy=Constant())
    assert len(episode) == 200 and np.all(episode.actions == 0.5)
    assert episode.obs["state"].shape == (200, 3)
    with pytest.raises(ValueError, match="one env at a time"):
        DataCollector("Pendulum-v1", num_envs=2).collect_episodes(2, policy=Constant())


def test_synthetic_dataset_has_dynamics_to_learn(tmp_path: Path) -> None:
    episodes = create_synthetic_dataset(num_episodes=20, observation_dim=6, action_dim=2, seed=1)
    assert len(episodes) == 20 and episodes[0].obs["state"].shape == (50, 6)
    assert episodes[0].actions.shape == (50, 2) and episodes[0].dones[-1]
    again = create_synthetic_dataset(num_episodes=20, observation_dim=6, action_dim=2, seed=1)
    np.testing.assert_array_equal(again[3].obs["state"], episodes[3].obs["state"])
    # s_{t+1} is a linear function of (s_t, a_t) up to small noise: least squares explains it,
    # and the same fit on shuffled pairs does not.
    x = np.concatenate([np.hstack([e.obs["state"][:-1], e.actions[:-1]]) for e in episodes])
    y = np.concatenate([e.obs["state"][1:] for e in episodes])

    def r2(inputs: np.ndarray) -> float:
        coef, *_ = np.linalg.lstsq(inputs, y, rcond=None)
        return 1 - ((inputs @ coef - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()

    assert r2(x) > 0.95
    assert r2(np.random.default_rng(0).permutation(x)) < 0.2
    path = save_trajectories(episodes, tmp_path / "synthetic.hdf5")
    assert len(load_trajectories(path)) == 20


def test_pickles_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    episodes = create_synthetic_dataset(num_episodes=1, observation_dim=2, action_dim=1)
    with pytest.raises(ValueError, match="never a pickle") as err:
        save_trajectories(episodes, tmp_path / "trajectories.pkl.gz")
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_bad_arguments_are_value_errors_before_any_work(tmp_path: Path) -> None:
    """API wording, a ValueError (never the CLI's SystemExit), before an env is made."""
    collector = DataCollector("Pendulum-v1")
    for kwargs, expected in (
        ({"num_episodes": 1, "policy": "foo"}, "policy must be None, 'random', 'expert', a .onnx"),
        ({"num_episodes": 1, "policy": tmp_path / "no.onnx"}, "no such ONNX file"),
        ({"num_episodes": -2}, r"num_episodes=-2: must be an integer >= 1"),
        ({"num_episodes": 0}, r"num_episodes=0: must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=expected):
            collector.collect_episodes(**kwargs)
    assert collector.seed == 0 and collector.trajectories == []
    with pytest.raises(ValueError, match="num_envs=0: must be"):
        DataCollector("Pendulum-v1", num_envs=0)
    for kwargs, expected in (
        ({"num_episodes": -3}, "num_episodes=-3"),
        ({"observation_dim": 0}, "observation_dim=0"),
        ({"action_dim": 0}, "action_dim=0"),
        ({"episode_length": 0}, "episode_length=0"),
        ({"seed": -1}, "seed=-1"),
    ):
        args = {"num_episodes": 2, "observation_dim": 3, "action_dim": 1, **kwargs}
        with pytest.raises(ValueError, match=f"{expected}: must be an integer"):
            create_synthetic_dataset(**args)
    assert len(create_synthetic_dataset(np.int64(2), 3, 1, episode_length=1)) == 2
