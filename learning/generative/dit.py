"""Diffusion Transformer (DiT, Peebles & Xie 2023) for image-shaped targets.

Patchify -> tokens + fixed 2D sin-cos positions -> `depth` blocks whose LayerNorms are modulated
by the time embedding (adaLN-Zero: shift/scale/gate regressed from t, gates initialised at zero
so every block starts as the identity) -> per-patch linear head -> unpatchify.

Besides the main output (velocity or epsilon, `out_ch` channels) an auxiliary head predicts
logits of the clean target's occupancy (`aux_ch` channels); the module trains it with BCE,
weighted by `aux_loss_weight`. It shares the trunk, so it shapes the features towards "where is
the goal", and costs nothing at sampling time (`forward` skips it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) float times -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding, (grid*grid, dim); half the channels per axis."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([embed(yy), embed(xx)], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning on c (B, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada_ln[-1].weight)
        nn.init.zeros_(self.ada_ln[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada_ln(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + zero-initialised linear map to patch pixels."""

    def __init__(self, dim: int, patch_size: int, out_ch: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_ch)
        for layer in (self.ada_ln[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_ln(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """DiT over (B, in_ch, H, W) inputs and (B,) times in [0, 1] -> (B, out_ch, H, W).

    `time_scale` multiplies t before the sinusoidal embedding (t in [0, 1] would otherwise
    only use the lowest frequencies).
    """

    def __init__(
        self,
        in_ch: int = 8,
        out_ch: int = 1,
        image_size: int = 64,
        patch_size: int = 4,
        hidden_dim: int = 256,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        aux_ch: int = 1,
        time_scale: float = 1000.0,
        time_embed_dim: int = 256,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} not divisible by patch_size {patch_size}")
        self.in_ch, self.out_ch, self.aux_ch = in_ch, out_ch, aux_ch
        self.image_size, self.patch_size = image_size, patch_size
        self.time_scale, self.time_embed_dim = time_scale, time_embed_dim
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_ch, hidden_dim, patch_size, stride=patch_size)
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_dim, self.grid)[None], persistent=False
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final = FinalLayer(hidden_dim, patch_size, out_ch)
        self.aux_final = FinalLayer(hidden_dim, patch_size, aux_ch) if aux_ch > 0 else None

    def _unpatchify(self, x: torch.Tensor, ch: int) -> torch.Tensor:
        b, p, g = x.shape[0], self.patch_size, self.grid
        x = x.reshape(b, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, ch, g * p, g * p)

    def _trunk(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1:] != (self.in_ch, self.image_size, self.image_size):
            raise ValueError(
                f"DiT expects (B, {self.in_ch}, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.time_mlp(timestep_embedding(t * self.time_scale, self.time_embed_dim))
        for block in self.blocks:
            tokens = block(tokens, c)
        return tokens, c

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, in_ch, H, W), t (B,) -> main output (B, out_ch, H, W)."""
        tokens, c = self._trunk(x, t)
        return self._unpatchify(self.final(tokens, c), self.out_ch)

    def forward_with_aux(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (main output, auxiliary occupancy logits (B, aux_ch, H, W) or None)."""
        tokens, c = self._trunk(x, t)
        out = self._unpatchify(self.final(tokens, c), self.out_ch)
        if self.aux_final is None:
            return out, None
        return out, self._unpatchify(self.aux_final(tokens, c), self.aux_ch)
