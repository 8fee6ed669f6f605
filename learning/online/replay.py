"""Replay buffer for off-policy learners (SAC): preallocated torch storage, memory bounded.

One row per env step of every env: `obs`, `next_obs` (dicts by observation key), `actions`,
`rewards`, and two separate flags: `terminated` (the MDP ended: no bootstrap) and `truncated`
(a time limit cut the episode: the target still bootstraps from `next_obs`, which must then be
the real final observation, not the reset one). Keeping `next_obs` per row doubles observation
memory but needs no episode bookkeeping at the ring's seam or at auto-resets.

The whole buffer is allocated at construction, so its size is known up front: a buffer larger
than `max_bytes` is refused with one line (`ReplayMemoryError`), and `describe()` reports it.
Sampling draws indices from the buffer's own seeded `torch.Generator` (its state is part of
`state_dict`, so a resumed run samples what an uninterrupted one would).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from learning.errors import ConfigError

MB = 1024**2


PARTS = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")


class ReplayMemoryError(ConfigError):
    """The configured buffer does not fit its memory bound (one line from learning.train)."""


def _size(n: float) -> str:
    return f"{n:.0f} B" if n < MB else f"{n / MB:.1f} MiB"


def _dtype(name: str | torch.dtype) -> torch.dtype:
    return name if isinstance(name, torch.dtype) else getattr(torch, str(name))


Row = Mapping[str, tuple[tuple[int, ...], torch.dtype]]  # name -> (shape, dtype) of one row


def checked_size(
    what: str, unit: str, rows: int, row: Row, max_bytes: int | None
) -> tuple[int, int]:
    """(bytes per row, bytes in all) of `rows` rows laid out as `row`; ReplayMemoryError (one
    line) above `max_bytes`. `unit`: what a row is (transition, step)."""
    row_bytes = sum(
        torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        for shape, dt in row.values()
    )
    if max_bytes is not None and row_bytes * rows > max_bytes:
        raise ReplayMemoryError(
            f"{what}: capacity {rows} x {row_bytes} B/{unit} = {_size(row_bytes * rows)} exceeds "
            f"max_bytes {_size(max_bytes)} (lower the capacity or raise the bound)"
        )
    return row_bytes, row_bytes * rows


class ReplayBuffer:
    """Ring buffer of transitions. `obs_specs`: key -> {"shape": [...], "dtype": "float32"}."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        capacity: int,
        max_bytes: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if capacity < 1:
            raise ReplayMemoryError(f"replay buffer: capacity must be >= 1, got {capacity}")
        self.capacity, self.device = int(capacity), torch.device(device)
        row: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            **{f"obs.{k}": (tuple(s["shape"]), _dtype(s["dtype"])) for k, s in obs_specs.items()},
            **{
                f"next_obs.{k}": (tuple(s["shape"]), _dtype(s["dtype"]))
                for k, s in obs_specs.items()
            },
            "actions": ((int(action_dim),), torch.float32),
            "rewards": ((), torch.float32),
            "terminated": ((), torch.bool),
            "truncated": ((), torch.bool),
        }
        self.row_bytes, self.nbytes = checked_size(
            "replay buffer", "transition", self.capacity, row, max_bytes
        )
        self.obs_keys = sorted(obs_specs)
        self.storage = {
            name: torch.empty((self.capacity, *shape), dtype=dt, device=self.device)
            for name, (shape, dt) in row.items()
        }
        self.pos, self.size = 0, 0
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def __len__(self) -> int:
        return self.size

    def describe(self) -> str:
        """One line for the run log: what the buffer holds and the memory it took."""
        return (
            f"replay buffer: {self.capacity} transitions x {self.row_bytes} B = "
            f"{_size(self.nbytes)} on {self.device}"
        )

    def add(
        self,
        obs: Mapping[str, Any],
        actions: Any,
        rewards: Any,
        next_obs: Mapping[str, Any],
        terminated: Any,
        truncated: Any,
    ) -> None:
        """Append one step of N envs: every argument has a leading axis N (arrays or tensors)."""
        values = {
            **{f"obs.{k}": obs[k] for k in self.obs_keys},
            **{f"next_obs.{k}": next_obs[k] for k in self.obs_keys},
            "actions": actions,
            "rewards": rewards,
            "terminated": terminated,
            "truncated": truncated,
        }
        n = len(rewards)
        if self.pos + n <= self.capacity:  # a slice: one copy a part, no index tensor
            idx: slice | torch.Tensor = slice(self.pos, self.pos + n)
        else:  # across the ring's seam
            idx = torch.arange(self.pos, self.pos + n, device=self.device) % self.capacity
        for name, value in values.items():
            store = self.storage[name]
            store[idx] = (
                torch.as_tensor(value).to(store.device, store.dtype).reshape(n, *store.shape[1:])
            )
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict[str, Any]:
        """A uniform batch: {"obs": {key: (B, ...)}, "actions", "rewards", "next_obs",
        "terminated", "truncated"} (flags as float 0/1, ready for `(1 - terminated)`)."""
        return self.gather(self.sample_indices(batch_size), *PARTS)

    def sample_indices(self, batch_size: int) -> torch.Tensor:
        """`batch_size` uniform row indices (the draw `sample` makes)."""
        if self.size == 0:
            raise ValueError("replay buffer: sample() before any add()")
        return torch.randint(
            self.size, (batch_size,), generator=self.generator, device=self.device
        )

    def gather(self, idx: torch.Tensor, *parts: str) -> dict[str, Any]:
        """The rows `idx` of the named parts only (of PARTS), as `sample` returns them: a
        learner can gather what each of its threads needs on that thread."""
        batch: dict[str, Any] = {}
        for part in parts:
            if part in ("obs", "next_obs"):
                batch[part] = {k: self.storage[f"{part}.{k}"][idx] for k in self.obs_keys}
            elif part in ("terminated", "truncated"):
                batch[part] = self.storage[part][idx].float()
            else:
                batch[part] = self.storage[part][idx]
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, ring position and sampler state (tensors and ints only)."""
        return {
            # copies: saving a view would write the whole preallocated capacity
            "storage": {
                name: store[: self.size].to("cpu", copy=True)
                for name, store in self.storage.items()
            },
            "pos": self.pos,
            "size": self.size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        size = int(state["size"])
        if size > self.capacity or set(state["storage"]) != set(self.storage):
            raise ValueError(
                f"replay buffer: saved buffer ({size} rows, {sorted(state['storage'])}) does not "
                f"fit this one ({self.capacity} rows, {sorted(self.storage)})"
            )
        for name, store in self.storage.items():
            store[:size] = state["storage"][name].to(store.device)
        self.pos, self.size = int(state["pos"]), size
        self.generator.set_state(state["generator"])
