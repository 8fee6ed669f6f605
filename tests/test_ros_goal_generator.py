"""goal_generator node in its own process: scene Image 32FC5 in, K proposals 32FC<K> out."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from roboloop_bringup.processes import start_node

from learning.export import export_model
from learning.generative.synthetic import synthetic_sample
from learning.train import compose_config

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros_goal_generator")]

K, SIZE = 4, 32


@pytest.fixture(scope="module")
def goal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight DiT flow-matching goal generator (euler, 2 steps) exported to ONNX."""
    cfg = compose_config(
        "train_fb_flow_matching",
        [
            "network=dit_tiny",
            f"image_size={SIZE}",
            "model.sampler.method=euler",
            "sampling_steps=2",
        ],
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all").eval()
    for p in model.network.parameters():
        torch.nn.init.normal_(p, std=0.05)
    out = tmp_path_factory.mktemp("goal_generator") / "goal_generator.onnx"
    export_model(model, out, training_config={"name": "test"})
    return out


def _scene(size: int = 48) -> np.ndarray:
    from sim.namo.keys import CONTEXT_KEYS

    sample = synthetic_sample(np.random.default_rng(5), size=size)
    return np.stack([sample[k] for k in CONTEXT_KEYS], axis=-1)  # (H, W, 5)


def _wait(condition, timeout: float, spin) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        spin()
    return condition()


def test_goal_generator_node_across_processes(goal_model: Path, tmp_path: Path, ros_env) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from roboloop_goal_generator.generator import GoalGenerator
    from roboloop_goal_generator.node import REQUEST_QOS
    from roboloop_node_common.runtime import DIAGNOSTICS_QOS
    from sensor_msgs.msg import Image

    from episode_dataset.codecs import decode_image, encode_image

    scene_topic, out_topic = "/test_goal_generator/scene", "/test_goal_generator/proposals"
    proc = start_node(
        "goal_generator",
        params={
            "model_path": str(goal_model),
            "device": "cpu",
            "num_proposals": K,
            "seed": 7,
            "scene_topic": scene_topic,
            "proposals_topic": out_topic,
        },
        log_path=tmp_path / "goal_generator.log",
        env=ros_env,
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("goal_generator_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: list[Image] = []
    diagnostics: list[dict[str, str]] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if "goal_generator" in status.name:
                diagnostics.append({kv.key: kv.value for kv in status.values})

    try:
        pub = node.create_publisher(Image, scene_topic, REQUEST_QOS)
        out_sub = node.create_subscription(Image, out_topic, received.append, REQUEST_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, DIAGNOSTICS_QOS)

        def spin() -> None:
            executor.spin_once(timeout_sec=0.05)

        assert proc.wait_for_log("active:", timeout=60), proc.log_text()
        assert _wait(
            lambda: pub.get_subscription_count() > 0 and out_sub.get_publisher_count() > 0,
            30,
            spin,
        ), proc.log_text()

        # A malformed scene is dropped with a one-line error naming the topic; node survives.
        bad = Image(height=2, width=2, encoding="32FC3", step=24, data=bytes(48))
        pub.publish(bad)
        assert proc.wait_for_log(f"{scene_topic}: bad scene", timeout=20), proc.log_text()

        scene = _scene()
        msg = Image(is_bigendian=0)
        msg.header.frame_id = "namo_map"
        msg.header.stamp.sec = 12
        msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(scene)
        pub.publish(msg)
        assert _wait(lambda: len(received) > 0, 30, spin), proc.log_text()
        # Diagnostics report what runs and what was processed/dropped.
        assert _wait(
            lambda: any(d.get("scenes_processed") == "1" for d in diagnostics), 10, spin
        ), diagnostics[-1:]
        last = diagnostics[-1]
        assert last["execution_provider"] == "CPUExecutionProvider"
        assert (last["bad_scenes"], last["lifecycle_state"]) == ("1", "active")
        assert proc.alive()
    finally:
        proc.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    out = received[0]
    assert (out.encoding, out.height, out.width) == (f"32FC{K}", SIZE, SIZE)
    assert (out.header.frame_id, out.header.stamp.sec) == ("namo_map", 12)
    proposals = decode_image(out, dtype="float32")
    assert proposals.min() >= 0.0 and proposals.max() <= 1.0
    assert np.abs(proposals[..., 0] - proposals[..., 1]).max() > 1e-3  # K distinct draws
    # Same model, same seed, same scene without ROS: identical proposals.
    expected = GoalGenerator(goal_model, num_proposals=K, seed=7).propose(scene)
    np.testing.assert_allclose(proposals.transpose(2, 0, 1), expected, atol=1e-5)


def test_goal_generator_refuses_bad_scenes_and_outputs_and_counts_drops(
    tmp_path: Path, ros_env
) -> None:
    """0x0, NaN and oversized scenes, NaN proposals: refused, counted, never published; ERROR
    clears once scenes succeed again; a burst: every scene published or counted as dropped."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor
    from roboloop_goal_generator.node import REQUEST_QOS
    from roboloop_goal_generator.reference_model import make_reference_generator
    from sensor_msgs.msg import Image

    from episode_dataset.codecs import encode_image

    scene_topic, out_topic = "/t_goal_attack/scene", "/t_goal_attack/proposals"
    model = make_reference_generator(tmp_path / "nan.onnx", SIZE, fault="nan_without_robot")
    proc = start_node(
        "goal_generator",
        params={
            "model_path": model,
            "device": "cpu",
            "num_proposals": K,
            "scene_topic": scene_topic,
            "proposals_topic": out_topic,
            "max_request_bytes": 100_000,
            "error_hold_s": 1.0,
            "diagnostics_period_s": 0.2,
        },
        log_path=tmp_path / "goal_generator.log",
        env=ros_env,
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("goal_generator_attacker", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: list[Image] = []
    status: dict = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.endswith(": goal generator"):
                status.clear()
                status.update({kv.key: kv.value for kv in s.values}, _level=s.level)

    def scene_msg(scene: np.ndarray, frame: str = "") -> Image:
        msg = Image(is_bigendian=0)
        msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(scene)
        msg.header.frame_id = frame
        return msg

    def count(key: str) -> int:
        return int(status.get(key, "0") or 0)

    try:
        pub = node.create_publisher(Image, scene_topic, REQUEST_QOS)
        out_sub = node.create_subscription(Image, out_topic, received.append, 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        wait = lambda c, timeout=15.0: _wait(c, timeout, lambda: executor.spin_once(0.05))  # noqa: E731
        assert proc.wait_for_log("active:", timeout=60), proc.log_text()
        assert wait(
            lambda: pub.get_subscription_count() > 0 and out_sub.get_publisher_count() > 0, 30
        ), proc.log_text()
        scene = _scene(48).astype(np.float32)  # 46 KB
        pub.publish(scene_msg(scene, "good"))
        assert wait(lambda: len(received) == 1), proc.log_text()

        nan, no_robot = scene.copy(), scene.copy()
        nan[5, 6, 1] = np.nan
        no_robot[..., 0] = 0.0
        attacks = {
            "bad_scenes:shape": Image(height=0, width=0, encoding="32FC5", step=0),
            "bad_scenes:nonfinite": scene_msg(nan),
            "bad_scenes:too_large": scene_msg(_scene(160).astype(np.float32)),  # 512 KB
            "bad_outputs:nonfinite": scene_msg(no_robot),
        }
        for key, msg in attacks.items():
            pub.publish(msg)
            assert wait(lambda k=key: count(k) == 1), (key, status, proc.log_text()[-2000:])
        assert len(received) == 1, "a refused scene got proposals"
        assert count("bad_scenes") == 3 and count("bad_outputs") == 1
        assert status["_level"] == DiagnosticStatus.ERROR
        assert f"{scene_topic}: not published" in status["last_error"]

        pub.publish(scene_msg(scene, "good again"))
        assert wait(lambda: len(received) == 2)
        assert wait(lambda: status.get("_level") == DiagnosticStatus.OK, 5.0), status
        assert "goal_masks" in status["last_error"] and float(status["last_error_age_s"]) >= 1.0

        # A burst: each scene is answered, or counted as dropped (replaced or lost in DDS).
        for i in range(50):
            pub.publish(scene_msg(scene, f"burst_{i}"))
        done = lambda: len(received) - 2 + count("dropped_scenes")  # noqa: E731
        assert wait(lambda: done() == 50, 30.0), (len(received), status)
        wait(lambda: False, 0.5)  # nothing more arrives
        assert done() == 50 and count("dropped_scenes") > 0, status
        assert status["dropped_scenes_counted"] == "true" and proc.alive()
    finally:
        code = proc.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert code == 0, proc.log_text()
