"""EpisodeDataModule: windows and padding, split by episode, normalization from train only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from episode_dataset import DatasetError, EpisodeWriter, KeySpec
from learning.data.episode_datamodule import EpisodeDataModule
from learning.data.keys import ACTIONS, OBS
from learning.normalization import Normalizer

STATE_DIM, ACT_DIM, IMG = 4, 2, (12, 12, 3)


def write_toy_dataset(
    path: Path,
    episodes: int = 10,
    image: bool = False,
    seed: int = 0,
    counting: bool = False,
    action_space: dict | None = None,
) -> Path:
    """A learnable toy task: a point circles at a per-episode speed and phase,
    state = (cos, sin, speed, 1), action = the next (cos, sin): the whole chunk is a
    function of the observation. Optional image key.

    counting=True stores obs state[t] = 1000*episode + t and action[t] = (t, -t) instead, so
    windows can be checked exactly. `action_space` goes into env_args as the env's bounds.
    """
    rng = np.random.default_rng(seed)
    specs = {"state": KeySpec("float32", (STATE_DIM,))}
    if image:
        specs["image"] = KeySpec("uint8", IMG, encoding="rgb8")
    env_args = {"env_name": "toy", "control_rate_hz": 20.0}
    if action_space is not None:
        env_args["action_space"] = action_space
    with EpisodeWriter(path, specs, KeySpec("float32", (ACT_DIM,)), env_args, fsync=False) as w:
        for e in range(episodes):
            n = 12 + e % 5
            if counting:
                t = np.arange(n, dtype=np.float32)
                state = np.repeat((1000 * e + t)[:, None], STATE_DIM, axis=1)
                actions = np.stack([t, -t], axis=1)
            else:
                speed, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi)
                angle = speed * np.arange(n + 1) + phase
                state = np.stack(
                    [np.cos(angle[:-1]), np.sin(angle[:-1]), np.full(n, speed), np.ones(n)], 1
                ).astype(np.float32)
                actions = np.stack([np.cos(angle[1:]), np.sin(angle[1:])], 1).astype(np.float32)
            obs = {"state": state}
            if image:
                # Frame t is filled with value t so image windows can be checked too.
                obs["image"] = np.broadcast_to(
                    np.arange(n, dtype=np.uint8)[:, None, None, None], (n, *IMG)
                ).copy()
            w.write_episode(obs, actions, np.zeros(n, np.float32), np.zeros(n, bool))
    return path


def _dm(path: Path, **kw: object) -> EpisodeDataModule:
    args = {"obs_steps": 3, "horizon": 4, "batch_size": 8, "val_fraction": 0.2}
    args.update(kw)
    dm = EpisodeDataModule(str(path), **args)
    dm.setup("fit")
    return dm


def test_windows_pad_first_frame_and_last_action(tmp_path: Path) -> None:
    dm = _dm(write_toy_dataset(tmp_path / "c.hdf5", counting=True, image=True))
    ds = dm.datasets["train"]
    samples = {ds.index[i]: ds[i] for i in range(len(ds))}
    ep = dm.splits["train"][0]
    e, n = int(ep.split("_")[1]), dm.reader.num_steps(ep)
    first, mid, last = samples[(ep, 0)], samples[(ep, 5)], samples[(ep, n - 1)]
    # Start of episode: history repeats frame 0.
    assert first[OBS]["state"][:, 0].tolist() == [1000 * e] * 3
    assert first[OBS]["image"][:, 0, 0, 0].tolist() == [0, 0, 0]
    assert first[ACTIONS][:, 0].tolist() == [0, 1, 2, 3]
    # Middle: frames t-2..t, actions t..t+3.
    assert mid[OBS]["state"][:, 0].tolist() == [1000 * e + 3, 1000 * e + 4, 1000 * e + 5]
    assert mid[OBS]["image"][:, 0, 0, 0].tolist() == [3, 4, 5]
    assert mid[ACTIONS][:, 1].tolist() == [-5, -6, -7, -8]
    # End of episode: the chunk repeats the last action.
    assert last[ACTIONS][:, 0].tolist() == [n - 1] * 4
    assert mid[OBS]["image"].dtype == torch.uint8 and mid[OBS]["image"].shape == (3, *IMG)
    # Images are read from the file per window, never cached.
    assert all("image" not in c for c in dm.cache.values())
    # Every step of every train episode is one sample.
    assert len(ds) == sum(dm.reader.num_steps(x) for x in dm.splits["train"])
    batch = next(iter(dm.train_dataloader()))
    assert batch[OBS]["state"].shape == (8, 3, STATE_DIM) and batch[ACTIONS].shape == (8, 4, 2)


def test_split_is_by_episode_and_seeded(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path / "d.hdf5", episodes=10)
    a, b, c = _dm(path, split_seed=1), _dm(path, split_seed=1), _dm(path, split_seed=2)
    assert a.splits == b.splits and a.splits != c.splits
    assert len(a.splits["val"]) == 2 and not set(a.splits["val"]) & set(a.splits["train"])
    assert sorted(a.splits["val"] + a.splits["train"]) == sorted(a.reader.episodes)
    assert {ep for ep, _ in a.datasets["val"].index} == set(a.splits["val"])
    d = _dm(path, val_fraction=0.2, test_fraction=0.1)
    assert d.has_test_split and len(d.splits["test"]) == 1 and not a.has_test_split


def test_normalization_stats_come_from_train_split(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path / "n.hdf5", episodes=10, image=True)
    dm = _dm(path, normalization={"low_dim": "mean_std", "actions": "min_max"})
    train = dm.splits["train"]
    state = np.concatenate([dm.reader.read_obs(ep, "state") for ep in train])
    actions = np.concatenate([dm.reader.read_actions(ep) for ep in train])
    kw = dm.model_kwargs()
    stats = kw["normalization"]
    np.testing.assert_allclose(stats["state"]["mean"], state.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["state"]["std"], state.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["actions"]["max"], actions.max(0), atol=1e-6)
    assert stats["image"] == {"mode": "image"}
    assert kw["action_dim"] == ACT_DIM and kw["control_rate_hz"] == 20.0
    assert kw["obs_specs"]["image"] == {
        "shape": list(IMG),
        "dtype": "uint8",
        "feature_type": "image",
    }
    norm = Normalizer(stats)
    y = norm.normalize(ACTIONS, torch.from_numpy(actions))
    assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5 and y.max() > 0.99
    np.testing.assert_allclose(norm.unnormalize(ACTIONS, y).numpy(), actions, atol=1e-5)
    z = norm.normalize("state", torch.from_numpy(state))
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-4)
    img = norm.normalize("image", torch.full((2, 3, *IMG), 255, dtype=torch.uint8))
    assert img.dtype == torch.float32 and float(img.max()) == 1.0
    # Val episodes' own stats differ: the split really decides.
    val_state = np.concatenate([dm.reader.read_obs(ep, "state") for ep in dm.splits["val"]])
    assert not np.allclose(val_state.mean(0), stats["state"]["mean"], atol=1e-3)


def test_bad_obs_key_names_file_and_key(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path / "k.hdf5", episodes=3)
    with pytest.raises(KeyError, match="no obs key 'camera'"):
        _dm(path, obs_keys=["camera"])


def test_dataloader_workers_read_image_windows(tmp_path: Path) -> None:
    # The reader reopens its HDF5 handles in each worker process.
    dm = _dm(write_toy_dataset(tmp_path / "w.hdf5", episodes=4, image=True), num_workers=1)
    batch = next(iter(dm.val_dataloader()))
    assert batch[OBS]["image"].shape == (8, 3, *IMG) and batch[OBS]["image"].dtype == torch.uint8
    # Frame values equal the step index: history frames are consecutive or padded.
    steps = batch[OBS]["image"][:, :, 0, 0, 0].long()
    assert ((steps[:, 1:] - steps[:, :-1]) >= 0).all() and (steps[:, 2] - steps[:, 0] <= 2).all()


def test_action_bounds_from_the_env_or_from_all_episodes(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path / "b.hdf5", episodes=10, counting=True)
    dm = _dm(path)
    every = np.concatenate([dm.reader.read_actions(ep) for ep in dm.reader.episodes])
    bounds = dm.model_kwargs()["action_bounds"]
    assert bounds == {
        "low": every.min(0).tolist(),
        "high": every.max(0).tolist(),
        "source": "data",
    }
    # Every split counts, not only train: the longest episode may sit in val.
    train = np.concatenate([dm.reader.read_actions(ep) for ep in dm.splits["train"]])
    assert bounds["high"][0] >= train.max(0)[0] and bounds["low"][1] <= train.min(0)[1]

    space = {"low": [-2.0, -3.0], "high": [2.0, 3.0]}
    env = _dm(write_toy_dataset(tmp_path / "e.hdf5", episodes=3, action_space=space))
    assert env.model_kwargs()["action_bounds"] == {**space, "source": "env"}


@pytest.mark.parametrize(
    "space",
    [
        {"low": [-1.0], "high": [1.0]},  # 1 value for 2 actions
        {"low": [-1.0, -1.0], "high": [1.0, float("inf")]},
        {"low": [1.0, -1.0], "high": [-1.0, 1.0]},
        {"low": [-1.0, -1.0]},
    ],
)
def test_bad_env_action_space_names_file_and_key(tmp_path: Path, space: dict) -> None:
    path = write_toy_dataset(tmp_path / "bad.hdf5", episodes=3, action_space=space)
    with pytest.raises(DatasetError, match=f"^{path}: env_args.action_space: "):
        _dm(path)
