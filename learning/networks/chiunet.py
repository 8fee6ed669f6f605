"""ChiUNet: Diffusion Policy's 1-D convolutional U-Net as a velocity network (our own code).

    u(x_t, t, c[, s]): (B, H, A), (B,), (B, obs_dim)[, (B,)] -> (B, H, A)

The chunk is a 1-D signal over the horizon with A channels. Each level of the U-Net has two
residual blocks (Conv1d k -> GroupNorm -> Mish, twice) conditioned by FiLM: a linear map of the
conditioning vector gives a per-channel scale and bias (`cond_predict_scale`; bias only when
false) applied after the first conv. Levels halve the horizon on the way down (strided conv)
and double it on the way up (transposed conv); each up level takes the matching down level's
output as a skip (the full-resolution level's is not used, as in Diffusion Policy); widths are
`model_dim * dim_mult[i]`.

Conditioning vector = MLP(time embedding of t [+ gap embedding of s]) and, with
`obs_as_global_cond`, the observation features c. With `obs_as_global_cond: false` c is read as
`obs_steps` tokens of c.shape[-1] // obs_steps features, laid along the first `obs_steps` horizon
positions (zeros after) and added, through their own residual blocks, to the first level on the
way down and to the full-resolution output of the way up (local conditioning).

`scalar(x_t, t, c[, s]) -> (B, 1)` reads the bottleneck features (mean over the horizon) through
a linear head; built only with `scalar_head: true` (an unused head would stall DDP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from learning.errors import ConfigError
from learning.networks.embeddings import TimeFeatures


class ConvBlock(nn.Sequential):
    """(B, C_in, H) -> (B, C_out, H): Conv1d (same padding) -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """x (B, C_in, H), cond (B, D) -> (B, C_out, H): conv, FiLM(cond), conv, + residual."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        cond_dim: int,
        kernel_size: int,
        n_groups: int,
        predict_scale: bool,
    ) -> None:
        super().__init__()
        self.block1 = ConvBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = ConvBlock(c_out, c_out, kernel_size, n_groups)
        self.predict_scale = predict_scale
        self.film = nn.Sequential(
            nn.Mish(), nn.Linear(cond_dim, 2 * c_out if predict_scale else c_out)
        )
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        film = self.film(cond)[:, :, None]
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.block2(h) + self.residual(x)


class ChiUNet(nn.Module):
    """Conditional 1-D U-Net velocity network; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        obs_steps: int = 1,
        model_dim: int = 64,
        dim_mult: Sequence[int] = (1, 2, 2),
        emb_dim: int = 128,
        time_embedding: str = "sinusoidal",
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
        obs_as_global_cond: bool = True,
        scalar_head: bool = False,
    ) -> None:
        super().__init__()
        downsamples = len(dim_mult) - 1
        if horizon < 2**downsamples or horizon & (horizon - 1):
            raise ConfigError(
                f"ChiUNet: horizon {horizon} must be a power of 2 and >= {2**downsamples} "
                f"(2^{downsamples} for dim_mult {list(dim_mult)}); set horizon_length to e.g. "
                f"{max(2**downsamples, 1 << max(horizon - 1, 1).bit_length())}"
            )
        widths = [model_dim * m for m in dim_mult]
        if any(w % n_groups for w in widths):
            raise ConfigError(
                f"ChiUNet: widths {widths} (model_dim * dim_mult) must be multiples of "
                f"n_groups {n_groups}"
            )
        if not obs_as_global_cond and (obs_dim % obs_steps or obs_steps > horizon):
            raise ConfigError(
                f"ChiUNet local conditioning: obs_dim {obs_dim} must split into obs_steps "
                f"{obs_steps} tokens and obs_steps must be <= horizon {horizon}"
            )
        self.horizon, self.action_dim, self.obs_steps = horizon, action_dim, obs_steps
        self.obs_as_global_cond = obs_as_global_cond

        self.time_in = TimeFeatures(time_embedding, emb_dim, 4 * emb_dim)
        self.time_out = nn.Sequential(nn.Mish(), nn.Linear(4 * emb_dim, emb_dim))
        cond_dim = emb_dim + (obs_dim if obs_as_global_cond else 0)

        def res(c_in: int, c_out: int) -> FiLMResBlock:
            return FiLMResBlock(c_in, c_out, cond_dim, kernel_size, n_groups, cond_predict_scale)

        self.local_down = self.local_up = None
        if not obs_as_global_cond:
            step_dim = obs_dim // obs_steps
            self.local_down, self.local_up = res(step_dim, widths[0]), res(step_dim, widths[0])

        ins = [action_dim, *widths[:-1]]
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(ins, widths, strict=True)):
            last = i == downsamples
            sample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), sample]))
        self.mid = nn.ModuleList([res(widths[-1], widths[-1]), res(widths[-1], widths[-1])])
        self.up = nn.ModuleList()
        for i in reversed(range(downsamples)):
            c_skip, c_out = widths[i + 1], widths[i]
            sample = nn.ConvTranspose1d(c_out, c_out, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * c_skip, c_out), res(c_out, c_out), sample]))
        self.final = nn.Sequential(
            ConvBlock(widths[0], widths[0], kernel_size, n_groups),
            nn.Conv1d(widths[0], action_dim, 1),
        )
        self.head = nn.Linear(widths[-1], 1) if scalar_head else None

    def _encode(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, s: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """-> bottleneck (B, C, H'), skips, conditioning vector, local tokens (B, step_dim, H)."""
        g = self.time_out(self.time_in(t, s))
        local = None
        if self.obs_as_global_cond:
            g = torch.cat([g, cond], dim=-1)
        else:
            tokens = cond.reshape(cond.shape[0], self.obs_steps, -1).transpose(1, 2)
            local = nn.functional.pad(tokens, (0, self.horizon - self.obs_steps))
        x = x_t.transpose(1, 2)  # (B, A, H): channels first for Conv1d
        skips = []
        for i, (res1, res2, sample) in enumerate(self.down):
            x = res1(x, g)
            if i == 0 and local is not None:
                x = x + self.local_down(local, g)
            x = res2(x, g)
            skips.append(x)
            x = sample(x)
        for block in self.mid:
            x = block(x, g)
        return x, skips, g, local

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x, skips, g, local = self._encode(x_t, t, cond, s)
        for res1, res2, sample in self.up:
            x = res1(torch.cat([x, skips.pop()], dim=1), g)
            x = sample(res2(x, g))
        if local is not None:  # at full resolution, where the tokens are laid out
            x = x + self.local_up(local, g)
        return self.final(x).transpose(1, 2)

    def scalar(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 1) from the mean bottleneck features (needs `scalar_head: true`)."""
        if self.head is None:
            raise RuntimeError("ChiUNet.scalar needs the network built with scalar_head: true")
        x, _, _, _ = self._encode(x_t, t, cond, s)
        return self.head(x.mean(dim=-1))
