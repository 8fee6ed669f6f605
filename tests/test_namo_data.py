"""MCTS data collection + mask generation CLIs, and the shipped tests/data/namo_tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.namo.episodes import read_episode, solve_episode
from sim.namo.keys import ACTION_KEYS, FILE_RE, STATE_KEYS
from sim.namo.mask_generation import render_episode
from sim.namo.mcts import MCTSConfig

TINY = Path(__file__).parent / "data" / "namo_tiny"
SEED000 = (*STATE_KEYS, *ACTION_KEYS, "goal_q_value", "object_id", "goal_coordinates")
SEED001 = ("robot_image", "goal_image", "movable_objects_image", "static_objects_image")
SEED001 += ("target_object", "target_goal")


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _check_file(path: Path, size: int) -> dict:
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    assert set(SEED000) | set(SEED001) <= set(data), path
    for key in (*STATE_KEYS, *ACTION_KEYS, *SEED001):
        assert data[key].shape == (size, size) and data[key].dtype == np.float32, (path, key)
        assert 0.0 <= data[key].min() and data[key].max() <= 1.0, (path, key)
    assert data["goal_q_value"].dtype == np.float32 and data["goal_q_value"].shape == ()
    assert data["goal_coordinates"].dtype == np.float32 and data["goal_coordinates"].shape == (3,)
    assert data["object_id"].dtype.kind == "U"
    return data


def test_collection_and_mask_clis_end_to_end(tmp_path: Path) -> None:
    episodes, masks = tmp_path / "episodes", tmp_path / "masks"
    out = _run(
        "sim.namo.parallel_data_collection", "--output-dir", str(episodes),
        "--start-idx", "1", "--end-idx", "4", "--mcts-budget", "10", "--workers", "2",
    )  # fmt: skip
    # Off a terminal, progress is plain lines; the run ends with the one-line summary.
    assert "MCTS episodes (easy): 3/3 (100%)" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("3 easy episodes") and "solved 3/3 (1.00)" in summary
    assert "on 2 workers" in summary
    assert sorted(p.name for p in episodes.glob("*.json")) == [
        f"episode_{e}.json" for e in (1, 2, 3)
    ]
    _run(
        "sim.namo.mask_generation", "batch", "--input-dir", str(episodes),
        "--output-dir", str(masks), "--image-size", "32", "--workers", "1",
    )  # fmt: skip
    expected = set()
    for e in (1, 2, 3):
        ep = read_episode(episodes / f"episode_{e}.json")
        assert ep["solved"] and ep["moves"] >= 1  # these scenes start blocked
        for g, d in enumerate(ep["decisions"]):
            for p, (prop, q) in enumerate(zip(d["proposals"], d["q_values"], strict=True)):
                name = f"episode_{e}_goal_{g}_proposal_{p}.npz"
                expected.add(name)
                data = _check_file(masks / name, 32)
                assert data["goal_q_value"] == np.float32(q)
                assert str(data["object_id"]) == prop[0]
                np.testing.assert_allclose(data["goal_coordinates"], prop[1:], atol=1e-5)
                assert int(data["chosen"]) == int(p == d["chosen"])
    assert {p.name for p in masks.glob("*.npz")} == expected


def test_bad_episode_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "episode_9.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="episode_9.json: format"):
        read_episode(bad)


def test_shipped_tiny_dataset_is_complete_small_and_reproducible(tmp_path: Path) -> None:
    files = sorted(TINY.glob("*.npz"))
    assert len(files) >= 32
    assert sum(f.stat().st_size for f in TINY.rglob("*")) < 5 * 2**20
    assert all(FILE_RE.match(f.name) for f in files)
    for f in files[::10]:
        _check_file(f, 64)
    # Re-solving one episode with its recorded config gives the same decisions and files.
    shipped = read_episode(TINY / "episodes" / "episode_4.json")
    again = solve_episode(4, MCTSConfig(**shipped["mcts_config"]))
    assert again["decisions"] == [
        {**d, "seconds": again["decisions"][k]["seconds"]}
        for k, d in enumerate(shipped["decisions"])
    ]
    render_episode(TINY / "episodes" / "episode_4.json", tmp_path, size=64)
    for f in tmp_path.glob("*.npz"):
        with np.load(f) as new, np.load(TINY / f.name) as old:
            for key in new.files:
                np.testing.assert_array_equal(new[key], old[key], err_msg=f"{f.name}:{key}")
