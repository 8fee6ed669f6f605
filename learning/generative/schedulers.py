"""Flow-matching schedulers: alpha_t, sigma_t and their time derivatives.

Convention: noise at t=0, data at t=1, x_t = alpha_t * x1 + sigma_t * x0, so the conditional
velocity is u_t = d_alpha_t * x1 + d_sigma_t * x0 (cond-OT: alpha=t, sigma=1-t, u = x1 - x0).
Meta's flow_matching uses the same convention, so its schedulers compare without conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SchedulerOutput:
    alpha_t: torch.Tensor
    sigma_t: torch.Tensor
    d_alpha_t: torch.Tensor
    d_sigma_t: torch.Tensor


class CondOTScheduler:
    """alpha = t, sigma = 1 - t (rectified flow / conditional optimal transport)."""

    def __call__(self, t: torch.Tensor) -> SchedulerOutput:
        one = torch.ones_like(t)
        return SchedulerOutput(t, 1 - t, one, -one)


class CosineScheduler:
    """alpha = sin(pi t / 2), sigma = cos(pi t / 2)."""

    def __call__(self, t: torch.Tensor) -> SchedulerOutput:
        a = 0.5 * math.pi * t
        half_pi = 0.5 * math.pi
        return SchedulerOutput(
            torch.sin(a), torch.cos(a), half_pi * torch.cos(a), -half_pi * torch.sin(a)
        )


class VPScheduler:
    """Variance preserving (Song et al. 2021) with linear beta(s) in [beta_min, beta_max].

    With s = 1 - t and T(s) = integral of beta = 0.5 s^2 (beta_max - beta_min) + s beta_min:
    alpha = exp(-T/2), sigma = sqrt(1 - exp(-T)). d_sigma diverges at t=1, so paths train
    on t < 1 - t_epsilon.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def __call__(self, t: torch.Tensor) -> SchedulerOutput:
        s = 1 - t
        big_t = 0.5 * s**2 * (self.beta_max - self.beta_min) + s * self.beta_min
        d_big_t = -s * (self.beta_max - self.beta_min) - self.beta_min  # dT/dt
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(1 - torch.exp(-big_t))
        return SchedulerOutput(
            alpha, sigma, -0.5 * d_big_t * alpha, 0.5 * d_big_t * torch.exp(-big_t) / sigma
        )


class LinearVPScheduler:
    """alpha = t, sigma = sqrt(1 - t^2) (variance preserving with a linear signal)."""

    def __call__(self, t: torch.Tensor) -> SchedulerOutput:
        sigma = torch.sqrt(1 - t**2)
        return SchedulerOutput(t, sigma, torch.ones_like(t), -t / sigma)


SCHEDULERS: dict[str, type] = {
    "condot": CondOTScheduler,
    "cosine": CosineScheduler,
    "vp": VPScheduler,
    "linear_vp": LinearVPScheduler,
}


def make_scheduler(name: str):
    """Scheduler by name (registry `SCHEDULERS`)."""
    if name not in SCHEDULERS:
        raise ValueError(
            f"unknown flow-matching scheduler {name!r}; choose from {list(SCHEDULERS)}"
        )
    return SCHEDULERS[name]()
