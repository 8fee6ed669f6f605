"""q_scorer: request/response layout (rclpy-free) and the real node process over DDS."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from learning.namo.layout import LayoutError, decode_request, decode_response, encode_request
from learning.namo.scoring import OnnxQScorer

PKG = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "roboloop_namo"
SIZE = 32


def _masks(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One state's K proposals: 8 shared pre-action masks, per-proposal post-action + action."""
    rng = np.random.default_rng(seed)
    state = np.empty((k, 11, SIZE, SIZE), np.float32)
    state[:, :8] = rng.random((8, SIZE, SIZE), dtype=np.float32)
    state[:, 8:] = rng.random((k, 3, SIZE, SIZE), dtype=np.float32)
    actions = (rng.random((k, 2, SIZE, SIZE)) > 0.7).astype(np.float32)
    return state, actions


def test_request_layout_roundtrip_and_errors() -> None:
    state, actions = _masks(3, 0)
    data, h, w, encoding, step = encode_request(state, actions)
    assert (h, w, encoding, step) == (SIZE, SIZE, "32FC23", SIZE * 4 * 23)
    # channel-interleaved: pixel (0, 0) holds 8 shared values, then 5 per proposal
    first = np.frombuffer(data, np.float32)[:23]
    np.testing.assert_array_equal(first[:8], state[0, :8, 0, 0])
    np.testing.assert_array_equal(first[13:16], state[1, 8:, 0, 0])
    np.testing.assert_array_equal(first[16:18], actions[1, :, 0, 0])
    s2, a2 = decode_request(data, h, w, encoding, step)
    np.testing.assert_array_equal(s2, state)
    np.testing.assert_array_equal(a2, actions)
    with pytest.raises(LayoutError, match="8 \\+ 5K"):
        decode_request(data, h, w, "32FC12", step)
    state[2, 3] += 1.0  # pre-action masks must be shared by all proposals of a request
    with pytest.raises(LayoutError, match="pre-action"):
        encode_request(state, actions)
    with pytest.raises(LayoutError, match="step"):
        decode_request(data, h, w, encoding, step + 4)
    with pytest.raises(LayoutError, match="floats"):
        decode_request(data[:-4], h, w, encoding, step)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learning.namo.export import export_q_function
    from learning.namo.model import QFunctionNet

    torch.manual_seed(0)
    model = QFunctionNet(hidden_dim=32, image_size=SIZE, encoder_channels=[8, 8, 8, 8])
    return export_q_function(model, tmp_path_factory.mktemp("qs") / "q.onnx", SIZE, SIZE)


def _spin_until(node, predicate, timeout: float) -> bool:  # noqa: ANN001
    import rclpy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()


@pytest.mark.ros
@pytest.mark.xdist_group("ros")
def test_q_scorer_answers_across_processes(
    onnx_model: Path, tmp_path: Path, ros_env: dict[str, str]
) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

    from demo.ros_processes import start_node

    proc = start_node(
        "q_scorer",
        params_file=PKG / "config" / "q_scorer.yaml",
        params={"model_path": str(onnx_model), "device": "cpu"},
        log_path=tmp_path / "q_scorer.log",
        env=ros_env,
    )
    rclpy.init()
    node = rclpy.create_node("q_scorer_test_client")
    try:
        assert proc.wait_for_log("active:", 30.0), proc.log_text()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, "/q_scorer/request", reliable)
        responses: list[Float32MultiArray] = []
        diags: list[DiagnosticArray] = []
        node.create_subscription(
            Float32MultiArray, "/q_scorer/q_values", responses.append, reliable
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        assert _spin_until(
            node,
            lambda: (
                pub.get_subscription_count() > 0
                and node.count_publishers("/q_scorer/q_values") > 0
            ),
            30.0,
        ), "q_scorer never matched the request/response topics\n" + proc.log_text()

        def send(state: np.ndarray, actions: np.ndarray, frame: str, sec: int, enc=None) -> None:  # noqa: ANN001
            data, h, w, encoding, step = encode_request(state, actions)
            msg = Image(height=h, width=w, encoding=enc or encoding, step=step, is_bigendian=0)
            msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec = frame, sec, 7
            msg.data = data
            pub.publish(msg)

        # a malformed request is reported (diagnostics name the topic), the node keeps serving
        state, actions = _masks(5, 1)
        send(state, actions, "broken", 1, enc="32FC12")
        assert _spin_until(
            node,
            lambda: any(
                kv.key == "bad_requests" and kv.value == "1"
                for d in diags
                for s in d.status
                for kv in s.values
            ),
            15.0,
        ), proc.log_text()

        send(state, actions, "scene_7/goal_2", 12)
        assert _spin_until(node, lambda: len(responses) >= 1, 30.0), proc.log_text()
        resp = decode_response(
            [(d.label, d.size, d.stride) for d in responses[0].layout.dim], responses[0].data
        )
        expected = OnnxQScorer(onnx_model, device="cpu").score(state, actions)
        assert (resp.stamp_sec, resp.stamp_nanosec, resp.frame_id) == (12, 7, "scene_7/goal_2")
        assert resp.q_values.shape == (5,)
        np.testing.assert_allclose(resp.q_values, expected.q_values, atol=1e-5)
        assert resp.best_index == expected.best_index == int(np.argmax(expected.q_values))

        def diag_values() -> dict[str, str]:
            for d in reversed(diags):
                for s in d.status:
                    kv = {v.key: v.value for v in s.values}
                    if "mean_latency_ms" in kv:
                        return kv
            return {}

        assert _spin_until(node, lambda: bool(diag_values()), 15.0)
        kv = diag_values()
        assert kv["execution_provider"] == "CPUExecutionProvider"
        assert float(kv["mean_latency_ms"]) > 0.0 and kv["responses"] == "1"
        assert "/q_scorer/request" in kv["last_error"]
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = proc.stop()
    assert code == 0, proc.log_text()
