"""Policy latency: onnxruntime vs eager torch, `predict_action_chunk` at batch 1 and 64.

    python -m bench.policy_latency [--quick] [--ckpt PATH]

Each (backend, batch) is timed in its own subprocess (no shared allocator/thread-pool state;
the onnxruntime worker never imports torch), both on 1 intra-op thread. Without --ckpt a
Reacher-sized FBC model (10-d state, obs_steps 2, horizon 8, 2-d actions, MLP 256x3,
10 Euler steps) is built with random weights: latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset import IMAGE
from episode_dataset.ranges import POSITIVE_INT, HelpFormatter

NAME = "policy_latency"
BATCHES = (1, 64)


def _toy_checkpoint(path: Path) -> Path:
    """A checkpoint `learning.checkpoint.load_model` can rebuild, with random weights."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY
    from learning.train import compose_config

    cfg = compose_config("train_fbc", ["dataset=none", "run_dir=none"])
    state, act = 10, 2
    kwargs = {
        "obs_specs": {"state": {"shape": [state], "dtype": "float32", "feature_type": "low_dim"}},
        "action_dim": act,
        "normalization": {
            "state": {"mode": "mean_std", "mean": [0.0] * state, "std": [1.0] * state},
            "actions": {"mode": "min_max", "min": [-1.0] * act, "max": [1.0] * act},
        },
        "control_rate_hz": 50.0,
        "action_bounds": {"low": [-1.0] * act, "high": [1.0] * act, "source": "env"},
    }
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all", **kwargs)
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save(
        {"state_dict": model.state_dict(), CONFIG_KEY: config, MODEL_KWARGS_KEY: kwargs}, path
    )
    return path


def _worker(backend: str, model_path: str, batch: int, iters: int) -> dict[str, float]:
    """Runs in a subprocess: time predict_action_chunk, return ms statistics."""
    if backend == "onnxruntime":
        from roboloop_runtime import OnnxPolicy

        policy = OnnxPolicy(model_path, device="cpu", threads=1)
    else:
        import torch

        torch.set_num_threads(1)
        from learning.torch_policy import TorchPolicy

        policy = TorchPolicy.from_checkpoint(model_path)
    m = policy.metadata
    rng = np.random.default_rng(0)
    obs = {
        k: (
            rng.integers(0, 256, (batch, m.obs_steps, *s.shape), dtype=np.uint8)
            if s.feature_type == IMAGE
            else rng.standard_normal((batch, m.obs_steps, *s.shape)).astype(s.dtype)
        )
        for k, s in m.observations.items()
    }
    for _ in range(max(5, iters // 10)):
        policy.predict_action_chunk(obs)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        policy.predict_action_chunk(obs)
        times.append((time.perf_counter() - t0) * 1e3)
    torch_loaded = "torch" in sys.modules
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "torch_imported": torch_loaded,
    }


def _measure(backend: str, model_path: Path, batch: int, iters: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.policy_latency",
        "--worker",
        backend,
        "--model",
        str(model_path),
        "--batch",
        str(batch),
        "--iters",
        str(iters),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(quick: bool, ckpt: str | None = None) -> list[dict]:
    from bench.report import latency_columns
    from learning.export import export_checkpoint

    iters = 50 if quick else 300
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        ckpt_path = Path(ckpt) if ckpt else _toy_checkpoint(Path(tmp) / "toy.ckpt")
        onnx_path = Path(tmp) / "policy.onnx"
        meta = export_checkpoint(ckpt_path, onnx_path)
        rows = []
        for batch in BATCHES:
            ort = _measure("onnxruntime", onnx_path, batch, iters)
            eager = _measure("torch", ckpt_path, batch, iters)
            assert not ort["torch_imported"], "onnxruntime worker imported torch"
            rows.append(
                {
                    "batch": batch,
                    "sampler_steps": meta["sampler"]["steps"],
                    **latency_columns(ort, eager),
                    "iters": iters,
                    "threads": 1,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_latency",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ckpt", default=None, help="a learning.train checkpoint (optional)")
    parser.add_argument("--worker", choices=["onnxruntime", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=POSITIVE_INT, help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=POSITIVE_INT, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.batch, args.iters)))
        return
    run(args.quick, args.ckpt)


def run(quick: bool, ckpt: str | None = None) -> list[dict]:
    """Measure and report (table + bench/results/policy_latency.json)."""
    from bench.report import report

    rows = measure(quick, ckpt)
    report(
        NAME,
        rows,
        note="median ms per predict_action_chunk (10 Euler steps unrolled), 1 thread each, "
        "separate subprocesses; torch/onnxruntime > 1 means onnxruntime is faster",
    )
    return rows


if __name__ == "__main__":
    main()
