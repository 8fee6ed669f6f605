"""A Lightning callback for data-parallel tests: every rank writes what it trained on, its
weights before and after and its logged metrics, `rank{global_rank}.pt`, so a test can compare
ranks after a DDP run (Lightning's own checkpoints are written by rank 0 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from learning.data.keys import ACTIONS


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
