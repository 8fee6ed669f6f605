"""`python -m bench` and the benches' own command lines refuse bad names and arguments in one
line before any benchmark runs (they were tracebacks after the earlier benches had run, or an
empty results file written with exit 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["bench", "sim_rollout", "nosuch"], "no benchmark 'nosuch'"),
        (["bench", "report"], "no benchmark 'report'"),
        (["bench.rl_vs_sb3", "--quick", "--seeds"], "--seeds: expected at least one argument"),
        (["bench.namo_planner", "--levels", "nosuch"], "invalid choice: 'nosuch'"),
        (["bench.namo_planner", "--q-model", "/nonexistent.onnx"], "no such file"),
        (["bench.lerobot_reader", "--venv", "/nonexistent"], "needs the LeRobot bench venv"),
        (["demo.family", "ppo", "--quick", "--out", __file__], "exists and is not a folder"),
    ],
)
def test_bad_names_and_arguments_are_one_line_before_any_work(argv: list[str], says: str):
    done = subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode in (1, 2), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "===" not in done.stdout, done.stderr[-2000:]
    assert says in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
