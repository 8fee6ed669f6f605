"""Recording on simulated time: sim.launch.py (use_sim_time, lockstep) + record.launch.py
(use_sim_time) as `make demo` starts them; every step recorded, stamped on the sim clock."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from roboloop_bringup.launch_standin import load_launch_file

from episode_dataset import DatasetError, EpisodeReader

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]
EPISODES = 3


def test_lockstep_recording_keeps_every_step(tmp_path, ros_env):
    out = tmp_path / "expert.hdf5"
    launched = []
    try:
        for name, args, params in [
            (
                "sim.launch.py",
                {"action_source": "expert", "use_sim_time": "true", "lockstep": "true"},
                {"camera": 0, "sensor_qos": "reliable", "wait_for_subscribers": 1,
                 "wait_for_ackers": 1},
            ),
            (
                "record.launch.py",
                {"output_path": str(out), "max_episodes": str(EPISODES), "use_sim_time": "true"},
                {"max_age_s": 0.008},
            ),
        ]:  # fmt: skip
            info = load_launch_file(REPO / "launch" / name, args)
            info.nodes[0].params.update(params)
            launched.append(info.launch(tmp_path, ros_env))
        deadline = time.monotonic() + 120  # generous: a loaded 2-core machine
        episodes: list[str] = []
        while len(episodes) < EPISODES and time.monotonic() < deadline:
            time.sleep(0.25)
            assert all(p.alive() for group in launched for p in group.procs)
            try:
                episodes = EpisodeReader(out).episodes if out.exists() else []
            except DatasetError:
                continue  # the index is replaced atomically
    finally:
        for group in reversed(launched):
            group.shutdown()
    reader = EpisodeReader(out)
    assert len(reader.episodes) >= EPISODES
    for e in reader.episodes[:EPISODES]:
        meta = reader.episode_metadata(e)
        counts = meta["recorder_counts"]
        bad = {k: counts[k] for k in ("dropped_steps", "stale_steps", "invalid_total")}
        assert bad == dict.fromkeys(bad, 0), bad
        assert reader.num_steps(e) == 50  # Reacher-v5's whole episode, no step lost
        assert meta["end_reason"] == "done"
    # Sim-time stamps: the bridge's log says it stepped in lockstep, never past a reader.
    bridge_log = (tmp_path / "sim_bridge.log").read_text()
    assert "lockstep on sim time" in bridge_log
    assert "lockstep: nothing from" not in bridge_log
    assert np.isfinite(reader.episode_return(reader.episodes[0]))
