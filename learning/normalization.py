"""Normalization statistics (numpy, JSON-able) and the torch module that applies them.

Stats are computed once from the training split and travel with the model: as buffers in the
checkpoint and baked into the ONNX graph. Per key, one affine map y = (x - center) / scale:

    mean_std : center = mean,            scale = std              -> zero mean, unit variance
    min_max  : center = (max + min) / 2, scale = (max - min) / 2  -> [-1, 1]
    image    : center = 0,               scale = 255              -> uint8 pixels to [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from roboloop_runtime import observation_affine


def compute_stats(data: np.ndarray, mode: str) -> dict[str, Any]:
    """data: (N, *shape) -> JSON-able stats dict for `mode` (lists of floats)."""
    if mode == "image":
        return {"mode": "image"}
    x = data.astype(np.float64)  # stats keep the per-step shape (nested lists)
    if mode == "mean_std":
        return {"mode": mode, "mean": x.mean(0).tolist(), "std": x.std(0).tolist()}
    if mode == "min_max":
        return {"mode": mode, "min": x.min(0).tolist(), "max": x.max(0).tolist()}
    raise ValueError(f"unknown normalization mode {mode!r} (mean_std, min_max, image)")


def affine(stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) float32 of y = (x - center) / scale (the runtime's own computation, so
    the graph and the policy node's observation checks agree)."""
    center, scale = observation_affine(stats)
    return center.astype(np.float32), scale.astype(np.float32)


class Normalizer(nn.Module):
    """Applies per-key stats to tensors (..., *shape); any leading axes broadcast."""

    def __init__(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        self.stats = {k: dict(v) for k, v in stats.items()}
        for key, s in self.stats.items():
            center, scale = affine(s)
            self.register_buffer(f"{key}_center", torch.from_numpy(center))
            self.register_buffer(f"{key}_scale", torch.from_numpy(scale))

    def _affine(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        center, scale = getattr(self, f"{key}_center"), getattr(self, f"{key}_scale")
        return center, scale  # per-step shape: broadcasts over leading (B, T, ...) axes

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        center, scale = self._affine(key)
        return (x.float() - center) / scale

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        center, scale = self._affine(key)
        return y * scale + center
