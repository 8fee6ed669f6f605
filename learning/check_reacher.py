"""Reacher-v5 learning check: expert demos -> FBC -> ONNX -> evaluate the EXPORTED policy.

    python -m learning.check_reacher [--episodes 50] [--eval-episodes 20] [--out DIR] [k=v ...]

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

ENV_ID = "Reacher-v5"


def collect(out: Path, episodes: int, seed: int) -> Path:
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
) -> dict[str, Any]:
    """Run the whole check; returns returns/normalized score/timings."""
    import sim
    from learning.export import export_checkpoint
    from learning.train import compose_config, run
    from roboloop_runtime import OnnxPolicy
    from sim.evaluate import evaluate_policy, make_expert_policy, normalized_score, random_policy

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = collect(out_dir / f"reacher_expert_{episodes}.hdf5", episodes, data_seed)
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
    ev = {
        "policy": evaluate_policy(ENV_ID, policy, eval_episodes, eval_seed),
        "random": evaluate_policy(ENV_ID, random_policy(env, seed=0), eval_episodes, eval_seed),
        "expert": evaluate_policy(ENV_ID, make_expert_policy(ENV_ID), eval_episodes, eval_seed),
    }
    t3 = time.perf_counter()
    returns = {k: float(v.mean_return) for k, v in ev.items()}
    return {
        "returns": returns,
        "success": {k: float(v.success_rate) for k, v in ev.items()},
        "normalized": float(
            normalized_score(returns["policy"], returns["random"], returns["expert"])
        ),
        "train_episodes": episodes,
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
    for name in ("expert", "random", "policy"):
        table.add_row(name, f"{res['returns'][name]:.2f}", f"{res['success'][name]:.2f}")
    table.add_row("normalized", f"{res['normalized']:.3f}", "")
    Console().print(table)
    summary = {k: v for k, v in res.items() if k not in ("returns", "success")}
    print(json.dumps(summary | {"policy_success": res["success"]["policy"]}, default=float))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.check_reacher",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--episodes", type=int, default=50, help="expert training episodes")
    parser.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes")
    parser.add_argument("--eval-seed", type=int, default=1000, help="first evaluation seed")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/check_reacher"), help="output folder"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.8, help="normalized score the check needs"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="small MLPs train fastest on 1 thread"
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
        overrides=args.overrides,
    )
    print_table(res)
    if res["normalized"] < args.threshold:
        raise SystemExit(f"normalized score {res['normalized']:.3f} < {args.threshold}")


if __name__ == "__main__":
    main()
