"""policy_node as a real process: numbers, watchdog, diagnostics, corrupt model, lifecycle.

The test process is the rest of the robot: it publishes observations at 50 Hz (JointState +
rgb8 Image, like the sim bridge), collects actions and /diagnostics, and calls the lifecycle and
parameter services. Expected actions come from onnxruntime in this process. The node under test
is started from launch/policy.launch.py (through
roboloop_bringup.launch_standin.load_launch_file), so this
also runs the launch file's node, params file and overrides as `ros2 launch` would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from roboloop_bringup.launch_standin import load_launch_file  # noqa: E402
from roboloop_bringup.processes import RosProcess, start_node, wait_until  # noqa: E402
from roboloop_policy.reference_model import make_reference_policy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from roboloop_runtime import OnnxModel  # noqa: E402
from roboloop_testing.ros_probe import RosProbe  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "ros2_ws/src/roboloop_policy/config/policy.yaml"
RATE_HZ, STALE_PERIODS = 10.0, 3.0  # 100 ms periods leave room for a busy 2-core machine
PERIOD = 1.0 / RATE_HZ
SAFE_WITHIN_S = 2 * PERIOD  # issue 3: a safe action within 2 control periods of stale data
PUBLISH_HZ = 50.0
STATE_DIM, IMAGE_HW, ACTION_DIM = 4, (8, 8), 2
T_STATE, T_IMAGE, T_ACTION = "/t_policy/state", "/t_policy/image", "/t_policy/action"
CORRUPT = "policy_node_corrupt"


class Robot:
    """In-process stand-in for the sim bridge: observations out, actions/diagnostics in."""

    def __init__(self) -> None:
        self.probe = RosProbe(name="policy_test_robot")
        self.node = self.probe.node
        rng = np.random.default_rng(0)
        self.contents = [
            (
                rng.normal(size=STATE_DIM).astype(np.float32),
                rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8),
            )
            for _ in range(4)
        ]
        self.lock = threading.Lock()
        self.content = 0
        self.mode = "off"  # off | fresh | old (stamps 1 s in the past)
        self.published: list[tuple[int, int, float]] = []  # (stamp_ns, content, monotonic)
        self.actions: list[tuple[float, int, np.ndarray]] = []  # (monotonic, stamp_ns, effort)
        sensor = qos_profile_sensor_data
        self.state_pub = self.node.create_publisher(JointState, T_STATE, sensor)
        self.image_pub = self.node.create_publisher(Image, T_IMAGE, sensor)
        self.node.create_subscription(JointState, T_ACTION, self._on_action, QoSProfile(depth=50))
        self.node.create_timer(1.0 / PUBLISH_HZ, self._publish)
        self.probe.watch_diagnostics()
        self.probe.spin_in_background()

    def close(self) -> None:
        self.probe.close()

    def _publish(self) -> None:
        with self.lock:
            mode, content = self.mode, self.content
        if mode == "off":
            return
        now = self.node.get_clock().now()
        stamp = now.nanoseconds - (1_000_000_000 if mode == "old" else 0)
        state, image = self.contents[content]
        img = Image(height=IMAGE_HW[0], width=IMAGE_HW[1], encoding="rgb8")
        img.step, img.data = IMAGE_HW[1] * 3, image.tobytes()
        js = JointState(position=state.tolist())
        for msg in (img, js):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        self.image_pub.publish(img)
        self.state_pub.publish(js)
        with self.lock:
            self.published.append((stamp, content, time.monotonic()))

    def _on_action(self, msg: JointState) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.actions.append((time.monotonic(), stamp, np.array(msg.effort)))

    def set(self, mode: str, content: int | None = None) -> float:
        with self.lock:
            self.mode = mode
            if content is not None:
                self.content = content
        return time.monotonic()

    def matched_actions(self) -> dict[int, list[np.ndarray]]:
        """Policy actions by content, where every observation it can have used is that content.

        An action carries the newest stamp s it used; the other topic may still have delivered
        the previous publish, so only actions whose stamp and the stamp before it show the same
        content are unambiguous.
        """
        with self.lock:
            published, actions = list(self.published), list(self.actions)
        index = {stamp: i for i, (stamp, _, _) in enumerate(published)}
        out: dict[int, list[np.ndarray]] = {}
        for _, stamp, effort in actions:
            i = index.get(stamp)
            if i is None or i == 0 or published[i - 1][1] != published[i][1]:
                continue
            out.setdefault(published[i][1], []).append(effort)
        return out

    def actions_after(self, t: float) -> list[tuple[float, int, np.ndarray]]:
        with self.lock:
            return [a for a in self.actions if a[0] > t]

    def last_publish_time(self) -> float:
        with self.lock:
            return self.published[-1][2]

    def status(self, node: str) -> dict[str, str] | None:
        return self.probe.status(f"/{node}: policy")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policy_models")
    good = root / "linear.onnx"
    make_reference_policy(
        good,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        image_hw=IMAGE_HW,
        control_rate_hz=RATE_HZ,
    )
    corrupt = root / "corrupt.onnx"
    corrupt.write_bytes(good.read_bytes()[:150])  # truncated: protobuf parsing fails
    return {"good": good, "corrupt": corrupt}


@pytest.fixture(scope="module")
def robot():
    robot = Robot()
    yield robot
    robot.close()


@pytest.fixture(scope="module")
def nodes(models, robot, ros_env, tmp_path_factory) -> dict[str, RosProcess]:
    """Both node processes start together so their start-up overlaps."""
    logs = tmp_path_factory.mktemp("policy_logs")
    common = {"device": "cpu", "inference_threads": 1, "diagnostics_period_s": 0.3}
    # The node under test starts the way `ros2 launch roboloop_bringup policy.launch.py
    # model_path:=... params_file:=...` starts it, with a params file of this test's settings.
    params = yaml.safe_load(PARAMS_FILE.read_text())
    # The topic map comes from the model's metadata: every observation on /t_policy/<key>.
    params["/**"]["ros__parameters"].update(
        common,
        observation_namespace="/t_policy",
        action_topic=T_ACTION,
        control_rate_hz=RATE_HZ,
        real_time_factor=1.0,
        spec_topic="",  # this process stands in for the robot: no spec
        stale_periods=STALE_PERIODS,
    )
    params_file = logs / "policy_test.yaml"
    params_file.write_text(yaml.safe_dump(params))
    launch = load_launch_file(
        REPO / "launch/policy.launch.py",
        {"model_path": str(models["good"]), "params_file": str(params_file), "device": "cpu"},
    )
    procs = {
        "policy": launch.start(0, log_path=logs / "policy.log", env=ros_env),
        "corrupt": start_node(
            "policy_node",
            params_file=PARAMS_FILE,
            params={
                **common,
                "model_path": str(models["corrupt"]),
                "observation_namespace": "",  # a hand-written topic map
                "spec_topic": "",
                "observation_topics": ["/t_policy/c_state", "/t_policy/c_image"],
                "observation_keys": ["state", "image"],
                "action_topic": "/t_policy/c_action",
            },
            log_path=logs / "corrupt.log",
            env=ros_env,
            node_name=CORRUPT,
        ),
    }
    proc = procs["policy"]
    wait_until(
        lambda: (
            robot.state_pub.get_subscription_count() >= 1
            and robot.image_pub.get_subscription_count() >= 1
            and robot.node.count_publishers(T_ACTION) >= 1
        ),
        60,
        "policy_node subscriptions and action publisher to match",
        proc,
    )
    yield procs
    for p in procs.values():
        p.stop()


def expected_action(model: OnnxModel, content: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    state, image = content
    out = model.run(
        {
            "obs.state": state[None, None],
            "obs.image": image[None, None],
            "noise": np.zeros((1, 1, ACTION_DIM), np.float32),
        }
    )
    return out["actions"][0, 0]


def test_actions_match_onnxruntime_across_processes(nodes, robot, models) -> None:
    model = OnnxModel(models["good"], device="cpu", threads=1)
    for content in range(3):
        robot.set("fresh", content)
        # Policy actions only: on a loaded machine the watchdog may also publish a zero safe
        # action stamped with these observations (safe actions are tested below).
        wait_until(
            lambda c=content: len(_policy_actions(robot.matched_actions().get(c, []))) >= 3,
            15,
            f"3 actions computed from observation set {content}",
            nodes["policy"],
        )
    matched = robot.matched_actions()
    for content in range(3):
        want = expected_action(model, robot.contents[content])
        assert np.abs(want).min() > 0.1  # distinguishable from the zero safe action
        for got in _policy_actions(matched[content]):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _policy_actions(actions: list[np.ndarray]) -> list[np.ndarray]:
    return [a for a in actions if np.asarray(a).any()]


def _first_safe_after(robot: Robot, t: float) -> float:
    found: list[float] = []

    def safe_arrived() -> bool:
        found[:] = [a[0] for a in robot.actions_after(t) if not a[2].any()]
        return bool(found)

    wait_until(safe_arrived, 10, "a zero (safe) action")
    return found[0]


def _wait_recovered(robot: Robot, t: float, proc: RosProcess) -> None:
    wait_until(
        lambda: sum(a[2].any() for a in robot.actions_after(t)) >= 3,
        10,
        "policy actions after fresh observations return",
        proc,
    )


def test_stale_observations_give_safe_action_then_recover(nodes, robot) -> None:
    proc = nodes["policy"]
    t = robot.set("fresh", 0)
    _wait_recovered(robot, t, proc)

    # 1) Stale by header stamp: data keeps arriving (so arrival age never trips), stamped 1 s ago.
    t_old = robot.set("old")
    wait_until(lambda: robot.last_publish_time() > t_old, 5, "an old-stamped publish")
    t_first_old = min(p[2] for p in robot.published if p[2] > t_old)
    t_safe = _first_safe_after(robot, t_first_old)

    def safe_on_old_stamps() -> bool:
        # Safe actions carry the newest stamp held; once both topics hold old messages, that
        # is an old stamp: the watchdog judged by stamp what it really received.
        with robot.lock:
            old = {stamp for stamp, _, t_pub in robot.published if t_pub > t_old}
            return any(s in old for _, s, a in robot.actions if not a.any())

    wait_until(safe_on_old_stamps, 5, "a safe action stamped with an old observation", proc)
    # Measured here, so it includes DDS delivery both ways (the tick logic alone is unit-tested
    # with a fake clock in test_policy_control.py).
    late_ms = (t_safe - t_first_old) * 1e3
    assert late_ms <= SAFE_WITHIN_S * 1e3, f"safe action {late_ms:.0f} ms after stale data"
    t = robot.set("fresh")
    _wait_recovered(robot, t, proc)

    # 2) Stale by arrival: the publisher goes silent.
    robot.set("off")
    time.sleep(2.0 / PUBLISH_HZ)  # let an in-flight publish land before reading its time
    t_last = robot.last_publish_time()
    stale_at = t_last + STALE_PERIODS * PERIOD
    t_safe = _first_safe_after(robot, t_last)
    assert t_safe > stale_at - 0.01, "safe action before the data was stale"
    assert t_safe - stale_at <= SAFE_WITHIN_S, f"safe {(t_safe - stale_at) * 1e3:.0f} ms late"
    # Nothing but safe actions while silent.
    time.sleep(2 * PERIOD)
    assert not any(a[2].any() for a in robot.actions_after(t_safe))
    t = robot.set("fresh", 1)
    _wait_recovered(robot, t, proc)

    wait_until(
        lambda: (
            (s := robot.status("policy_node")) is not None
            and int(s["stale_events"]) >= 2
            and s["control_state"] == "running"
        ),
        5,
        "diagnostics counting both stale events",
        proc,
    )
    assert int(robot.status("policy_node")["safe_actions_published"]) >= 2


def test_diagnostics_report_provider_and_latency_percentiles(nodes, robot) -> None:
    robot.set("fresh", 2)
    wait_until(
        lambda: (
            (s := robot.status("policy_node")) is not None
            and int(s["inference_count"]) >= 20
            and s["obs_to_action_latency_p50_ms"] != "n/a"
        ),
        15,
        "diagnostics with latency statistics",
        nodes["policy"],
    )
    status = robot.status("policy_node")
    assert status["lifecycle_state"] == "active"
    assert status["execution_provider"] == "CPUExecutionProvider"
    assert status["requested_device"] == "cpu" and status["provider_fallback_reason"] == ""
    p50, p99 = float(status["inference_latency_p50_ms"]), float(status["inference_latency_p99_ms"])
    assert 0 < p50 <= p99 < 1000
    o50 = float(status["obs_to_action_latency_p50_ms"])
    o99 = float(status["obs_to_action_latency_p99_ms"])
    assert p50 < o50 <= o99  # an action follows its observation by at least the inference
    assert status["control_rate_hz"] == "10" and status["malformed_observations"] == "0"
    # The node keeps up with what it is sent: the image rate it measures (over its last 50
    # arrivals) is the rate this process published at, and actions come at the control rate.
    # Loose factors: the point is to catch a starved executor (it once fell to 3-4 Hz).
    with robot.lock:
        sent = [t_pub for _, _, t_pub in robot.published[-50:]]
    sent_hz = (len(sent) - 1) / (sent[-1] - sent[0])
    assert 0.5 * sent_hz < float(status["observation_rate_hz:image"]) < 1.5 * sent_hz
    t = time.monotonic()
    time.sleep(2.0)
    assert len(robot.actions_after(t)) >= 0.5 * 2.0 * RATE_HZ


def test_malformed_observation_is_counted_and_not_used(nodes, robot) -> None:
    robot.set("off")
    bad = Image(height=4, width=4, encoding="bgr8", step=12, data=bytes(48))
    for _ in range(3):
        robot.image_pub.publish(bad)
    wait_until(
        lambda: (
            (s := robot.status("policy_node")) is not None
            and int(s["malformed_observations"]) >= 1
        ),
        10,
        "malformed observations in diagnostics",
        nodes["policy"],
    )
    assert nodes["policy"].wait_for_log("dropped malformed observation: /t_policy/image", 5)


def test_corrupt_model_leaves_node_alive_and_unconfigured(nodes, robot, models) -> None:
    proc = nodes["corrupt"]
    assert proc.wait_for_log("configure failed:", 30), proc.log_text()
    (line,) = [ln for ln in proc.log_text().splitlines() if "configure failed:" in ln]
    assert str(models["corrupt"]) in line and "cannot load ONNX model" in line
    assert robot.probe.lifecycle_state(f"/{CORRUPT}") == "unconfigured"
    assert proc.alive()
    wait_until(
        lambda: (s := robot.status(CORRUPT)) is not None and s["last_error"] != "",
        10,
        "diagnostics with the configure error",
        proc,
    )
    status = robot.status(CORRUPT)
    assert status["_level"] == DiagnosticStatus.ERROR and "corrupt.onnx" in status["last_error"]

    # A missing file fails the same way; the same process then recovers once pointed at a
    # good model (set the parameter, configure, activate): no restart needed.
    probe, node = robot.probe, f"/{CORRUPT}"
    missing = models["good"].parent / "missing.onnx"
    probe.set_parameters(node, model_path=str(missing))
    assert not probe.change_state(node, Transition.TRANSITION_CONFIGURE)
    assert proc.wait_for_log(f"configure failed: {missing}: no such model file", 10)
    assert probe.lifecycle_state(node) == "unconfigured"
    probe.set_parameters(node, model_path=str(models["good"]))
    assert probe.change_state(node, Transition.TRANSITION_CONFIGURE), proc.log_text()
    assert probe.lifecycle_state(node) == "inactive"
    assert probe.change_state(node, Transition.TRANSITION_ACTIVATE), proc.log_text()
    assert probe.lifecycle_state(node) == "active"
    assert proc.stop() == 0, "policy_node did not exit cleanly on SIGINT"


def test_the_real_time_factor_comes_from_the_robot_spec(tmp_path: Path) -> None:
    """spec_topic: the rate the node ticks at is the model's (robot time) x the spec's real-time
    factor, both on /diagnostics; a missing spec, or a factor given twice, is one line."""
    from rclpy.lifecycle import TransitionCallbackReturn as Result
    from rclpy.parameter import Parameter as Param
    from roboloop_node_common.robot_spec import SPEC_QOS, DatasetSpec, spec_message
    from roboloop_policy.node import PolicyNode
    from std_msgs.msg import String

    from episode_dataset import KeySpec

    model = tmp_path / "state.onnx"
    make_reference_policy(model, state_dim=STATE_DIM, action_dim=ACTION_DIM, control_rate_hz=50.0)
    spec = DatasetSpec(
        {"state": KeySpec("float32", (STATE_DIM,))}, KeySpec("float32", (ACTION_DIM,))
    )
    with RosProbe(name="spec_robot") as probe:
        latch = probe.node.create_publisher(String, "/t_spec/spec", SPEC_QOS)
        latch.publish(String(data=spec_message(spec, {"state": "/t_spec/state"}, 0.4)))
        params = {
            "model_path": str(model),
            "device": "cpu",
            "observation_namespace": "/t_spec",
            "spec_topic": "/t_spec/spec",
            "spec_timeout_s": 10.0,
        }
        node = PolicyNode(
            context=probe.context,
            parameter_overrides=[Param(k, value=v) for k, v in params.items()],
        )
        try:
            assert node.trigger_configure() == Result.SUCCESS, node.configure_error
            values: dict[str, str] = {}
            node.status(values, DiagnosticStatus.OK, "")
            rates = {k: values[k] for k in ("control_rate_hz", "real_time_factor")}
            assert rates == {"control_rate_hz": "50", "real_time_factor": "0.4"}
            assert values["control_ticks_per_s"] == "20"
            assert node.trigger_cleanup() == Result.SUCCESS
            node.set_parameters([Param("real_time_factor", value=0.5)])
            assert node.trigger_configure() == Result.FAILURE
            assert "both give the real-time factor: set only one" in node.configure_error
            missing = {"spec_topic": "/t_none", "real_time_factor": 0.0, "spec_timeout_s": 0.5}
            node.set_parameters([Param(k, value=v) for k, v in missing.items()])
            assert node.trigger_configure() == Result.FAILURE
            assert node.configure_error == (
                "no spec on /t_none within 0.5 s (spec_timeout_s); is the sim bridge running?"
            )
        finally:
            node.destroy_node()
