"""Probability paths: how a training pair (x_t, t, regression target) is drawn from clean x1.

Every path speaks the workspace convention (noise t=0, data t=1) to the network: the network
always sees t in [0, 1]. `FlowMatchingPath` regresses the conditional velocity; `HFDiffusionPath`
wraps a diffusers noise scheduler and converts its integer timesteps k (k=0 clean end,
k=T-1 noise end) to t = 1 - k / T at this edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from learning.generative.schedulers import make_scheduler


@dataclass
class TrainingPair:
    x_t: torch.Tensor  # (B, C, H, W) point on the path
    t: torch.Tensor  # (B,) time in [0, 1], workspace convention
    target: torch.Tensor  # (B, C, H, W) what the network regresses


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class FlowMatchingPath:
    """Affine flow-matching path x_t = alpha_t x1 + sigma_t x0, target u_t = a'_t x1 + s'_t x0.

    Lipman et al. 2023, eq. (Conditional Flow Matching): L = E ||v(x_t, t) - u_t(x_t | x1)||^2,
    x0 ~ N(0, I), t ~ U[0, 1 - t_epsilon] (vp/linear_vp have d_sigma -> inf at t=1).
    """

    prediction = "velocity"

    def __init__(self, scheduler: str = "condot", t_epsilon: float = 1e-3):
        self.scheduler_name = scheduler
        self.scheduler = make_scheduler(scheduler)
        self.t_epsilon = t_epsilon

    def interpolate(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x_t, u_t) for noise x0, data x1 and times t (B,)."""
        s = self.scheduler(t)
        alpha, sigma = _expand(s.alpha_t, x1), _expand(s.sigma_t, x1)
        d_alpha, d_sigma = _expand(s.d_alpha_t, x1), _expand(s.d_sigma_t, x1)
        return alpha * x1 + sigma * x0, d_alpha * x1 + d_sigma * x0

    def sample(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> TrainingPair:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
        t = t * (1 - self.t_epsilon)
        x_t, u_t = self.interpolate(x0, x1, t)
        return TrainingPair(x_t, t, u_t)

    def __repr__(self) -> str:
        return f"FlowMatchingPath(scheduler={self.scheduler_name!r})"


class HFDiffusionPath:
    """DDPM forward process from a diffusers scheduler built from config (no download).

    Ho et al. 2020: x_k = sqrt(abar_k) x1 + sqrt(1 - abar_k) eps; the network regresses eps
    (`prediction_type: epsilon`), x1 (`sample`) or v (`v_prediction`).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_sample: bool = True,
    ):
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(
                f"prediction_type {prediction_type!r} not in epsilon|sample|v_prediction"
            )
        self.prediction = prediction_type
        self.num_train_timesteps = num_train_timesteps
        # diffusers raises NotImplementedError naming the schedule if it is unknown.
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
        )

    def timestep_to_time(self, k: torch.Tensor) -> torch.Tensor:
        """diffusers timestep k (0 = clean end) -> workspace t (1 = data end)."""
        return 1.0 - k.float() / self.num_train_timesteps

    def sample(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> TrainingPair:
        b = x1.shape[0]
        k = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=x1.device)
        noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x_t = self.noise_scheduler.add_noise(x1, noise, k)
        if self.prediction == "epsilon":
            target = noise
        elif self.prediction == "sample":
            target = x1
        else:
            target = self.noise_scheduler.get_velocity(x1, noise, k)
        return TrainingPair(x_t, self.timestep_to_time(k).to(x1.dtype), target)

    def __repr__(self) -> str:
        cfg = self.noise_scheduler.config
        return f"HFDiffusionPath({cfg.beta_schedule!r}, prediction={self.prediction!r})"
