"""Windows of (observation history, action chunk) over an episode dataset, and what other
families add to them.

For the step t of an episode of length n, a sample is

    obs[key]: (obs_steps, *shape)  frames t-obs_steps+1 .. t, the first frame repeated
                                   where the window starts before the episode
    actions:  (horizon, A)         actions t .. t+horizon-1, the last action repeated
                                   where the chunk runs past the episode end

(the same convention as `roboloop_runtime`). Opt-in extras (off: flow BC sees only the two):

    rewards=True    rewards (H,), 0 past the end; dones, terminals, action_is_pad (H,) bool
    next_obs=True   next_obs[key] (obs_steps, *shape): the history ending at t+H (clamped to
                    the last frame n-1; see `valid`)
    discount=g      chunk_return = sum_{i<H, t+i<n} g^i r_{t+i}, and two masks for the
                    Q-chunking target  y = chunk_return + g^H * bootstrap * Q(next_obs, .):
                      bootstrap = 0 when the chunk reaches the end of a terminated episode
                      valid     = 0 when it reaches the end of any other episode (time limit,
                                  stop): s_{t+H} is not in the data, weight such samples by 0
    sequence_length=T   (T, ...) sequences for recurrent models instead of windows: obs, actions,
                    rewards, dones, terminals, is_first, is_pad over steps s .. s+T-1, one sample
                    per start s with s+T <= n (an episode shorter than T: one padded sample;
                    T longer than every training episode: a DatasetError)

An episode is terminated when its metadata says `"terminated": true` (docs/dataset_format.md);
its last step's done is then a terminal. Batch keys: learning/data/keys.py.

Episodes, never single steps, are split into train/val(/test) (`learning.data.split`, seeded).
Normalization statistics are computed once, from the train split, and handed to the model
through `model_kwargs()`. Image keys (feature_type "image", declared by the dataset) are read
window by window through the reader; only low-dim keys are cached.
Non-finite data is refused with a DatasetError naming file, episode, key and step: cached arrays
(low-dim obs, actions, rewards) when they are cached, before training starts; float images as
their windows are read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from episode_dataset import DatasetError, EpisodeReader
from learning.data.keys import (
    ACTION_IS_PAD,
    ACTIONS,
    BOOTSTRAP,
    CHUNK_RETURN,
    DONES,
    IS_FIRST,
    IS_PAD,
    NEXT_OBS,
    OBS,
    REWARDS,
    TERMINALS,
    VALID,
)
from learning.data.spec import model_dims
from learning.data.split import split_groups
from learning.normalization import compute_stats

log = logging.getLogger(__name__)

OBS_TYPES = (None, "state", "image")  # the seed's `obs_type`; None: every key of the file


class _EpisodeSamples(Dataset):
    """Shared reading: low-dim arrays come from `cache`, images from the file."""

    def __init__(
        self,
        reader: EpisodeReader,
        obs_keys: list[str],
        cache: Mapping[str, Mapping[str, np.ndarray]],
        terminated: Mapping[str, bool] | None = None,
    ) -> None:
        self.reader, self.obs_keys = reader, obs_keys
        self.cache = cache  # cache[episode][key, ACTIONS, REWARDS, DONES] -> (n, ...)
        self.terminated = terminated or {}  # episode -> its last done is a terminal
        self.index: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self.index)

    def _frames(self, ep: str, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """obs[key][idx] for ascending in-episode step indices `idx`."""
        out = {}
        for key in self.obs_keys:
            cached = self.cache[ep].get(key)
            if cached is not None:
                out[key] = torch.from_numpy(cached[idx])
                continue
            lo, hi = int(idx[0]), int(idx[-1]) + 1  # image: read only the frames needed
            frames = self.reader.read_obs(ep, key, lo, hi)
            if frames.dtype.kind == "f" and not np.isfinite(frames).all():
                raise DatasetError(
                    f"{self.reader.path}: {ep}/{OBS}/{key}: NaN/Inf in steps [{lo}, {hi})"
                )
            out[key] = torch.from_numpy(frames[idx - lo])
        return out

    def _steps(self, ep: str, start: int, length: int) -> dict[str, Any]:
        """rewards/dones/terminals of steps start .. start+length-1 and where they are padding."""
        n = self.reader.num_steps(ep)
        steps = np.arange(start, start + length)
        pad = steps >= n
        idx = np.minimum(steps, n - 1)
        rewards = np.where(pad, np.float32(0), self.cache[ep][REWARDS][idx])
        dones = ~pad & self.cache[ep][DONES][idx]
        return {
            REWARDS: rewards.astype(np.float32),
            DONES: dones,
            TERMINALS: dones & self.terminated.get(ep, False),
            "pad": pad,
            "idx": idx,
        }


class EpisodeWindowDataset(_EpisodeSamples):
    """One sample per (episode, step): obs history, action chunk and the opted-in extras."""

    def __init__(
        self,
        reader: EpisodeReader,
        episodes: list[str],
        obs_keys: list[str],
        obs_steps: int,
        horizon: int,
        cache: Mapping[str, Mapping[str, np.ndarray]],
        *,
        rewards: bool = False,
        next_obs: bool = False,
        discount: float | None = None,
        terminated: Mapping[str, bool] | None = None,
    ) -> None:
        super().__init__(reader, obs_keys, cache, terminated)
        self.obs_steps, self.horizon = obs_steps, horizon
        self.rewards, self.next_obs, self.discount = rewards, next_obs, discount
        self.index = [(ep, t) for ep in episodes for t in range(reader.num_steps(ep))]

    def _history(self, ep: str, t: int) -> dict[str, torch.Tensor]:
        # Frame indices t-obs_steps+1..t clamped at 0.
        return self._frames(ep, np.clip(np.arange(t - self.obs_steps + 1, t + 1), 0, None))

    def __getitem__(self, i: int) -> dict[str, Any]:
        ep, t = self.index[i]
        n, h = self.reader.num_steps(ep), self.horizon
        # Action indices t..t+H-1 clamped at n-1.
        act_idx = np.clip(np.arange(t, t + h), None, n - 1)
        sample: dict[str, Any] = {
            OBS: self._history(ep, t),
            ACTIONS: torch.from_numpy(self.cache[ep][ACTIONS][act_idx]),
        }
        if self.rewards or self.discount is not None:
            chunk = self._steps(ep, t, h)
        if self.rewards:
            for key in (REWARDS, DONES, TERMINALS):
                sample[key] = torch.from_numpy(chunk[key])
            sample[ACTION_IS_PAD] = torch.from_numpy(chunk["pad"])
        if self.next_obs:
            sample[NEXT_OBS] = self._history(ep, min(t + h, n - 1))
        if self.discount is not None:
            # sum_{i<H} g^i r_{t+i} (rewards past the end are 0); the chunk covers the last
            # step n-1 exactly when t+H >= n, and then s_{t+H} was never recorded.
            ret = np.sum(self.discount ** np.arange(h) * chunk[REWARDS], dtype=np.float64)
            at_end = t + h >= n
            terminal = at_end and self.terminated.get(ep, False)
            sample[CHUNK_RETURN] = torch.tensor(ret, dtype=torch.float32)
            sample[BOOTSTRAP] = torch.tensor(0.0 if terminal else 1.0)
            sample[VALID] = torch.tensor(0.0 if at_end and not terminal else 1.0)
        return sample


class EpisodeSequenceDataset(_EpisodeSamples):
    """(T, ...) sequences within one episode for recurrent models (world models)."""

    def __init__(
        self,
        reader: EpisodeReader,
        episodes: list[str],
        obs_keys: list[str],
        sequence_length: int,
        cache: Mapping[str, Mapping[str, np.ndarray]],
        terminated: Mapping[str, bool] | None = None,
    ) -> None:
        super().__init__(reader, obs_keys, cache, terminated)
        self.length = sequence_length
        self.index = [
            (ep, s)
            for ep in episodes
            for s in range(max(reader.num_steps(ep) - sequence_length, 0) + 1)
        ]

    def __getitem__(self, i: int) -> dict[str, Any]:
        ep, s = self.index[i]
        steps = self._steps(ep, s, self.length)
        idx = steps["idx"]  # past the end: the last step repeated, marked by is_pad
        return {
            OBS: self._frames(ep, idx),
            ACTIONS: torch.from_numpy(self.cache[ep][ACTIONS][idx]),
            **{k: torch.from_numpy(steps[k]) for k in (REWARDS, DONES, TERMINALS)},
            IS_FIRST: torch.from_numpy(np.arange(s, s + self.length) == 0),
            IS_PAD: torch.from_numpy(steps["pad"]),
        }


class EpisodeDataModule(L.LightningDataModule):
    """Lightning data over one episode dataset file (see module docstring).

    normalization: mode per low-dim obs key or "low_dim" default, and "actions";
    modes are mean_std / min_max; image keys always use "image" (uint8 -> [0, 1]).
    rewards / next_obs / discount / sequence_length: the opt-in extras of the module docstring.
    obs_keys / obs_type: which obs keys the samples carry: `obs_keys` (every one must be in the
    file), else every key of the file (obs_type None or "image") or its low-dim keys ("state");
    "image" needs at least one image key among them.
    """

    def __init__(
        self,
        path: str,
        obs_steps: int,
        horizon: int,
        batch_size: int = 256,
        num_workers: int = 0,
        obs_keys: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 42,
        normalization: Mapping[str, str] | None = None,
        max_episodes: int | None = None,
        episode_filter: str | None = None,
        control_rate_hz: float | None = None,
        rewards: bool = False,
        next_obs: bool = False,
        discount: float | None = None,
        sequence_length: int | None = None,
        obs_type: str | None = None,
    ) -> None:
        super().__init__()
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type {obs_type!r} is not one of {OBS_TYPES}")
        self.obs_type = obs_type
        if discount is not None and not 0.0 < discount <= 1.0:
            raise ValueError(f"discount {discount} is not in (0, 1]")
        if sequence_length is not None and (sequence_length < 1 or next_obs or discount):
            raise ValueError(
                f"sequence_length {sequence_length}: needs >= 1 and no next_obs/discount "
                "(sequences carry every step's obs and reward)"
            )
        self.rewards, self.next_obs, self.discount = rewards, next_obs, discount
        self.sequence_length = sequence_length
        self.path, self.obs_steps, self.horizon = str(path), obs_steps, horizon
        self.batch_size, self.num_workers = batch_size, num_workers
        self.requested_keys = None if obs_keys is None else list(obs_keys)
        # Cut order of the one seeded permutation (learning/data/split.py): val, test, train.
        self.fractions = {"val": val_fraction, "test": test_fraction, "train": None}
        self.split_seed, self.max_episodes, self.episode_filter = (
            split_seed,
            max_episodes,
            episode_filter,
        )
        self.normalization_modes = dict(normalization or {"low_dim": "mean_std"})
        self.normalization_modes.setdefault("actions", "mean_std")
        self.control_rate_override = control_rate_hz
        self._prepared = False

    # ---- data-derived facts, computed once ---------------------------------------------
    def _prepare(self) -> None:
        if self._prepared:
            return
        self.reader = reader = EpisodeReader(self.path)
        specs = reader.obs_specs
        have = ", ".join(f"{k} ({specs[k].feature_type})" for k in sorted(specs))
        for key in self.requested_keys or []:
            if key not in specs:
                raise KeyError(f"{self.path}: no obs key {key!r} (it has {have})")
        keys = self.requested_keys or sorted(specs)
        if self.obs_type == "state" and self.requested_keys is None:
            keys = [k for k in keys if not specs[k].is_image]
        if self.obs_type == "image" and not any(specs[k].is_image for k in keys):
            raise DatasetError(
                f"{self.path}: obs_type image, but no image key among obs keys {keys} "
                f"(it has {have})"
            )
        if not keys:
            raise DatasetError(f"{self.path}: no obs keys for obs_type {self.obs_type} ({have})")
        self.obs_keys = keys
        self.obs_specs = {k: specs[k] for k in keys}
        episodes = reader.filter(self.episode_filter) if self.episode_filter else reader.episodes
        if self.max_episodes is not None:
            episodes = episodes[: self.max_episodes]
        if not episodes:
            raise DatasetError(f"{self.path}: no episodes to train on")
        try:
            self.splits = split_groups(episodes, self.fractions, self.split_seed)
        except ValueError as err:
            raise DatasetError(f"{self.path}: {err}") from None
        if self.sequence_length is not None:  # every sample would be mostly padding
            longest = max(reader.num_steps(ep) for ep in self.splits["train"])
            if longest < self.sequence_length:
                raise DatasetError(
                    f"{self.path}: sequence_length {self.sequence_length} is longer than every "
                    f"training episode (longest {longest} steps): lower it "
                    "(world_model.sequence_length; train_bc's sequence_length)"
                )

        low_dim = [k for k in keys if not specs[k].is_image]
        self.cache = {
            ep: {
                **{k: self._finite(ep, f"{OBS}/{k}", reader.read_obs(ep, k)) for k in low_dim},
                ACTIONS: self._finite(ep, ACTIONS, reader.read_actions(ep)),
            }
            for ep in episodes
        }
        self.terminated: dict[str, bool] = {}
        if self.rewards or self.discount is not None or self.sequence_length is not None:
            for ep in episodes:
                self.cache[ep][REWARDS] = self._finite(ep, REWARDS, reader.read_rewards(ep))
                self.cache[ep][DONES] = reader.read_dones(ep)
                self.terminated[ep] = reader.episode_metadata(ep).get("terminated") is True
        train = self.splits["train"]
        self.stats: dict[str, dict[str, Any]] = {}
        for key in keys:
            if specs[key].is_image:
                self.stats[key] = compute_stats(np.empty(0), "image")
            else:
                mode = self.normalization_modes.get(key, self.normalization_modes["low_dim"])
                data = np.concatenate([self.cache[ep][key] for ep in train])
                self.stats[key] = compute_stats(data, mode)
        actions = np.concatenate([self.cache[ep][ACTIONS] for ep in train])
        self.stats[ACTIONS] = compute_stats(actions, self.normalization_modes["actions"])
        self.action_bounds = self._action_bounds(episodes)
        self._prepared = True
        log.info(
            "%s: %d episodes -> %s",
            self.path,
            len(episodes),
            {k: len(v) for k, v in self.splits.items()},
        )

    def _finite(self, ep: str, name: str, data: np.ndarray) -> np.ndarray:
        """data as float32, or a DatasetError naming file, episode, key and step if any value
        is NaN/Inf: one NaN would make the stats, the loss and the policy NaN."""
        data = data.astype(np.float32)
        finite = np.isfinite(data.reshape(len(data), -1)).all(axis=1)
        if not finite.all():
            step = int(np.argmin(finite))
            raise DatasetError(f"{self.path}: {ep}/{name}: NaN/Inf at step {step}")
        return data

    def _action_bounds(self, episodes: list[str]) -> dict[str, Any]:
        """The bounds a served policy's actions are clipped to (export metadata
        `action_bounds`): the env's action space when env_args carry it, else the range of the
        actions of every episode read (all splits, not only train)."""
        dim = int(self.reader.action_spec.shape[0])
        space = self.reader.env_args.get("action_space")
        if space is None:
            actions = np.concatenate([self.cache[ep][ACTIONS] for ep in episodes])
            low, high = actions.min(0), actions.max(0)
            return {"low": low.tolist(), "high": high.tolist(), "source": "data"}
        where = f"{self.path}: env_args.action_space"
        try:
            low = np.asarray(space["low"], dtype=np.float64)
            high = np.asarray(space["high"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{where}: not {{low: [...], high: [...]}} ({err})") from None
        if low.shape != (dim,) or high.shape != (dim,):
            raise DatasetError(f"{where}: low/high of {dim} values expected for action_dim {dim}")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
            raise DatasetError(
                f"{where}: need finite low <= high, got {low.tolist()} .. {high.tolist()}"
            )
        return {"low": low.tolist(), "high": high.tolist(), "source": "env"}

    @property
    def control_rate_hz(self) -> float | None:
        if self.control_rate_override is not None:
            return float(self.control_rate_override)
        rate = self.reader.env_args.get("control_rate_hz")
        return None if rate is None else float(rate)

    @property
    def has_test_split(self) -> bool:
        self._prepare()
        return bool(self.splits.get("test"))

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments the model needs from the data (JSON-able)."""
        self._prepare()
        rate = {"control_rate_hz": self.control_rate_hz}
        return {
            **model_dims(self.obs_specs, self.reader.action_spec, rate),
            "normalization": self.stats,
            "action_bounds": self.action_bounds,
        }

    # ---- Lightning hooks ---------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._prepare()
        self.datasets = {name: self._dataset(eps) for name, eps in self.splits.items() if eps}

    def _dataset(self, episodes: list[str]) -> Dataset:
        if self.sequence_length is not None:
            return EpisodeSequenceDataset(
                self.reader,
                episodes,
                self.obs_keys,
                self.sequence_length,
                self.cache,
                self.terminated,
            )
        return EpisodeWindowDataset(
            self.reader,
            episodes,
            self.obs_keys,
            self.obs_steps,
            self.horizon,
            self.cache,
            rewards=self.rewards,
            next_obs=self.next_obs,
            discount=self.discount,
            terminated=self.terminated,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        if split not in self.datasets:
            return []  # Lightning skips the loop for an empty split
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False)
