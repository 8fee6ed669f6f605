"""Serving a best_of_n model (sampler + critic ensemble + argmax in one graph): chunks run
open-loop, the chosen Q goes to /diagnostics, a non-finite Q is never acted on.

The ROS-free tests drive `PolicyLoop` (the policy node's logic) with the hand-built best-of-N
graph of test_model_types; the ROS test serves a trained, exported ACRLPD with the real policy
node against the real sim bridge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from roboloop_policy.control import RUNNING, PolicyLoop
from test_model_types import ACT, HORIZON, BestOfN, _obs, _torch

from learning.export import export_model
from roboloop_runtime import ModelOutputError, OnnxPolicy

PERIOD_NS = 50_000_000
T0 = 1_000_000_000_000
N = 5
SEED = 3


class OpenLoopBestOfN(BestOfN):
    """test_model_types' best-of-N graph, exported as a Q-chunking policy is: the whole chunk
    executed before the next inference (n_action_steps = horizon)."""

    def export_metadata(self) -> dict[str, Any]:
        return {**super().export_metadata(), "n_action_steps": HORIZON}


@pytest.fixture(scope="module")
def best_of_n(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BestOfN]:
    torch.manual_seed(0)
    model = OpenLoopBestOfN(n=N).eval()
    path = tmp_path_factory.mktemp("best_of_n") / "bon.onnx"
    export_model(model, path)
    return path, model


def _loop(path: Path) -> PolicyLoop:
    return PolicyLoop(OnnxPolicy(path, device="cpu", threads=1, seed=SEED), PERIOD_NS * 1e-9)


def test_chunks_run_open_loop_and_the_chosen_q_is_reported(best_of_n) -> None:
    path, model = best_of_n
    loop = _loop(path)
    assert loop.warm_up() > 0
    diag = loop.diagnostics()
    assert (diag["chosen_q"], diag["chosen_q_count"]) == ("n/a", "0")  # declared at configure
    rng, noise_rng = np.random.default_rng(1), np.random.default_rng(SEED)
    noise_rng.standard_normal((1, N, HORIZON, ACT), dtype=np.float32)  # warm_up's draw
    frames = [{k: v[0, -1] for k, v in _obs(rng, 1).items()} for _ in range(2 * HORIZON + 1)]
    chunk = q = None
    for i, obs in enumerate(frames):
        now = T0 + i * PERIOD_NS
        for key, value in obs.items():
            loop.observe(key, value, now, now)
        cmd = loop.step(now, now)
        assert cmd is not None and not cmd.safe and loop.state == RUNNING
        if i % HORIZON == 0:  # a new chunk from the window (frames i-1, i; padded at start)
            window = [frames[max(i - 1, 0)], obs]
            hist = {k: np.stack([f[k] for f in window])[None] for k in obs}
            noise = noise_rng.standard_normal((1, N, HORIZON, ACT), dtype=np.float32)
            with torch.no_grad():
                chunk, q = model(*_torch(hist), torch.from_numpy(noise))
        np.testing.assert_allclose(cmd.action, chunk[0, i % HORIZON].numpy(), atol=1e-5)
    diag = loop.diagnostics()
    assert loop.inference_latency.count == 3  # ticks 0, 4 and 8 only: open-loop chunks
    assert diag["chosen_q_count"] == "3" and diag["chosen_q_rejected"] == "0"
    assert float(diag["chosen_q"]) == pytest.approx(float(q[0]), abs=1e-5)


def test_a_nonfinite_q_is_never_acted_on(best_of_n, tmp_path: Path) -> None:
    path, _ = best_of_n
    proto = onnx.load(str(path))
    (bias,) = [t for t in proto.graph.initializer if t.name.endswith("critic.q.bias")]
    bias.CopyFrom(numpy_helper.from_array(np.full((1,), np.nan, np.float32), bias.name))
    onnx.save(proto, str(tmp_path / "nan_q.onnx"))  # finite actions, NaN values
    loop = _loop(tmp_path / "nan_q.onnx")
    with pytest.raises(ModelOutputError, match="model output 'q' holds 1 non-finite"):
        loop.warm_up()  # the node's configure refuses it
    obs = {k: v[0, -1] for k, v in _obs(np.random.default_rng(2), 1).items()}
    for i in range(2):  # every tick infers again: nothing of a rejected chunk was queued
        now = T0 + i * PERIOD_NS
        for key, value in obs.items():
            loop.observe(key, value, now, now)
        cmd = loop.step(now, now)
        assert cmd.safe and cmd.fault is not None and cmd.fault.reason == "nonfinite"
        np.testing.assert_array_equal(cmd.action, np.zeros(ACT))
    diag = loop.diagnostics()
    assert diag["chosen_q_rejected"] == "3" and diag["chosen_q_count"] == "0"
    assert diag["control_state"] == "bad_model_output" and diag["actions_published"] == "0"


REPO = Path(__file__).resolve().parents[1]
ENV, ROS_HORIZON, ROS_N = "Reacher-v5", 5, 4


def train_acrlpd(tmp: Path) -> Path:
    """A tiny ACRLPD after a few offline gradient steps on Reacher expert data, exported."""
    from learning.export import export_checkpoint
    from learning.train import compose_config, run
    from sim.collect import collect

    collect(ENV, "expert", 2, 0, tmp / "reacher.hdf5", progress=False)
    result = run(
        compose_config(
            "train_acrlpd",
            [
                f"dataset={tmp / 'reacher.hdf5'}",
                f"env_id={ENV}",
                f"run_dir={tmp / 'acrlpd'}",
                "model=acrlpd",
                "offline_steps=3",
                "online_steps=0",
                f"horizon_length={ROS_HORIZON}",
                f"best_of_n_samples={ROS_N}",
                "num_critics=2",
                "batch_size=16",
                "model.critic_hidden_dims=[32,32]",
                "actor_hidden_dims=[32,32]",
                "eval_episodes=0",
                "online.progress_bar=false",
            ],
        )
    )
    path = tmp / "acrlpd.onnx"
    meta = export_checkpoint(result["last_ckpt"], path)
    assert meta["model_type"] == "best_of_n" and meta["n_action_steps"] == ROS_HORIZON
    return path


@pytest.mark.ros
@pytest.mark.xdist_group("ros")
def test_exported_acrlpd_drives_the_sim_bridge_chunk_by_chunk(
    tmp_path: Path, ros_env: dict[str, str]
) -> None:
    pytest.importorskip("rclpy")
    from rclpy.qos import QoSProfile
    from roboloop_bringup.launch_standin import load_launch_file
    from sensor_msgs.msg import JointState

    from roboloop_testing.ros_probe import RosProbe

    model_path = train_acrlpd(tmp_path)
    sim = load_launch_file(REPO / "launch/sim.launch.py", {"action_source": "topic"})
    # 10 steps per wall-clock second; the policy ticks once per step (its rate from /sim/spec)
    sim.nodes[0].params.update({"camera": 0, "max_episodes": 1, "real_time_factor": 0.2})
    policy = load_launch_file(
        REPO / "launch/policy.launch.py", {"model_path": str(model_path), "device": "cpu"}
    )
    procs = [
        policy.start(0, log_path=tmp_path / "policy.log", env=ros_env),
        sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
    ]
    applied: list[np.ndarray] = []

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)

    try:
        with RosProbe(name="best_of_n_observer") as probe:
            probe.watch_diagnostics()
            probe.node.create_subscription(
                JointState,
                "/sim/applied_action",
                lambda m: applied.append(np.array(m.effort)),
                QoSProfile(depth=50),
            )

            def running() -> bool:
                assert all(p.alive() for p in procs), logs()
                status = probe.status("/policy_node: policy") or {}
                return sum(a.any() for a in applied) >= 15 and (
                    int(status.get("chosen_q_count", 0)) >= 4
                )

            try:
                probe.wait_for(running, 120, "15 best-of-N actions applied by the sim bridge")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{logs()}") from None
            status = probe.status("/policy_node: policy")
    finally:
        for p in procs:
            p.stop()

    assert np.isfinite(float(status["chosen_q"])), status
    assert status["chosen_q_rejected"] == "0"
    # Open-loop chunks: one inference per horizon actions (the last chunk may be under way),
    # plus one per restart after stale observations (a loaded machine), which drops a queue.
    inferences, published = int(status["inference_count"]), int(status["actions_published"])
    assert inferences == int(status["chosen_q_count"])
    chunks = -(-published // ROS_HORIZON)
    assert chunks <= inferences <= chunks + int(status["stale_events"]), status
    assert status["late_chunk_steps"] == "0" and status["n_action_steps"] == str(ROS_HORIZON)
