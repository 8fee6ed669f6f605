"""Reacher-v5 learning check: expert demos -> FBC -> ONNX -> evaluate the EXPORTED policy.

    python -m learning.check_reacher [--episodes 50] [--eval-episodes 20] [--out DIR] [k=v ...]
    python -m learning.check_reacher --image [...]   # from the camera only (IMAGE_OVERRIDES)

Collects expert episodes with `python -m sim.collect`, trains `train_fbc` (extra `key=value`
arguments are Hydra overrides), exports ONNX, and evaluates the `OnnxPolicy`, a uniform
random policy and the expert on the same seeds (`eval_seed + i`). Prints a table and exits
non-zero when normalized = (policy - random) / (expert - random) is below --threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter

ENV_ID = "Reacher-v5"
CAMERA = 64  # rendered frame size of the image check
# The image check: the policy sees only the 64x64 camera (two frames), never the state (which
# holds the target's position): a small ResNet18 (widths 16..128, GroupNorm), random 56x56
# crops in training, the centre crop in the exported graph.
IMAGE_OVERRIDES = (
    "data.obs_keys=[image]",
    "obs_type=image",
    "rgb_model_name=resnet18",
    "model.encoder.image_encoder.channels=[16,32,64,128]",
    "crop_shape=[56,56]",
    "batch_size=64",
    "base_lr=3.0e-4",
)


def collect(out: Path, episodes: int, seed: int, camera: int | None = None) -> Path:
    """Expert demonstrations via the sim collector CLI (skipped when `out` already exists)."""
    if not out.exists():
        cmd = [
            sys.executable,
            "-m",
            "sim.collect",
            "--env",
            ENV_ID,
            "--policy",
            "expert",
            "--episodes",
            str(episodes),
            "--seed",
            str(seed),
            "--out",
            str(out),
            *(["--camera", str(camera)] if camera else []),
        ]
        subprocess.run(cmd, check=True)
    return out


def check(
    out_dir: Path,
    episodes: int = 50,
    eval_episodes: int = 20,
    data_seed: int = 0,
    eval_seed: int = 1000,
    overrides: Sequence[str] = (),
    camera: int | None = None,
) -> dict[str, Any]:
    """Run the whole check; returns returns/normalized score/timings. `camera`: record and
    evaluate with a rendered frame of this size (key `image`)."""
    import sim
    from learning.checkpoint import torch_load
    from learning.export import export_checkpoint
    from learning.train import compose_config, run
    from roboloop_runtime import OnnxPolicy
    from sim.evaluate import (
        RandomPolicy,
        evaluate_policy,
        make_expert_policy,
        normalized_score,
        random_policy,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    name = f"reacher_expert_{episodes}" + (f"_camera{camera}" if camera else "")
    data = collect(out_dir / f"{name}.hdf5", episodes, data_seed, camera)
    t1 = time.perf_counter()
    cfg = compose_config(
        "train_fbc",
        [f"dataset={data}", f"output_root={out_dir}", "name=fbc_reacher", *overrides],
    )
    result = run(cfg)
    t2 = time.perf_counter()
    onnx_path = Path(result["run_dir"]) / "policy.onnx"
    export_checkpoint(result["last_ckpt"], onnx_path)
    policy = OnnxPolicy(onnx_path, device="cpu", seed=0, threads=1)

    env = sim.make(ENV_ID)  # only for the action space of the random baseline
    env.close()
    still = np.zeros(env.action_space.shape, np.float32)
    ev = {
        "policy": evaluate_policy(ENV_ID, policy, eval_episodes, eval_seed, camera=camera),
        "random": evaluate_policy(ENV_ID, random_policy(env, seed=0), eval_episodes, eval_seed),
        "expert": evaluate_policy(ENV_ID, make_expert_policy(ENV_ID), eval_episodes, eval_seed),
        # Zero torque: the arm stays where it starts and pays no control cost. Random pays ~0.7
        # a step, so `normalized` gives standing still ~0.8; `normalized_vs_still` does not.
        "still": evaluate_policy(ENV_ID, RandomPolicy(still, still), eval_episodes, eval_seed),
    }
    t3 = time.perf_counter()
    returns = {k: float(v.mean_return) for k, v in ev.items()}
    return {
        "returns": returns,
        "success": {k: float(v.success_rate) for k, v in ev.items()},
        "normalized": float(
            normalized_score(returns["policy"], returns["random"], returns["expert"])
        ),
        "normalized_vs_still": float(
            normalized_score(returns["policy"], returns["still"], returns["expert"])
        ),
        "train_episodes": episodes,
        "train_steps": int(torch_load(result["last_ckpt"])["global_step"]),
        "observations": sorted(policy.metadata.observations),
        "eval_episodes": eval_episodes,
        "eval_seeds": [eval_seed, eval_seed + eval_episodes - 1],
        "val_loss": result["metrics"].get("val_loss"),
        "onnx": str(onnx_path),
        "provider": policy.provider,
        "seconds": {"collect": t1 - t0, "train": t2 - t1, "export+eval": t3 - t2},
    }


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{ENV_ID}: exported FBC policy (onnxruntime) on "
        f"{res['eval_episodes']} eval episodes"
    )
    for col in ("policy", "mean return", "success"):
        table.add_column(col)
    for name in ("expert", "random", "still", "policy"):
        table.add_row(name, f"{res['returns'][name]:.2f}", f"{res['success'][name]:.2f}")
    table.add_row("normalized", f"{res['normalized']:.3f}", "")
    table.add_row("normalized vs still", f"{res['normalized_vs_still']:.3f}", "")
    Console().print(table)
    summary = {k: v for k, v in res.items() if k not in ("returns", "success")}
    print(json.dumps(summary | {"policy_success": res["success"]["policy"]}, default=float))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.check_reacher",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--episodes", type=POSITIVE_INT, default=50, help="expert training episodes"
    )
    parser.add_argument(
        "--eval-episodes", type=POSITIVE_INT, default=20, help="evaluation episodes"
    )
    parser.add_argument("--eval-seed", type=SEED_ARG, default=1000, help="first evaluation seed")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/check_reacher"), help="output folder"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.8, help="normalized score the check needs"
    )
    parser.add_argument(
        "--torch-threads",
        type=POSITIVE_INT,
        default=1,
        help="small MLPs train fastest on 1 thread",
    )
    parser.add_argument(
        "--image",
        action="store_true",
        help=f"learn from the {CAMERA}x{CAMERA} camera only (IMAGE_OVERRIDES, then yours)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for train_fbc")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    res = check(
        args.out,
        args.episodes,
        args.eval_episodes,
        eval_seed=args.eval_seed,
        overrides=[*(IMAGE_OVERRIDES if args.image else ()), *args.overrides],
        camera=CAMERA if args.image else None,
    )
    print_table(res)
    if res["normalized"] < args.threshold:
        raise SystemExit(f"normalized score {res['normalized']:.3f} < {args.threshold}")


if __name__ == "__main__":
    main()
