"""Samplers: turn a trained network into samples, from noise x (t=0) to data (t=1).

`model_fn(x, t)` is the network with its conditioning bound: x (B, C, H, W), t (B,) in the
workspace convention -> the network output (velocity for flow matching, eps/x1/v for diffusion).

- `ODESampler`: integrates dx/dt = v(x, t) over t in [0, 1]. Fixed-step `euler`, `midpoint` and
  `rk4` are our own (rk4 is Kutta's 3/8 rule, the variant torchdiffeq calls rk4, so both agree to
  float precision); adaptive methods (`dopri5`, ...) go through torchdiffeq.
- `HFDiffusionSampler`: diffusers DDIM/DDPM reverse process built from the path's scheduler config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _at(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def euler_step(f: ModelFn, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    return x + dt * f(x, _at(t, x))


def midpoint_step(f: ModelFn, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    x_mid = x + 0.5 * dt * f(x, _at(t, x))
    return x + dt * f(x_mid, _at(t + 0.5 * dt, x))


def rk4_step(f: ModelFn, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """Kutta's 3/8 rule (4th order; torchdiffeq's `rk4`)."""
    k1 = f(x, _at(t, x))
    k2 = f(x + dt * k1 / 3, _at(t + dt / 3, x))
    k3 = f(x + dt * (k2 - k1 / 3), _at(t + 2 * dt / 3, x))
    k4 = f(x + dt * (k1 - k2 + k3), _at(t + dt, x))
    return x + dt * (k1 + 3 * (k2 + k3) + k4) / 8


# name -> (step function, network evaluations per step)
FIXED_STEP_METHODS: dict[str, tuple[Callable[..., torch.Tensor], int]] = {
    "euler": (euler_step, 1),
    "midpoint": (midpoint_step, 2),
    "rk4": (rk4_step, 4),
}
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")


class ODESampler:
    """Flow-matching sampler. `steps` is the number of fixed steps (ignored by adaptive methods,
    which use atol/rtol)."""

    def __init__(
        self, method: str = "midpoint", steps: int = 20, atol: float = 1e-5, rtol: float = 1e-5
    ):
        if method not in FIXED_STEP_METHODS and method not in ADAPTIVE_METHODS:
            raise ValueError(
                f"unknown ODE method {method!r}; choose from "
                f"{list(FIXED_STEP_METHODS) + list(ADAPTIVE_METHODS)}"
            )
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.method, self.steps, self.atol, self.rtol = method, steps, atol, rtol

    @property
    def deterministic(self) -> bool:
        """Fixed-step methods unroll into a static graph (ONNX export)."""
        return self.method in FIXED_STEP_METHODS

    @property
    def nfe(self) -> int | None:
        """Network evaluations per sample (None: adaptive, data dependent)."""
        if self.method in FIXED_STEP_METHODS:
            return FIXED_STEP_METHODS[self.method][1] * self.steps
        return None

    def time_grid(self) -> list[float]:
        return [i / self.steps for i in range(self.steps + 1)]

    def sample(
        self,
        path: object,
        model_fn: ModelFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x0 (noise, t=0) -> x1 (data, t=1). Deterministic; `generator` is unused."""
        if self.method in FIXED_STEP_METHODS:
            step = FIXED_STEP_METHODS[self.method][0]
            grid = self.time_grid()
            x = x0
            for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
                x = step(model_fn, x, t0, t1 - t0)
            return x
        from torchdiffeq import odeint

        t_span = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
        sol = odeint(
            lambda t, x: model_fn(x, _at(t, x)),
            x0,
            t_span,
            method=self.method,
            atol=self.atol,
            rtol=self.rtol,
        )
        return sol[-1]

    def describe(self) -> dict:
        return {"type": self.method, "steps": self.steps}

    def __repr__(self) -> str:
        return f"ODESampler(method={self.method!r}, steps={self.steps})"


DIFFUSION_SAMPLERS: dict[str, type] = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


class HFDiffusionSampler:
    """Reverse diffusion with a diffusers scheduler (`ddim` or `ddpm`) over `steps` timesteps.

    `eta` is DDIM's stochasticity (0 deterministic, 1 DDPM-like); DDPM is always stochastic.
    The scheduler is rebuilt from the training path's config, so betas always match training.
    """

    def __init__(self, sampler_type: str = "ddim", steps: int = 50, eta: float = 0.0):
        if sampler_type not in DIFFUSION_SAMPLERS:
            raise ValueError(
                f"unknown sampler_type {sampler_type!r}; choose from {list(DIFFUSION_SAMPLERS)}"
            )
        self.sampler_type, self.steps, self.eta = sampler_type, steps, eta
        self._schedulers: dict[int, tuple[DDIMScheduler | DDPMScheduler, list[int]]] = {}

    @property
    def deterministic(self) -> bool:
        return self.sampler_type == "ddim" and self.eta == 0.0

    @property
    def nfe(self) -> int:
        return self.steps

    def make_scheduler(self, path: object) -> DDIMScheduler | DDPMScheduler:
        config = dict(path.noise_scheduler.config)
        if self.sampler_type == "ddim":
            config.pop("variance_type", None)  # DDPM-only key
        scheduler = DIFFUSION_SAMPLERS[self.sampler_type].from_config(config)
        scheduler.set_timesteps(self.steps)
        return scheduler

    def sample(
        self,
        path: object,
        model_fn: ModelFn,
        x_noise: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        # One scheduler per path, built at the first (eager) call, with its timesteps as python
        # ints: torch.export then unrolls the loop over constants (a tensor's `int(k)` inside
        # an export trace is data-dependent and fails). step() keeps no state between calls.
        if id(path) not in self._schedulers:
            scheduler = self.make_scheduler(path)
            self._schedulers[id(path)] = (scheduler, [int(k) for k in scheduler.timesteps])
        scheduler, timesteps = self._schedulers[id(path)]
        extra = {"eta": self.eta} if self.sampler_type == "ddim" else {}
        x = x_noise
        for k in timesteps:
            step = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            t = path.timestep_to_time(step).to(x.dtype)
            out = model_fn(x, t)
            x = scheduler.step(out, k, x, generator=generator, **extra).prev_sample
        return x

    def describe(self) -> dict:
        return {"type": self.sampler_type, "steps": self.steps, "eta": self.eta}

    def __repr__(self) -> str:
        return f"HFDiffusionSampler(sampler_type={self.sampler_type!r}, steps={self.steps})"
