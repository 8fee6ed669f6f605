"""Checkpoints that can rebuild their model without the training script.

`train.py` adds `RecordConfig` to the callbacks, so every Lightning checkpoint carries the
resolved training config and the data-derived model arguments (`model_kwargs`: shapes,
normalization stats). `load_model` re-instantiates `cfg.model` from them and loads the weights:
one generic path for every algorithm, used by export and `TorchPolicy`.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

CONFIG_KEY = "roboloop_config"
MODEL_KWARGS_KEY = "roboloop_model_kwargs"


class RecordConfig(L.Callback):
    """Store the training config and data-derived model kwargs in every checkpoint."""

    def __init__(self, config: dict[str, Any], model_kwargs: dict[str, Any]) -> None:
        self.config, self.model_kwargs = config, model_kwargs

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[MODEL_KWARGS_KEY] = self.model_kwargs


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not written by `learning.train`."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises whatever its unpickler meets in a corrupt file
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {first})"
        ) from None
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt:
        raise CheckpointError(
            f"{path}: checkpoint has no {CONFIG_KEY!r} (not written by learning.train)"
        )
    return ckpt


def load_model(path: str | os.PathLike) -> tuple[L.LightningModule, dict[str, Any]]:
    """(model in eval mode on CPU, training config) from a `learning.train` checkpoint."""
    ckpt = read_checkpoint(path)
    cfg = ckpt[CONFIG_KEY]
    model = instantiate(cfg["model"], _convert_="all", **ckpt[MODEL_KWARGS_KEY])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg
