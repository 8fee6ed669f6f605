"""Flow-matching behaviour cloning (FBC) over action chunks.

Time convention (one, everywhere): t=0 is noise, t=1 is data.

    x0 ~ N(0, I)                       noise chunk          (B, H, A)
    x1 = normalize(actions)            expert chunk         (B, H, A)
    x_t = (1 - t) x0 + t x1            linear (rectified) path, t ~ U[0, 1]
    u_t = d x_t / dt = x1 - x0         target velocity
    L(theta) = E || v_theta(x_t, t, c) - u_t ||^2,   c = encoder(normalize(obs history))

Sampling integrates dx/dt = v_theta(x, t, c) from t=0 to 1 with fixed-step Euler:

    x_{k+1} = x_k + (1/N) v_theta(x_k, k/N, c),   k = 0 .. N-1

The network (`v_theta`) and the observation encoder are injected as `_partial_` factories so any
velocity network with the call `net(x_t, t, cond)` plugs in (MLP, ChiUNet, DiT, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from learning.algorithms.acting import acting_fields, example_observations
from learning.data.keys import ACTIONS, OBS
from learning.normalization import Normalizer


def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t=0 (x0, noise) to t=1 in `steps` Euler steps.

    A python loop: `torch.onnx.export` unrolls it into the graph.
    """
    x, dt = x0, 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * dt, dtype=x.dtype, device=x.device)
        x = x + dt * velocity(x, t)
    return x


class FlowBC(L.LightningModule):
    """Flow-matching BC. Data-derived args (obs_specs, action_dim, normalization,
    control_rate_hz, action_bounds) come from the DataModule's `model_kwargs()`."""

    def __init__(
        self,
        network: Callable[..., nn.Module],
        encoder: Callable[..., nn.Module],
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        normalization: Mapping[str, Mapping[str, Any]],
        obs_steps: int,
        horizon: int,
        n_action_steps: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        sampler_steps: int = 10,
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= n_action_steps <= horizon:
            raise ValueError(f"n_action_steps {n_action_steps} is not in [1, horizon {horizon}]")
        # Plain data in hparams (checkpoint, metadata); factories are rebuilt from the config.
        self.save_hyperparameters(ignore=["network", "encoder", "optimizer", "scheduler"])
        self.obs_keys = sorted(obs_specs)
        self.normalizer = Normalizer(normalization)
        self.encoder = encoder(obs_specs=obs_specs, obs_steps=obs_steps)
        self.network = network(
            obs_dim=self.encoder.out_dim,
            action_dim=action_dim,
            horizon=horizon,
            obs_steps=obs_steps,
        )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    # ---- maths ---------------------------------------------------------------------------
    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """obs[key] (B, obs_steps, *shape) raw -> the same keys normalized (encoder input)."""
        return {k: self.normalizer.normalize(k, obs[k]) for k in self.obs_keys}

    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs[key] (B, obs_steps, *shape) raw -> c (B, obs_feature_dim)."""
        return self.encoder(self.normalize_obs(obs))

    def endpoints(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c, x0, x1): the condition, a noise chunk and the normalized data chunk (B, H, A)."""
        c = self.condition(batch[OBS])  # first: a random crop draws before the noise
        x1 = self.normalizer.normalize(ACTIONS, batch[ACTIONS])  # data
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)  # noise
        return c, x0, x1

    def loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        c, x0, x1 = self.endpoints(batch, generator)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device)  # t ~ U[0, 1]
        tb = t[:, None, None]
        x_t = (1 - tb) * x0 + tb * x1  # x_t = (1 - t) x0 + t x1
        u_t = x1 - x0  # target velocity
        v = self.network(x_t, t, c)
        return F.mse_loss(v, u_t)  # E || v_theta(x_t, t, c) - (x1 - x0) ||^2

    def predict_action_chunk(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor
    ) -> torch.Tensor:
        """obs[key] (B, obs_steps, *shape) raw, noise (B, H, A) -> actions (B, H, A) raw."""
        c = self.condition(obs)
        x1 = euler_sample(lambda x, t: self.network(x, t, c), noise, self.hparams.sampler_steps)
        return self.normalizer.unnormalize(ACTIONS, x1)

    # ---- Lightning -----------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # sync_dist: under DDP every rank logs (and checkpoints by) the mean over all ranks.
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def _eval_step(self, batch: Mapping[str, Any], batch_idx: int, split: str) -> torch.Tensor:
        # Fixed noise per batch index: the validation loss is comparable across epochs.
        gen = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.loss(batch, generator=gen)
        noise = torch.randn(batch[ACTIONS].shape, generator=gen, device=self.device)
        action_mse = F.mse_loss(self.predict_action_chunk(batch[OBS], noise), batch[ACTIONS])
        self.log(f"{split}_loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{split}_action_mse", action_mse, sync_dist=True)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.scheduler_factory(optimizer=opt)}

    # ---- export --------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, Any]:
        """The policy part of the ONNX `roboloop` metadata (see docs/export_contract.md)."""
        hp = self.hparams
        fields = acting_fields(
            "policy",
            hp,
            obs_steps=hp.obs_steps,
            horizon=hp.horizon,
            n_action_steps=hp.n_action_steps,
            stats=self.normalizer.stats,
        )
        return {**fields, "sampler": self.sampler_metadata()}

    def sampler_metadata(self) -> dict[str, Any]:
        """How `predict_action_chunk` turns noise into actions (metadata `sampler`)."""
        return {"type": "euler", "steps": self.hparams.sampler_steps}

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        """(module, example inputs by ONNX name, output names) for `learning.export`."""
        hp = self.hparams
        example = example_observations(hp.obs_specs, hp.obs_steps)
        example["noise"] = torch.zeros(2, hp.horizon, hp.action_dim)
        return _PolicyGraph(self), example, ["actions"]


class _PolicyGraph(nn.Module):
    """forward(*obs in sorted key order, noise) -> actions: what the ONNX file computes."""

    def __init__(self, model: FlowBC) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *obs, noise = inputs
        named = dict(zip(self.model.obs_keys, obs, strict=True))
        return self.model.predict_action_chunk(named, noise)
