"""The chunk replay (learning/online/chunk_replay.py): its windows equal the dataset windows of
EpisodeWindowDataset, its TD masks across terminations, time limits and episode crossings in an
env stream, its memory bounds and its resume."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_learning_windows import IMG, write_counting

from episode_dataset import DatasetError, EpisodeReader
from learning.checkpoint import torch_load
from learning.data.episode_datamodule import EpisodeWindowDataset
from learning.data.keys import (
    ACTION_IS_PAD,
    ACTIONS,
    BOOTSTRAP,
    CHUNK_RETURN,
    DONES,
    NEXT_OBS,
    OBS,
    REWARDS,
    VALID,
)
from learning.online.chunk_replay import ChunkReplay, load_offline_episodes
from learning.online.replay import ReplayMemoryError

G, H = 0.5, 3
SPECS = {
    "state": {"shape": [1], "dtype": "float32"},
    "image": {"shape": list(IMG), "dtype": "uint8", "feature_type": "image"},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # terminated mid-chunk, a time-limit end, one shorter than the chunk, a one-step terminal
    path = tmp_path_factory.mktemp("chunks") / "count.hdf5"
    return write_counting(path, (6, 5, 2, 1), (True, False, False, True))


def replay(num_envs: int = 1, capacity: int = 64, **kwargs) -> ChunkReplay:
    return ChunkReplay(SPECS, 2, capacity, num_envs, H, G, **kwargs)


def by_start(batch: dict) -> dict[float, dict]:
    """Sampled windows by their first observation (unique per step here)."""
    out = {}
    for i, state in enumerate(batch[OBS]["state"][:, 0, 0].tolist()):
        out[state] = {
            k: ({kk: vv[i] for kk, vv in v.items()} if isinstance(v, dict) else v[i])
            for k, v in batch.items()
        }
    return out


def test_offline_windows_equal_the_dataset_windows(dataset: Path) -> None:
    storage = replay()
    info = load_offline_episodes(storage, dataset, max_memory_gb=1.0)
    assert info == {
        "episodes": 4, "steps": 14, "bytes": 14 * storage.offline_row_bytes, "on_disk": []
    }  # fmt: skip
    got = by_start(storage.sample(3000))
    assert len(got) == 14  # every start of every episode is drawn, nothing else

    reader = EpisodeReader(dataset)
    cache = {
        ep: {"state": reader.read_obs(ep, "state"), ACTIONS: reader.read_actions(ep),
             REWARDS: reader.read_rewards(ep), DONES: reader.read_dones(ep)}
        for ep in reader.episodes
    }  # fmt: skip
    terminated = {ep: reader.episode_metadata(ep)["terminated"] for ep in reader.episodes}
    windows = EpisodeWindowDataset(
        reader, reader.episodes, ["state", "image"], 1, H, cache,
        rewards=True, next_obs=True, discount=G, terminated=terminated,
    )  # fmt: skip
    for i in range(len(windows)):
        want = windows[i]
        have = got[float(want[OBS]["state"][0, 0])]
        for key in (ACTIONS, REWARDS, ACTION_IS_PAD, BOOTSTRAP, VALID):
            torch.testing.assert_close(have[key], want[key], check_dtype=False, msg=key)
        torch.testing.assert_close(have[CHUNK_RETURN], want[CHUNK_RETURN], atol=1e-6, rtol=0)
        torch.testing.assert_close(have[OBS]["image"], want[OBS]["image"])  # uint8 kept
        if want[VALID] * want[BOOTSTRAP]:  # where the target reads it
            for k in ("state", "image"):
                torch.testing.assert_close(have[NEXT_OBS][k], want[NEXT_OBS][k])
    # the hand-checked cases among them: demo_0 t=4 terminates mid-chunk, demo_1 t=2 ends
    # exactly at the chunk's last row without a recorded next observation
    end = got[4.0]
    assert end[ACTIONS][:, 0].tolist() == [4, 5, 5] and end[REWARDS].tolist() == [5, 6, 0]
    assert (end[BOOTSTRAP].item(), end[VALID].item()) == (0.0, 1.0)
    assert got[102.0][VALID].item() == 0.0 and got[101.0][VALID].item() == 1.0


def env_step(storage: ChunkReplay, rows: list[tuple[float, float, bool, bool, float]]) -> None:
    """One step of every env: (obs, reward, terminated, truncated, next obs) per env."""
    obs, rew, term, trunc, nxt = (np.array(c) for c in zip(*rows, strict=True))
    n = len(rows)

    def o(values: np.ndarray) -> dict[str, np.ndarray]:
        image = np.broadcast_to(values.astype(np.uint8)[:, None, None, None], (n, *IMG)).copy()
        return {"state": values[:, None].astype(np.float32), "image": image}

    actions = np.stack([obs, -obs], 1)
    storage.add(o(obs), actions, rew.astype(np.float32), o(nxt), term, trunc)


def test_env_stream_masks_across_terminal_time_limit_and_episode_crossing() -> None:
    """Env 0's stream: episode A (rows 0-1) terminates; episode B (rows 2-5) hits the time
    limit with real final observation 55; episode C (rows 6-8) is running. Env 1 runs one
    episode all along (obs 200+); its windows must never mix with env 0's."""
    storage = replay(num_envs=2)
    stream0 = [
        (0, 1.0, False, False, 1), (1, 2.0, True, False, 11),  # A: terminal after row 1
        (2, 3.0, False, False, 3), (3, 4.0, False, False, 4), (4, 5.0, False, False, 5),
        (5, 6.0, False, True, 55),  # B: time limit; 55 is the real final observation
        (6, 7.0, False, False, 7), (7, 8.0, False, False, 8), (8, 9.0, False, False, 9),
    ]  # fmt: skip
    for i, row in enumerate(stream0):
        env_step(storage, [row, (200 + i, 0.5, False, False, 201 + i)])
    got = by_start(storage.sample(4000))
    # complete windows only: env 0 starts 0..6, env 1 starts 200..206 (rows 7, 8 wait)
    assert sorted(got) == [*range(7), *range(200, 207)]

    def check(t: int, rewards: list, actions: list, boot: float, valid: float) -> dict:
        w = got[t]
        assert w[REWARDS].tolist() == rewards, t
        assert w[ACTIONS][:, 0].tolist() == actions, t
        ret = sum(G**i * r for i, r in enumerate(rewards))
        assert w[CHUNK_RETURN].item() == pytest.approx(ret, abs=1e-6), t
        assert (w[BOOTSTRAP].item(), w[VALID].item()) == (boot, valid), t
        return w

    # terminal mid-chunk: the next episode's row 2 is cut off, the last action repeated
    a0 = check(0, [1.0, 2.0, 0.0], [0, 1, 1], 0.0, 1.0)
    assert a0[ACTION_IS_PAD].tolist() == [False, False, True]
    check(1, [2.0, 0.0, 0.0], [1, 1, 1], 0.0, 1.0)
    # inside B: bootstraps from o_{t+h} (row 4's next observation is row 5's)
    assert check(2, [3.0, 4.0, 5.0], [2, 3, 4], 1.0, 1.0)[NEXT_OBS]["state"].item() == 5
    # the time limit at the chunk's last row: bootstraps from the real final observation
    b3 = check(3, [4.0, 5.0, 6.0], [3, 4, 5], 1.0, 1.0)
    assert b3[NEXT_OBS]["state"].item() == 55 and b3[NEXT_OBS]["image"].max().item() == 55
    # the time limit mid-chunk (crossing into C): s_{t+h} does not exist
    check(4, [5.0, 6.0, 0.0], [4, 5, 5], 1.0, 0.0)
    check(5, [6.0, 0.0, 0.0], [5, 5, 5], 1.0, 0.0)
    assert check(6, [7.0, 8.0, 9.0], [6, 7, 8], 1.0, 1.0)[NEXT_OBS]["state"].item() == 9
    assert check(203, [0.5] * 3, [203, 204, 205], 1.0, 1.0)[NEXT_OBS]["state"].item() == 206


def test_memory_bounds_are_one_line(dataset: Path) -> None:
    with pytest.raises(ReplayMemoryError, match="exceeds max_bytes") as err:
        replay(capacity=1000, max_bytes=10_000)
    assert "\n" not in str(err.value)
    storage = replay(capacity=8)
    with pytest.raises(ReplayMemoryError, match="max_memory_gb") as err:
        load_offline_episodes(storage, dataset, max_memory_gb=1e-7)
    assert "\n" not in str(err.value) and str(dataset) in str(err.value)
    with pytest.raises(ReplayMemoryError, match="exceeds max_bytes"):
        load_offline_episodes(replay(capacity=8, max_bytes=1500), dataset, max_memory_gb=1.0)
    loaded = replay(capacity=8)
    load_offline_episodes(loaded, dataset, max_memory_gb=1.0)
    assert "offline 14 steps" in loaded.describe() and len(loaded) == 14


def test_bad_datasets_are_one_line(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_offline_episodes(replay(), tmp_path / "missing.hdf5", 1.0)
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        load_offline_episodes(replay(), tmp_path / "text.hdf5", 1.0)
    other = ChunkReplay({"state": {"shape": [3], "dtype": "float32"}}, 2, 8, 1, H, G)
    with pytest.raises(DatasetError, match=r"observation 'state' is \[1\], the env's \[3\]"):
        load_offline_episodes(other, dataset, 1.0)
    with h5py.File(tmp_path / "bare.hdf5", "w") as f:
        f.create_group("data")  # neither format: the robomimic reader names what is missing
    with pytest.raises(DatasetError, match="bare.hdf5: data: missing attribute") as err:
        load_offline_episodes(replay(), tmp_path / "bare.hdf5", 1.0)
    assert "\n" not in str(err.value)


def test_ring_and_state_dict_round_trip_sample_identically(dataset: Path, tmp_path: Path) -> None:
    storage = replay(num_envs=2, capacity=10, seed=3)
    load_offline_episodes(storage, dataset, max_memory_gb=1.0)
    for i in range(13):  # each env's ring of 5 rows wraps
        end = i % 4 == 3
        rows = [(1000 + i, 1.0, end, False, 1001 + i), (2000 + i, 2.0, False, end, 2001 + i)]
        env_step(storage, rows)
    assert len(storage) == 10 + 14
    batch = storage.sample(512)
    starts = set(batch[OBS]["state"][:, 0, 0].tolist())
    assert not starts & {1000.0 + i for i in range(8)}  # overwritten rows are never drawn
    assert {1008.0, 2008.0, 0.0, 300.0} <= starts

    torch.save(storage.state_dict(), tmp_path / "replay.pt")
    resumed = replay(num_envs=2, capacity=10, seed=99)
    resumed.load_state_dict(torch_load(str(tmp_path / "replay.pt")))
    assert len(resumed) == len(storage) and resumed.describe() == storage.describe()
    a, b = storage.sample(64), resumed.sample(64)
    for key in (ACTIONS, REWARDS, CHUNK_RETURN, BOOTSTRAP, VALID):
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(a[NEXT_OBS]["image"], b[NEXT_OBS]["image"])
    with pytest.raises(ValueError, match="horizon"):
        ChunkReplay(SPECS, 2, 10, 2, H + 1, G).load_state_dict(storage.state_dict())


def test_a_dataset_over_the_bound_leaves_its_cameras_on_disk(
    dataset: Path, tmp_path: Path
) -> None:
    """The seed's adaptive cache: low-dim rows in memory, the camera read from the file for each
    sampled window; the batches equal those of the all-in-memory replay, and resume reopens it."""
    whole = replay(seed=5)
    load_offline_episodes(whole, dataset, max_memory_gb=1.0)
    per_row = whole.offline_row_bytes - whole.key_bytes("image")
    budget = (whole.online_bytes + 14 * per_row + 1) / 1024**3  # fits all but the camera
    cached = replay(seed=5)
    info = load_offline_episodes(cached, dataset, max_memory_gb=budget)
    assert info["on_disk"] == ["image"] and info["bytes"] == 14 * per_row
    assert "obs.image" not in cached.offline.data and "image read from" in cached.describe()
    assert cached.nbytes < whole.nbytes
    a, b = whole.sample(256), cached.sample(256)
    for key in (ACTIONS, REWARDS, CHUNK_RETURN, BOOTSTRAP, VALID):
        torch.testing.assert_close(a[key], b[key])
    for part in (OBS, NEXT_OBS):
        for k in ("state", "image"):
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0)

    torch.save(cached.state_dict(), tmp_path / "replay.pt")
    resumed = replay(seed=0)
    resumed.load_state_dict(torch_load(str(tmp_path / "replay.pt")))
    c, d = cached.sample(64), resumed.sample(64)
    torch.testing.assert_close(c[OBS]["image"], d[OBS]["image"], rtol=0, atol=0)
    with pytest.raises(ReplayMemoryError, match="even with its cameras left on disk") as err:
        load_offline_episodes(replay(), dataset, max_memory_gb=budget / 2)
    assert "\n" not in str(err.value)
