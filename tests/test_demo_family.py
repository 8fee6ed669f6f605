"""`python -m demo.family NAME --quick`: data -> train -> ONNX -> served over ROS -> table.

Recipes that cover the serving paths: Q-chunking (expert episodes recorded over ROS, the best-of-N
graph in the policy node, chunks open-loop) and, under `-m slow` (the suite's time budget),
Dreamer (its actor inside the world-model node), PPO (online training, its actor in the policy
node) and the NAMO planner (its own pipeline: goal_generator, q_scorer and namo_planner
nodes). Smoke budgets: the pipeline is checked, not the score.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("rclpy")

from episode_dataset.recording.alignment import LATE  # noqa: E402
from roboloop_runtime import METADATA_KEY  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
EPISODES = 2


def model_type(path: str) -> str:
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])["model_type"]


@pytest.mark.parametrize(
    ("family", "graph_types"),
    [
        pytest.param("ppo", ["actor"], marks=pytest.mark.slow),  # the qc path without data
        ("qc", ["best_of_n"]),
        # filter, imagine, actor; slow: the Dreamer actor in the world-model node over ROS is
        # tests/test_ros_world_model.py, its training chain tests/test_dreamer.py
        pytest.param(
            "dreamer", ["world_model", "world_model", "world_model"], marks=pytest.mark.slow
        ),
    ],
)
def test_family_runs_from_data_to_served_rollouts(
    family: str, graph_types: list[str], tmp_path: Path, ros_env: dict[str, str]
) -> None:
    out = tmp_path / family
    cmd = [sys.executable, "-m", "demo.family", family, "--quick"]
    cmd += ["--eval-episodes", str(EPISODES), "--out", str(out)]
    proc = subprocess.run(
        cmd, cwd=REPO, env=ros_env, capture_output=True, text=True, timeout=600
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"roboloop {family}: Reacher-v5" in proc.stdout  # the results table

    summary = json.loads((out / "summary.json").read_text())
    returns = summary["served_returns"]
    assert len(returns) == EPISODES
    # Reacher's reward is -distance - control cost per step over 50 steps: a served episode
    # that ran lands in (-200, 0); a policy that never acted would not be recorded at all.
    assert all(-200.0 < r < 0.0 for r in returns), returns
    # Dropped and stale steps are timing on wall-clock serving: counted, reported, not failed.
    # So is a message that came after its step went out stale (LATE: seen once, 2026-12-07);
    # anything else the recorder rejected (malformed, future or repeated stamps) fails.
    late = summary["invalid_reasons"].get(LATE, 0)
    assert summary["invalid"] == late, summary["invalid_reasons"]
    assert late == 0 or summary["stale"] > 0, summary
    assert summary["expert_return"] > summary["random_return"]
    graphs = [f for f in summary["files"] if f.endswith(".onnx")]
    assert sorted(model_type(g) for g in graphs) == sorted(graph_types)
    if family == "dreamer":
        assert summary["in_process_return"] is None
    else:  # the same graph in-process on the same seeds: a finite Reacher return
        assert np.isfinite(summary["in_process_return"])
    if family == "qc":
        assert any(f.endswith("expert.hdf5") for f in summary["files"])


@pytest.mark.slow
def test_namo_family_plans_held_out_scenes_over_ros(tmp_path: Path, ros_env: dict[str, str]):
    """MCTS data -> Q-function + DiT generator -> three node processes plan held-out scenes;
    every served decision is a valid move of the state it was made in."""
    from sim.namo.scene import generate_scene
    from sim.namo.transition import Proposal, TransitionModel

    out = tmp_path / "namo"
    cmd = [sys.executable, "-m", "demo.family", "namo", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=ros_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["planner"]: r for r in summary["planners"]}
    assert set(rows) == {"mcts", "random", "dit_q over ROS"}
    assert sorted(model_type(g) for g in summary["files"]) == ["goal_generator", "q_function"]
    served = rows["dit_q over ROS"]
    assert 0.0 <= served["success_rate"] <= 1.0
    assert 0 < served["network_seconds_per_decision"] < served["seconds_per_decision"]
    decisions = summary["decisions"]
    assert {d["scene_seed"] for d in decisions} == {100000, 100001}
    for seed in (100000, 100001):
        model = TransitionModel(generate_scene(seed, level=summary["level"]))
        state = model.initial_state()
        for d in (d for d in decisions if d["scene_seed"] == seed):
            move = Proposal(d["object_id"], d["x"], d["y"], d["theta"])
            assert model.check(state, move) is None, d
            state = model.step(state, move).state
            assert d["goal_reached"] == model.goal_reached(state)


def test_ctrl_c_stops_the_demo_and_its_nodes_in_one_line(
    tmp_path: Path, ros_env: dict[str, str]
) -> None:
    """A terminal's Ctrl-C during the recording: exit 130, one line, no node left running."""
    import os
    import signal
    import time

    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.loop", "--episodes", "5000", "--out", str(out)],
        cwd=REPO, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "expert.hdf5").exists():  # the recorder has committed episodes
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "demo.loop: interrupted; its nodes are stopped"
    assert "Traceback" not in err, err[-3000:]
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(out).encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:
            continue  # ended while we looked
    assert not left, left
