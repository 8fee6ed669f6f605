"""Sim bridge node across processes: topics, actions from another process, services."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from roboloop_bringup.processes import start_node

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
FUTURE_KEY = "topics/sim/action/invalid/future_stamp"
BRIDGE_YAML = REPO / "ros2_ws/src/roboloop_sim_bridge/config/sim_bridge.yaml"


def test_bridge_publishes_and_applies_actions_from_another_process(tmp_path, ros_env):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import (
        DurabilityPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float32, String
    from std_srvs.srv import Trigger

    from roboloop_testing.ros_probe import RosProbe

    bridge = start_node(
        "sim_bridge",
        params_file=BRIDGE_YAML,
        params={
            "action_source": "topic",
            "camera": 32,
            "real_time_factor": 0.4,  # Reacher-v5's 50 Hz at 20 steps per wall-clock second
            "wait_for_subscribers": 1,
            "action_timeout_s": 1.0,
        },
        log_path=tmp_path / "sim_bridge.log",
        env=ros_env,
    )
    got: dict[str, list] = {"state": [], "image": [], "applied": [], "reward": [], "done": []}

    def alive() -> bool:
        assert bridge.alive(), bridge.log_text()[-3000:]
        return True

    try:
        with RosProbe(name="policy_stand_in") as probe:
            node = probe.node
            sensor = qos_profile_sensor_data
            node.create_subscription(JointState, "/sim/state", got["state"].append, sensor)
            node.create_subscription(Image, "/sim/image", got["image"].append, sensor)
            node.create_subscription(JointState, "/sim/applied_action", got["applied"].append, 10)
            node.create_subscription(Float32, "/sim/reward", got["reward"].append, 10)
            node.create_subscription(Bool, "/sim/done", got["done"].append, 10)
            action_pub = node.create_publisher(JointState, "/sim/action", 1)
            probe.wait_for(lambda: alive() and len(got["state"]) > 0, 60, "first observation")
            probe.wait_for(lambda: action_pub.get_subscription_count() > 0, 30, "action match")

            # Answer each new observation with an out-of-range action stamped with its stamp.
            answered = set()
            target = 8
            while len(answered) < target:
                probe.wait_for(alive, 1, "")
                obs = got["state"][-1]
                key = (obs.header.stamp.sec, obs.header.stamp.nanosec)
                if key not in answered:
                    cmd = JointState(effort=[5.0, -0.25])
                    cmd.header.stamp = obs.header.stamp
                    action_pub.publish(cmd)
                    answered.add(key)
                probe.executor.spin_once(timeout_sec=0.01)
            probe.wait_for(
                lambda: min(len(got["applied"]), len(got["reward"]), len(got["done"])) >= target,
                10,
                "applied actions, rewards, dones",
            )

            stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["state"]}
            applied = got["applied"][-target // 2 :]
            for m in applied:
                # clipped to Reacher's [-1, 1]; stamped with the observation it was applied to
                np.testing.assert_allclose(m.effort, [1.0, -0.25])
                assert (m.header.stamp.sec, m.header.stamp.nanosec) in stamps
            img = got["image"][-1]
            assert (img.height, img.width, img.encoding, img.step) == (32, 32, "rgb8", 96)
            assert len(img.data) == 32 * 32 * 3
            assert img.header.stamp == got["state"][-1].header.stamp or len(got["image"]) > 1
            assert len(got["state"][-1].position) == 10
            assert got["state"][-1].name[0] == "state_0"
            assert not any(d.data for d in got["done"])

            # One meaning of control rate: Reacher-v5's 50 Hz (1 / dt) at real_time_factor 0.4
            # is one observation per 50 ms of stamps.
            stamps_ns = sorted(
                m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got["state"]
            )
            assert np.median(np.diff(stamps_ns)) == pytest.approx(50e6, rel=0.01)
            # The spec is latched: a reader that subscribes late still gets it.
            latched = QoSProfile(
                depth=1,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )
            specs: list = []
            node.create_subscription(String, "/sim/spec", specs.append, latched)
            probe.wait_for(lambda: len(specs) > 0, 10, "the latched spec")
            spec = json.loads(specs[0].data)
            image, state = spec["obs_specs"]["image"], spec["obs_specs"]["state"]
            assert (image["shape"], image["dtype"], image["feature_type"]) == (
                [32, 32, 3],
                "uint8",
                "image",
            )
            assert (state["shape"], state["feature_type"]) == ([10], "low_dim")
            assert (image["source_topic"], state["source_topic"]) == ("/sim/image", "/sim/state")
            assert spec["env_args"]["control_rate_hz"] == 50.0
            assert spec["env_args"]["action_space"] == {"low": [-1.0, -1.0], "high": [1.0, 1.0]}
            assert spec["real_time_factor"] == 0.4

            # Malformed commands (the shared JointState decoder) are counted, never applied.
            diagnostics: list[dict[str, str]] = []
            node.create_subscription(
                DiagnosticArray,
                "/diagnostics",
                lambda m: diagnostics.extend(
                    {kv.key: kv.value for kv in status.values}
                    for status in m.status
                    if "sim_bridge" in status.name
                ),
                10,
            )
            for bad in (
                JointState(effort=[float("nan"), 0.0]),
                JointState(effort=[0.1, 0.2, 0.3]),
                JointState(name=["a", "b", "c"], effort=[0.1, 0.2]),
            ):
                action_pub.publish(bad)
                probe.spin_for(0.1)
            probe.wait_for(
                lambda: alive() and any(d.get("invalid_actions") == "3" for d in diagnostics),
                10,
                "3 invalid actions counted",
            )
            assert all(np.isfinite(m.effort).all() and len(m.effort) == 2 for m in got["applied"])
            # A command stamped beyond future_tolerance_s: the recorder's rule, counted by reason.
            future = JointState(effort=[0.1, 0.2])
            future.header.stamp = got["state"][-1].header.stamp
            future.header.stamp.sec += 100000
            action_pub.publish(future)
            probe.wait_for(
                lambda: (
                    alive()
                    and any(
                        d.get("topics/sim/action/invalid/future_stamp") == "1" for d in diagnostics
                    )
                ),
                10,
                "the future-stamped action counted",
            )
            assert diagnostics[-1]["invalid_actions"] == "4"
            assert float(diagnostics[-1].get("obs_to_action_latency_ms_mean", "0")) >= 0

            # ~/reset mid-episode ends the episode with a done every consumer sees, then resets.
            before, dones_before = len(got["state"]), len(got["done"])
            resp = probe.call(Trigger, "/sim_bridge/reset")
            assert resp.success and "episode 1" in resp.message, resp.message
            resp = probe.call(Trigger, "/sim_bridge/start_episode")
            assert not resp.success and "already running" in resp.message
            probe.wait_for(lambda: len(got["state"]) > before, 10, "observation after reset")
            probe.wait_for(lambda: any(d.data for d in got["done"][dones_before:]), 10, "done")
    finally:
        assert bridge.stop() == 0, bridge.log_text()[-2000:]


def test_bridge_expert_pauses_after_max_episodes(tmp_path, ros_env):
    from rclpy.qos import qos_profile_sensor_data as sensor
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float32

    from roboloop_testing.ros_probe import RosProbe

    bridge = start_node(
        "sim_bridge",
        params_file=BRIDGE_YAML,
        params={
            "action_source": "expert",
            "camera": 0,
            "real_time_factor": 1.0,
            "wait_for_subscribers": 1,
            "max_episodes": 1,
            "seed": 11,
        },
        log_path=tmp_path / "sim_bridge.log",
        env=ros_env,
    )
    dones: list[bool] = []
    try:
        with RosProbe(name="done_listener") as probe:
            node = probe.node
            node.create_subscription(Bool, "/sim/done", lambda m: dones.append(m.data), 10)
            # wait_for_subscribers counts readers on every output topic
            node.create_subscription(JointState, "/sim/state", lambda m: None, sensor)
            node.create_subscription(JointState, "/sim/applied_action", lambda m: None, 10)
            node.create_subscription(Float32, "/sim/reward", lambda m: None, 10)
            probe.wait_for(lambda: bridge.alive() and True in dones, 60, "done")
            probe.spin_for(0.3)  # a paused bridge publishes nothing more
            assert dones == [False] * 49 + [True]
        assert "episode 0 done after 50 steps (seed 11)" in bridge.log_text()
    finally:
        assert bridge.stop() == 0
