"""On simulated time: sim.launch.py (use_sim_time, lockstep) + record.launch.py (use_sim_time)
as `make demo` records, and loop.launch.py with the observation-triggered policy; every step
recorded, none stepped past a reader or without its action."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from roboloop_bringup.launch_standin import load_launch_file
from roboloop_policy.reference_model import make_reference_policy

from episode_dataset import DatasetError, EpisodeReader
from roboloop_runtime import OnnxModel

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]
EPISODES = 3


def launch_until(tmp_path, ros_env, out, episodes, launches) -> EpisodeReader:
    """Start (launch file, arguments, node parameters) each, wait for `episodes` in `out`."""
    launched = []
    try:
        for name, args, params in launches:
            info = load_launch_file(REPO / "launch" / name, args)
            for node in info.nodes:
                node.params.update(params.get(node.executable, {}))
            launched.append(info.launch(tmp_path, ros_env))
        deadline = time.monotonic() + 120  # generous: a loaded 2-core machine
        found: list[str] = []
        while len(found) < episodes and time.monotonic() < deadline:
            time.sleep(0.25)
            assert all(p.alive() for group in launched for p in group.procs)
            try:
                found = EpisodeReader(out).episodes if out.exists() else []
            except DatasetError:
                continue  # the index is replaced atomically
        # before shutdown: a reader stopped first leaves the bridge waiting for it
        bridge_log = (tmp_path / "sim_bridge.log").read_text()
    finally:
        for group in reversed(launched):
            group.shutdown()
    reader = EpisodeReader(out)
    assert len(reader.episodes) >= episodes
    for e in reader.episodes[:episodes]:
        meta = reader.episode_metadata(e)
        counts = meta["recorder_counts"]
        bad = {k: counts[k] for k in ("dropped_steps", "stale_steps", "invalid_total")}
        assert bad == dict.fromkeys(bad, 0), bad
        assert reader.num_steps(e) == 50  # Reacher-v5's whole episode, no step lost
        assert meta["end_reason"] == "done"
    assert "lockstep on sim time" in bridge_log
    assert "lockstep: nothing from" not in bridge_log  # never stepped past a reader
    return reader


BRIDGE = {"sensor_qos": "reliable", "wait_for_subscribers": 1, "wait_for_ackers": 1}
SIM_TIME = {"use_sim_time": "true", "lockstep": "true"}


def test_lockstep_recording_keeps_every_step(tmp_path, ros_env):
    out = tmp_path / "expert.hdf5"
    reader = launch_until(
        tmp_path,
        ros_env,
        out,
        EPISODES,
        [
            ("sim.launch.py", {"action_source": "expert", **SIM_TIME}, {"sim_bridge": BRIDGE}),
            (
                "record.launch.py",
                # recorder.yaml as it is: its stamp and anchor tolerances hold on sim time too
                {"output_path": str(out), "max_episodes": str(EPISODES), "use_sim_time": "true"},
                {},
            ),
        ],
    )
    assert np.isfinite(reader.episode_return(reader.episodes[0]))


@pytest.mark.slow  # three nodes and 100 lockstep round trips through the policy
def test_lockstep_loop_applies_the_policy_action_of_every_step(tmp_path, ros_env):
    """loop.launch.py on sim time: the bridge waits for the observation-triggered policy's
    action of each step, so every recorded action is the model's output for that step's
    observation (none a zero fallback, none a step late)."""
    model_path = tmp_path / "reference.onnx"
    make_reference_policy(
        model_path, state_dim=10, action_dim=2, image_hw=(64, 64), control_rate_hz=50.0
    )
    out = tmp_path / "rollouts.hdf5"
    args = {"model_path": str(model_path), "output_path": str(out), "trigger": "observation"}
    params = {
        "sim_bridge": BRIDGE,
        "policy_node": {"noise_scale": 0.0, "device": "cpu"},
    }
    reader = launch_until(
        tmp_path, ros_env, out, 2, [("loop.launch.py", {**args, **SIM_TIME}, params)]
    )
    model = OnnxModel(model_path, device="cpu", threads=1)
    for e in reader.episodes[:2]:
        state, image = reader.read_obs(e, "state"), reader.read_obs(e, "image")
        feed = {"obs.state": state[:, None], "obs.image": image[:, None]}
        feed["noise"] = np.zeros((len(state), 1, 2), np.float32)
        want = np.clip(model.run(feed)["actions"][:, 0], -1.0, 1.0)  # Reacher's action space
        np.testing.assert_allclose(reader.read_actions(e), want, rtol=1e-5, atol=1e-5)
