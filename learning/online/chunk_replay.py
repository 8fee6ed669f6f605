"""Chunk replay for action-chunked critics (Q-chunking): windows of h steps with their TD masks.

Streams: one ring per env of the vector env (`capacity // num_envs` rows each) and one offline
stream holding a dataset (`add_episode`, filled by `load_offline_episodes` before training).
Row i of a stream holds o_i (the observation acted on), a_i, r_i, `terminated` (the MDP ended
after a_i) and `done` (any episode end: the next row starts a new episode). An env row also
keeps its real next observation o'_i (the final one where the episode ended), so a chunk that
ends exactly at a time limit still bootstraps from it; the offline stream does not (the next
row is o_{i+1}, and a dataset never records the observation after its last step).

`sample(B)` draws a start t uniformly over every complete window of every stream (a window is
complete when rows t..t+h-1 are stored, or an episode ends before the newest row) and returns
what `EpisodeWindowDataset(obs_steps=1, horizon=h, rewards/next_obs/discount)` gives for the same
episode (learning/data/keys.py), with a leading batch axis:

    OBS {key: (B, 1, *shape)}      o_t
    ACTIONS (B, h, A)              a_t .. a_{t+h-1}, cut at the first episode end j: the last
                                   real action repeated after it
    REWARDS (B, h)                 r_t .. r_{t+h-1}, 0 after j;  ACTION_IS_PAD (B, h) after j
    CHUNK_RETURN (B,)              sum_i g^i r_{t+i}
    NEXT_OBS {key: (B, 1, *shape)} the observation after row t+h-1 (used where VALID*BOOTSTRAP)
    BOOTSTRAP (B,)                 0 when the episode terminated at j (the target is the
                                   return alone), else 1
    VALID (B,)                     0 when the episode stopped without terminating (time limit,
                                   stop) at j < t+h-1, or at j = t+h-1 without a recorded next
                                   observation (a dataset's last step): weight such rows by 0

Observations keep their dtype (uint8 images stay 1 byte per channel; float64 is stored as
float32). Memory is allocated up front and bounded by `max_bytes` (env streams at construction,
the offline stream when a dataset is reserved); `describe()` says what was taken. A dataset that
does not fit leaves its cameras on disk, largest first, until the rest does (the seed's
adaptive cache): their rows are read from the file for each sampled window (`_DiskObs`). Sampling
draws from the replay's own seeded generator, part of `state_dict`, so a resumed run samples
what an uninterrupted one would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from episode_dataset import IMAGE
from learning.data.keys import (
    ACTION_IS_PAD,
    ACTIONS,
    BOOTSTRAP,
    CHUNK_RETURN,
    NEXT_OBS,
    OBS,
    REWARDS,
    VALID,
)
from learning.errors import ConfigError
from learning.online.replay import ReplayMemoryError, _dtype, _size, checked_size

log = logging.getLogger(__name__)

GB = 1024**3


def _store_dtype(name: str | torch.dtype) -> torch.dtype:
    dt = _dtype(name)
    return torch.float32 if dt == torch.float64 else dt


class _Streams:
    """`streams` rows-long tensors of one row layout; `counts` rows written per stream (a ring
    keeps the newest `rows`), `last_end` the logical index of each stream's newest done row."""

    def __init__(
        self,
        row: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        streams: int,
        rows: int,
        device: torch.device,
    ) -> None:
        self.rows = int(rows)
        self.data = {
            name: torch.zeros((streams, self.rows, *shape), dtype=dt, device=device)
            for name, (shape, dt) in row.items()
        }
        self.counts = torch.zeros(streams, dtype=torch.long)
        self.last_end = torch.full((streams,), -1, dtype=torch.long)

    def write(self, stream: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """Input j at the next row of stream stream[j] (each stream at most once per call)."""
        rows = self.counts[stream] % self.rows
        dev = next(iter(self.data.values())).device
        s_d, r_d = stream.to(dev), rows.to(dev)
        for name, value in values.items():
            store = self.data[name]
            store[s_d, r_d] = value.to(dev, store.dtype).reshape(len(stream), *store.shape[2:])
        done = values["done"].to("cpu", torch.bool).reshape(-1)
        self.last_end[stream] = torch.where(done, self.counts[stream], self.last_end[stream])
        self.counts[stream] += 1

    def window_ranges(self, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(first start, number of starts) per stream of the complete windows: every start
        up to count - h, and up to the newest episode end beyond it (the window is cut there)."""
        oldest = (self.counts - self.rows).clamp(min=0)
        last = torch.maximum(self.counts - horizon, self.last_end)
        return oldest, (last - oldest + 1).clamp(min=0)

    def state_dict(self) -> dict[str, Any]:
        n = int(self.counts.clamp(max=self.rows).max()) if len(self.counts) else 0
        return {
            "counts": self.counts.clone(),
            "last_end": self.last_end.clone(),
            "rows": self.rows,
            **{name: t[:, :n].to("cpu", copy=True) for name, t in self.data.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], what: str) -> None:
        counts = torch.as_tensor(state["counts"])
        if counts.shape != self.counts.shape or int(state["rows"]) != self.rows:
            raise ValueError(
                f"{what}: saved {counts.numel()} streams x {state['rows']} rows, this one "
                f"{self.counts.numel()} x {self.rows}"
            )
        n = int(counts.clamp(max=self.rows).max())
        for name, t in self.data.items():
            t[:, :n] = state[name].to(t.device)
        self.counts = counts.clone()
        self.last_end = torch.as_tensor(state["last_end"]).clone()


class _DiskObs:
    """Observation keys of the offline stream left in the dataset file: row i of the stream
    (episodes in the order they were loaded) read on demand."""

    def __init__(self, path: str | Path, keys: list[str]) -> None:
        self.path, self.keys = str(path), list(keys)
        self.reader = open_dataset(path)
        self.episodes = list(self.reader.episodes)
        lengths = [self.reader.num_steps(ep) for ep in self.episodes]
        self.ends = torch.tensor(lengths).cumsum(0)  # row after each episode

    def read(self, key: str, rows: torch.Tensor) -> torch.Tensor:
        """obs[key] of stream rows `rows` (any shape) -> (*rows.shape, *obs shape)."""
        flat = rows.reshape(-1).cpu()
        ep = torch.searchsorted(self.ends, flat, right=True)
        step = flat - torch.where(ep > 0, self.ends[(ep - 1).clamp(min=0)], 0)
        frames = [
            torch.from_numpy(self.reader.read_obs(self.episodes[e], key, t, t + 1)[0])
            for e, t in zip(ep.tolist(), step.tolist(), strict=True)
        ]
        return torch.stack(frames).reshape(*rows.shape, *frames[0].shape).to(rows.device)


class ChunkReplay:
    """Env streams + an offline stream; `sample(B)` returns chunk windows with their masks
    (module docstring). `obs_specs`: key -> {"shape": [...], "dtype": "float32", ...}."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        capacity: int,
        num_envs: int,
        horizon: int,
        discount: float,
        offline_capacity: int = 0,
        max_bytes: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if capacity < num_envs or horizon < 1:
            raise ReplayMemoryError(
                f"chunk replay: capacity {capacity} must hold a row per env ({num_envs}) and "
                f"horizon {horizon} must be >= 1"
            )
        self.obs_specs = {k: dict(obs_specs[k]) for k in sorted(obs_specs)}
        self.obs_keys = list(self.obs_specs)
        self.action_dim, self.horizon, self.discount = int(action_dim), int(horizon), discount
        self.num_envs, self.max_bytes = int(num_envs), max_bytes
        self.device = torch.device(device)
        obs_row = {
            k: (tuple(s["shape"]), _store_dtype(s["dtype"])) for k, s in self.obs_specs.items()
        }
        self.offline_row = {
            **{f"obs.{k}": v for k, v in obs_row.items()},
            "actions": ((self.action_dim,), torch.float32),
            "rewards": ((), torch.float32),
            "terminated": ((), torch.bool),
            "done": ((), torch.bool),
        }
        online_row = {**self.offline_row, **{f"next_obs.{k}": v for k, v in obs_row.items()}}
        rows = int(capacity) // self.num_envs
        self.online_row_bytes, self.online_bytes = checked_size(
            "chunk replay", "step", rows * self.num_envs, online_row, max_bytes
        )
        self.offline_row_bytes, _ = checked_size("offline", "step", 0, self.offline_row, None)
        self.online = _Streams(online_row, self.num_envs, rows, self.device)
        self.offline: _Streams | None = None
        self.offline_disk: _DiskObs | None = None  # cameras read from the dataset file
        if offline_capacity:
            self.reserve_offline(int(offline_capacity))
        # indices are drawn on the host, where the stream counters live: no device sync
        self.generator = torch.Generator().manual_seed(int(seed))
        weights = self.discount ** torch.arange(self.horizon, dtype=torch.float64)
        self.powers = weights.float().to(self.device)  # g^i, i < h

    # -- size ------------------------------------------------------------------------------
    @property
    def offline_capacity(self) -> int:
        return 0 if self.offline is None else self.offline.rows

    @property
    def offline_steps(self) -> int:
        return 0 if self.offline is None else int(self.offline.counts[0])

    @property
    def nbytes(self) -> int:
        return self.online_bytes + self.offline_capacity * self.offline_memory_row_bytes

    @property
    def offline_memory_row_bytes(self) -> int:
        """Bytes per offline row held in memory (cameras left on disk excluded)."""
        return self.offline_row_bytes - sum(
            self.key_bytes(k) for k in (self.offline_disk.keys if self.offline_disk else ())
        )

    def key_bytes(self, key: str) -> int:
        """Bytes of one row of observation `key`."""
        shape, dt = self.offline_row[f"obs.{key}"]
        return torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()

    def __len__(self) -> int:
        """Stored steps: the env streams' (newest `capacity` kept) and the offline stream's."""
        return int(self.online.counts.clamp(max=self.online.rows).sum()) + self.offline_steps

    def describe(self) -> str:
        """One line for the run log: what the replay holds and the memory it took."""
        offline = (
            f" + offline {self.offline_capacity} steps x {self.offline_memory_row_bytes} B"
            if self.offline is not None
            else ""
        )
        if self.offline_disk is not None:
            offline += f" ({', '.join(self.offline_disk.keys)} read from {self.offline_disk.path})"
        return (
            f"chunk replay (h={self.horizon}): {self.num_envs} env streams x {self.online.rows} "
            f"steps x {self.online_row_bytes} B{offline} = {_size(self.nbytes)} on {self.device}"
        )

    def reserve_offline(self, steps: int, disk: _DiskObs | None = None) -> None:
        """Allocate the (empty) offline stream for `steps` dataset steps, the keys of `disk`
        left in its file; ReplayMemoryError (one line) when the replay would exceed
        `max_bytes`."""
        if self.offline_steps:
            raise ConfigError("chunk replay: the offline stream is already filled")
        self.offline_disk = disk
        row_bytes = self.offline_memory_row_bytes
        total = self.online_bytes + steps * row_bytes
        if self.max_bytes is not None and total > self.max_bytes:
            raise ReplayMemoryError(
                f"chunk replay: offline {steps} steps x {row_bytes} B + env streams "
                f"{_size(self.online_bytes)} = {_size(total)} exceeds max_bytes "
                f"{_size(self.max_bytes)}"
            )
        on_disk = {f"obs.{k}" for k in (disk.keys if disk else ())}
        row = {k: v for k, v in self.offline_row.items() if k not in on_disk}
        self.offline = _Streams(row, 1, max(int(steps), 1), self.device)

    # -- writing ---------------------------------------------------------------------------
    def add(
        self,
        obs: Mapping[str, Any],
        actions: Any,
        rewards: Any,
        next_obs: Mapping[str, Any],
        terminated: Any,
        truncated: Any,
    ) -> None:
        """One step of every env (leading axis num_envs); `next_obs` the real next observation
        (the final one where an episode ended)."""
        term = torch.as_tensor(terminated).to("cpu", torch.bool)
        trunc = torch.as_tensor(truncated).to("cpu", torch.bool)
        self.online.write(
            torch.arange(self.num_envs),
            {
                **{f"obs.{k}": torch.as_tensor(obs[k]) for k in self.obs_keys},
                **{f"next_obs.{k}": torch.as_tensor(next_obs[k]) for k in self.obs_keys},
                "actions": torch.as_tensor(actions),
                "rewards": torch.as_tensor(rewards),
                "terminated": term,
                "done": term | trunc,
            },
        )

    def add_episode(
        self, obs: Mapping[str, Any], actions: Any, rewards: Any, terminated: bool
    ) -> None:
        """A recorded episode (n steps) at the end of the offline stream: done after its last
        step, a terminal there if the episode `terminated`."""
        n = len(actions)
        if self.offline is None or self.offline_steps + n > self.offline.rows:
            raise ReplayMemoryError(
                f"chunk replay: offline stream holds {self.offline_capacity} steps, "
                f"{self.offline_steps} used: no room for an episode of {n} (reserve_offline)"
            )
        end = torch.zeros(n, dtype=torch.bool)
        end[-1] = True
        off, start = self.offline, self.offline_steps
        values = {
            **{
                f"obs.{k}": torch.as_tensor(obs[k])
                for k in self.obs_keys
                if f"obs.{k}" in off.data
            },
            "actions": torch.as_tensor(actions),
            "rewards": torch.as_tensor(rewards),
            "terminated": end & bool(terminated),
            "done": end,
        }
        # one stream, n rows: written as a block (write() takes one row per stream)
        for name, value in values.items():
            store = off.data[name]
            store[0, start : start + n] = value.to(store.device, store.dtype).reshape(
                n, *store.shape[2:]
            )
        off.counts[0] += n
        off.last_end[0] = start + n - 1

    # -- sampling --------------------------------------------------------------------------
    def sample(self, batch: int) -> dict[str, Any]:
        """`batch` windows drawn uniformly over the complete windows of every stream."""
        banks = [self.online] + ([self.offline] if self.offline is not None else [])
        ranges = [b.window_ranges(self.horizon) for b in banks]
        first = torch.cat([r[0] for r in ranges])
        starts_n = torch.cat([r[1] for r in ranges])
        if int(starts_n.sum()) == 0:
            raise ValueError("chunk replay: sample() before a complete window was stored")
        g = self.generator
        stream = torch.multinomial(starts_n.float(), batch, True, generator=g)
        u = torch.rand(batch, generator=g, dtype=torch.float64)  # exact past 2^24 rows
        n = starts_n[stream]
        start = first[stream] + (u * n).long().clamp(max=n - 1)
        out: dict[str, Any] | None = None
        offset = 0
        for bank in banks:
            streams = bank.counts.numel()
            picked = ((stream >= offset) & (stream < offset + streams)).nonzero().squeeze(1)
            if len(picked):
                part = self._windows(bank, stream[picked] - offset, start[picked])
                out = _scatter(out, part, picked.to(self.device), batch)
            offset += streams
        assert out is not None
        return out

    def _windows(
        self, bank: _Streams, stream: torch.Tensor, start: torch.Tensor
    ) -> dict[str, Any]:
        """The windows starting at logical row `start` of streams `stream` of `bank`."""
        h, dev, d = self.horizon, self.device, bank.data
        stream, start = stream.to(dev), start.to(dev)
        steps = start[:, None] + torch.arange(h, device=dev)  # logical rows t .. t+h-1
        s2 = stream[:, None].expand_as(steps)
        done = d["done"][s2, steps % bank.rows]
        pad = torch.cumsum(done.int(), 1) - done.int() > 0  # after the first episode end
        end = done & ~pad
        has_end = end.any(1)
        j = torch.where(has_end, end.int().argmax(1), h - 1)  # last real row of the window
        last = start + j
        act_steps = start[:, None] + torch.minimum(torch.arange(h, device=dev), j[:, None])
        rewards = d["rewards"][s2, steps % bank.rows].masked_fill(pad, 0.0)
        terminal = (d["terminated"][s2, steps % bank.rows] & end).any(1)
        stopped = has_end & ~terminal  # a time limit or a stop, not an MDP end
        if "next_obs." + self.obs_keys[0] in d:  # env rows: o'_{t+h-1} is stored, even at a stop
            invalid = stopped & (j < h - 1)
            next_obs = {k: d[f"next_obs.{k}"][stream, last % bank.rows] for k in self.obs_keys}
        else:  # the offline stream: the next row, unrecorded after an episode's last step
            invalid = stopped
            nxt = torch.where(has_end, last, last + 1) % bank.rows
            next_obs = {k: self._obs(bank, k, stream, nxt) for k in self.obs_keys}
        return {
            OBS: {
                k: self._obs(bank, k, stream, start % bank.rows)[:, None] for k in self.obs_keys
            },
            ACTIONS: d["actions"][s2, act_steps % bank.rows],
            REWARDS: rewards,
            ACTION_IS_PAD: pad,
            CHUNK_RETURN: (rewards * self.powers).sum(1),
            NEXT_OBS: {k: v[:, None] for k, v in next_obs.items()},
            BOOTSTRAP: (~terminal).float(),
            VALID: (~invalid).float(),
        }

    def _obs(self, bank: _Streams, key: str, stream: torch.Tensor, rows: torch.Tensor):
        """obs[key] at `rows` of `stream` of `bank`: from memory, or (an offline camera left
        on disk) from the dataset file."""
        if f"obs.{key}" in bank.data:
            return bank.data[f"obs.{key}"][stream, rows]
        assert self.offline_disk is not None and bank is self.offline
        return self.offline_disk.read(key, rows)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The stored rows of every stream and the sampler state (tensors and ints only)."""
        state: dict[str, Any] = {
            "horizon": self.horizon,
            "online": self.online.state_dict(),
            "generator": self.generator.get_state(),
        }
        if self.offline is not None:
            state["offline"] = self.offline.state_dict()
        if self.offline_disk is not None:  # reopened on resume: the file must still be there
            state["offline_disk"] = {
                "path": self.offline_disk.path,
                "keys": self.offline_disk.keys,
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["horizon"]) != self.horizon:
            raise ValueError(
                f"chunk replay: saved with horizon {state['horizon']}, this one {self.horizon}"
            )
        self.online.load_state_dict(state["online"], "chunk replay")
        if "offline" in state:
            saved, disk = state["offline"], state.get("offline_disk")
            self.offline = None
            opened = _DiskObs(disk["path"], disk["keys"]) if disk else None
            self.reserve_offline(int(saved["rows"]), opened)
            assert self.offline is not None
            self.offline.load_state_dict(saved, "offline stream")
        self.generator.set_state(state["generator"])


def _scatter(
    out: dict[str, Any] | None, part: dict[str, Any], index: torch.Tensor, batch: int
) -> dict[str, Any]:
    """Write `part`'s rows at `index` of the batch-long `out` (allocated from `part`)."""
    if out is None:
        out = {
            k: {kk: vv.new_zeros((batch, *vv.shape[1:])) for kk, vv in v.items()}
            if isinstance(v, dict)
            else v.new_zeros((batch, *v.shape[1:]))
            for k, v in part.items()
        }
    for k, v in part.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                out[k][kk][index] = vv
        else:
            out[k][index] = v
    return out


# -- loading a dataset into the offline stream -----------------------------------------------
def open_dataset(path: str | Path) -> Any:
    """An episode reader for `path`: the workspace format (episode_dataset.EpisodeReader) or
    a robomimic-style HDF5 without its specs (episode_dataset.robomimic.H5DatasetReader)."""
    import h5py

    from episode_dataset import DatasetError, EpisodeReader

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            workspace = "data" in f and "obs_specs" in f["data"].attrs
    except OSError as err:
        raise DatasetError(f"dataset {path}: not an HDF5 file ({err})") from None
    if workspace:
        return EpisodeReader(path)
    from episode_dataset.robomimic import H5DatasetReader

    return H5DatasetReader(path)


def load_offline_episodes(
    storage: ChunkReplay, path: str | Path, max_memory_gb: float | None
) -> dict[str, int]:
    """Every episode of the dataset at `path` into `storage`'s offline stream (terminated where
    the episode's metadata says `"terminated": true`, as EpisodeDataModule reads it); a dataset
    larger than `max_memory_gb` in memory is refused with one line. Returns {"episodes",
    "steps", "bytes"}."""
    from episode_dataset import DatasetError

    reader = open_dataset(path)
    try:
        specs = reader.obs_specs
        for k, want in storage.obs_specs.items():
            if k not in specs:
                raise DatasetError(
                    f"dataset {path}: no observation {k!r} (it has {sorted(specs)})"
                )
            if list(specs[k].shape) != list(want["shape"]):
                raise DatasetError(
                    f"dataset {path}: observation {k!r} is {list(specs[k].shape)}, "
                    f"the env's {list(want['shape'])}"
                )
        if list(reader.action_spec.shape) != [storage.action_dim]:
            raise DatasetError(
                f"dataset {path}: actions are {list(reader.action_spec.shape)}, "
                f"the env's [{storage.action_dim}]"
            )
        episodes = list(reader.episodes)
        steps = sum(reader.num_steps(ep) for ep in episodes)
        on_disk = _keys_left_on_disk(storage, steps, max_memory_gb)
        nbytes = steps * (storage.offline_row_bytes - sum(storage.key_bytes(k) for k in on_disk))
        if max_memory_gb is not None and nbytes + storage.online_bytes > max_memory_gb * GB:
            raise ReplayMemoryError(
                f"dataset {path}: {steps} steps x {storage.offline_row_bytes} B = "
                f"{_size(steps * storage.offline_row_bytes)} exceeds max_memory_gb "
                f"{max_memory_gb:g} with the env streams, even with its cameras left on disk"
            )
        storage.reserve_offline(steps, _DiskObs(path, on_disk) if on_disk else None)
        in_memory = [k for k in storage.obs_keys if k not in on_disk]
        for ep in episodes:
            storage.add_episode(
                {k: torch.from_numpy(reader.read_obs(ep, k)) for k in in_memory},
                torch.from_numpy(reader.read_actions(ep)),
                torch.from_numpy(reader.read_rewards(ep)),
                bool(reader.episode_metadata(ep).get("terminated", False)),
            )
    finally:
        reader.close()
    log.info(
        "offline: %d episodes, %d steps, %s in memory from %s%s",
        len(episodes),
        steps,
        _size(nbytes),
        path,
        f" ({', '.join(on_disk)} read from the file per batch)" if on_disk else "",
    )
    return {"episodes": len(episodes), "steps": steps, "bytes": nbytes, "on_disk": on_disk}


def _keys_left_on_disk(storage: ChunkReplay, steps: int, max_memory_gb: float | None) -> list[str]:
    """Cameras to leave in the file, largest first, until the rest of `steps` offline rows and
    the env streams fit `max_memory_gb` (none when everything fits)."""
    if max_memory_gb is None:
        return []
    budget = max_memory_gb * GB - storage.online_bytes
    nbytes = steps * storage.offline_row_bytes
    cameras = [k for k, s in storage.obs_specs.items() if s.get("feature_type") == IMAGE]
    on_disk: list[str] = []
    for key in sorted(cameras, key=storage.key_bytes, reverse=True):
        if nbytes <= budget:
            break
        on_disk.append(key)
        nbytes -= steps * storage.key_bytes(key)
    return on_disk
