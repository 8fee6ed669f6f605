"""Sequence replay for model-based learners (Dreamer): (B, T) windows of consecutive steps.

Each env of the vector env writes its own stream (a ring of `capacity // num_envs` rows; a
recorded episode can be appended to one with `add_episode`, Dreamer's prefill): row t holds
o_t (the observation acted on), a_t, r_t, `terminated` (the MDP ended after a_t) and `done`
(terminated or truncated: the next row starts a new episode). A sampled window is T consecutive
rows of one stream in the layout of `EpisodeDataModule(sequence_length=T)`, which the world
model trains on: rows after an episode end in the window, or past the newest row, are padding
(`is_pad`), so a window never mixes two episodes.

Observations keep their dtype (uint8 images stay 1 byte per channel); the whole buffer is
allocated up front and a buffer over `max_bytes` is refused with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from learning.data.keys import ACTIONS, IS_PAD, OBS, REWARDS, TERMINALS
from learning.online.replay import ReplayMemoryError, _dtype, _size, checked_size


class SequenceReplay:
    """Per-env ring buffers of steps; `sample(batch, length)` draws windows uniformly over
    the stored rows."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        capacity: int,
        num_envs: int,
        max_bytes: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if capacity < num_envs:
            raise ReplayMemoryError(
                f"sequence replay: capacity {capacity} is below one row per env ({num_envs})"
            )
        self.num_envs, self.rows = int(num_envs), int(capacity) // int(num_envs)
        self.device = torch.device(device)
        self.obs_keys = sorted(obs_specs)
        row = {
            **{f"obs.{k}": (tuple(s["shape"]), _dtype(s["dtype"])) for k, s in obs_specs.items()},
            "actions": ((int(action_dim),), torch.float32),
            "rewards": ((), torch.float32),
            "terminated": ((), torch.bool),
            "done": ((), torch.bool),
        }
        steps = self.rows * self.num_envs
        self.row_bytes, self.nbytes = checked_size(
            "sequence replay", "step", steps, row, max_bytes
        )
        self.storage = {
            name: torch.zeros((self.num_envs, self.rows, *shape), dtype=dt, device=self.device)
            for name, (shape, dt) in row.items()
        }
        self.counts = torch.zeros(self.num_envs, dtype=torch.long)  # rows written per stream
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def __len__(self) -> int:
        return int(self.counts.clamp(max=self.rows).sum())

    def describe(self) -> str:
        return (
            f"sequence replay: {self.num_envs} streams x {self.rows} steps x "
            f"{self.row_bytes} B = {_size(self.nbytes)}"
        )

    def add(
        self,
        obs: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        rewards: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> None:
        """One step of every env: rows (num_envs, ...)."""
        streams = torch.arange(self.num_envs)
        rows = self.counts % self.rows
        self._write(streams, rows, obs, actions, rewards, terminated, truncated)

    def add_episode(
        self,
        stream: int,
        obs: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        rewards: torch.Tensor,
        terminated: bool,
    ) -> None:
        """A whole recorded episode (T rows) at the end of one stream (prefill from a
        dataset): done after its last step, terminated there if the episode was."""
        n = actions.shape[0]
        ends = torch.zeros(n, dtype=torch.bool)
        ends[-1] = True
        streams = torch.full((n,), int(stream))
        rows = (self.counts[stream] + torch.arange(n)) % self.rows
        never = torch.zeros_like(ends)
        terminal, truncated = (ends, never) if terminated else (never, ends)
        self._write(streams, rows, obs, actions, rewards, terminal, truncated)

    def _write(
        self,
        streams: torch.Tensor,
        rows: torch.Tensor,
        obs: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        rewards: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> None:
        """Input j at row rows[j] of stream streams[j]; each stream's count grows by its rows."""
        s, dev = self.storage, self.device
        streams_d, index_d = streams.to(dev), rows.to(dev)
        for k in self.obs_keys:
            s[f"obs.{k}"][streams_d, index_d] = obs[k].to(dev, s[f"obs.{k}"].dtype)
        s["actions"][streams_d, index_d] = actions.to(dev, torch.float32)
        s["rewards"][streams_d, index_d] = rewards.to(dev, torch.float32)
        s["terminated"][streams_d, index_d] = terminated.to(dev)
        s["done"][streams_d, index_d] = (terminated | truncated).to(dev)
        self.counts += torch.bincount(streams, minlength=self.num_envs)

    def sample(self, batch: int, length: int) -> dict[str, Any]:
        """`batch` windows of `length` steps: {OBS: {key: (B, T, ...)}, ACTIONS, REWARDS,
        TERMINALS, IS_PAD} (see the module docstring)."""
        filled = self.counts.clamp(max=self.rows).float()
        if filled.sum() == 0:
            raise ValueError("sequence replay: sample() before any step was added")
        g = self.generator
        # a stream in proportion to its rows, then a start anywhere a full window fits (a
        # younger stream starts at its first row)
        env = torch.multinomial(filled, batch, replacement=True, generator=g).to(self.device)
        count = self.counts.to(self.device)[env]
        oldest = (count - self.rows).clamp(min=0)
        last_start = torch.maximum(oldest, count - length)
        u = torch.rand(batch, generator=g, device=self.device)
        start = oldest + (u * (last_start - oldest + 1)).long().clamp(max=last_start - oldest)
        steps = start[:, None] + torch.arange(length, device=self.device)  # logical rows
        rows = steps % self.rows
        env_rows = env[:, None].expand_as(rows)
        s = self.storage
        done = s["done"][env_rows, rows]
        # padding: past the newest row, or after an episode end earlier in the window
        ended = torch.cumsum(done.int(), 1) - done.int() > 0
        is_pad = ended | (steps >= count[:, None])
        out = {
            OBS: {k: s[f"obs.{k}"][env_rows, rows] for k in self.obs_keys},
            ACTIONS: s["actions"][env_rows, rows],
            REWARDS: s["rewards"][env_rows, rows].masked_fill(is_pad, 0.0),
            TERMINALS: s["terminated"][env_rows, rows] & ~is_pad,
            IS_PAD: is_pad,
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        n = int(self.counts.clamp(max=self.rows).max())
        return {
            "counts": self.counts.clone(),
            "rows": self.rows,
            "generator": self.generator.get_state(),
            **{name: t[:, :n].clone() for name, t in self.storage.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["rows"]) != self.rows:
            raise ValueError(
                f"saved replay has {state['rows']} rows per env, this one {self.rows}"
            )
        counts = torch.as_tensor(state["counts"])
        if counts.shape != self.counts.shape:
            raise ValueError(f"saved replay: {counts.numel()} streams, this one {self.num_envs}")
        n = int(counts.clamp(max=self.rows).max())
        for name, t in self.storage.items():
            t[:, :n] = state[name]
        self.counts = counts.clone()
        self.generator.set_state(state["generator"])
