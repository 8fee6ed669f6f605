"""A Lightning callback for data-parallel tests: every rank writes what it trained on, its
weights before and after and its logged metrics, `rank{global_rank}.pt`, so a test can compare
ranks after a DDP run (Lightning's own checkpoints are written by rank 0 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric import Fabric

from learning.algorithms.dreamer import Dreamer
from learning.algorithms.ppo import PPO
from learning.algorithms.sac import SAC
from learning.data.keys import ACTIONS
from learning.online.algorithm import Transition


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class SaveRankState(L.Callback):
    """At the end of fit, on each rank: {"first_batch": the actions of its first training batch,
    "steps", "initial", "final" (state dicts), "metrics"} -> `out_dir/rank{global_rank}.pt`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["initial"] = _weights(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.record.setdefault("first_batch", batch[ACTIONS].detach().cpu().clone())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["final"] = _weights(pl_module)
        self.record["steps"] = trainer.global_step
        self.record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


class Recording:
    """An online algorithm that writes, on each rank, the first observations it collected, its
    weights before the first update ("initial") and after each update ("state_dict", and the
    names of its "parameters", the rest being buffers such as normalization statistics):
    `record_dir/rank{rank}_update{n}.pt` (data-parallel tests). Mixed in before the algorithm."""

    def __init__(self, record_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_dir = Path(record_dir)
        self.first_obs: dict[str, torch.Tensor] | None = None
        self.initial: dict[str, torch.Tensor] = {}
        self.updates = 0

    def observe(self, storage: Any, step: Transition) -> None:
        if self.first_obs is None:
            self.first_obs = {k: v.clone() for k, v in step.obs.items()}
            self.initial = _weights(self)
        super().observe(storage, step)

    def update(self, fabric: Fabric, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        scalars = super().update(fabric, *args, **kwargs)
        self.updates += 1
        self.record_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "first_obs": self.first_obs,
            "initial": self.initial,
            "state_dict": _weights(self),
            "parameters": [name for name, _ in self.named_parameters()],
        }
        torch.save(record, self.record_dir / f"rank{fabric.global_rank}_update{self.updates}.pt")
        return scalars


class RecordingPPO(Recording, PPO):
    """PPO, recorded per rank."""


class RecordingSAC(Recording, SAC):
    """SAC, recorded per rank."""


class RecordingDREAMER(Recording, Dreamer):
    """Dreamer, recorded per rank."""
