"""MLP velocity field over a flattened action chunk, conditioned on time and observations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from learning.networks.embeddings import SinusoidalTimeEmbedding


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, norm: bool = True) -> nn.Sequential:
    """Linear -> [LayerNorm] -> Mish for each hidden width, then a Linear head."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width)]
        if norm:
            layers += [nn.LayerNorm(width)]
        layers += [nn.Mish()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MLPVelocityNet(nn.Module):
    """v(x_t, t, c): (B, horizon, A), (B,), (B, obs_dim) -> (B, horizon, A).

    The chunk is flattened and concatenated with the time embedding and the observation
    features; fine for short horizons (a ChiUNet/transformer plugs in with the same call).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        hidden_dims: Sequence[int] = (256, 256, 256),
        time_embed_dim: int = 64,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.action_dim, self.horizon = action_dim, horizon
        self.time_embed = SinusoidalTimeEmbedding(time_embed_dim)
        self.net = mlp(
            horizon * action_dim + time_embed_dim + obs_dim,
            list(hidden_dims),
            horizon * action_dim,
            norm=layer_norm,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        h = torch.cat([x_t.reshape(b, -1), self.time_embed(t), cond], dim=-1)
        return self.net(h).reshape(b, self.horizon, self.action_dim)
