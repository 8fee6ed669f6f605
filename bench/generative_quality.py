"""Bench: goal-mask quality (IoU/Dice) vs sampling time for flow matching and diffusion.

python -m bench.generative_quality [--quick] [--work-dir DIR]
# table + bench/results/generative_quality.json; details: learning/generative/quality.py
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.report import report
from episode_dataset.ranges import HelpFormatter
from learning.generative.quality import run_quality

NAME = "generative_quality"
NOTE = (
    "val split of the synthetic goal task unless --data-dir; IoU/Dice of samples thresholded at "
    "0.5; s/batch = sampling seconds per val batch (batch_size scenes) on 1 CPU thread"
)


def run(quick: bool, work_dir: str | None = None, data_dir: str | None = None) -> list[dict]:
    rows: list[dict[str, Any]] = run_quality(quick=quick, data_dir=data_dir, work_dir=work_dir)
    report(NAME, rows, NOTE)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.generative_quality",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work-dir", help="keeps data and trained runs (reused when present)")
    parser.add_argument("--data-dir", help="NAMO .npz directory (default: synthetic task)")
    args = parser.parse_args()
    run(args.quick, args.work_dir, args.data_dir)
