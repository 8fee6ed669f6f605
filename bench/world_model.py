"""World model (RSSM) speed: filter-step latency onnxruntime vs torch, and training throughput.

    python -m bench world_model [--quick]
    python -m bench.world_model [--quick] [--sizes tiny xs s] [--batch 16] [--sequence-length 64]

Observation: Reacher-v5's with a 64x64 camera ({"image": (64, 64, 3) uint8, "state": (10,)}),
2-d actions; random weights (speed does not depend on them), categorical latent.

latency: one filter step (encoder + GRU + posterior, `learning.export --step filter`) at batch
1, closed loop (each step's state_out is the next state_in, fresh noise every step), in a
subprocess per backend, both on 1 intra-op thread: onnxruntime through `OnnxModel.run` (what
the world-model node calls; the worker never imports torch) and the same `FilterGraph` in eager
torch under `torch.inference_mode`. Median and p90 over the timed steps after a warmup.

train: gradient updates of `WorldModel.loss` (filter the (B, T) sequences, decode, heads,
balanced KL), backward, global-norm clip 1000 and Adam, on 1 torch thread, without the
Lightning loop around it. Sequences/s and env-steps/s (B x T per update) over the timed updates
after one warmup update. DreamerV3's (and SheepRL's) batch 16 x 64 by default.
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

from episode_dataset.ranges import POSITIVE_INT, HelpFormatter

NAME = "world_model"
SIZES = ("tiny", "xs", "s")
QUICK_SIZES = ("tiny",)
IMAGE_SIDE, STATE_DIM, ACTION_DIM = 64, 10, 2  # Reacher-v5 with a 64x64 camera
BATCH, SEQUENCE_LENGTH = 16, 64
LATENCY_STEPS = {True: (20, 100), False: (200, 2000)}  # quick: (warmup, timed)
TRAIN_UPDATES = {True: 2, False: {"tiny": 20, "xs": 5, "s": 3}}  # timed, after 1 warmup


def model_kwargs() -> dict[str, Any]:
    """The data-derived WorldModel arguments of the bench observation (unit normalization)."""
    return {
        "obs_specs": {
            "image": {
                "shape": [IMAGE_SIDE, IMAGE_SIDE, 3],
                "dtype": "uint8",
                "feature_type": "image",
            },
            "state": {"shape": [STATE_DIM], "dtype": "float32", "feature_type": "low_dim"},
        },
        "action_dim": ACTION_DIM,
        "normalization": {
            "image": {"mode": "image"},
            "state": {"mode": "mean_std", "mean": [0.0] * STATE_DIM, "std": [1.0] * STATE_DIM},
            "actions": {"mode": "min_max", "min": [-1.0] * ACTION_DIM, "max": [1.0] * ACTION_DIM},
        },
        "control_rate_hz": 50.0,
    }


def build(size: str) -> tuple[Any, dict[str, Any]]:
    """(WorldModel of size preset `size` with random weights, its training config)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from learning.train import compose_config

    cfg = compose_config("train_world_model", [f"world_model={size}", "dataset=none"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all", **model_kwargs())
    return model, OmegaConf.to_container(cfg, resolve=True)


def save_checkpoint(size: str, path: Path) -> Path:
    """A checkpoint `learning.checkpoint.load_model` rebuilds (the torch worker's input)."""
    import torch

    from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY

    model, config = build(size)
    payload = {"state_dict": model.state_dict(), CONFIG_KEY: config}
    torch.save(payload | {MODEL_KWARGS_KEY: model_kwargs()}, path)
    return path


# ---- latency (one subprocess per backend) --------------------------------------------------
def _feeds(steps: int, stoch_dim: int) -> list[dict[str, np.ndarray]]:
    """Per step: a random frame and state, previous action and noise (batch 1)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 1, IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    return [
        {
            "obs.image": frames[t % len(frames)],
            "obs.state": rng.standard_normal((1, STATE_DIM)).astype(np.float32),
            "prev_action": rng.uniform(-1, 1, (1, ACTION_DIM)).astype(np.float32),
            "noise": rng.standard_normal((1, stoch_dim)).astype(np.float32),
        }
        for t in range(steps)
    ]


def _stats(times_ms: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(times_ms)), "p90_ms": float(np.percentile(times_ms, 90))}


def _latency_worker(backend: str, path: str, warmup: int, steps: int) -> dict[str, Any]:
    """Runs in a subprocess: closed-loop filter steps, ms statistics of the timed ones."""
    if backend == "onnxruntime":
        from roboloop_runtime import OnnxModel

        runner = OnnxModel(path, device="cpu", threads=1)
        state = {
            k: np.zeros((1, *s["shape"]), np.float32) for k, s in runner.metadata["state"].items()
        }
        feeds = _feeds(warmup + steps, state["stoch"].shape[1])

        def step(feed: dict[str, np.ndarray]) -> None:
            out = runner.run({**feed, **{f"state_in.{k}": v for k, v in state.items()}})
            state.update({k: out[f"state_out.{k}"] for k in state})

    else:
        import torch

        from learning.checkpoint import load_model

        torch.set_num_threads(1)
        model, _ = load_model(path)
        model.export_step = "filter"
        graph = model.export_graph()[0].eval()
        h, z = model.rssm.initial_state(1)
        feeds = [
            {k: torch.from_numpy(v) for k, v in f.items()}
            for f in _feeds(warmup + steps, model.rssm.stoch_dim)
        ]

        def step(feed: dict[str, Any]) -> None:
            nonlocal h, z
            with torch.inference_mode():
                h, z = graph(*feed.values(), h, z)

    times = []
    for i, feed in enumerate(feeds):
        start = time.perf_counter()
        step(feed)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return {**_stats(times), "torch_imported": "torch" in sys.modules}


def _in_subprocess(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.world_model", "--worker", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def latency(size: str, quick: bool, tmp: Path) -> dict[str, Any]:
    from bench.report import latency_columns
    from learning.export import export_model

    ckpt = save_checkpoint(size, tmp / f"{size}.ckpt")
    model, config = build(size)
    onnx_path = tmp / f"{size}_filter.onnx"
    export_model(model, onnx_path, config, step="filter")
    warmup, steps = LATENCY_STEPS[quick]
    ort = _in_subprocess("onnxruntime", str(onnx_path), str(warmup), str(steps))
    eager = _in_subprocess("torch", str(ckpt), str(warmup), str(steps))
    if ort["torch_imported"]:
        raise RuntimeError("the onnxruntime worker imported torch")
    return {
        "size": size,
        **latency_columns(ort, eager),
        "steps": steps,
    }


# ---- training throughput ------------------------------------------------------------------
def train_batch(batch: int, length: int, seed: int = 0) -> dict[str, Any]:
    """A (B, T) batch shaped as `EpisodeDataModule(sequence_length=T)` gives it."""
    import torch

    from learning.data.keys import ACTIONS, IS_PAD, OBS, REWARDS, TERMINALS

    g = torch.Generator().manual_seed(seed)
    shape = (batch, length)
    return {
        OBS: {
            "image": torch.randint(0, 256, (*shape, IMAGE_SIDE, IMAGE_SIDE, 3), generator=g).to(
                torch.uint8
            ),
            "state": torch.randn((*shape, STATE_DIM), generator=g),
        },
        ACTIONS: torch.rand((*shape, ACTION_DIM), generator=g) * 2 - 1,
        REWARDS: torch.randn(shape, generator=g),
        TERMINALS: torch.zeros(shape, dtype=torch.bool),
        IS_PAD: torch.zeros(shape, dtype=torch.bool),
    }


def train_throughput(size: str, updates: int, batch: int, length: int) -> dict[str, Any]:
    """Timed gradient updates (after one warmup update) of a `size` world model."""
    import torch

    torch.set_num_threads(1)
    model, config = build(size)
    model.train()
    optimizer = model.configure_optimizers()
    clip = config["trainer"]["gradient_clip_val"]
    data = train_batch(batch, length)
    times = []
    for i in range(updates + 1):
        start = time.perf_counter()
        loss = model.loss(data)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if i:  # the first update allocates and warms up
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{size}: non-finite loss at update {i}")
    seconds = float(np.median(times))
    params = sum(p.numel() for p in model.parameters())
    return {
        "size": size,
        "batch x seq": f"{batch} x {length}",
        "params_M": round(params / 1e6, 2),
        "update_s": round(seconds, 3),
        "sequences_per_s": round(batch / seconds, 2),
        "env_steps_per_s": round(batch * length / seconds, 1),
        "updates": updates,
    }


def run(
    quick: bool,
    sizes: tuple[str, ...] | None = None,
    batch: int = BATCH,
    length: int = SEQUENCE_LENGTH,
) -> dict[str, list[dict[str, Any]]]:
    """Measure and report: bench/results/world_model_latency.json and _train.json."""
    from bench.report import report

    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    with tempfile.TemporaryDirectory(prefix="bench_world_model_") as tmp:
        latency_rows = [latency(size, quick, Path(tmp)) for size in sizes]
    obs = "Reacher-v5 obs with a 64x64 camera, categorical latent, random weights, 1 thread"
    report(
        f"{NAME}_latency",
        latency_rows,
        note=f"{obs}; median/p90 ms per closed-loop filter step at batch 1, each backend in its "
        "own subprocess; torch/onnxruntime > 1 means onnxruntime is faster",
    )
    train_rows = []
    for size in sizes:
        updates = TRAIN_UPDATES[True] if quick else TRAIN_UPDATES[False].get(size, 3)
        train_rows.append(train_throughput(size, updates, batch, length))
    report(
        f"{NAME}_train",
        train_rows,
        note=f"{obs}; one update = loss + backward + clip + Adam (median over the updates after "
        "a warmup one); env steps = batch x sequence length",
    )
    return {"latency": latency_rows, "train": train_rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.world_model",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny size, short runs")
    parser.add_argument("--sizes", nargs="+", choices=SIZES + ("m",), help="size presets")
    parser.add_argument(
        "--batch", type=POSITIVE_INT, default=BATCH, help="training sequences per update"
    )
    parser.add_argument(
        "--sequence-length", type=POSITIVE_INT, default=SEQUENCE_LENGTH, help="steps per sequence"
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, path, warmup, steps = args.worker
        print(json.dumps(_latency_worker(backend, path, int(warmup), int(steps))))
        return
    sizes = tuple(args.sizes) if args.sizes else None
    run(args.quick, sizes, args.batch, args.sequence_length)


if __name__ == "__main__":
    main()
