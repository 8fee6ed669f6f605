"""MLP velocity field over a flattened action chunk, conditioned on time and observations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from learning.networks.embeddings import GapEmbedding, build_time_embedding


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
    """u(x_t, t, c[, s]): (B, horizon, A), (B,), (B, obs_dim)[, (B,)] -> (B, horizon, A).

    The chunk is flattened and concatenated with the time embedding and the observation
    features; fine for short horizons. The optional second time `s` of a flow map
    u(x, s, t) enters the first layer through `s_in` (E(t - s) - E(0), zero-initialized), so
    s=None, read as s = t, gives exactly the network without s. `obs_steps` is accepted for the
    common factory call and not used (the chunk sees the flat observation features).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        obs_steps: int = 1,
        hidden_dims: Sequence[int] = (256, 256, 256),
        time_embed_dim: int = 64,
        time_embedding: str = "sinusoidal",
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.action_dim, self.horizon = action_dim, horizon
        self.time_embed = build_time_embedding(time_embedding, time_embed_dim)
        self.net = mlp(
            horizon * action_dim + time_embed_dim + obs_dim,
            list(hidden_dims),
            horizon * action_dim,
            norm=layer_norm,
        )
        self.gap_embed = GapEmbedding(time_embedding, time_embed_dim)
        # Zero init (no RNG drawn): training without s is unchanged by this path's existence.
        self.s_in = nn.Linear(time_embed_dim, self.net[0].out_features, bias=False)
        nn.init.zeros_(self.s_in.weight)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Weights saved before the s input: its zero init is exactly what they computed.
        state_dict.setdefault(prefix + "s_in.weight", torch.zeros_like(self.s_in.weight))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = x_t.shape[0]
        h = self.net[0](torch.cat([x_t.reshape(b, -1), self.time_embed(t), cond], dim=-1))
        if s is not None:
            h = h + self.s_in(self.gap_embed(t, s))
        return self.net[1:](h).reshape(b, self.horizon, self.action_dim)
