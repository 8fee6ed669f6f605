"""Mean-flow behaviour cloning (MFBC): a flow map learnt in one model, sampled in 1 NFE.

Same path and time convention as FBC (learning/algorithms/flow_bc.py): t=0 noise, t=1 data,
x_t = (1 - t) x0 + t x1, conditional velocity v = x1 - x0. The network gets a second time s
(`net(x_t, t, c, s)`) and predicts the *average* velocity from t to s along the flow through
x_t, so one call jumps there (MeanFlow, Geng et al. 2025):

    u(x_t, t, s) = 1/(s - t) int_t^s v(x_tau, tau) dtau        (u(x, t, t) = v(x, t))
    X_{t->s}(x_t) = x_t + (s - t) u(x_t, t, s)                 the flow map

Differentiating (s - t) u(x_t, t, s) = x_s - x_t along the flow (x moving with dx/dt, s held)
gives the MeanFlow identity the loss regresses onto:

    u_tgt = v - (t - s) du/dt,   du/dt = (dx/dt) . d_x u + d_t u      (one forward-mode JVP,
                                                                       tangent (dx/dt, 1) on
    L = E || u_theta(x_t, t, s) - sg(u_tgt) ||^2                       (x, t); s is held)

MFBC takes dx/dt = v, the conditional velocity (an unbiased estimate of the marginal one).
Times: (t, s) two U[0, 1] draws sorted so t <= s (toward the data), and with probability
`instant_prob` s = t (then the loss is FBC's flow matching). Sampling, `sampler_steps` jumps
over an even grid 0 = tau_0 < ... < tau_N = 1 (1 by default: one network call):

    x_{k+1} = x_k + (tau_{k+1} - tau_k) u_theta(x_k, tau_k, tau_{k+1})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from learning.algorithms.flow_bc import FlowBC
from learning.data.keys import ACTIONS

ADAPTIVE_C = 1e-3  # MeanFlow's c of the adaptive loss weight
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_flow_target(
    u: Velocity,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    tangent: torch.Tensor,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u(x_t, t), sg(u_tgt)) for `u(x, t)` the network at fixed s and condition.

    u_tgt = v - (t - s) du/dt, du/dt the total derivative along dx/dt = `tangent`, dt/dt = 1.
    The first output is the network's prediction (it carries the gradient).
    """
    pred, dudt = torch.func.jvp(u, (x_t, t), (tangent, torch.ones_like(t)))
    target = v - (t - s)[:, None, None] * dudt
    return pred, target.detach()


def flow_map_sample(u: Callable[..., torch.Tensor], x0: torch.Tensor, steps: int) -> torch.Tensor:
    """x_{k+1} = x_k + (tau_{k+1} - tau_k) u(x_k, tau_k, tau_{k+1}) over an even grid on [0, 1].

    `u(x, t, s)`; a python loop, unrolled by `torch.onnx.export`.
    """
    x, dt = x0, 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * dt, dtype=x.dtype, device=x.device)
        x = x + dt * u(x, t, t + dt)
    return x


class MFBC(FlowBC):
    """FBC's encoder, network and Lightning loop; the loss and the sampler of a flow map.

    `instant_prob`: fraction of samples with s = t. `sampler_steps`: flow-map jumps (NFE).
    """

    def __init__(self, instant_prob: float = 0.75, adaptive_p: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("sampler_steps", 1)
        super().__init__(**kwargs)  # FlowBC's arguments; it saves ours in hparams too
        if not 0.0 <= instant_prob <= 1.0:
            raise ValueError(f"instant_prob {instant_prob} is not in [0, 1]")

    def tangent(
        self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """dx/dt along which du/dt is taken: MFBC the conditional velocity v = x1 - x0."""
        return v

    def time_pair(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, s), t <= s, both in [0, 1]; s = t with probability `instant_prob`."""
        t, s = torch.rand(2, batch, generator=generator, device=device).sort(dim=0).values
        instant = torch.rand(batch, generator=generator, device=device) < self.hparams.instant_prob
        return t, torch.where(instant, t, s)

    def loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        c, x0, x1 = self.endpoints(batch, generator)
        t, s = self.time_pair(x1.shape[0], x1.device, generator)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        v = x1 - x0  # conditional velocity
        pred, target = mean_flow_target(
            lambda x, tt: self.network(x, tt, c, s), x_t, t, s, self.tangent(x_t, t, c, v), v
        )
        # ||delta||^2 per sample, delta = u_theta(x_t, t, s) - sg(v - (t - s) du/dt), weighted by
        # sg(1 / (||delta||^2 + c)^p) (MeanFlow's adaptive loss: large early targets would diverge)
        err = (pred - target).pow(2).flatten(1).mean(1)
        weight = (err.detach() + ADAPTIVE_C).pow(-self.hparams.adaptive_p)
        return (weight * err).mean()

    def predict_action_chunk(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor
    ) -> torch.Tensor:
        """obs[key] (B, obs_steps, *shape) raw, noise (B, H, A) -> actions (B, H, A) raw."""
        c = self.condition(obs)
        x1 = flow_map_sample(
            lambda x, t, s: self.network(x, t, c, s), noise, self.hparams.sampler_steps
        )
        return self.normalizer.unnormalize(ACTIONS, x1)

    def sampler_metadata(self) -> dict[str, Any]:
        return {"type": "mean_flow", "steps": self.hparams.sampler_steps}
