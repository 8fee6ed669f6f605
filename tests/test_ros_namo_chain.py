"""NAMO over ROS, chained: goal_generator proposes goal masks for a scene, a client turns them
into moves and masks, q_scorer scores them; three processes over DDS (the dit_q planner's path).
Then the same chain as a planner a user runs: namo_planner plans a hard scene through both nodes
and reports its decision time on /diagnostics (four processes)."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from roboloop_bringup.processes import start_node

from learning.export import export_model
from learning.train import compose_config

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

SIZE, K = 32, 6
PLANNER_YAML = Path(__file__).parents[1] / "ros2_ws/src/roboloop_namo/config/namo_planner.yaml"


def _spin_until(executor, condition, timeout: float, resend=None) -> bool:  # noqa: ANN001
    """Spin until `condition()`; `resend()` every 2 s meanwhile: a node's writer may match
    this reader a moment after this reader matched it, and a volatile reply sent in between
    reaches no one (the nodes answer every request, so asking again is safe)."""
    start = time.monotonic()
    deadline, next_send = start + timeout, start + 2.0
    while time.monotonic() < deadline and not condition():
        executor.spin_once(timeout_sec=0.05)
        if resend is not None and time.monotonic() > next_send:
            resend()
            next_send += 2.0
    return condition()


def _start_chain(models, prefix: str, tmp_path: Path, ros_env, **generator) -> list:  # noqa: ANN001
    """goal_generator and q_scorer processes on /<prefix>/{scene,goals,request,q_values}."""
    generator_path, q_path = models
    return [
        start_node(
            "goal_generator",
            params={"model_path": str(generator_path), "device": "cpu", "num_proposals": K,
                    "scene_topic": f"/{prefix}/scene", "proposals_topic": f"/{prefix}/goals",
                    **generator},
            log_path=tmp_path / "goal_generator.log", env=ros_env,
        ),
        start_node(
            "q_scorer",
            params={"model_path": str(q_path), "device": "cpu",
                    "request_topic": f"/{prefix}/request",
                    "response_topic": f"/{prefix}/q_values"},
            log_path=tmp_path / "q_scorer.log", env=ros_env,
        ),
    ]  # fmt: skip


@contextlib.contextmanager
def _client(name: str, procs: list) -> Iterator:
    """(rclpy node, wait) in a private context; stops `procs` and the context on exit."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, functools.partial(_spin_until, executor)
    finally:
        for p in procs:
            p.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from learning.namo.model import QFunctionNet

    out = tmp_path_factory.mktemp("namo_chain")
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
    generator = instantiate(cfg.model, _convert_="all").eval()
    export_model(generator, out / "generator.onnx", training_config={"name": "test"})
    q = QFunctionNet(hidden_dim=32, image_size=SIZE, encoder_channels=[8, 8, 8, 8])
    export_model(q, out / "q.onnx", mask_size=(SIZE, SIZE))
    return out / "generator.onnx", out / "q.onnx"


def test_generator_to_scorer_chain_across_processes(models, tmp_path: Path, ros_env) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

    from episode_dataset.codecs import decode_image, encode_image
    from learning.generative.planner import mask_to_pose, scene_masks
    from sim.namo.keys import ACTION_KEYS, STATE_KEYS
    from sim.namo.layout import decode_response, join_request
    from sim.namo.masks import proposal_masks
    from sim.namo.scene import doorway_scene
    from sim.namo.scoring import OnnxQScorer
    from sim.namo.transition import Proposal, TransitionModel

    q_path = models[1]
    procs = _start_chain(models, "chain", tmp_path, ros_env, seed=3)
    logs = lambda: "\n".join(p.log_text()[-1500:] for p in procs)  # noqa: E731
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    goals: list[Image] = []
    answers: list[Float32MultiArray] = []

    with _client("namo_chain_client", procs) as (node, wait):
        scene_pub = node.create_publisher(Image, "/chain/scene", reliable)
        request_pub = node.create_publisher(Image, "/chain/request", reliable)
        goals_sub = node.create_subscription(Image, "/chain/goals", goals.append, reliable)
        answers_sub = node.create_subscription(
            Float32MultiArray, "/chain/q_values", answers.append, reliable
        )
        assert all(p.wait_for_log("active", 60) for p in procs), logs()
        # Both directions matched, or a reliable-volatile reply could go to no reader.
        assert wait(
            lambda: (
                scene_pub.get_subscription_count() > 0
                and request_pub.get_subscription_count() > 0
                # matched to these readers, not merely seen in the graph
                and goals_sub.get_publisher_count() > 0
                and answers_sub.get_publisher_count() > 0
            ),
            30,
        ), logs()

        # 1. the scene of the object that blocks the doorway -> generator node
        model = TransitionModel(doorway_scene())
        state = model.initial_state()
        k = model.reachable_objects(state)[0]
        obj = model.scene.objects[k]
        msg = Image(is_bigendian=0)
        msg.header.frame_id = "chain"
        msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(
            scene_masks(model, state, k, SIZE)
        )
        scene_pub.publish(msg)
        assert wait(lambda: len(goals) > 0, 30, lambda: scene_pub.publish(msg)), logs()
        out = goals[0]
        masks = decode_image(out, dtype="float32").transpose(2, 0, 1)
        assert masks.shape == (K, SIZE, SIZE) and out.header.frame_id == "chain"

        # 2. goal masks -> moves (as the dit_q planner does); invalid ones fall back to uniform
        proposals = []
        for mask in masks:
            pose = mask_to_pose(mask > 0.5, model.scene.width, model.scene.height,
                                obj.half_x, obj.half_y)  # fmt: skip
            if pose is not None:
                p = Proposal(obj.object_id, *(round(v, 4) for v in pose))
                if model.check(state, p) is None:
                    proposals.append(p)
        generated = len(proposals)
        if not proposals:
            proposals = model.proposals(state, 4, np.random.default_rng(0))
        built = [proposal_masks(model, state, p, SIZE) for p in proposals]
        state_masks = np.stack([np.stack([m[c] for c in STATE_KEYS]) for m in built])
        action_masks = np.stack([np.stack([m[c] for c in ACTION_KEYS]) for m in built])

        # 3. masks -> scorer node -> Q-values and the best move
        h, w, encoding, step, data = encode_image(join_request(state_masks, action_masks))
        request = Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=0)
        request.header.frame_id, request.header.stamp.sec, request.data = "chain", 5, data
        request_pub.publish(request)
        assert wait(lambda: len(answers) > 0, 30, lambda: request_pub.publish(request)), logs()

    reply = decode_response([(d.label, d.size, d.stride) for d in answers[0].layout.dim],
                            answers[0].data)  # fmt: skip
    expected = OnnxQScorer(q_path, device="cpu").score(
        state_masks.astype(np.float32), action_masks.astype(np.float32)
    )
    np.testing.assert_allclose(reply.q_values, expected.q_values, atol=1e-5)
    assert reply.best_index == int(np.argmax(expected.q_values))
    assert 0 <= generated <= K


def test_planner_node_plans_a_hard_scene_through_both_nodes(
    models, tmp_path: Path, ros_env
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Int64, String

    from sim.namo.scene import generate_scene
    from sim.namo.transition import Proposal, TransitionModel

    seed, max_moves = 7, 2
    model = TransitionModel(generate_scene(seed, level="hard"))
    state = model.initial_state()
    assert not model.goal_reached(state)
    procs = _start_chain(models, "plan", tmp_path, ros_env)
    procs.append(
        start_node(
            "namo_planner",
            params_file=PLANNER_YAML,
            params={"level": "hard", "scene_seed": -1, "max_moves": max_moves,
                    "scene_size": 64, "q_mask_size": SIZE, "diagnostics_period_s": 0.2,
                    "scene_topic": "/plan/scene", "proposals_topic": "/plan/goals",
                    "request_topic": "/plan/request", "response_topic": "/plan/q_values"},
            log_path=tmp_path / "namo_planner.log", env=ros_env,
        )
    )  # fmt: skip
    logs = lambda: "\n".join(p.log_text()[-1500:] for p in procs)  # noqa: E731
    decisions: list[dict] = []
    status: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.endswith("namo_planner: planner"):
                status.clear()
                status.update({v.key: v.value for v in s.values})

    with _client("namo_planner_client", procs) as (node, wait):
        plan = node.create_publisher(Int64, "/namo_planner/plan", 10)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(
            String, "/namo_planner/decision", lambda m: decisions.append(json.loads(m.data)),
            reliable,
        )  # fmt: skip
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        assert all(p.wait_for_log("active", 60) for p in procs[:2]), logs()
        assert wait(lambda: plan.get_subscription_count() > 0 and status, 30), logs()
        state_text = lambda: status.get("state", "")  # noqa: E731
        # The node may match this writer a moment after this writer matched it: ask again
        # (every 2 s) until it has taken the scene.
        send = lambda: plan.publish(Int64(data=seed))  # noqa: E731
        send()
        assert wait(lambda: state_text() not in ("", "idle"), 20, send), logs()
        assert wait(lambda: state_text().startswith(("done", "failed")), 40), logs()
        assert wait(lambda: status.get("decisions") == str(len(decisions)), 5), (status, logs())

    assert status["state"].startswith("done hard scene 7"), (status, logs())
    assert 1 <= len(decisions) <= max_moves
    for i, d in enumerate(decisions):  # each a valid move of the state it was decided in
        assert d["move"] == i and d["scene_seed"] == seed and d["level"] == "hard"
        move = Proposal(d["object_id"], d["x"], d["y"], d["theta"])
        assert model.check(state, move) is None, (d, model.check(state, move))
        assert d["generated"] == K * len(model.reachable_objects(state))
        assert d["fallback"] == (d["valid"] == 0)
        state = model.step(state, move).state
        assert d["goal_reached"] == model.goal_reached(state)
        # Decision time, of which waiting on the two nodes (both were asked)
        assert 0 < d["generator_s"] and 0 < d["scorer_s"]
        assert d["network_s"] == pytest.approx(d["generator_s"] + d["scorer_s"])
        assert d["network_s"] < d["decision_s"] < 30
    last = decisions[-1]
    assert float(status["last_decision_ms"]) == pytest.approx(1e3 * last["decision_s"], abs=0.06)
    assert float(status["last_network_ms"]) == pytest.approx(1e3 * last["network_s"], abs=0.06)
    assert status["episodes"] == "1" and status["solved"] == str(int(last["goal_reached"]))
    assert int(status["generator_requests"]) >= len(model.reachable_objects(model.initial_state()))
