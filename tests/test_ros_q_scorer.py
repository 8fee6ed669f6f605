"""q_scorer: request/response layout and the real node process over DDS."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from episode_dataset.codecs import decode_image, encode_image
from sim.namo.layout import LayoutError, decode_response, join_request, split_request
from sim.namo.scoring import OnnxQScorer

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


def request_msg(state, actions, frame: str = "", sec: int = 0, encoding=None):  # noqa: ANN001, ANN201
    """A request Image of K proposals (the request key in its header)."""
    from sensor_msgs.msg import Image

    h, w, enc, step, data = encode_image(join_request(state, actions))
    msg = Image(height=h, width=w, encoding=encoding or enc, step=step, is_bigendian=0)
    msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec = frame, sec, 7
    msg.data = data
    return msg


def test_request_layout_roundtrip_and_errors() -> None:
    state, actions = _masks(3, 0)
    hwc = join_request(state, actions)
    msg = request_msg(state, actions)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (SIZE, SIZE, "32FC23", SIZE * 92)
    # channel-interleaved: pixel (0, 0) holds 8 shared values, then 5 per proposal
    first = np.frombuffer(msg.data, np.float32)[:23]
    np.testing.assert_array_equal(first[:8], state[0, :8, 0, 0])
    np.testing.assert_array_equal(first[13:16], state[1, 8:, 0, 0])
    np.testing.assert_array_equal(first[16:18], actions[1, :, 0, 0])
    s2, a2 = split_request(decode_image(msg, dtype="float32"))
    np.testing.assert_array_equal(s2, state)
    np.testing.assert_array_equal(a2, actions)
    with pytest.raises(LayoutError, match="12 channels is not 8 \\+ 5K"):
        split_request(hwc[..., :12])
    state[2, 3] += 1.0  # pre-action masks must be shared by all proposals of a request
    with pytest.raises(LayoutError, match="pre-action"):
        join_request(state, actions)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learning.export import export_model
    from learning.namo.model import QFunctionNet

    torch.manual_seed(0)
    model = QFunctionNet(hidden_dim=32, image_size=SIZE, encoder_channels=[8, 8, 8, 8])
    path = tmp_path_factory.mktemp("qs") / "q.onnx"
    export_model(model, path, mask_size=(SIZE, SIZE))
    return path


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
    from roboloop_bringup.processes import start_node
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

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
        out_sub = node.create_subscription(
            Float32MultiArray, "/q_scorer/q_values", responses.append, reliable
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        assert _spin_until(
            node,
            lambda: (
                pub.get_subscription_count() > 0
                and out_sub.get_publisher_count() > 0  # matched to this reader
            ),
            30.0,
        ), "q_scorer never matched the request/response topics\n" + proc.log_text()

        def send(state: np.ndarray, actions: np.ndarray, frame: str, sec: int, enc=None) -> None:  # noqa: ANN001
            pub.publish(request_msg(state, actions, frame, sec, enc))

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


def write_toy_q_function(path: Path) -> Path:
    """Q = mean of each proposal's action masks; NaN when the robot mask (channel 0) is empty.

    A real q_function graph in the export contract (onnx.helper, no torch): finite for
    ordinary requests, NaN for one kind of finite request, to test the output check. A
    (K, 2048) x (2048, 1024) product whose result is multiplied by 0 makes scoring take a few
    ms per proposal batch, slower than a client can publish, as a real network is.
    """
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sim.namo.keys import ACTION_KEYS, STATE_KEYS

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("state_masks", f32, ["B", 11, SIZE, SIZE]),
        helper.make_tensor_value_info("action_masks", f32, ["B", 2, SIZE, SIZE]),
    ]
    output = helper.make_tensor_value_info("q_values", f32, ["B", 1])
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "c0"),
        numpy_helper.from_array(np.array([1], np.int64), "c1"),
        numpy_helper.from_array(np.float32(0.5), "half"),
        numpy_helper.from_array(np.float32(0.0), "zero"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.array([-1, 2 * SIZE * SIZE], np.int64), "flat"),
        numpy_helper.from_array(np.zeros((2 * SIZE * SIZE, 1024), np.float32), "work_w"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["action_masks"], ["q4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["q4", "shape"], ["q"]),
        helper.make_node("Slice", ["state_masks", "c0", "c1", "c1"], ["robot"]),
        helper.make_node("ReduceMean", ["robot"], ["r4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["r4", "shape"], ["r"]),
        helper.make_node("Sub", ["r", "half"], ["r_half"]),
        helper.make_node("Sqrt", ["r_half"], ["root"]),  # NaN below half
        helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["q", "nan_or_zero"], ["q_nan"]),
        helper.make_node("Reshape", ["action_masks", "flat"], ["a_flat"]),
        helper.make_node("MatMul", ["a_flat", "work_w"], ["work"]),  # the slow part
        helper.make_node("ReduceMean", ["work"], ["work_sum"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["work_sum", "zero"], ["no_work"]),
        helper.make_node("Add", ["q_nan", "no_work"], ["q_values"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "toy_q", inputs, [output], inits),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    meta = {
        "format_version": 1,
        "model_type": "q_function",
        "state_keys": list(STATE_KEYS),
        "action_keys": list(ACTION_KEYS),
        "inputs": {
            "state_masks": {"shape": [-1, 11, SIZE, SIZE], "dtype": "float32"},
            "action_masks": {"shape": [-1, 2, SIZE, SIZE], "dtype": "float32"},
        },
        "outputs": {"q_values": {"shape": [-1, 1], "dtype": "float32"}},
    }
    helper.set_model_props(model, {"roboloop": json.dumps(meta)})
    onnx.save(model, str(path))
    return path


@pytest.mark.ros
@pytest.mark.xdist_group("ros")
def test_q_scorer_refuses_bad_requests_and_outputs_and_counts_drops(
    tmp_path: Path, ros_env: dict[str, str]
) -> None:
    """NaN masks, K and size beyond the limits, 0x0, NaN Q-values: refused, counted, never
    published; a burst: every request answered or counted as dropped; an 82 MB request is
    refused without copying it around; ERROR clears once requests succeed again."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from roboloop_bringup.processes import start_node
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

    proc = start_node(
        "q_scorer",
        params_file=PKG / "config" / "q_scorer.yaml",
        params={
            "model_path": str(write_toy_q_function(tmp_path / "toy_q.onnx")),
            "device": "cpu",
            "max_proposals": 100,
            "max_request_bytes": 1_000_000,
            "error_hold_s": 1.0,
            "diagnostics_period_s": 0.2,
        },
        log_path=tmp_path / "q_scorer.log",
        env=ros_env,
    )
    rclpy.init()
    node = rclpy.create_node("q_scorer_attacker")
    try:
        assert proc.wait_for_log("active:", 30.0), proc.log_text()
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        pub = node.create_publisher(Image, "/q_scorer/request", reliable)
        responses: list[Float32MultiArray] = []
        status: dict[str, str] = {}

        def on_diag(msg: DiagnosticArray) -> None:
            for s in msg.status:
                if s.name.endswith(": q_scorer"):
                    status.clear()
                    status.update({kv.key: kv.value for kv in s.values}, _level=s.level)

        out_sub = node.create_subscription(
            Float32MultiArray, "/q_scorer/q_values", responses.append, 100
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        wait = lambda condition, timeout=15.0: _spin_until(node, condition, timeout)  # noqa: E731
        assert wait(
            lambda: (
                pub.get_subscription_count() > 0
                and out_sub.get_publisher_count() > 0  # matched to this reader
            ),
            30.0,
        ), proc.log_text()

        def count(key: str) -> int:
            return int(status.get(key, "0") or 0)

        state, actions = _masks(3, 2)
        state[:, 0] = 1.0  # the toy model's Q is finite
        pub.publish(request_msg(state, actions, "good", 1))
        assert wait(lambda: len(responses) == 1), proc.log_text()
        q = decode_response([(d.label, d.size, d.stride) for d in responses[0].layout.dim],
                            responses[0].data).q_values  # fmt: skip
        np.testing.assert_allclose(q, actions.mean(axis=(1, 2, 3)), rtol=1e-5)

        nan_masks = state.copy()
        nan_masks[1, 9, 3, 4] = np.nan
        attacks = {
            "bad_requests:nonfinite": request_msg(nan_masks, actions, "nan"),
            "bad_requests:too_many_proposals": request_msg(*_masks(101, 3), "k101"),
            "bad_requests:too_large": request_msg(*_masks(60, 4), "60 proposals, 1.26 MB"),
            "bad_requests:shape": Image(height=0, width=0, encoding="32FC13", step=0),
            "bad_outputs:nonfinite": request_msg(*_masks(3, 5), "robot mask empty: Q is NaN"),
        }
        attacks["bad_outputs:nonfinite"].data = request_msg(
            np.where(np.arange(11)[None, :, None, None] == 0, 0.0, state), actions
        ).data
        for key, msg in attacks.items():
            pub.publish(msg)
            assert wait(lambda k=key: count(k) == 1), (key, status, proc.log_text()[-2000:])
        assert len(responses) == 1, "a refused request was answered"
        assert count("bad_requests") == 4 and count("bad_outputs") == 1
        assert status["_level"] == DiagnosticStatus.ERROR
        assert "/q_scorer/request: not published" in status["last_error"]
        assert "q_values" in status["last_error"] and "non-finite" in status["last_error"]

        # Requests succeed again: ERROR ends after error_hold_s; the last error stays readable.
        pub.publish(request_msg(state, actions, "good again", 2))
        assert wait(lambda: len(responses) == 2)
        assert wait(lambda: status.get("_level") == DiagnosticStatus.OK, 5.0), status
        assert "non-finite" in status["last_error"] and float(status["last_error_age_s"]) >= 1.0

        # A burst: every request is answered, or counted as dropped (never both, never neither).
        burst = [request_msg(*_masks(40, 6), f"burst_{i}") for i in range(50)]
        for i, msg in enumerate(burst):
            msg.data = burst[0].data  # same masks (robot mask random in [0, 1): finite Q)
            msg.header.frame_id = f"burst_{i}"
            pub.publish(msg)
        answered = lambda: len(responses) - 2  # noqa: E731
        assert wait(lambda: answered() + count("dropped_requests") == len(burst), 30.0), (
            answered(),
            status,
        )
        wait(lambda: False, 0.5)  # nothing more arrives
        assert answered() + count("dropped_requests") == len(burst)
        assert count("dropped_requests") > 0, "no request of the burst was dropped"
        assert status["dropped_requests_counted"] == "true"

        # 82 MB (K = 4000): refused from its header. Fast DDS and rclpy hold about 4x its size
        # before any node code runs; decoding and scoring it as well took the peak to 9x.
        peak_before = _peak_rss_mb(proc.pid)
        big = request_msg(*_masks(4000, 7), "82 MB")
        pub.publish(big)
        assert wait(lambda: count("bad_requests:too_many_proposals") == 2, 30.0), status
        grew = _peak_rss_mb(proc.pid) - peak_before
        assert grew < 5 * len(big.data) / 1e6, f"peak RSS grew {grew:.0f} MB"
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = proc.stop()
    assert code == 0, proc.log_text()


def _peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1e3
