"""Optional adapter to Meta's `flow_matching` library (CC BY-NC 4.0: non-commercial only).

Not a dependency: install with `pip install -c constraints.txt flow_matching==1.0.10` (the
constraints file keeps torch pinned). Drop-in replacements for our path and sampler:

    model.path._target_=learning.generative.fm_library.MetaFlowMatchingPath
    model.sampler._target_=learning.generative.fm_library.MetaODESampler

Time convention at this edge: flow_matching also puts noise at t=0 and data at t=1 with
x_t = alpha_t x1 + sigma_t x0, so `to_library_time` is the identity; it is kept as the one
place a future convention change would go. Its ODE solver is torchdiffeq on a time grid.
"""

from __future__ import annotations

import torch

from learning.generative.paths import TrainingPair
from learning.generative.samplers import ADAPTIVE_METHODS, FIXED_STEP_METHODS, ModelFn

_INSTALL = "pip install -c constraints.txt flow_matching==1.0.10 (CC BY-NC 4.0)"


def _library():
    try:
        import flow_matching.path as fm_path
        import flow_matching.path.scheduler as fm_sched
        import flow_matching.solver as fm_solver
    except ImportError as err:
        raise ImportError(f"Meta's flow_matching is not installed: {_INSTALL}") from err
    return fm_path, fm_sched, fm_solver


def library_scheduler(name: str):
    """The library's scheduler for one of our scheduler names."""
    _, sched, _ = _library()
    table = {
        "condot": sched.CondOTScheduler,
        "cosine": sched.CosineScheduler,
        "vp": sched.VPScheduler,
        "linear_vp": sched.LinearVPScheduler,
    }
    if name not in table:
        raise ValueError(f"unknown flow-matching scheduler {name!r}; choose from {list(table)}")
    return table[name]()


def to_library_time(t: torch.Tensor) -> torch.Tensor:
    """Workspace t -> flow_matching t (same convention: noise 0, data 1)."""
    return t


class MetaFlowMatchingPath:
    """`FlowMatchingPath` twin backed by flow_matching's `AffineProbPath` (same RNG draws)."""

    prediction = "velocity"

    def __init__(self, scheduler: str = "condot", t_epsilon: float = 1e-3):
        fm_path, _, _ = _library()
        self.scheduler_name = scheduler
        self.path = fm_path.AffineProbPath(scheduler=library_scheduler(scheduler))
        self.t_epsilon = t_epsilon

    def interpolate(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.path.sample(x_0=x0, x_1=x1, t=to_library_time(t))
        return out.x_t, out.dx_t

    def sample(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> TrainingPair:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
        t = t * (1 - self.t_epsilon)
        x_t, u_t = self.interpolate(x0, x1, t)
        return TrainingPair(x_t, t, u_t)


class MetaODESampler:
    """`ODESampler` twin backed by flow_matching's `ODESolver` (torchdiffeq underneath).

    Fixed-step methods run on the grid linspace(0, 1, steps + 1), like ours.
    """

    def __init__(
        self, method: str = "midpoint", steps: int = 20, atol: float = 1e-5, rtol: float = 1e-5
    ):
        if method not in FIXED_STEP_METHODS and method not in ADAPTIVE_METHODS:
            raise ValueError(f"unknown ODE method {method!r}")
        _library()
        self.method, self.steps, self.atol, self.rtol = method, steps, atol, rtol

    def sample(
        self,
        path: object,
        model_fn: ModelFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        _, _, fm_solver = _library()

        def velocity(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
            return model_fn(x, to_library_time(t).to(x.dtype).expand(x.shape[0]))

        fixed = self.method in FIXED_STEP_METHODS
        n = self.steps + 1 if fixed else 2
        grid = torch.linspace(0.0, 1.0, n, dtype=x0.dtype, device=x0.device)
        solver = fm_solver.ODESolver(velocity_model=velocity)
        return solver.sample(
            x_init=x0,
            step_size=None,
            method=self.method,
            atol=self.atol,
            rtol=self.rtol,
            time_grid=grid,
        )

    def describe(self) -> dict:
        return {"type": self.method, "steps": self.steps}
