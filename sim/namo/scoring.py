"""Score K proposals of one state with a Q-function (ROS-free; used by the planner and q_scorer).

    scorer = make_scorer("q_function.onnx", device="cpu")     # or a .ckpt (torch backend)
    result = scorer.score(state_masks, action_masks)
        # state_masks (K, 11, H, W) or (11, H, W) shared by all K; action_masks (K, 2, H, W)
    result.q_values (K,), result.best_index, result.latency_s; scorer.provider

All K proposals go through the network in one batch. The ONNX backend is torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from learning.namo.layout import check_batch


@dataclass(frozen=True)
class ScoreResult:
    q_values: np.ndarray  # (K,) float32
    best_index: int
    latency_s: float  # network time for the batch (includes host<->device copies)


class QScorer(Protocol):
    provider: str
    input_hw: tuple[int, ...]  # mask (H, W) the model was trained on / exported for

    def score(self, state_masks: np.ndarray, action_masks: np.ndarray) -> ScoreResult: ...


def _result(q: np.ndarray, start: float) -> ScoreResult:
    q = np.asarray(q, np.float32).reshape(-1)
    return ScoreResult(q, int(np.argmax(q)), time.perf_counter() - start)


class OnnxQScorer:
    """onnxruntime backend (roboloop_runtime.OnnxModel; model_type must be q_function)."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        from roboloop_runtime import ModelLoadError, OnnxModel

        self.model = OnnxModel(path, device=device, threads=threads)
        if self.model.metadata["model_type"] != "q_function":
            raise ModelLoadError(
                f"{self.model.path}: model_type {self.model.metadata['model_type']!r} "
                "is not a q_function"
            )
        self.provider: str = self.model.provider
        self.fallback_reason: str | None = self.model.fallback_reason
        self.input_hw = tuple(self.model.input_specs["state_masks"][0][2:])

    def score(self, state_masks: np.ndarray, action_masks: np.ndarray) -> ScoreResult:
        start = time.perf_counter()
        s, a = check_batch(state_masks, action_masks)
        out = self.model.run({"state_masks": np.ascontiguousarray(s), "action_masks": a})
        return _result(out["q_values"], start)


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
        return _result(q, start)


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
