"""Embeddings of the flow/diffusion time t in [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalTimeEmbedding(nn.Module):
    """t (B,) -> (B, dim): [sin(s t w_i), cos(s t w_i)], w_i = 10000^(-i / (dim/2 - 1)).

    `scale` stretches t in [0, 1] over the range that integer diffusion steps would cover,
    so neighbouring flow times get distinguishable embeddings.
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = (self.scale * t)[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
