"""Run every benchmark: `python -m bench [--quick] [NAME ...]`.

A benchmark is a module bench/<name>.py with `run(quick: bool) -> None` that reports through
bench.report.report (table on stdout + bench/results/<name>.json). Benchmarks in NAMED_ONLY run
only when named: they need an extra or take long (rl_vs_sb3: stable-baselines3, ~1.5 h at
full budget; dreamer_vs_sheeprl: the SheepRL bench venv of bench/sheeprl_venv.sh;
flow_family: ~21 training runs per task; qchunking: 12 offline + online runs; lerobot_reader:
the LeRobot bench venv of bench/lerobot_venv.sh).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

from episode_dataset.ranges import HelpFormatter

# Before any benchmark imports mujoco: it picks its GL backend once, at import (headless: EGL).
os.environ.setdefault("MUJOCO_GL", "egl")

NAMED_ONLY = {"rl_vs_sb3", "dreamer_vs_sheeprl", "flow_family", "qchunking", "lerobot_reader"}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every benchmark (or the NAMEs given) and print their tables.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs (smoke-level numbers)")
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all but {sorted(NAMED_ONLY)})"
    )
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    found = sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in ("report", "__main__")
    )
    unknown = [n for n in args.names if n not in found]
    if unknown:  # before any benchmark runs
        parser.error(f"no benchmark {unknown[0]!r} (bench/ has {', '.join(found)})")
    names = args.names or [n for n in found if n not in NAMED_ONLY]
    modules = {name: importlib.import_module(f"bench.{name}") for name in names}
    helpers = [name for name in args.names if not hasattr(modules[name], "run")]
    if helpers:
        parser.error(f"bench.{helpers[0]} is a helper module, not a benchmark (it has no run())")
    failed = []
    for name, module in modules.items():
        if not hasattr(module, "run"):
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        start = time.perf_counter()
        try:
            module.run(quick=args.quick)
        except Exception as err:  # one broken benchmark must not hide the others' numbers
            failed.append(name)
            print(f"bench.{name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        print(f"(bench.{name}: {time.perf_counter() - start:.1f} s)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
