"""Training stops at the first non-finite loss and never writes a non-finite checkpoint.

`train.py` adds `FiniteGuard` to the callbacks of every run. Without it one NaN (from the data,
a too large learning rate, an overflow) trains on to a `val_lossnan.ckpt` that exports and
serves NaN actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch


class NonFiniteError(RuntimeError):
    """A non-finite training loss, weight or monitored metric (the message names the step)."""


def _where(trainer: L.Trainer) -> str:
    # total_batch_idx counts training batches over all epochs (0-based): the step of the loss.
    loop = trainer.fit_loop
    return f"step {loop.total_batch_idx} (epoch {trainer.current_epoch}, batch {loop.batch_idx})"


class FiniteGuard(L.Callback):
    """Raise NonFiniteError on a non-finite training loss, and before saving a checkpoint whose
    weights or monitored/loss metrics are not finite (the file is then never written)."""

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        # One host sync per step: small next to a training step (AMP's scaler syncs anyway).
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            raise NonFiniteError(
                f"non-finite training loss ({float(loss)}) at {_where(trainer)}; "
                "training stopped, no checkpoint written after it"
            )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for name, value in checkpoint.get("state_dict", {}).items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteError(
                    f"weight {name} is not finite at {_where(trainer)}; checkpoint not written"
                )
        monitored = {cb.monitor for cb in trainer.checkpoint_callbacks if cb.monitor}
        for key, value in trainer.callback_metrics.items():
            if (key in monitored or key.endswith("loss")) and not bool(torch.isfinite(value)):
                raise NonFiniteError(
                    f"{key} is {float(value)} at {_where(trainer)}; checkpoint not written"
                )
