"""Recorder node across real processes: live bridge -> dataset, SIGKILL safety, bad messages.

Each test runs in the worker's private ROS_DOMAIN_ID (tests/conftest.py); waits are on
conditions with timeouts (discovery, log lines, files), never fixed sleeps.
"""

from __future__ import annotations

import glob
import json
import os
import re
import resource
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from roboloop_bringup.processes import RosProcess, shm_files_of, start_node, wait_until

from episode_dataset import EpisodeReader, validate_file

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
BRIDGE_YAML = REPO / "ros2_ws/src/roboloop_sim_bridge/config/sim_bridge.yaml"
RECORDER_YAML = REPO / "ros2_ws/src/roboloop_recorder/config/recorder.yaml"  # the bridge's spec
TOPICS_YAML = REPO / "ros2_ws/src/roboloop_recorder/config/recorder_topics.yaml"  # by hand
CAMERA = 32
RATE = 10.0  # steps per wall-clock second: a loaded 2-core machine keeps every step on time
REAL_TIME_FACTOR = RATE / 50.0  # of Reacher-v5's 50 Hz control rate (1 / dt)


def start_bridge(tmp: Path, env: dict, **params) -> RosProcess:
    base = {"camera": CAMERA, "real_time_factor": REAL_TIME_FACTOR, "wait_for_subscribers": 1}
    return start_node(
        "sim_bridge",
        params_file=BRIDGE_YAML,
        params={**base, **params},
        log_path=tmp / "sim_bridge.log",
        env=env,
    )


def start_recorder(tmp: Path, env: dict, out: Path, **params) -> RosProcess:
    """A recorder of the bridge's topics listed by hand (recorder_topics.yaml)."""
    base = {
        "output_path": str(out),
        "shapes": ["10", f"{CAMERA},{CAMERA},3", "2", "", ""],
        "env_args_json": json.dumps({"env_name": "Reacher-v5", "env_kwargs": {"camera": CAMERA}}),
        "real_time_factor": REAL_TIME_FACTOR,
        "max_age_s": 0.4 / RATE,
        "fsync": False,
    }
    return start_node(
        "recorder",
        params_file=TOPICS_YAML,
        params={**base, **params},
        log_path=tmp / "recorder.log",
        env=env,
    )


def test_records_expert_episodes_from_live_bridge(tmp_path, ros_env):
    """recorder.yaml: keys, shapes, topics, env_args and rates come from the bridge's spec."""
    out = tmp_path / "rec.hdf5"
    rec = start_node(
        "recorder",
        params_file=RECORDER_YAML,
        params={
            "output_path": str(out),
            "max_age_s": 0.4 / RATE,
            "fsync": False,
            "max_episodes": 2,
        },
        log_path=tmp_path / "recorder.log",
        env=ros_env,
    )
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
        import sim
        from sim.spec import env_spec

        # The dataset spec is the env's, as sim.collect writes it: nothing was retyped.
        spec = env_spec(sim.make("Reacher-v5", camera=CAMERA), "Reacher-v5", CAMERA)
        for key, ks in spec.obs_specs.items():
            got = r.obs_specs[key]
            assert (got.shape, got.dtype, got.feature_type, got.encoding) == (
                ks.shape,
                ks.dtype,
                ks.feature_type,
                ks.encoding,
            ), key
        assert set(r.obs_specs) == {"state", "image"}
        assert r.obs_specs["image"].source_topic == "/sim/image"
        assert r.env_args == spec.env_args  # control_rate_hz 50 (robot time), action_space
        recorder_meta = r.episode_metadata("demo_0")["recorder"]
        assert recorder_meta["control_rate_hz"] == 50.0
        assert recorder_meta["real_time_factor"] == REAL_TIME_FACTOR
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
    env = sim.make("Reacher-v5")
    for i, (states, actions, rewards) in enumerate(episodes.values()):
        obs, _ = env.reset(seed=3 + i)
        for k in range(50):
            np.testing.assert_allclose(states[k], obs["state"], atol=1e-4, err_msg=f"step {k}")
            obs, reward, *_ = env.step(actions[k])
            assert rewards[k] == pytest.approx(reward, abs=1e-4), f"episode {i} step {k}"
    env.close()


def test_sigkill_mid_episode_keeps_completed_episodes(tmp_path, ros_env):
    """The recorder takes its topics from a dataset (spec_path): one sim.collect wrote."""
    from sim.collect import collect

    spec = tmp_path / "collected.hdf5"
    collect("Reacher-v5", "random", 1, seed=0, out=spec, camera=CAMERA, progress=False)
    out = tmp_path / "rec.hdf5"
    rec = start_node(
        "recorder",
        params_file=RECORDER_YAML,
        params={
            "spec_topic": "",
            "spec_path": str(spec),
            "real_time_factor": REAL_TIME_FACTOR,
            "output_path": str(out),
            "max_age_s": 0.4 / RATE,
            "fsync": False,
        },
        log_path=tmp_path / "recorder.log",
        env=ros_env,
    )
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
        if rec.alive():  # the test failed before the kill: never leave a recorder running
            rec.stop()
    rec.cleanup_shm()  # port segments it shared with the bridge can go once the bridge is gone
    leftover = [f for f in held if os.path.exists(f) and not _held_by_live(f)]
    assert leftover == []
    validate_file(out)
    with EpisodeReader(out) as r, EpisodeReader(spec) as collected:
        assert r.episodes == ["demo_0"]
        assert r.num_steps("demo_0") == 50
        assert r.read_dones("demo_0")[-1]
        assert r.obs_specs["image"].shape == collected.obs_specs["image"].shape
        assert r.env_args == collected.env_args


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
        time.sleep(0.5)  # a few steps into demo_1 (50 steps at 10 Hz)
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
        assert r.episodes == ["demo_0", "demo_1"] and r.num_steps("demo_0") == 50
        # the open episode is kept up to the signal, marked so that training can leave it out
        assert r.episode_metadata("demo_1")["end_reason"] == "shutdown"
        steps = r.num_steps("demo_1")
        assert 0 < steps < 50 and not r.read_dones("demo_1").any()
    # and its log line says so (it read "written (41 steps)", as for an episode the env ended)
    log = rec.log_text()
    assert "episode demo_0 written (50 steps)\n" in log
    cut = f"episode demo_1 written ({steps} steps; interrupted (shutdown), not ended by the env)"
    assert cut in log, log[-2000:]


def alive(proc: RosProcess) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
    return True


def _held_by_live(path: str) -> bool:
    for pid_dir in glob.glob("/proc/[0-9]*"):
        if path in shm_files_of(int(os.path.basename(pid_dir))):
            return True
    return False


def probe_params(tmp_path: Path, **overrides) -> Path:
    """Parameters for a recorder of /t/state, /t/image (8x8 rgb8) and /t/action at 20 Hz."""
    params = {
        "topics": ["/t/state", "/t/image", "/t/action"],
        "types": [
            "sensor_msgs/msg/JointState",
            "sensor_msgs/msg/Image",
            "sensor_msgs/msg/JointState",
        ],
        "keys": ["obs/state", "obs/image", "actions"],
        "shapes": ["3", "8,8,3", "2"],
        "fields": ["position", "", "effort"],
        "control_rate_hz": PROBE_RATE,
        "max_age_s": 0.4 / PROBE_RATE,
        "fsync": False,
        "diagnostics_period_s": 0.2,
        **overrides,
    }
    path = tmp_path / "rec.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


PROBE_RATE = 20.0


class StepPublisher:
    """Publishes step k as a driver would: state, image and action with one stamp (now)."""

    def __init__(self, probe, shape: tuple[int, int, int] = (8, 8, 3)) -> None:
        from sensor_msgs.msg import Image, JointState

        self.probe, self.shape = probe, shape
        node = probe.node
        self.pubs = {
            "state": node.create_publisher(JointState, "/t/state", 10),
            "image": node.create_publisher(Image, "/t/image", 10),
            "action": node.create_publisher(JointState, "/t/action", 10),
        }

    def stamp(self, offset_s: float = 0.0):
        from builtin_interfaces.msg import Time

        ns = self.probe.node.get_clock().now().nanoseconds + int(offset_s * 1e9)
        return Time(sec=ns // 10**9, nanosec=ns % 10**9)

    def state(self, k: int):
        from sensor_msgs.msg import JointState

        return JointState(position=[float(k), 1.0, 2.0])

    def image(self, k: int, pad: int = 0):
        from sensor_msgs.msg import Image

        h, w, c = self.shape
        rows = np.concatenate(
            [np.full((h, w * c), k % 256, np.uint8), np.full((h, pad), 255, np.uint8)], axis=1
        )
        return Image(height=h, width=w, encoding="rgb8", step=w * c + pad, data=rows.tobytes())

    def publish(self, k: int, offset_s: float = 0.0, **replace) -> None:
        """Step k (a message replaced by `replace[name]`, or left out when it is None)."""
        from sensor_msgs.msg import JointState

        stamp = self.stamp(offset_s)
        msgs = {
            "state": self.state(k),
            "image": self.image(k),
            "action": JointState(effort=[0.1 * k, -0.1]),
        }
        msgs.update(replace)
        for name, msg in msgs.items():
            if msg is not None:
                msg.header.stamp = stamp
                self.pubs[name].publish(msg)

    def send(self, name: str, msg, offset_s: float) -> None:
        """One extra message on `name`, stamped `offset_s` from now."""
        msg.header.stamp = self.stamp(offset_s)
        self.pubs[name].publish(msg)

    def matched(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())


class Diagnostics:
    """The recorder's latest /diagnostics status, as seen by a probe."""

    def __init__(self, probe) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.latest = None
        probe.node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 10)

    def _on(self, msg) -> None:
        for status in msg.status:
            if status.name == "/recorder: recorder":
                self.latest = status

    @property
    def values(self) -> dict[str, str]:
        return {} if self.latest is None else {kv.key: kv.value for kv in self.latest.values}

    def wait_for(self, probe, expected: dict[str, object], timeout: float = 10.0) -> None:
        """Until the latest status has these values (AssertionError showing what it has)."""

        def shows() -> bool:
            values = self.values
            return all(values.get(k) == str(v) for k, v in expected.items())

        try:
            probe.wait_for(shows, timeout, f"diagnostics {expected}")
        except TimeoutError as e:
            wrong = {
                k: self.values.get(k) for k, v in expected.items() if self.values.get(k) != str(v)
            }
            raise AssertionError(f"{e}; differing: {wrong}; all: {self.values}") from None


def test_bad_stamps_and_messages_never_wedge_the_recorder_and_are_counted(tmp_path, ros_env):
    """Defects 3 and 8 and item 7 in one recorder process: far-future, far-past and
    backwards-jumping stamps, malformed and row-padded images, JointStates whose names disagree,
    a publisher of the wrong type; every rejection counted per topic and reason and logged per
    (topic, reason); SIGTERM keeps the open episode."""
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from roboloop_testing.ros_probe import RosProbe

    out = tmp_path / "missing" / "dirs" / "rec.hdf5"  # the recorder creates the parents
    rec = start_node(
        "recorder",
        params_file=probe_params(tmp_path, output_path=str(out)),
        log_path=tmp_path / "recorder.log",
        env=ros_env,
    )
    period = 1.0 / PROBE_RATE
    try:
        with RosProbe(name="driver") as probe, RosProbe(name="wrong_type") as other:
            steps = StepPublisher(probe)
            diag = Diagnostics(probe)
            other.node.create_publisher(String, "/t/image", 10)  # a String on an Image topic
            probe.wait_for(lambda: alive(rec) and steps.matched(), 30, "recorder subscriptions")

            def run(ks, offset_s=0.0, attacks=None):
                for k in ks:
                    steps.publish(k, offset_s, **(attacks or {}).get(k, {}))
                    for name, msg, off in extra.get(k, []):
                        steps.send(name, msg, off)
                    probe.spin_for(period)

            bad_image = steps.image(0)
            bad_image.encoding = "bgr8"
            short_image = steps.image(0)
            short_image.data = bytes(190)
            tall_image = Image(height=4, width=8, encoding="rgb8", step=24, data=bytes(96))
            extra = {  # sent after step k's own messages
                6: [("state", steps.state(6), 1e6)],  # one message 11 days ahead
                7: [("image", steps.image(7), 1e6)],
                8: [("state", steps.state(8), -1e6)],  # one far in the past
                14: [("state", steps.state(14), 5.0)],  # beyond the 1 s future tolerance
            }
            attacks = {
                9: {"image": steps.image(9, pad=8)},  # valid: rows padded to 32 bytes
                10: {"state": JointState(name=["a", "b"], position=[10.0, 1.0, 2.0])},
                11: {"image": bad_image},
                12: {"state": JointState(position=[float("nan"), 1.0, 2.0])},
                13: {"image": short_image},
                15: {"image": tall_image},
            }
            run(range(22), attacks=attacks)
            expected = {
                "topics/t/state/invalid/future_stamp": 2,
                "topics/t/state/invalid/late": 1,
                "topics/t/state/invalid/names": 1,
                "topics/t/state/invalid/nonfinite": 1,
                "topics/t/image/invalid/future_stamp": 1,
                "topics/t/image/invalid/encoding": 1,
                "topics/t/image/invalid/size": 1,
                "topics/t/image/invalid/shape": 1,
                "topics/t/image/wrong_type_publishers": 1,
                "topics/t/state/received": 25,
                "topics/t/state/valid": 20,
                "topics/t/image/received": 23,
                "topics/t/image/valid": 19,
                "topics/t/action/received": 22,
                "topics/t/action/valid": 22,
                "invalid_total": 9,
            }
            diag.wait_for(probe, expected)
            assert diag.latest.level == b"\x01"  # WARN

            # The publisher's clock jumps back 100 s, then forward again: recording follows.
            extra = {}
            run(range(30, 40), offset_s=-100.0)
            run(range(40, 45))
            probe.spin_for(0.3)  # the lagged timeline reaches the last step
            diag.wait_for(probe, {"time_jumps": 1})
            resp = probe.call(Trigger, "/recorder/stop_episode")
            assert resp.success and "demo_0 written" in resp.message, resp.message
            assert probe.call(Trigger, "/recorder/start_episode").success
            run(range(50, 55))
            probe.spin_for(0.2)
        rec.popen.send_signal(signal.SIGTERM)  # finishes the open episode
        assert rec.popen.wait(20) == 0, rec.log_text()[-3000:]
    finally:
        rec.stop()
    log = rec.log_text()
    assert "Traceback" not in log, log[-3000:]
    # every (topic, reason) gets its own log line, however close together they came
    for key in expected:
        if "/invalid/" in key:
            topic, reason = key.removeprefix("topics").split("/invalid/")
            pattern = rf"{re.escape(topic)}: rejected [^\n]*: {reason}:"
            assert re.search(pattern, log), f"no log line for {topic} {reason}"
    assert re.search(r"/t/image: .*std_msgs/msg/String", log), "wrong-type publisher not logged"
    validate_file(out)
    with EpisodeReader(out) as r:
        assert r.episodes == ["demo_0", "demo_1"]
        state = r.read_obs("demo_0", "state")
        images = r.read_obs("demo_0", "image")
        k = state[:, 0].astype(int).tolist()
        assert f"({len(k)} steps)" in resp.message
        assert np.isfinite(state).all() and 255 not in images  # nothing bad, no padding
        np.testing.assert_array_equal(images[:, 0, 0, 0], np.array(k) % 256)
        np.testing.assert_allclose(r.read_actions("demo_0")[:, 0], 0.1 * state[:, 0], atol=1e-5)
        # the steps around the attacks, the padded image (9), and after the clock jumps
        assert set(range(22)) - {10, 11, 12, 13, 15} <= set(k), k
        assert len(set(range(30, 40)) & set(k)) >= 6 and set(range(40, 45)) <= set(k), k
        counts = r.episode_metadata("demo_0")["recorder_counts"]
        assert counts["topics"]["/t/image"]["invalid"]["encoding"] == 1
        meta = r.episode_metadata("demo_1")
        assert meta["end_reason"] == "shutdown"
        assert r.read_obs("demo_1", "state")[:, 0].tolist() == [50, 51, 52, 53, 54]


def test_failed_write_stops_the_episode_reports_it_and_keeps_committed_ones(tmp_path, ros_env):
    """Defect 4 and item 4: a file-size limit (standing in for a full disk) fails a write; a
    configure that fails leaves nothing behind."""
    from std_srvs.srv import Trigger

    from roboloop_testing.ros_probe import RosProbe

    out = tmp_path / "rec.hdf5"
    bad = start_node(
        "recorder",
        params_file=probe_params(tmp_path, output_path=str(out), reference_key="obs/nope"),
        log_path=tmp_path / "bad.log",
        env=ros_env,
    )
    assert bad.popen.wait(30) == 1 and "reference_key" in bad.log_text(), bad.log_text()
    assert not out.exists() and not out.with_name(out.name + ".episodes").exists()
    # Two sources of the topic map: refused, naming both, never one silently preferred.
    both = start_node(
        "recorder",
        params_file=probe_params(tmp_path, output_path=str(out), spec_topic="/sim/spec"),
        log_path=tmp_path / "both.log",
        env=ros_env,
    )
    assert both.popen.wait(30) == 1, both.log_text()
    assert "parameters ['spec_topic', 'topics'," in both.log_text(), both.log_text()
    assert not out.exists()

    limit = 600_000  # bytes per file: demo_0 (5 steps of 48 KB) fits, demo_1 (25) does not
    rec = start_node(
        "recorder",
        params_file=probe_params(tmp_path, output_path=str(out), shapes=["3", "128,128,3", "2"]),
        log_path=tmp_path / "recorder.log",
        env=ros_env,
    )
    period = 1.0 / PROBE_RATE
    try:
        with RosProbe(name="driver") as probe:
            steps = StepPublisher(probe, shape=(128, 128, 3))
            diag = Diagnostics(probe)
            probe.wait_for(lambda: alive(rec) and steps.matched(), 30, "recorder subscriptions")
            resource.prlimit(rec.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            for k in range(5):
                steps.publish(k)
                probe.spin_for(period)
            probe.spin_for(0.3)
            resp = probe.call(Trigger, "/recorder/stop_episode")
            assert resp.success and "demo_0 written (5 steps)" in resp.message, resp.message
            assert probe.call(Trigger, "/recorder/start_episode").success
            for k in range(10, 35):
                steps.publish(k)
                probe.spin_for(period)
            probe.spin_for(0.3)
            resp = probe.call(Trigger, "/recorder/stop_episode")
            assert not resp.success, resp.message
            assert str(out) in resp.message and "File too large" in resp.message, resp.message
            probe.wait_for(
                lambda: diag.latest is not None and diag.latest.level == b"\x02", 10, "ERROR"
            )
            assert "File too large" in diag.latest.message and str(out) in diag.latest.message
            assert diag.values["recording"] == "False"
        rec.popen.send_signal(signal.SIGINT)
        code = rec.popen.wait(20)
    finally:
        rec.stop()
    log = rec.log_text()
    assert code == 0 and "Traceback" not in log and "Segmentation" not in log, log[-3000:]
    assert log.count("File too large") >= 1
    validate_file(out)
    with EpisodeReader(out) as r:
        assert r.episodes == ["demo_0"] and r.num_steps("demo_0") == 5
        assert r.read_obs("demo_0", "image")[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert not list(out.with_name(out.name + ".episodes").glob("*.partial"))


def test_lifecycle_transitions_driven_by_change_state(tmp_path, ros_env):
    from lifecycle_msgs.msg import Transition
    from std_srvs.srv import Trigger

    from episode_dataset import EpisodeWriter
    from roboloop_testing.ros_probe import RosProbe

    out = tmp_path / "lc.hdf5"
    rec = start_recorder(tmp_path, ros_env, out, autostart=False)
    try:
        with RosProbe(name="lifecycle_driver") as probe:

            def change(transition_id: int) -> bool:
                return probe.change_state("/recorder", transition_id, timeout=30)

            def state() -> str:
                return probe.lifecycle_state("/recorder", timeout=30)

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


def test_seed_ros_data_collector_records_through_the_services(tmp_path, ros_env, monkeypatch):
    """Seed 002's ROSDataCollector: start_recording / stop_recording drive the recorder's
    services, and stop_recording returns the episode the recorder wrote."""
    from roboloop_testing.ros_probe import RosProbe
    from training.data_collection import RecordingError, ROSDataCollector

    for name, value in ros_env.items():  # the collector runs in this process
        monkeypatch.setenv(name, value)
    out = tmp_path / "seed.hdf5"
    rec = start_node(
        "recorder",
        params_file=probe_params(tmp_path, output_path=str(out), record_on_activate=False),
        log_path=tmp_path / "recorder.log",
        env=ros_env,
    )
    try:
        with RosProbe(name="driver") as probe, ROSDataCollector(timeout_s=30) as collector:
            steps = StepPublisher(probe)
            probe.wait_for(lambda: alive(rec) and steps.matched(), 30, "recorder subscriptions")
            assert collector.start_recording() == "recording"
            with pytest.raises(RecordingError, match="already recording"):
                collector.start_recording()
            for k in range(6):
                steps.publish(k)
                probe.spin_for(1.0 / PROBE_RATE)
            probe.spin_for(0.3)
            episode = collector.stop_recording()
            assert len(episode) == 6
            np.testing.assert_allclose(episode.obs["state"][:, 0], np.arange(6))
            np.testing.assert_allclose(episode.actions[:, 0], 0.1 * np.arange(6), rtol=1e-6)
            with pytest.raises(RecordingError, match="/recorder/stop_episode: not recording"):
                collector.stop_recording()
        with ROSDataCollector(recorder="/nobody", timeout_s=1) as lost:
            with pytest.raises(RecordingError, match="/nobody/start_episode: no such service"):
                lost.start_recording()
    finally:
        assert rec.stop() == 0


def test_spec_topic_wait_ends_by_timeout_or_stop_signal(tmp_path, ros_env):
    """recorder.yaml without a sim bridge: no spec is a one-line configure error after
    spec_timeout_s; a stop signal while waiting exits 0 at once, leaving no file."""
    out = tmp_path / "rec.hdf5"
    late = start_node(
        "recorder",
        params_file=RECORDER_YAML,
        params={"output_path": str(out), "spec_timeout_s": 1.0},
        log_path=tmp_path / "late.log",
        env=ros_env,
    )
    assert late.popen.wait(30) == 1, late.log_text()
    assert "no spec on /sim/spec within 1 s (spec_timeout_s)" in late.log_text()
    waiting = start_node(
        "recorder",
        params_file=RECORDER_YAML,
        params={"output_path": str(out)},
        log_path=tmp_path / "waiting.log",
        env=ros_env,
    )
    try:
        wait_until(lambda: "waiting up to 30 s for /sim/spec" in waiting.log_text(), 30, "wait")
        t0 = time.monotonic()
        waiting.popen.send_signal(signal.SIGINT)
        assert waiting.popen.wait(10) == 0, waiting.log_text()
        assert time.monotonic() - t0 < 5
    finally:
        waiting.stop()
    assert not out.exists()
