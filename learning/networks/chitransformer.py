"""ChiTransformer: Diffusion Policy's transformer as a velocity network (our own code).

    u(x_t, t, c[, s]): (B, H, A), (B,), (B, obs_dim)[, (B,)] -> (B, H, A)

Each action of the chunk is a token (Linear A -> emb_dim, plus a learned position). A stack of
`num_layers` pre-norm decoder layers (nn.TransformerDecoder) runs causal self-attention over the
action tokens (action i sees actions <= i) and cross-attention to the memory tokens:

    memory = MLP([time token, obs token 1 .. obs_steps] + learned positions)

The observation features c are read as one token per observation step (obs_dim must be
obs_steps * step_dim, the encoders' step-major layout); the time token is a linear map of the
time embedding of t, plus (flow maps) one of the gap embedding of s, which is zero at s = t, so
s=None gives exactly the network without s. Every action token sees every memory token.

`scalar(x_t, t, c[, s]) -> (B, 1)` reads the mean output token through a linear head; built only
with `scalar_head: true` (an unused head would stall DDP).
"""

from __future__ import annotations

import torch
from torch import nn

from learning.errors import ConfigError
from learning.networks.embeddings import TimeFeatures


class ChiTransformer(nn.Module):
    """Causal transformer velocity network over action tokens; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        obs_steps: int = 1,
        emb_dim: int = 128,
        n_heads: int = 4,
        num_layers: int = 4,
        dropout: float = 0.1,
        time_embedding: str = "sinusoidal",
        scalar_head: bool = False,
    ) -> None:
        super().__init__()
        if obs_dim % obs_steps:
            raise ConfigError(
                f"ChiTransformer: obs_dim {obs_dim} does not split into obs_steps {obs_steps} "
                "tokens (the encoder's out_dim must be obs_steps * step_dim)"
            )
        if emb_dim % n_heads:
            raise ConfigError(
                f"ChiTransformer: emb_dim {emb_dim} is not a multiple of n_heads {n_heads}"
            )
        self.horizon, self.action_dim, self.obs_steps = horizon, action_dim, obs_steps

        self.action_in = nn.Linear(action_dim, emb_dim)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, emb_dim))
        self.time_in = TimeFeatures(time_embedding, emb_dim, emb_dim)
        self.obs_in = nn.Linear(obs_dim // obs_steps, emb_dim)
        self.memory_pos = nn.Parameter(torch.zeros(1, 1 + obs_steps, emb_dim))
        self.memory_mlp = nn.Sequential(
            nn.Linear(emb_dim, 4 * emb_dim), nn.Mish(), nn.Linear(4 * emb_dim, emb_dim)
        )
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerDecoderLayer(
            emb_dim,
            n_heads,
            dim_feedforward=4 * emb_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        causal = torch.full((horizon, horizon), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.norm = nn.LayerNorm(emb_dim)
        self.out = nn.Linear(emb_dim, action_dim)
        self.head = nn.Linear(emb_dim, 1) if scalar_head else None
        self.apply(_init_weights)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.memory_pos, std=0.02)

    def _tokens(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, s: torch.Tensor | None
    ) -> torch.Tensor:
        """-> output tokens (B, H, emb_dim), after the final LayerNorm."""
        time = self.time_in(t, s)
        obs = self.obs_in(cond.reshape(cond.shape[0], self.obs_steps, -1))
        memory = self.memory_mlp(
            self.drop(torch.cat([time[:, None], obs], dim=1) + self.memory_pos)
        )
        x = self.drop(self.action_in(x_t) + self.action_pos)
        x = self.decoder(x, memory, tgt_mask=self.causal_mask, tgt_is_causal=True)
        return self.norm(x)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.out(self._tokens(x_t, t, cond, s))

    def scalar(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 1) from the mean output token (needs `scalar_head: true`)."""
        if self.head is None:
            raise RuntimeError(
                "ChiTransformer.scalar needs the network built with scalar_head: true"
            )
        return self.head(self._tokens(x_t, t, cond, s).mean(dim=1))


def _init_weights(module: nn.Module) -> None:
    """GPT-style init (as Diffusion Policy): N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
