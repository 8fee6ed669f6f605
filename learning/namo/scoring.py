"""Q-function scorers for either file: the torch backend of a .ckpt, and `make_scorer`.

    scorer = make_scorer("q_function.onnx", device="cpu")     # or a .ckpt (torch backend)
    result = scorer.score(state_masks, action_masks)          # see sim.namo.scoring

The ONNX backend (`OnnxQScorer`) is torch-free and lives in `sim.namo.scoring`; torch is
imported only when a .ckpt is scored, so the learned planners stay torch-free on .onnx models.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sim.namo.layout import check_batch
from sim.namo.scoring import OnnxQScorer, QScorer, ScoreResult, score_result


class TorchQScorer:
    """torch backend: a QFunctionNet checkpoint (or module) on cpu/cuda."""

    def __init__(self, model: Any, device: str = "cpu") -> None:
        import torch

        from learning.checkpoint import load_lightning
        from learning.namo.model import QFunctionNet

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TorchQScorer: device='cuda' requested but CUDA is not available")
        if isinstance(model, (str, os.PathLike)):  # weights only, the workspace's class
            model = load_lightning(QFunctionNet, model)
        self.torch = torch
        self.device = torch.device(device)
        self.net = model.to(self.device).eval()
        self.provider = f"torch-{self.device.type}"
        self.input_hw = tuple(int(d) for d in self.net.hparams.input_shape)
        self.fallback_reason = None

    def score(self, state_masks: np.ndarray, action_masks: np.ndarray) -> ScoreResult:
        torch = self.torch
        start = time.perf_counter()
        s, a = check_batch(state_masks, action_masks)
        with torch.inference_mode():
            q = self.net(
                torch.from_numpy(np.ascontiguousarray(s)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(a)).to(self.device),
            )
            q = q.float().cpu().numpy()
        return score_result(q, start)


# Backend by model file suffix.
SCORERS: dict[str, Callable[..., QScorer]] = {
    ".onnx": lambda path, device, threads: OnnxQScorer(path, device, threads),
    ".ckpt": lambda path, device, threads: TorchQScorer(path, device),
}


def make_scorer(
    path: str | os.PathLike, device: str = "auto", threads: int | None = None
) -> QScorer:
    """A scorer for an exported .onnx or a Lightning .ckpt."""
    suffix = Path(path).suffix
    if suffix not in SCORERS:
        raise ValueError(
            f"{path}: unknown Q-function file type {suffix!r} (use {sorted(SCORERS)})"
        )
    return SCORERS[suffix](path, device, threads)
