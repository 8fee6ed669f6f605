"""Score K proposals of one state with an exported Q-function (torch-free, ROS-free).

    scorer = OnnxQScorer("q_function.onnx", device="cpu")
    result = scorer.score(state_masks, action_masks)
        # state_masks (K, 11, H, W) or (11, H, W) shared by all K; action_masks (K, 2, H, W)
    result.q_values (K,), result.best_index, result.latency_s; scorer.provider

All K proposals go through the network in one batch. Used by the q_scorer node and the learned
planners; the torch backend of a .ckpt and `make_scorer` (either file) are in
`learning.namo.scoring`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from roboloop_runtime import ModelLoadError, OnnxModel
from sim.namo.layout import check_batch


@dataclass(frozen=True)
class ScoreResult:
    q_values: np.ndarray  # (K,) float32
    best_index: int
    latency_s: float  # network time for the batch (includes host<->device copies)


class QScorer(Protocol):
    provider: str
    input_hw: tuple[int, ...]  # mask (H, W) the model was trained on / exported for

    def score(self, state_masks: np.ndarray, action_masks: np.ndarray) -> ScoreResult: ...


def score_result(q: np.ndarray, start: float) -> ScoreResult:
    """Q-values of a batch (any shape of K values) and the time since `start`."""
    q = np.asarray(q, np.float32).reshape(-1)
    return ScoreResult(q, int(np.argmax(q)), time.perf_counter() - start)


class OnnxQScorer:
    """onnxruntime backend (roboloop_runtime.OnnxModel; model_type must be q_function)."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
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
        return score_result(out["q_values"], start)
