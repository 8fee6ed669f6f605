"""policy_node with trigger=observation as a real process: one action per observation, at once,
carrying its stamp; stale, old-stamped and malformed observations still give the safe action.

This process stands in for the robot and publishes each observation (state + image, one stamp)
by hand, a control period apart, so that every action can be matched to its observation.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from roboloop_bringup.processes import start_node, wait_until  # noqa: E402
from roboloop_policy.reference_model import make_reference_policy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402

from roboloop_runtime import OnnxModel  # noqa: E402
from roboloop_testing.ros_probe import RosProbe  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]
REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "ros2_ws/src/roboloop_policy/config/policy.yaml"
RATE_HZ = 10.0  # 100 ms periods: room for a busy 2-core machine
STATE_DIM, IMAGE_HW, ACTION_DIM = 4, (8, 8), 2
NS = "/t_trigger"


class Robot:
    def __init__(self) -> None:
        self.probe = RosProbe(name="trigger_test_robot")
        node = self.probe.node
        self.node = node
        self.state_pub = node.create_publisher(JointState, f"{NS}/state", qos_profile_sensor_data)
        self.image_pub = node.create_publisher(Image, f"{NS}/image", qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.actions: list[tuple[int, np.ndarray]] = []  # (stamp_ns, effort)
        node.create_subscription(JointState, f"{NS}/action", self._on_action, QoSProfile(depth=50))
        self.probe.spin_in_background()

    def _on_action(self, msg: JointState) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.actions.append((stamp, np.array(msg.effort)))

    def publish(self, state: np.ndarray, image: np.ndarray, age_s: float = 0.0) -> int:
        stamp = self.node.get_clock().now().nanoseconds - int(age_s * 1e9)
        img = Image(height=IMAGE_HW[0], width=IMAGE_HW[1], encoding="rgb8")
        img.step, img.data = IMAGE_HW[1] * 3, image.tobytes()
        js = JointState(position=state.tolist())
        for msg in (img, js):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        self.image_pub.publish(img)
        self.state_pub.publish(js)
        return stamp

    def since(self, n: int) -> list[tuple[int, np.ndarray]]:
        with self.lock:
            return self.actions[n:]

    def count(self) -> int:
        with self.lock:
            return len(self.actions)


@pytest.mark.parametrize("executor", ["single_threaded", "events"])
def test_observation_trigger_one_action_per_observation_and_safe_fallbacks(
    tmp_path, ros_env, executor
):
    """The same behaviour on rclpy's default executor and on its EventsExecutor (the node's
    `executor` parameter), which also ends cleanly on SIGINT."""
    model_path = tmp_path / "linear.onnx"
    make_reference_policy(
        model_path,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        image_hw=IMAGE_HW,
        control_rate_hz=RATE_HZ,
    )
    model = OnnxModel(model_path, device="cpu", threads=1)
    rng = np.random.default_rng(0)
    contents = [
        (
            rng.normal(size=STATE_DIM).astype(np.float32),
            rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8),
        )
        for _ in range(4)
    ]

    def expected(i: int) -> np.ndarray:
        state, image = contents[i]
        feed = {"obs.state": state[None, None], "obs.image": image[None, None]}
        feed["noise"] = np.zeros((1, 1, ACTION_DIM), np.float32)
        return model.run(feed)["actions"][0, 0]

    robot = Robot()
    proc = start_node(
        "policy_node",
        params_file=PARAMS_FILE,
        params={
            "model_path": str(model_path),
            "device": "cpu",
            "inference_threads": 1,
            "observation_namespace": NS,
            "action_topic": f"{NS}/action",
            "spec_topic": "",
            "real_time_factor": 1.0,
            "episode_done_topic": "",
            "trigger": "observation",
            "executor": executor,
        },
        log_path=tmp_path / "policy.log",
        env=ros_env,
    )
    try:
        wait_until(
            lambda: (
                robot.state_pub.get_subscription_count() >= 1
                and robot.image_pub.get_subscription_count() >= 1
                and robot.node.count_publishers(f"{NS}/action") >= 1
            ),
            60,
            "policy_node to match",
            proc,
        )
        time.sleep(0.5)  # best effort: the node's readers match the writers a little later
        # 1) fresh observations, a period apart: each gets exactly one action, its own stamp.
        start = robot.count()
        stamps = {}
        for k in range(12):
            i = k % len(contents)
            stamps[robot.publish(*contents[i])] = i
            time.sleep(1.0 / RATE_HZ)
        wait_until(lambda: robot.since(start) and robot.since(start)[-1][0] == max(stamps),
                   10, "the action for the last observation", proc)  # fmt: skip
        got = robot.since(start)
        policy = [(s, a) for s, a in got if a.any()]  # a stall > 3 periods may add safe zeros
        assert sorted(s for s, _ in policy) == sorted(stamps), "one action per observation"
        for stamp, action in policy:
            np.testing.assert_allclose(action, expected(stamps[stamp]), rtol=1e-6, atol=1e-6)
        assert np.abs(expected(0)).min() > 0.1  # distinguishable from the zero safe action

        # 2) the stream stops: the watchdog publishes the safe action, nothing else, and the
        # node waits without spinning a core.
        start, cpu = robot.count(), proc.cpu_seconds()
        time.sleep(2.0)
        assert proc.cpu_seconds() - cpu < 0.5, "idle node busy"
        wait_until(lambda: len(robot.since(start)) >= 2, 10, "safe actions", proc)
        assert not any(a.any() for _, a in robot.since(start))

        # 3) observations stamped 1 s ago trigger a step: it is the safe action.
        start = robot.count()
        old = robot.publish(*contents[1], age_s=1.0)
        wait_until(lambda: any(s == old for s, _ in robot.since(start)), 10, "old", proc)
        assert not any(a.any() for s, a in robot.since(start))

        # 4) a malformed image beside a fresh state never completes a step: safe action only.
        state, _ = contents[2]
        bad = Image(height=4, width=4, encoding="bgr8", step=12, data=bytes(48))
        start = robot.count()
        for _ in range(5):
            stamp = robot.node.get_clock().now().nanoseconds
            js = JointState(position=state.tolist())
            for msg in (bad, js):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            robot.image_pub.publish(bad)
            robot.state_pub.publish(js)
            time.sleep(1.0 / RATE_HZ)
        wait_until(lambda: len(robot.since(start)) >= 1, 10, "safe action", proc)
        assert not any(a.any() for _, a in robot.since(start))
        assert proc.wait_for_log("dropped malformed observation", 5)
        assert proc.stop() == 0, "a clean exit on SIGINT"
    finally:
        proc.stop()
        robot.probe.close()


def test_an_unknown_executor_exits_2_with_one_line(tmp_path, ros_env):
    model_path = tmp_path / "linear.onnx"
    make_reference_policy(model_path, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    proc = start_node(
        "policy_node",
        params_file=PARAMS_FILE,
        params={"model_path": str(model_path), "spec_topic": "", "executor": "multi"},
        log_path=tmp_path / "policy.log",
        env=ros_env,
    )
    try:
        assert proc.popen.wait(30) == 2
        assert proc.wait_for_log("bad parameter: executor 'multi' is not one of", 5)
    finally:
        proc.stop()
