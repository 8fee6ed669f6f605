"""Windows of (observation history, action chunk) over an episode dataset.

For the step t of an episode of length T, a sample is

    obs[key]: (obs_steps, *shape)  frames t-obs_steps+1 .. t, the first frame repeated
                                   where the window starts before the episode
    actions:  (horizon, A)         actions t .. t+horizon-1, the last action repeated
                                   where the chunk runs past the episode end

(the same convention as `roboloop_runtime`). Episodes, never single steps, are split
into train/val(/test) with a seeded permutation. Normalization statistics are computed once,
from the train split, and handed to the model through `model_kwargs()`.
Images are read window by window through the reader; only low-dim keys are cached.
Non-finite data is refused with a DatasetError naming file, episode, key and step: cached arrays
(low-dim obs, actions) when they are cached, before training starts; float images as their
windows are read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from episode_dataset import DatasetError, EpisodeReader, KeySpec
from learning.normalization import compute_stats

log = logging.getLogger(__name__)

OBS = "obs"  # batch keys: batch[OBS][key] (B, obs_steps, *shape), batch[ACTIONS] (B, H, A)
ACTIONS = "actions"


def is_image(spec: KeySpec) -> bool:
    return spec.encoding is not None or (len(spec.shape) == 3 and spec.dtype == "uint8")


def split_episodes(
    episodes: list[str], fractions: Mapping[str, float], seed: int
) -> dict[str, list[str]]:
    """Seeded split by episode: {"val": [...], "test": [...], "train": rest}.

    Every non-zero fraction gets at least one episode; train keeps at least one.
    """
    order = list(np.random.default_rng(seed).permutation(len(episodes)))
    splits: dict[str, list[str]] = {}
    for name, frac in fractions.items():
        n = int(round(frac * len(episodes)))
        n = max(n, 1) if frac > 0 else 0
        if n >= len(order):
            raise ValueError(
                f"split {name}={frac} leaves no training episodes out of {len(episodes)}"
            )
        splits[name], order = sorted(episodes[i] for i in order[:n]), order[n:]
    splits["train"] = sorted(episodes[i] for i in order)
    return splits


class EpisodeWindowDataset(Dataset):
    """One sample per (episode, step). Low-dim arrays come from `cache`, images from the file."""

    def __init__(
        self,
        reader: EpisodeReader,
        episodes: list[str],
        obs_keys: list[str],
        obs_steps: int,
        horizon: int,
        cache: Mapping[str, Mapping[str, np.ndarray]],
    ) -> None:
        self.reader, self.obs_keys = reader, obs_keys
        self.obs_steps, self.horizon = obs_steps, horizon
        self.cache = cache  # cache[episode][key or ACTIONS] -> (T, ...)
        self.index = [(ep, t) for ep in episodes for t in range(reader.num_steps(ep))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ep, t = self.index[i]
        n = self.reader.num_steps(ep)
        # Frame indices t-obs_steps+1..t clamped at 0; action indices t..t+H-1 clamped at n-1.
        obs_idx = np.clip(np.arange(t - self.obs_steps + 1, t + 1), 0, None)
        act_idx = np.clip(np.arange(t, t + self.horizon), None, n - 1)
        obs = {}
        for key in self.obs_keys:
            cached = self.cache[ep].get(key)
            if cached is not None:
                obs[key] = torch.from_numpy(cached[obs_idx])
            else:  # image: read only the window's frames
                lo = int(obs_idx[0])
                frames = self.reader.read_obs(ep, key, lo, t + 1)
                if frames.dtype.kind == "f" and not np.isfinite(frames).all():
                    raise DatasetError(
                        f"{self.reader.path}: {ep}/{OBS}/{key}: NaN/Inf in steps [{lo}, {t + 1})"
                    )
                obs[key] = torch.from_numpy(frames[obs_idx - lo])
        return {OBS: obs, ACTIONS: torch.from_numpy(self.cache[ep][ACTIONS][act_idx])}


class EpisodeDataModule(L.LightningDataModule):
    """Lightning data over one episode dataset file (see module docstring).

    normalization: mode per low-dim obs key or "low_dim" default, and "actions";
    modes are mean_std / min_max; image keys always use "image" (uint8 -> [0, 1]).
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
    ) -> None:
        super().__init__()
        self.path, self.obs_steps, self.horizon = str(path), obs_steps, horizon
        self.batch_size, self.num_workers = batch_size, num_workers
        self.requested_keys = None if obs_keys is None else list(obs_keys)
        self.fractions = {"val": val_fraction, "test": test_fraction}
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
        keys = sorted(specs) if self.requested_keys is None else self.requested_keys
        for key in keys:
            if key not in specs:
                raise KeyError(f"{self.path}: no obs key {key!r} (have {sorted(specs)})")
        self.obs_keys = keys
        self.obs_specs = {k: specs[k] for k in keys}
        episodes = reader.filter(self.episode_filter) if self.episode_filter else reader.episodes
        if self.max_episodes is not None:
            episodes = episodes[: self.max_episodes]
        if not episodes:
            raise ValueError(f"{self.path}: no episodes to train on")
        self.splits = split_episodes(episodes, self.fractions, self.split_seed)

        low_dim = [k for k in keys if not is_image(specs[k])]
        self.cache = {
            ep: {
                **{k: self._finite(ep, f"{OBS}/{k}", reader.read_obs(ep, k)) for k in low_dim},
                ACTIONS: self._finite(ep, ACTIONS, reader.read_actions(ep)),
            }
            for ep in episodes
        }
        train = self.splits["train"]
        self.stats: dict[str, dict[str, Any]] = {}
        for key in keys:
            if is_image(specs[key]):
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
        return {
            "obs_specs": {
                k: {"shape": list(s.shape), "dtype": s.dtype} for k, s in self.obs_specs.items()
            },
            "action_dim": int(self.reader.action_spec.shape[0]),
            "normalization": self.stats,
            "control_rate_hz": self.control_rate_hz,
            "action_bounds": self.action_bounds,
        }

    # ---- Lightning hooks ---------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._prepare()
        self.datasets = {
            name: EpisodeWindowDataset(
                self.reader, eps, self.obs_keys, self.obs_steps, self.horizon, self.cache
            )
            for name, eps in self.splits.items()
            if eps
        }

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
