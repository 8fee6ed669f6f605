"""Sequence replay for model-based learners (Dreamer): (B, T) windows of consecutive steps.

Each env of the vector env writes its own stream (a ring of `capacity // num_envs` rows): row t
holds o_t (the observation acted on), a_t, r_t, `terminated` (the MDP ended after a_t) and
`done` (terminated or truncated: the next row starts a new episode). A sampled window is T
consecutive rows of one stream in the layout of `EpisodeDataModule(sequence_length=T)`, which
the world model trains on: rows after an episode end in the window, or past the newest row,
are padding (`is_pad`), so a window never mixes two episodes.

Observations keep their dtype (uint8 images stay 1 byte per channel); the whole buffer is
allocated up front and a buffer over `max_bytes` is refused with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from learning.data.keys import ACTIONS, IS_PAD, OBS, REWARDS, TERMINALS
from learning.online.replay import ReplayMemoryError, _dtype, _size


class SequenceReplay:
    """Per-env ring buffers of steps; `sample(batch, length)` draws windows uniformly."""

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
        self.row_bytes = sum(
            torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
            for shape, dt in row.values()
        )
        self.nbytes = self.row_bytes * self.rows * self.num_envs
        if max_bytes is not None and self.nbytes > max_bytes:
            raise ReplayMemoryError(
                f"sequence replay: {self.rows * self.num_envs} steps x {self.row_bytes} B/step = "
                f"{_size(self.nbytes)} exceeds max_bytes {_size(max_bytes)} "
                "(lower the capacity or raise the bound)"
            )
        self.storage = {
            name: torch.zeros((self.num_envs, self.rows, *shape), dtype=dt, device=self.device)
            for name, (shape, dt) in row.items()
        }
        self.count = 0  # rows written per stream (every env steps together)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def __len__(self) -> int:
        return min(self.count, self.rows) * self.num_envs

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
        i = self.count % self.rows
        s = self.storage
        for k in self.obs_keys:
            s[f"obs.{k}"][:, i] = obs[k]
        s["actions"][:, i] = actions
        s["rewards"][:, i] = rewards
        s["terminated"][:, i] = terminated
        s["done"][:, i] = terminated | truncated
        self.count += 1

    def sample(self, batch: int, length: int) -> dict[str, Any]:
        """`batch` windows of `length` steps: {OBS: {key: (B, T, ...)}, ACTIONS, REWARDS,
        TERMINALS, IS_PAD} (see the module docstring)."""
        if self.count == 0:
            raise ValueError("sequence replay: sample() before any step was added")
        oldest = max(0, self.count - self.rows)
        # start anywhere a full window fits; a younger buffer starts at its first row
        last_start = max(oldest, self.count - length)
        g = self.generator
        env = torch.randint(self.num_envs, (batch,), generator=g, device=self.device)
        start = torch.randint(oldest, last_start + 1, (batch,), generator=g, device=self.device)
        steps = start[:, None] + torch.arange(length, device=self.device)  # logical rows
        rows = steps % self.rows
        env_rows = env[:, None].expand_as(rows)
        s = self.storage
        done = s["done"][env_rows, rows]
        # padding: past the newest row, or after an episode end earlier in the window
        ended = torch.cumsum(done.int(), 1) - done.int() > 0
        is_pad = ended | (steps >= self.count)
        out = {
            OBS: {k: s[f"obs.{k}"][env_rows, rows] for k in self.obs_keys},
            ACTIONS: s["actions"][env_rows, rows],
            REWARDS: s["rewards"][env_rows, rows].masked_fill(is_pad, 0.0),
            TERMINALS: s["terminated"][env_rows, rows] & ~is_pad,
            IS_PAD: is_pad,
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        n = min(self.count, self.rows)
        return {
            "count": self.count,
            "rows": self.rows,
            "generator": self.generator.get_state(),
            **{name: t[:, :n].clone() for name, t in self.storage.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["rows"]) != self.rows:
            raise ValueError(
                f"saved replay has {state['rows']} rows per env, this one {self.rows}"
            )
        n = min(int(state["count"]), self.rows)
        for name, t in self.storage.items():
            t[:, :n] = state[name]
        self.count = int(state["count"])
        self.generator.set_state(state["generator"])
