"""The world-model node across processes, against the real sim bridge (issue 11 item 7).

A tiny world model is trained in seconds on random Reacher-v5 episodes recorded with the
bridge's 64x64 camera (roboloop_testing.world_model) and exported (filter, imagine, decode).
sim.launch.py and world_model.launch.py start the bridge and the node as `ros2 launch` would;
the node reads the observations from /sim/<key>, the applied actions and episode ends, and
publishes the predicted reward and continue probability of every step and the decoded
prediction of every observation. A second node fed graphs whose latent sizes disagree refuses
to configure in one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("rclpy")

from roboloop_bringup.launch_standin import load_launch_file  # noqa: E402

from roboloop_runtime import METADATA_KEY  # noqa: E402
from roboloop_testing.world_model import tiny_world_model  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
CAMERA = 64  # the bridge's default camera (config/sim_bridge.yaml)
STATUS = "/world_model: world_model"


def tails(procs: list) -> str:
    return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)


def with_wider_latent(src: Path, dst: Path, deter: int) -> Path:
    """A copy of `src` whose metadata declares a `deter` latent of another size, as an imagine
    graph of another (wider) export does."""
    proto = onnx.load(str(src))
    prop = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(prop.value)
    meta["state"]["deter"]["shape"] = [deter]
    for io in ("inputs", "outputs"):
        for name, spec in meta[io].items():
            if name.endswith(".deter"):
                spec["shape"] = [-1, deter]
    prop.value = json.dumps(meta)
    onnx.save(proto, str(dst))
    return dst


def test_node_filters_the_bridge_and_predicts(tmp_path: Path, ros_env: dict[str, str]) -> None:
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool, Float32

    from roboloop_testing.ros_probe import RosProbe

    graphs = tiny_world_model(tmp_path, "Reacher-v5", camera=CAMERA)
    sim = load_launch_file(REPO / "launch/sim.launch.py")
    launch = REPO / "launch/world_model.launch.py"
    node = load_launch_file(
        launch,
        {
            "model_path": str(graphs["filter"]),
            "imagine_path": str(graphs["imagine"]),
            "decode_path": str(graphs["decode"]),
            "publish_prediction": "true",
            "device": "cpu",
        },
    )
    wider = with_wider_latent(graphs["imagine"], tmp_path / "wider.onnx", deter=48)
    refused = load_launch_file(
        launch, {"model_path": str(graphs["filter"]), "imagine_path": str(wider)}
    )
    refused.nodes[0].name = "world_model_refused"
    procs = [
        sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
        node.start(0, log_path=tmp_path / "world_model.log", env=ros_env),
        refused.start(0, log_path=tmp_path / "refused.log", env=ros_env),
    ]
    rewards: list[tuple[float, float]] = []
    conts: list[float] = []
    frames: list[Image] = []
    dones: list[float] = []

    try:
        with RosProbe(name="world_model_observer") as probe:
            probe.watch_diagnostics()
            n = probe.node
            n.create_subscription(
                Float32,
                "/world_model/reward",
                lambda m: rewards.append((time.monotonic(), m.data)),
                QoSProfile(depth=50),
            )
            n.create_subscription(
                Float32, "/world_model/continue", lambda m: conts.append(m.data), 50
            )
            n.create_subscription(
                Image, "/world_model/prediction/image", lambda m: frames.append(m), 50
            )
            n.create_subscription(
                Bool, "/sim/done", lambda m: m.data and dones.append(time.monotonic()), 10
            )

            def across_an_episode_end() -> bool:
                assert procs[0].alive() and procs[1].alive(), tails(procs)
                status = probe.status(STATUS) or {}
                return (
                    len(rewards) >= 30
                    and bool(dones)
                    and rewards[-1][0] > dones[0] + 0.5
                    and int(status.get("episode_starts", 0)) >= 2
                )

            # An image stamped 100000 s ahead (a sender clock gone wrong), a few times: dropped
            # as malformed; accepted, it would be the newest filtered stamp and nothing later
            # would ever be filtered again.
            liar = n.create_publisher(Image, "/sim/image", 10)
            probe.wait_for(lambda: len(rewards) >= 5, 60, "5 rewards")
            future = Image(height=CAMERA, width=CAMERA, encoding="rgb8", step=3 * CAMERA)
            future.data = bytes(3 * CAMERA * CAMERA)
            for _ in range(3):
                stamp_ns = n.get_clock().now().nanoseconds + 100_000 * 10**9
                future.header.stamp.sec, future.header.stamp.nanosec = divmod(stamp_ns, 10**9)
                liar.publish(future)
                probe.spin_for(0.03)
            injected = len(rewards)
            try:
                probe.wait_for(across_an_episode_end, 60, "30 rewards and an episode end")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{tails(procs)}") from None
            status = probe.status(STATUS)
    finally:
        for p in procs:
            p.stop()

    # One prediction per bridge step, at the bridge's 20 steps per wall-clock second
    # (Reacher-v5's 50 Hz x the shared real-time factor 0.4).
    times, values = zip(*rewards, strict=True)
    assert np.median(np.diff(times)) == pytest.approx(0.05, rel=0.3)
    assert np.isfinite(values).all()
    assert np.isfinite(conts).all() and all(0.0 <= c <= 1.0 for c in conts)
    assert abs(len(conts) - len(rewards)) <= 2
    # The decoded prediction of each observation: the bridge's camera size, rgb8.
    assert len(frames) >= 20
    frame = frames[-1]
    assert (frame.height, frame.width, frame.encoding) == (CAMERA, CAMERA, "rgb8")
    pixels = np.frombuffer(frame.data, np.uint8)
    assert pixels.size == CAMERA * CAMERA * 3 and pixels.std() > 0
    assert len(rewards) >= injected + 20
    assert int(status["malformed_observations"]) >= 1
    assert "s ahead of the node clock (future_tolerance_s 1)" in procs[1].log_text()
    # The episode end restarted the latent from the initial state (diagnostics and log).
    assert int(status["episode_starts"]) >= 2 and status["missing_applied_actions"] == "0"
    assert status["graphs"] == "decode,filter,imagine" and status["latent_deter"] == "32"
    assert procs[1].log_text().count("episode start: latent reset") >= 2
    # Graphs that disagree on the latent: one line naming both files, node unconfigured.
    lines = [ln for ln in procs[2].log_text().splitlines() if "configure failed" in ln]
    assert len(lines) == 1, procs[2].log_text()[-2000:]
    assert f"{wider}: latent 'deter' size [48] disagrees with the filter" in lines[0]
    assert str(graphs["filter"]) in lines[0] and "[32]" in lines[0]


def test_dreamer_actor_drives_the_bridge(tmp_path: Path, ros_env: dict[str, str]) -> None:
    """A tiny Dreamer (train_dreamer smoke run on the bridge's task, its state) served with its
    actor: the bridge (action_source topic) applies the node's finite, in-bounds actions."""
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32

    from roboloop_testing.ros_probe import RosProbe
    from roboloop_testing.world_model import tiny_dreamer

    graphs = tiny_dreamer(tmp_path, "Reacher-v5")
    sim = load_launch_file(REPO / "launch/sim.launch.py", {"action_source": "topic"})
    node = load_launch_file(
        REPO / "launch/world_model.launch.py",
        {
            "model_path": str(graphs["filter"]),
            "imagine_path": str(graphs["imagine"]),
            "actor_path": str(graphs["actor"]),
            "device": "cpu",
        },
    )
    procs = [
        node.start(0, log_path=tmp_path / "world_model.log", env=ros_env),
        sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
    ]
    actions: list[tuple[float, np.ndarray]] = []
    applied: list[np.ndarray] = []
    rewards: list[float] = []

    try:
        with RosProbe(name="dreamer_observer") as probe:
            probe.watch_diagnostics()
            n = probe.node
            n.create_subscription(
                JointState,
                "/sim/action",
                lambda m: actions.append((time.monotonic(), np.array(m.effort))),
                QoSProfile(depth=50),
            )
            n.create_subscription(
                JointState,
                "/sim/applied_action",
                lambda m: applied.append(np.array(m.effort)),
                QoSProfile(depth=50),
            )
            n.create_subscription(
                Float32, "/world_model/reward", lambda m: rewards.append(m.data), 50
            )

            def acting() -> bool:
                assert all(p.alive() for p in procs), tails(procs)
                return len(actions) >= 40 and sum(a.any() for a in applied) >= 20

            try:
                probe.wait_for(acting, 60, "40 actor actions, 20 applied by the bridge")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{tails(procs)}") from None
            status = probe.status(STATUS)
    finally:
        for p in procs:
            p.stop()

    times, values = zip(*actions, strict=True)
    values = np.array(values)
    assert values.shape[1] == 2 and np.isfinite(values).all()
    assert (np.abs(values) <= 1.0).all()  # the actor's bounds: Reacher-v5's action space
    assert np.median(np.diff(times)) == pytest.approx(0.05, rel=0.3)  # one per bridge step
    assert values.std(axis=0).min() > 0  # it acts on what it sees, not a constant
    for a in applied[-10:]:  # the bridge applies what the node published
        if a.any():
            assert np.abs(values - a).max(axis=1).min() < 1e-6, a
    assert np.isfinite(rewards).all() and len(rewards) >= 20
    assert (
        status["graphs"] == "actor,filter,imagine" and int(status["actions_published"]) >= 20
    )  # 1 s old
