"""Flow policies over action chunks: the one interface Q-chunking's agents act and learn through.

Time convention (flow_bc.py's, one everywhere): t=0 noise, t=1 data,
x_t = (1 - t) x0 + t x1, target velocity u = x1 - x0. Actions are normalized chunks (B, H, A).

A `FlowPolicy` splits the velocity field into a prefix computed ONCE per observation and a
velocity evaluated every Euler step, so best-of-N (N candidates per observation) and the
10-step sampler never recompute the observation part:

    ctx = policy.prefix(obs)            obs {key: (B, 1, *shape)} normalized -> a tensor or a
                                        tuple of tensors, leading batch axis B
    ctx = repeat_rows(ctx, n)           each row n times (b0..b0, b1..b1, ...)
    v = policy.velocity(x_t, t, ctx)    (B, H, A), (B,) -> (B, H, A)
    t = policy.sample_time(B, device)   training times: uniform here, Beta(1.5, 1) for pi0
    policy.backbone_parameters()        what `freeze_backbone` freezes

`EncoderFlowPolicy` is the observation encoder (learning/networks/encoders.py) as the prefix and
any velocity network `net(x_t, t, cond)` (MLP, ChiUNet, ChiTransformer) as the velocity; the pi0
backbone (learning/networks/pi0.py) implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from episode_dataset import IMAGE
from learning.algorithms.flow_bc import euler_sample

Context = torch.Tensor | tuple[torch.Tensor, ...]


@runtime_checkable
class FlowPolicy(Protocol):
    """A velocity field over action chunks with a reusable observation prefix (module doc)."""

    horizon: int
    action_dim: int

    def prefix(self, obs: Mapping[str, torch.Tensor]) -> Context: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, ctx: Context) -> torch.Tensor: ...

    def sample_time(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...

    def backbone_parameters(self) -> Iterator[nn.Parameter]: ...


def repeat_rows(ctx: Context, n: int) -> Context:
    """Each batch row of `ctx` n times, row-major (b0 x n, b1 x n, ...): the layout of
    `noise.flatten(0, 1)` for noise (B, N, H, A)."""
    if isinstance(ctx, torch.Tensor):
        return ctx.repeat_interleave(n, dim=0)
    return tuple(c.repeat_interleave(n, dim=0) for c in ctx)


def flow_matching_loss(
    policy: FlowPolicy,
    obs: Mapping[str, torch.Tensor],
    actions: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L(theta) = E || v_theta(x_t, t, ctx) - (x1 - x0) ||^2 on normalized data chunks x1
    (B, H, A), x0 ~ N(0, I), t ~ policy.sample_time."""
    ctx = policy.prefix(obs)  # first: a random crop draws before the noise
    x1 = actions
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    t = policy.sample_time(x1.shape[0], x1.device, generator)
    tb = t[:, None, None]
    x_t = (1 - tb) * x0 + tb * x1  # x_t = (1 - t) x0 + t x1
    return F.mse_loss(policy.velocity(x_t, t, ctx), x1 - x0)


def euler_chunks(
    policy: FlowPolicy, ctx: Context, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """x_{k+1} = x_k + (1/steps) v(x_k, k/steps, ctx) from x_0 = noise (B, H, A) to t=1; the
    prefix `ctx` (B rows) is reused at every step. Differentiable (no no_grad here)."""
    return euler_sample(lambda x, t: policy.velocity(x, t, ctx), noise, steps)


class EncoderFlowPolicy(nn.Module):
    """prefix = encoder(obs) (B, obs_dim); velocity = network(x_t, t, prefix).

    `encoder` and `network` are factories (Hydra `_partial_`s), called as
    `encoder(obs_specs=, obs_steps=)` and `network(obs_dim=, action_dim=, horizon=, obs_steps=)`,
    as FlowBC calls them. The backbone (`freeze_backbone`) is the encoder's image encoders:
    the part one would load pretrained; a state-only policy has none.
    """

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        horizon: int,
        encoder: Callable[..., nn.Module],
        network: Callable[..., nn.Module],
        obs_steps: int = 1,
    ) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.encoder = encoder(obs_specs=obs_specs, obs_steps=obs_steps)
        self.network = network(
            obs_dim=self.encoder.out_dim,
            action_dim=action_dim,
            horizon=horizon,
            obs_steps=obs_steps,
        )
        self._has_images = any(s.get("feature_type") == IMAGE for s in obs_specs.values())

    def prefix(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(obs)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, ctx: Context) -> torch.Tensor:
        return self.network(x_t, t, ctx)

    def sample_time(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=device)  # t ~ U[0, 1]

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        if not self._has_images:
            return iter(())
        modules = [self.encoder.shared] if self.encoder.shared is not None else []
        modules += list(self.encoder.image_encoders.values())
        return (p for m in modules for p in m.parameters())
