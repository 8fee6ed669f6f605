"""Recorder node across real processes: live bridge -> dataset, SIGKILL safety, bad messages.

Each test runs in the worker's private ROS_DOMAIN_ID (tests/conftest.py); waits are on
conditions with timeouts (discovery, log lines, files), never fixed sleeps.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from demo.ros_processes import RosProcess, shm_files_of, start_node
from episode_dataset import EpisodeReader, validate_file

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
BRIDGE_YAML = REPO / "ros2_ws/src/roboloop_sim_bridge/config/sim_bridge.yaml"
RECORDER_YAML = REPO / "ros2_ws/src/roboloop_recorder/config/recorder.yaml"
CAMERA = 32
RATE = 10.0  # slow enough that a loaded 2-core machine keeps every step on time


def wait_until(cond, timeout: float, what: str, procs: list[RosProcess] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited early:\n{p.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.05)


def start_bridge(tmp: Path, env: dict, **params) -> RosProcess:
    base = {"camera": CAMERA, "control_rate_hz": RATE, "wait_for_subscribers": 1}
    return start_node(
        "sim_bridge",
        params_file=BRIDGE_YAML,
        params={**base, **params},
        log_path=tmp / "sim_bridge.log",
        env=env,
    )


def start_recorder(tmp: Path, env: dict, out: Path, **params) -> RosProcess:
    base = {
        "output_path": str(out),
        "shapes": ["10", f"{CAMERA},{CAMERA},3", "2", "", ""],
        "env_args_json": json.dumps({"env_name": "Reacher-v5", "env_kwargs": {"camera": CAMERA}}),
        "control_rate_hz": RATE,
        "max_age_s": 0.4 / RATE,
        "fsync": False,
    }
    return start_node(
        "recorder",
        params_file=RECORDER_YAML,
        params={**base, **params},
        log_path=tmp / "recorder.log",
        env=env,
    )


def test_records_expert_episodes_from_live_bridge(tmp_path, ros_env):
    out = tmp_path / "rec.hdf5"
    rec = start_recorder(tmp_path, ros_env, out, max_episodes=2)
    bridge = start_bridge(tmp_path, ros_env, action_source="expert", seed=3)
    procs = [rec, bridge]
    try:
        wait_until(lambda: "episode demo_1 written" in rec.log_text(), 60, "2 episodes", procs)
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0, 0], [p.log_text()[-2000:] for p in procs]
    # The bridge offers best-effort state/image and reliable events: the recorder matched both.
    log = rec.log_text()
    assert "subscribed /sim/state (best_effort" in log
    assert "subscribed /sim/reward (reliable" in log
    validate_file(out)
    with EpisodeReader(out) as r:
        assert r.episodes == ["demo_0", "demo_1"]
        assert [r.num_steps(e) for e in r.episodes] == [50, 50]  # Reacher-v5 truncates at 50
        assert set(r.obs_specs) == {"state", "image"}
        assert r.obs_specs["image"].source_topic == "/sim/camera/image_raw"
        assert r.env_args["env_name"] == "Reacher-v5"
        for ep in r.episodes:
            assert r.read_obs(ep, "image").shape == (50, CAMERA, CAMERA, 3)
            assert r.read_obs(ep, "image").std() > 0  # a rendered scene, not zeros
            assert r.read_dones(ep).tolist() == [False] * 49 + [True]
            actions = r.read_actions(ep)
            assert np.abs(actions).max() <= 1.0 and np.abs(actions).max() > 0
            counts = r.episode_metadata(ep)["recorder_counts"]
            assert counts["invalid_total"] == 0 and counts["dropped_steps"] == 0
        episodes = {
            ep: (r.read_obs(ep, "state"), r.read_actions(ep), r.read_rewards(ep))
            for ep in r.episodes
        }
    # Replaying the recorded actions from reset(seed + i) reproduces the recorded states and
    # rewards step by step: obs, action and reward of every row belong to the same env step.
    import sim

    env = sim.make("Reacher-v5")
    for i, (states, actions, rewards) in enumerate(episodes.values()):
        obs, _ = env.reset(seed=3 + i)
        for k in range(50):
            np.testing.assert_allclose(states[k], obs["state"], atol=1e-4, err_msg=f"step {k}")
            obs, reward, *_ = env.step(actions[k])
            assert rewards[k] == pytest.approx(reward, abs=1e-4), f"episode {i} step {k}"
    env.close()


def test_sigkill_mid_episode_keeps_completed_episodes(tmp_path, ros_env):
    out = tmp_path / "rec.hdf5"
    rec = start_recorder(tmp_path, ros_env, out)
    bridge = start_bridge(tmp_path, ros_env, action_source="random")
    procs = [rec, bridge]
    try:
        wait_until(lambda: "episode demo_0 written" in rec.log_text(), 60, "demo_0", procs)
        partial = out.with_name(out.name + ".episodes") / "demo_1.h5.partial"
        wait_until(partial.exists, 20, "demo_1 staging file", procs)
        held = shm_files_of(rec.pid)
        assert held, "the recorder maps Fast DDS shared memory"
        rec.kill()  # SIGKILL mid-episode; removes the shm files only the dead pid held
        assert rec.popen.returncode == -9
    finally:
        bridge.stop()
    rec.cleanup_shm()  # port segments it shared with the bridge can go once the bridge is gone
    leftover = [f for f in held if os.path.exists(f) and not _held_by_live(f)]
    assert leftover == []
    validate_file(out)
    with EpisodeReader(out) as r:
        assert r.episodes == ["demo_0"]
        assert r.num_steps("demo_0") == 50
        assert r.read_dones("demo_0")[-1]


def test_double_sigint_mid_episode_closes_cleanly(tmp_path, ros_env):
    """Ctrl-C under `ros2 launch`: each node gets the terminal's SIGINT and then launch's."""
    out = tmp_path / "rec.hdf5"
    rec = start_recorder(tmp_path, ros_env, out)
    bridge = start_bridge(tmp_path, ros_env, action_source="expert", seed=5)
    procs = [rec, bridge]
    try:
        wait_until(lambda: "episode demo_0 written" in rec.log_text(), 60, "demo_0", procs)
        partial = out.with_name(out.name + ".episodes") / "demo_1.h5.partial"
        wait_until(partial.exists, 20, "demo_1 staging file", procs)
        for _ in range(2):
            for p in procs:
                p.popen.send_signal(signal.SIGINT)
            time.sleep(0.05)
        codes = [p.popen.wait(20) for p in procs]
    finally:
        for p in procs:
            p.stop()
    for p, code in zip(procs, codes, strict=True):
        assert code == 0 and "Traceback" not in p.log_text(), p.log_text()[-3000:]
    validate_file(out)
    with EpisodeReader(out) as r:
        assert r.episodes == ["demo_0"] and r.num_steps("demo_0") == 50  # the open one discarded


def alive(proc: RosProcess) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
    return True


def _held_by_live(path: str) -> bool:
    for pid_dir in glob.glob("/proc/[0-9]*"):
        if path in shm_files_of(int(os.path.basename(pid_dir))):
            return True
    return False


def test_malformed_messages_rejected_counted_and_not_written(tmp_path, ros_env):
    from diagnostic_msgs.msg import DiagnosticArray
    from roboloop_recorder.probe import RosProbe
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    params = tmp_path / "rec.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "/**": {
                    "ros__parameters": {
                        "topics": ["/t/state", "/t/image", "/t/action"],
                        "types": [
                            "sensor_msgs/msg/JointState",
                            "sensor_msgs/msg/Image",
                            "sensor_msgs/msg/JointState",
                        ],
                        "keys": ["obs/state", "obs/image", "actions"],
                        "shapes": ["3", "8,8,3", "2"],
                        "fields": ["position", "", "effort"],
                        "output_path": str(tmp_path / "bad.hdf5"),
                        "control_rate_hz": RATE,
                        "max_age_s": 0.4 / RATE,
                        "fsync": False,
                        "diagnostics_period_s": 0.2,
                    }
                }
            }
        )
    )
    rec = start_node(
        "recorder", params_file=params, log_path=tmp_path / "recorder.log", env=ros_env
    )
    diags: list = []
    try:
        with RosProbe(name="bad_publisher") as probe:
            node = probe.node
            pubs = {
                "state": node.create_publisher(JointState, "/t/state", 10),
                "image": node.create_publisher(Image, "/t/image", 10),
                "action": node.create_publisher(JointState, "/t/action", 10),
            }
            node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
            probe.wait_for(
                lambda: alive(rec) and all(p.get_subscription_count() > 0 for p in pubs.values()),
                30,
                "recorder subscriptions",
            )
            bad = {5: "encoding", 8: "size", 11: "nan", 14: "shape"}
            for k in range(20):
                stamp = node.get_clock().now().to_msg()
                state = JointState(position=[float(k), 1.0, 2.0])
                image = Image(height=8, width=8, encoding="rgb8", step=24)
                data = bytes([k]) * 192
                if bad.get(k) == "encoding":
                    image.encoding, data = "bgr8", bytes([255]) * 192
                elif bad.get(k) == "size":
                    data = bytes([255]) * 190
                elif bad.get(k) == "shape":
                    image.height, data = 4, bytes([255]) * 96
                elif bad.get(k) == "nan":
                    state.position = [float("nan"), 1.0, 2.0]
                image.data = data
                action = JointState(effort=[0.1 * k, -0.1])
                for m in (state, image, action):
                    m.header.stamp = stamp
                pubs["state"].publish(state)
                pubs["image"].publish(image)
                pubs["action"].publish(action)
                probe.spin_for(1.0 / RATE)
            probe.spin_for(0.3)  # let the recorder's lagged timeline reach the last step
            resp = probe.call(Trigger, "/recorder/stop_episode")
            assert resp.success, resp.message

            def diag_invalid() -> int:
                for msg in reversed(diags):
                    values = {kv.key: kv.value for kv in msg.status[0].values}
                    if msg.status[0].name == "/recorder: recorder" and "invalid_total" in values:
                        return int(values["invalid_total"])
                return -1

            probe.wait_for(lambda: diag_invalid() == 4, 10, "diagnostics with 4 invalid")
        wait_until(lambda: "episode demo_0 written" in rec.log_text(), 20, "demo_0", [rec])
    finally:
        assert rec.stop() == 0
    log = rec.log_text()
    assert "/t/image: rejected" in log and "encoding" in log
    validate_file(tmp_path / "bad.hdf5")
    with EpisodeReader(tmp_path / "bad.hdf5") as r:
        state = r.read_obs("demo_0", "state")
        images = r.read_obs("demo_0", "image")
        assert np.isfinite(state).all()
        assert 255 not in images  # no byte of a malformed image was written
        written = set(state[:, 0].astype(int).tolist())
        assert written.isdisjoint(bad) and len(written) >= 10
        np.testing.assert_allclose(r.read_actions("demo_0")[:, 0], 0.1 * state[:, 0], atol=1e-6)
        counts = r.episode_metadata("demo_0")["recorder_counts"]
    assert counts["topics"]["/t/image"]["invalid"] == {"encoding": 1, "size": 1, "shape": 1}
    assert counts["topics"]["/t/state"]["invalid"] == {"nan": 1}
    assert counts["invalid_total"] == 4


def test_lifecycle_transitions_driven_by_change_state(tmp_path, ros_env):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from roboloop_recorder.probe import RosProbe
    from std_srvs.srv import Trigger

    from episode_dataset import EpisodeWriter

    out = tmp_path / "lc.hdf5"
    rec = start_recorder(tmp_path, ros_env, out, autostart=False)
    try:
        with RosProbe(name="lifecycle_driver") as probe:

            def change(transition_id: int) -> bool:
                client = probe.node.create_client(ChangeState, "/recorder/change_state")
                probe.wait_for(lambda: alive(rec) and client.service_is_ready(), 30, "lifecycle")
                req = ChangeState.Request()
                req.transition.id = transition_id
                future = client.call_async(req)
                probe.wait_for(future.done, 10, f"transition {transition_id}")
                probe.node.destroy_client(client)
                return future.result().success

            def state() -> str:
                client = probe.node.create_client(GetState, "/recorder/get_state")
                probe.wait_for(client.service_is_ready, 10, "get_state")
                future = client.call_async(GetState.Request())
                probe.wait_for(future.done, 10, "get_state response")
                probe.node.destroy_client(client)
                return future.result().current_state.label

            assert state() == "unconfigured" and not out.exists()
            assert change(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
            assert out.exists()  # configure opened the dataset
            resp = probe.call(Trigger, "/recorder/start_episode")
            assert not resp.success and "not active" in resp.message
            assert change(Transition.TRANSITION_ACTIVATE) and state() == "active"
            resp = probe.call(Trigger, "/recorder/start_episode")
            assert not resp.success and "already recording" in resp.message
            assert probe.call(Trigger, "/recorder/stop_episode").success
            assert change(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
            assert change(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
        # cleanup released the dataset: another writer can open it now
        EpisodeWriter(out).close()
    finally:
        assert rec.stop() == 0
