"""The closed loop as the launch files start it: sim_bridge (action_source topic) <- policy_node.

Both nodes are started from sim.launch.py and policy.launch.py (evaluated by
roboloop_bringup.launch_standin.load_launch_file, the same nodes, params files and overrides
`ros2 launch`
would start), the way loop.launch.py combines them with record:=false. The policy reads the
observations its metadata declares (state + 64x64 camera) from the topics the bridge publishes
them on (config/policy.yaml: the topic convention, nothing listed by hand), at Reacher-v5's
control rate x the shared real-time factor.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from roboloop_bringup.launch_standin import load_launch_file  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
STATE_DIM, ACTION_DIM, CAMERA = 10, 2, 64  # Reacher-v5 with the bridge's default camera


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_policy_drives_the_sim_bridge(tmp_path: Path, ros_env: dict[str, str]) -> None:
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from roboloop_policy.reference_model import make_reference_policy
    from sensor_msgs.msg import Image, JointState

    from roboloop_runtime import OnnxModel
    from roboloop_testing.ros_probe import RosProbe

    model_path = tmp_path / "reacher_reference.onnx"
    make_reference_policy(
        model_path,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        image_hw=(CAMERA, CAMERA),
        control_rate_hz=50.0,  # Reacher-v5's, as training on its data writes it
    )
    sim = load_launch_file(REPO / "launch/sim.launch.py", {"action_source": "topic"})
    policy = load_launch_file(
        REPO / "launch/policy.launch.py",
        {"model_path": str(model_path), "device": "cpu"},
    )
    assert sim.nodes[0].params["action_source"] == "topic"
    procs = [
        policy.start(0, log_path=tmp_path / "policy.log", env=ros_env),
        sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
    ]
    states: dict[int, np.ndarray] = {}
    images: dict[int, np.ndarray] = {}
    actions: list[tuple[int, np.ndarray]] = []
    arrivals: list[float] = []
    applied: list[tuple[int, np.ndarray]] = []

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)

    try:
        with RosProbe(name="loop_observer") as probe:
            node, sensor = probe.node, qos_profile_sensor_data
            node.create_subscription(
                JointState,
                "/sim/state",
                lambda m: states.__setitem__(_stamp(m), np.array(m.position, np.float32)),
                sensor,
            )
            node.create_subscription(
                Image,
                "/sim/image",
                lambda m: images.__setitem__(
                    _stamp(m), np.frombuffer(m.data, np.uint8).reshape(CAMERA, CAMERA, 3).copy()
                ),
                sensor,
            )
            node.create_subscription(
                JointState,
                "/sim/action",
                lambda m: (
                    actions.append((_stamp(m), np.array(m.effort))),
                    arrivals.append(time.monotonic()),
                ),
                QoSProfile(depth=50),
            )
            node.create_subscription(
                JointState,
                "/sim/applied_action",
                lambda m: applied.append((_stamp(m), np.array(m.effort))),
                QoSProfile(depth=50),
            )

            def running() -> bool:
                assert all(p.alive() for p in procs), logs()
                policy_actions = sum(a.any() for _, a in actions)
                return sum(a.any() for _, a in applied) >= 20 and policy_actions >= 20

            try:
                probe.wait_for(running, 90, "20 policy actions applied by the sim bridge")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{logs()}") from None
    finally:
        for p in procs:
            p.stop()

    # One control rate: the model's 50 Hz at the launch files' real-time factor 0.4 is 20 actions
    # per wall-clock second, the bridge's step rate.
    assert np.median(np.diff(arrivals)) == pytest.approx(0.05, rel=0.2)
    # The bridge applies the policy's commands (clipped to the action space), nothing else.
    # Only commands for observations after the probe's subscription matched can be compared.
    published = np.array([np.clip(a, -1.0, 1.0) for _, a in actions])
    first_seen = min(s for s, _ in actions)
    for stamp, a in applied:
        if a.any() and stamp > first_seen:
            assert np.abs(published - a).max(axis=1).min() < 1e-6, f"unknown action {a}"
    # Each action is the model's output for the observation it is stamped with (or, when the
    # policy ticked between the bridge's state and image messages or a best-effort image was
    # lost under load, a recent earlier one of either).
    model = OnnxModel(model_path, device="cpu")
    stamps = sorted(states)
    # The probe subscribes best effort like the policy, so it may miss a message the policy
    # used: most actions (not all) must be reproducible from what the probe saw.
    # Zero actions are the watchdog's safe action (covered by test_ros_policy.py).
    checked = [(s, a) for s, a in actions if s in states and a.any()]
    assert len(checked) >= 10, f"{len(checked)} of {len(actions)} actions carry seen stamps"
    exact = matched = 0
    for stamp, action in checked:
        i = stamps.index(stamp)
        recent = [stamps[max(i - back, 0)] for back in (1, 2, 3)]
        combos = [(stamp, stamp)] + [(p, stamp) for p in recent] + [(stamp, p) for p in recent]
        outputs = [
            model.run(
                {
                    "obs.state": states[s][None, None],
                    "obs.image": images[i][None, None],
                    "noise": np.zeros((1, 1, ACTION_DIM), np.float32),
                }
            )["actions"][0, 0]
            for s, i in combos
            if s in states and i in images
        ]
        errors = [np.abs(out - action).max() for out in outputs]
        matched += bool(errors) and min(errors) < 1e-5
        exact += bool(errors) and errors[0] < 1e-5
    assert matched >= 0.8 * len(checked), f"only {matched}/{len(checked)} actions reproduced"
    assert exact >= len(checked) // 2
