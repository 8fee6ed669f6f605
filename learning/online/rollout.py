"""On-policy rollout storage: named tensors of shape (T, B, ...), preallocated on first use."""

from __future__ import annotations

import torch


class RolloutStorage:
    """`num_steps` vector-env steps of `num_envs` envs; `add` writes row `step`, `full` says
    when the rollout is complete, `clear` starts the next one (the buffers are reused)."""

    def __init__(self, num_steps: int, num_envs: int, device: torch.device) -> None:
        self.num_steps, self.num_envs, self.device = int(num_steps), int(num_envs), device
        self.data: dict[str, torch.Tensor] = {}
        self.step = 0
        # What came after the last row (the next observation, normalized as acted on): PPO's
        # bootstrap value for the rollout's tail.
        self.tail: dict[str, torch.Tensor] = {}

    def add(self, **row: torch.Tensor) -> None:
        if self.full:
            raise RuntimeError("rollout storage is full: update, then clear()")
        for name, value in row.items():
            if name not in self.data:
                shape = (self.num_steps, *value.shape)
                self.data[name] = torch.zeros(shape, dtype=value.dtype, device=self.device)
            self.data[name][self.step] = value
        self.step += 1

    @property
    def full(self) -> bool:
        return self.step >= self.num_steps

    def clear(self) -> None:
        self.step = 0
        self.tail = {}
