"""Batch-scoring latency of the NAMO Q-function: the 32 proposals of one state in one batch.

    python -m bench.q_scoring_latency [--quick] [--ckpt PATH.ckpt]

Backends: ONNX on CPUExecutionProvider, torch CPU, and CUDA (torch + onnxruntime's CUDA
provider) when present. One call = 11 state masks broadcast to K proposals + K action-mask pairs
-> K Q-values (learning.namo.scoring, the code path of the planner and the q_scorer node).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from episode_dataset.ranges import HelpFormatter
from learning.checkpoint import load_lightning
from learning.export import export_model
from learning.namo.model import QFunctionNet
from learning.namo.scoring import TorchQScorer
from sim.namo.scoring import OnnxQScorer, QScorer

NAME = "q_scoring_latency"
PROPOSALS = 32
SIZE = 224


def _time(scorer: QScorer, state: np.ndarray, actions: np.ndarray, repeats: int) -> list[float]:
    scorer.score(state, actions)  # warm-up (allocations, CUDA context, ort graph init)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scorer.score(state, actions)
        times.append(time.perf_counter() - start)
    return times


def measure(quick: bool = False, ckpt: str | None = None) -> list[dict]:
    """One row per (mask size, backend): median/p95 ms for a batch of 32 proposals."""
    repeats = 5 if quick else 30
    if ckpt:
        model = load_lightning(QFunctionNet, ckpt)
    else:
        torch.manual_seed(0)
        model = QFunctionNet().eval()  # the config's default architecture, untrained weights
    rows: list[dict] = []
    # 224: the SPEC mask size; the checkpoint's own mask size is what the planner renders.
    for size in dict.fromkeys((SIZE, int(model.hparams.input_shape[0]))):
        rows += _measure_size(model, size, repeats, "checkpoint" if ckpt else "untrained")
    return rows


def _measure_size(model: QFunctionNet, size: int, repeats: int, weights: str) -> list[dict]:
    threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    state = rng.random((11, size, size), dtype=np.float32)
    actions = (rng.random((PROPOSALS, 2, size, size)) > 0.9).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "q.onnx"
        export_model(model, onnx_path, mask_size=(size, size))
        scorers: list[QScorer] = [
            OnnxQScorer(onnx_path, device="cpu", threads=threads),
            TorchQScorer(model, device="cpu"),
        ]
        if torch.cuda.is_available():
            scorers.append(TorchQScorer(model, device="cuda"))
        cuda_onnx = OnnxQScorer(onnx_path, device="auto")
        if cuda_onnx.provider == "CUDAExecutionProvider":
            scorers.append(cuda_onnx)
        for scorer in scorers:
            times = np.asarray(_time(scorer, state, actions, repeats)) * 1e3
            rows.append(
                {
                    "backend": "onnx" if isinstance(scorer, OnnxQScorer) else "torch",
                    "provider": scorer.provider,
                    "proposals": PROPOSALS,
                    "input": f"{size}x{size}",
                    "threads": threads,
                    "median_ms": round(float(np.median(times)), 3),
                    "p95_ms": round(float(np.percentile(times, 95)), 3),
                    "per_proposal_ms": round(float(np.median(times)) / PROPOSALS, 4),
                    "repeats": repeats,
                    "weights": weights,
                }
            )
    return rows


def run(quick: bool = False, ckpt: str | None = None) -> list[dict]:
    """Measure, print the table and write bench/results/q_scoring_latency.json; returns rows."""
    from bench.report import report

    rows = measure(quick=quick, ckpt=ckpt)
    report(NAME, rows, note="one call = the K=32 proposals of one state, scored in one batch")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.q_scoring_latency",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 30")
    parser.add_argument(
        "--ckpt", default=None, help="QFunctionNet checkpoint (default: untrained)"
    )
    args = parser.parse_args()
    run(quick=args.quick, ckpt=args.ckpt)


if __name__ == "__main__":
    main()
