"""Embeddings of the flow/diffusion time t in [0, 1], chosen by name (`TIME_EMBEDDINGS`).

Every embedding maps t (B,) -> (B, dim). Networks take the name (`time_embedding:` in their
config) and build it with `build_time_embedding(name, dim)`:

    sinusoidal  fixed [sin, cos] of t at geometric frequencies (Transformer / DDPM style)
    fourier     fixed [sin, cos] of 2 pi t B, B ~ N(0, sigma^2) drawn once (Tancik et al.)
    learnable   a learned table over t in [0, 1], linearly interpolated between rows

`GapEmbedding` embeds the second time of a flow map u(x, s, t) as E(t - s) - E(0): zero when
s == t, so a network given s=None (read as s = t, the instantaneous velocity) computes exactly
what it would without the s input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from learning.errors import ConfigError


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


class FourierTimeEmbedding(nn.Module):
    """t (B,) -> (B, dim): [sin(2 pi t b_i), cos(2 pi t b_i)], b_i ~ N(0, sigma^2) fixed.

    The frequencies are drawn from a generator seeded with `seed` (the global RNG is left
    alone) and kept as a persistent buffer: saved in checkpoints and constants in the ONNX graph.
    """

    def __init__(self, dim: int, sigma: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        if dim % 2 or dim < 2:
            raise ValueError(f"time embedding dim must be even and >= 2, got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", 2 * math.pi * sigma * torch.randn(dim // 2, generator=gen))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class LearnableTimeEmbedding(nn.Module):
    """t (B,) -> (B, dim): a learned table of `positions` rows over t in [0, 1].

    Rows are interpolated linearly (not rounded) so the embedding is continuous in t and has a
    derivative for the JVP targets of flow-map agents; t outside [0, 1] is clamped.
    """

    def __init__(self, dim: int, positions: int = 128) -> None:
        super().__init__()
        if positions < 2:
            raise ValueError(f"learnable time embedding needs >= 2 positions, got {positions}")
        self.table = nn.Embedding(positions, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        last = self.table.num_embeddings - 1
        pos = t.clamp(0.0, 1.0) * last
        lo = pos.detach().floor().clamp(max=last - 1)
        w = (pos - lo)[:, None]
        lo = lo.long()
        return (1 - w) * self.table(lo) + w * self.table(lo + 1)


TIME_EMBEDDINGS: dict[str, Callable[..., nn.Module]] = {
    "sinusoidal": SinusoidalTimeEmbedding,
    "fourier": FourierTimeEmbedding,
    "learnable": LearnableTimeEmbedding,
}


def build_time_embedding(name: str, dim: int) -> nn.Module:
    """The time embedding registered as `name`, t (B,) -> (B, dim)."""
    if name not in TIME_EMBEDDINGS:
        raise ConfigError(f"unknown time_embedding {name!r} (known: {sorted(TIME_EMBEDDINGS)})")
    return TIME_EMBEDDINGS[name](dim)


class GapEmbedding(nn.Module):
    """(t, s) (B,), (B,) -> E(t - s) - E(0) (B, dim): zero where s == t.

    Networks skip it for s=None, which then means s = t exactly.
    """

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        self.embed = build_time_embedding(name, dim)

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.embed(t - s) - self.embed(torch.zeros_like(t[:1]))


class TimeFeatures(nn.Module):
    """(t, s=None) (B,) -> (B, out_dim): Linear(E(t)) + Linear(E(t - s) - E(0)), bias-free.

    The time input of the ChiUNet / ChiTransformer; the s term is skipped for s=None (s = t).
    """

    def __init__(self, name: str, dim: int, out_dim: int) -> None:
        super().__init__()
        self.embed = build_time_embedding(name, dim)
        self.gap_embed = GapEmbedding(name, dim)
        self.t_in = nn.Linear(dim, out_dim)
        self.s_in = nn.Linear(dim, out_dim, bias=False)

    def forward(self, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        h = self.t_in(self.embed(t))
        if s is not None:
            h = h + self.s_in(self.gap_embed(t, s))
        return h
