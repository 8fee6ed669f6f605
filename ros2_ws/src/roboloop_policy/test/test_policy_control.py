"""The ROS-free control loop: history, chunk queue, stamps, watchdog, recovery (real ORT)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from roboloop_policy.control import (
    RATE_SAMPLES,
    RUNNING,
    STALE,
    WAITING,
    LatencyWindow,
    PolicyLoop,
)
from roboloop_policy.observations import observation_stamp
from roboloop_policy.reference_model import ReferencePolicy, make_reference_policy

from episode_dataset.codecs import MessageError, ns_to_stamp
from roboloop_runtime import OnnxPolicy

PERIOD = 0.05
PERIOD_NS = int(PERIOD * 1e9)
T0 = 1_000_000_000_000  # node clock (ns) at the first tick


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReferencePolicy]:
    path = tmp_path_factory.mktemp("models") / "chunked.onnx"
    return path, chunked_reference(path, horizon=4, n_action_steps=2)


def chunked_reference(path: Path, horizon: int, n_action_steps: int) -> ReferencePolicy:
    """The test's reference policy (3-d state, 4x4 image, 2 actions, 2 observation steps)."""
    return make_reference_policy(
        path,
        state_dim=3,
        action_dim=2,
        image_hw=(4, 4),
        obs_steps=2,
        horizon=horizon,
        n_action_steps=n_action_steps,
        control_rate_hz=20.0,
    )


def make_loop(path: Path, safe_action: str = "zeros") -> PolicyLoop:
    policy = OnnxPolicy(path, device="cpu", threads=1)
    return PolicyLoop(policy, PERIOD, stale_periods=2, safe_action=safe_action)


def frame(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "state": rng.normal(size=3).astype(np.float32),
        "image": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
    }


def feed(loop: PolicyLoop, obs: dict[str, np.ndarray], stamp_ns: int, arrival_ns: int) -> None:
    for key, value in obs.items():
        loop.observe(key, value, stamp_ns, arrival_ns)


def expected(ref: ReferencePolicy, frames: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Chunk (horizon, A) for a window of `obs_steps` frames."""
    hist = {k: np.stack([f[k] for f in frames])[None] for k in frames[0]}
    return ref.actions(hist, np.zeros((1, ref.horizon, 2), np.float32))[0]


def test_chunked_execution_history_and_stamps(chunked) -> None:
    path, ref = chunked
    loop = make_loop(path)
    rng = np.random.default_rng(0)
    assert loop.step(T0, T0) is None and loop.state == WAITING
    frames = [frame(rng) for _ in range(5)]
    commands = []
    for i, obs in enumerate(frames):
        now = T0 + i * PERIOD_NS
        feed(loop, obs, stamp_ns=now - 1000, arrival_ns=now - 1000)
        commands.append(loop.step(now, now))
    assert loop.state == RUNNING and loop.inference_latency.count == 3  # ticks 0, 2, 4
    # Tick 0: the window is padded with the first frame; ticks 0,1 execute chunk 0.
    chunk0 = expected(ref, [frames[0], frames[0]])
    chunk2 = expected(ref, [frames[1], frames[2]])
    chunk4 = expected(ref, [frames[3], frames[4]])
    want = [chunk0[0], chunk0[1], chunk2[0], chunk2[1], chunk4[0]]
    for got, action in zip(commands, want, strict=True):
        assert not got.safe
        np.testing.assert_allclose(got.action, action, rtol=1e-5, atol=1e-5)
    # Every action carries its own step's observation stamp (what the robot matches it to);
    # chunk_stamp_ns says which observation its chunk was computed from.
    assert [c.stamp_ns for c in commands] == [T0 + i * PERIOD_NS - 1000 for i in range(5)]
    assert [c.chunk_stamp_ns for c in commands] == [
        T0 - 1000,
        T0 - 1000,
        T0 + 2 * PERIOD_NS - 1000,
        T0 + 2 * PERIOD_NS - 1000,
        T0 + 4 * PERIOD_NS - 1000,
    ]
    assert [c.new_chunk for c in commands] == [True, False, True, False, True]


def test_lockstep_chunked_policy_answers_every_step_with_its_stamp(tmp_path: Path) -> None:
    """trigger=observation against a lockstep bridge (it applies only an action stamped with its
    newest observation): a horizon-8 / n_action_steps-4 policy answers each of 12 steps with an
    action stamped with that step's observation, 4 actions per inference; the obs->action
    latency counts every action from its own observation, the first-action one only the 3
    steps that ran the model."""
    path = tmp_path / "h8.onnx"
    ref = chunked_reference(path, horizon=8, n_action_steps=4)
    loop = make_loop(path)
    rng = np.random.default_rng(11)
    frames = [frame(rng) for _ in range(12)]
    applied = []
    for k, obs in enumerate(frames):
        stamp = T0 + k * PERIOD_NS  # the bridge stamps step k; the node acts on arrival
        feed(loop, obs, stamp, stamp + 500_000)
        assert loop.step_ready()
        cmd = loop.step(stamp + 500_000, stamp + 500_000)
        assert not cmd.safe and cmd.stamp_ns == stamp  # the bridge's wait is over
        loop.published(cmd, stamp + 1_000_000)  # published 1 ms after the observation stamp
        applied.append(cmd.action)
        assert cmd.chunk_stamp_ns == T0 + (k // 4) * 4 * PERIOD_NS
    assert loop.inference_latency.count == 3  # steps 0, 4, 8
    for start in (0, 4, 8):
        window = [frames[max(start - 1, 0)], frames[start]]
        chunk = expected(ref, window)
        np.testing.assert_allclose(applied[start : start + 4], chunk[:4], atol=1e-5)
    assert loop.obs_to_action_latency.count == 12
    assert loop.obs_to_first_action_latency.count == 3
    diag = loop.diagnostics()
    assert diag["obs_to_action_latency_p99_ms"] == "1.000"  # not the queue's open-loop age
    assert diag["obs_to_first_action_latency_p50_ms"] == "1.000"


def test_node_loop_acts_like_sim_evaluation(tmp_path: Path) -> None:
    """One acting path: PolicyLoop and OnnxPolicy.select_action (sim evaluation) give the same
    actions for the same frames and seed, across a restart (history, queue and noise)."""
    path = tmp_path / "noisy.onnx"
    make_reference_policy(
        path, state_dim=3, action_dim=2, obs_steps=3, horizon=5, n_action_steps=3,
        noise_scale=0.5, control_rate_hz=20.0,
    )  # fmt: skip
    loop = PolicyLoop(OnnxPolicy(path, device="cpu", threads=1, seed=7), PERIOD)
    sim_policy = OnnxPolicy(path, device="cpu", threads=1, seed=7)
    rng = np.random.default_rng(4)
    for episode in range(2):
        loop.reset()
        sim_policy.reset()
        for i in range(7):
            state = rng.normal(size=3).astype(np.float32)
            now = T0 + (10 * episode + i) * PERIOD_NS
            loop.observe("state", state, now, now)
            got = loop.step(now, now)
            assert not got.safe
            np.testing.assert_array_equal(got.action, sim_policy.select_action({"state": state}))


def test_a_chunk_from_a_period_old_observation_starts_at_the_step_it_acts_on(chunked) -> None:
    """A tick just before the next observation arrives acts on one a period old: its chunk's
    action 0 was for the step already passed, so the queue starts at action 1 (not a step late
    for the whole chunk); a fresh observation starts at action 0."""
    path, ref = chunked
    loop = make_loop(path)  # horizon 4, n_action_steps 2: at most 2 late steps
    rng = np.random.default_rng(6)
    first, second = frame(rng), frame(rng)
    feed(loop, first, T0, T0)
    now = T0 + int(1.2 * PERIOD_NS)
    cmd = loop.step(now, now)
    chunk = expected(ref, [first, first])
    np.testing.assert_allclose(cmd.action, chunk[1], atol=1e-5)
    feed(loop, second, T0 + PERIOD_NS, now)
    cmd = loop.step(now + PERIOD_NS, now + PERIOD_NS)
    np.testing.assert_allclose(cmd.action, chunk[2], atol=1e-5)
    assert loop.diagnostics()["late_chunk_steps"] == "1"
    assert [loop.late_steps(int(f * PERIOD_NS)) for f in (0.3, 0.97, 1.5, 2.5, 9.0)] == [
        0, 1, 1, 2, 2
    ]  # fmt: skip


def test_episode_done_starts_the_next_episode_afresh(chunked) -> None:
    """After episode_done() the loop acts as sim evaluation does after reset(): the next
    episode's first chunk comes from a window of its first frame only, not from the leftover
    queued action or the last episode's frames; until that frame arrives nothing is published."""
    path, ref = chunked
    loop = make_loop(path)
    rng = np.random.default_rng(5)
    for i in range(3):  # tick 2 computes a chunk; one of its two actions is still queued
        now = T0 + i * PERIOD_NS
        feed(loop, frame(rng), now, now)
        loop.step(now, now)
    loop.episode_done()
    now = T0 + 3 * PERIOD_NS
    assert loop.step(now, now) is None  # the newest observation is still the last episode's
    first, second = frame(rng), frame(rng)
    feed(loop, first, now, now)
    cmd = loop.step(now + 1000, now + 1000)
    assert not cmd.safe and cmd.stamp_ns == now and loop.inference_latency.count == 3
    chunk = expected(ref, [first, first])
    np.testing.assert_allclose(cmd.action, chunk[0], atol=1e-5)
    feed(loop, second, now + PERIOD_NS, now + PERIOD_NS)
    cmd = loop.step(now + PERIOD_NS, now + PERIOD_NS)
    np.testing.assert_allclose(cmd.action, chunk[1], atol=1e-5)
    assert loop.diagnostics()["episodes_ended"] == "1"


@pytest.mark.parametrize("by", ["stamp", "arrival"])
def test_watchdog_safe_action_then_recovery_resets_window(chunked, by: str) -> None:
    path, ref = chunked
    loop = make_loop(path)
    rng = np.random.default_rng(1)
    first = frame(rng)
    late = T0 + int(2.5 * PERIOD_NS)  # the limit is 2 periods
    # Each case is stale by one clock only: an old stamp that just arrived (re-sent data), or
    # a stamp that looks fresh (sender clock ahead) on data that arrived long ago.
    feed(loop, first, stamp_ns=late if by == "arrival" else T0, arrival_ns=T0)
    assert not loop.step(T0, T0).safe
    if by == "stamp":
        feed(loop, first, stamp_ns=T0, arrival_ns=late)
    cmd = loop.step(late, late)
    assert cmd.safe and loop.state == STALE and set(cmd.stale_keys) == {"state", "image"}
    np.testing.assert_array_equal(cmd.action, np.zeros(2, np.float32))
    assert loop.step(late + PERIOD_NS, late + PERIOD_NS).safe
    assert loop.stale_events == 1
    # Fresh data: the policy restarts from a window padded with the new frame only.
    fresh = frame(rng)
    now = late + 2 * PERIOD_NS
    feed(loop, fresh, now, now)
    cmd = loop.step(now, now)
    assert not cmd.safe and loop.state == RUNNING and cmd.stamp_ns == now
    np.testing.assert_allclose(cmd.action, expected(ref, [fresh, fresh])[0], atol=1e-5)


def test_hold_repeats_last_policy_action_and_one_stale_key_is_enough(chunked) -> None:
    path, _ = chunked
    loop = make_loop(path, safe_action="hold")
    obs = frame(np.random.default_rng(2))
    feed(loop, obs, T0, T0)
    last = loop.step(T0, T0).action
    now = T0 + 3 * PERIOD_NS
    loop.observe("state", obs["state"], now, now)  # only the image goes stale
    cmd = loop.step(now, now)
    assert cmd.safe and cmd.stale_keys == ("image",)
    np.testing.assert_array_equal(cmd.action, last)


def test_counters_latency_and_diagnostics(chunked) -> None:
    path, _ = chunked
    loop = make_loop(path)
    assert loop.warm_up() > 0 and loop.inference_latency.count == 0  # not a control inference
    feed(loop, frame(np.random.default_rng(3)), T0, T0)
    cmd = loop.step(T0, T0)
    loop.published(cmd, T0 + 2_000_000)  # published 2 ms after the observation stamp
    diag = loop.diagnostics()
    assert diag["obs_to_action_latency_p50_ms"] == "2.000"
    assert float(diag["inference_latency_p99_ms"]) > 0
    assert diag["actions_published"] == "1" and diag["control_state"] == RUNNING
    assert diag["observation_rate_hz:state"] == "n/a"  # one message: no rate yet
    for i in range(1, 11):  # 10 more messages, 25 ms apart
        loop.observe("state", np.zeros(3, np.float32), T0, T0 + i * 25_000_000)
    assert loop.diagnostics()["observation_rate_hz:state"] == "40.0"
    window = LatencyWindow(size=100)
    assert window.percentile_ms(50) is None
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.percentile_ms(50) == pytest.approx(50.5)
    assert window.percentile_ms(99) == pytest.approx(99.01)


def test_rejects_bad_settings(chunked) -> None:
    policy = OnnxPolicy(chunked[0], device="cpu", threads=1)
    with pytest.raises(ValueError, match="safe_action 'brake'"):
        PolicyLoop(policy, PERIOD, safe_action="brake")
    with pytest.raises(ValueError, match="stale_periods must be > 0"):
        PolicyLoop(policy, PERIOD, stale_periods=0)


def test_logic_modules_import_neither_rclpy_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, roboloop_policy.control, roboloop_policy.observations, "
        "roboloop_policy.safety, roboloop_policy.reference_model; "
        "print(sorted(m for m in ('rclpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faulty")
    paths = {}
    for fault in ("nan_when_negative", "constant", "extra_action"):
        paths[fault] = root / f"{fault}.onnx"
        make_reference_policy(
            paths[fault], state_dim=3, action_dim=2, action_bounds=(0.5, 2.0), fault=fault
        )
    return paths


def state_loop(path: Path, safe_action: str = "zeros") -> PolicyLoop:
    return PolicyLoop(OnnxPolicy(path, device="cpu", threads=1), PERIOD, 2, safe_action)


def test_every_chunk_is_checked_before_it_is_published(faulty) -> None:
    # NaN: the safe action (zeros moved into the bounds [0.5, 2]), the error on the command.
    loop = state_loop(faulty["nan_when_negative"], safe_action="hold")
    loop.observe("state", np.array([1.0, 0.0, 0.0], np.float32), T0, T0)
    good = loop.step(T0, T0)
    assert not good.safe and good.fault is None and np.isfinite(good.action).all()
    now = T0 + PERIOD_NS
    loop.observe("state", np.array([-1.0, 0.0, 0.0], np.float32), now, now)
    bad = loop.step(now, now)
    assert bad.safe and bad.fault.reason == "nonfinite" and loop.state == "bad_model_output"
    np.testing.assert_array_equal(bad.action, good.action)  # hold: the last checked action
    loop.observe("state", np.array([1.0, 0.0, 0.0], np.float32), now, now)
    assert not loop.step(now, now).safe and loop.state == RUNNING  # recovers on good output

    # Wrong shape per tick (warm_up refuses it at configure, see below).
    loop = state_loop(faulty["extra_action"])
    loop.observe("state", np.zeros(3, np.float32), T0, T0)
    cmd = loop.step(T0, T0)
    assert cmd.safe and cmd.fault.reason == "shape" and "(1, 1, 3)" in str(cmd.fault)
    np.testing.assert_array_equal(cmd.action, [0.5, 0.5])

    # 1e6: clipped to the bounds, flagged.
    loop = state_loop(faulty["constant"])
    loop.observe("state", np.zeros(3, np.float32), T0, T0)
    cmd = loop.step(T0, T0)
    assert not cmd.safe and cmd.clipped and cmd.action.tolist() == [2.0, 2.0]


def test_warm_up_checks_the_graph_against_its_metadata(faulty, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(1, 1, 3\), expected \(1, 1, 2\)"):
        state_loop(faulty["extra_action"]).warm_up()
    assert state_loop(faulty["nan_when_negative"]).warm_up() > 0  # finite on zeros
    make_reference_policy(tmp_path / "old.onnx", state_dim=3, action_bounds=None)
    with pytest.raises(ValueError, match="no action_bounds: re-export it with"):
        state_loop(tmp_path / "old.onnx")


def test_rate_mismatch_once_measured_after_activation(chunked) -> None:
    loop = make_loop(chunked[0])  # control at 20 Hz
    for i in range(30):  # before activation: not counted
        loop.observe("state", np.zeros(3, np.float32), T0, T0 + i * PERIOD_NS)
    loop.activate()
    assert loop.check_rates() is None
    period = int(1e9 / 8)  # 8 Hz state, 40 Hz image
    for i in range(RATE_SAMPLES):
        loop.observe("state", np.zeros(3, np.float32), T0, T0 + i * period)
        assert loop.check_rates() is None  # the image has no arrivals yet
    for i in range(RATE_SAMPLES):
        loop.observe("image", np.zeros((4, 4, 3), np.uint8), T0, T0 + i * period // 5)
    message = loop.check_rates()
    assert message is not None and "'state' arrives at 8.0 Hz" in message
    assert "runs at 20 Hz (model trained at 20 Hz)" in message
    assert (
        loop.check_rates() is None and loop.diagnostics()["observation_rate_mismatch"] == message
    )
    # Faster observations (or ones within the tolerance) are fine.
    loop.activate()
    for i in range(RATE_SAMPLES):
        loop.observe("state", np.zeros(3, np.float32), T0, T0 + i * int(1e9 / 17))
        loop.observe("image", np.zeros((4, 4, 3), np.uint8), T0, T0 + i * int(1e9 / 100))
    assert loop.check_rates() is None and loop.rate_mismatch == ""


def write_counter_actor(path: Path) -> None:
    """A stateful actor (contract v2 state_in/state_out): actions = h, h' = h + 1, h0 = 0.

    The action counts the chunks since the last reset, so it shows whether the loop restarted
    the recurrent state.
    """
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from roboloop_runtime import METADATA_KEY, build_metadata

    f32 = TensorProto.FLOAT
    fields = {
        "observations": {"state": {"shape": [3], "dtype": "float32", "feature_type": "low_dim"}},
        "obs_steps": 1,
        "action_dim": 2,
        "horizon": 1,
        "n_action_steps": 1,
        "control_rate_hz": 20.0,
        "action_bounds": {"low": [-100.0] * 2, "high": [100.0] * 2, "source": "env"},
        "normalization": {"baked": True, "stats": {}},
        "state": {"h": {"shape": [2], "dtype": "float32", "initial": 0.0}},
    }
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["state_in.h", "axis1"], ["actions"]),
            helper.make_node("Add", ["state_in.h", "one"], ["state_out.h"]),
            helper.make_node("ReduceSum", ["obs.state"], ["unused"], keepdims=0),
        ],
        "counter",
        [
            helper.make_tensor_value_info("obs.state", f32, ["B", 1, 3]),
            helper.make_tensor_value_info("state_in.h", f32, ["B", 2]),
        ],
        [
            helper.make_tensor_value_info("actions", f32, ["B", 1, 2]),
            helper.make_tensor_value_info("state_out.h", f32, ["B", 2]),
        ],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.float32(1.0), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = build_metadata("actor", fields)
    helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(path))


def test_watchdog_restart_resets_recurrent_state(tmp_path: Path) -> None:
    write_counter_actor(tmp_path / "counter.onnx")
    loop = state_loop(tmp_path / "counter.onnx")
    loop.activate()
    state = np.zeros(3, np.float32)
    counts = []
    for i in range(3):
        now = T0 + i * PERIOD_NS
        loop.observe("state", state, now, now)
        counts.append(loop.step(now, now).action[0])
    assert counts == [0.0, 1.0, 2.0]  # the state advances once per chunk
    late = T0 + 10 * PERIOD_NS
    assert loop.step(late, late).safe  # stale: the watchdog takes over
    loop.observe("state", state, late, late)
    assert loop.step(late, late).action[0] == 0.0  # fresh again: from the initial state


def test_observation_trigger_needs_every_key_at_one_stamp_a_step_apart(chunked) -> None:
    loop = make_loop(chunked[0])
    loop.activate()
    obs = frame(np.random.default_rng(3))
    loop.observe("state", obs["state"], T0, T0)
    assert not loop.step_ready()  # the image of this step has not arrived
    loop.observe("image", obs["image"], T0 - PERIOD_NS, T0)
    assert not loop.step_ready()  # an image of another step does not complete it
    loop.observe("image", obs["image"], T0, T0)
    assert loop.step_ready()
    assert loop.step(T0, T0).stamp_ns == T0
    assert not loop.step_ready()  # acted on: the same stamp does not trigger again
    early = T0 + PERIOD_NS // 2  # faster than the control rate: sampled down
    feed(loop, obs, early, early)
    assert not loop.step_ready()
    feed(loop, obs, T0 + PERIOD_NS, T0 + PERIOD_NS)
    assert loop.step_ready()
    # The watchdog of the observation trigger: stale by stamp or by arrival, never before.
    assert not loop.stale(T0 + PERIOD_NS, T0 + PERIOD_NS)
    assert loop.stale(T0 + 4 * PERIOD_NS, T0 + PERIOD_NS)
    assert loop.stale(T0 + PERIOD_NS, T0 + 4 * PERIOD_NS)


def test_future_stamped_observation_is_rejected_and_later_ones_are_served(chunked) -> None:
    """The node's path (observation_stamp against the node clock, then observe): one
    observation stamped 100000 s ahead is malformed (future_stamp) and never reaches the loop,
    so trigger=observation keeps acting on every later fresh observation (accepted, it became
    the stamp acted on last and no real one ever completed a step again)."""
    path, _ = chunked
    loop = make_loop(path)
    rng = np.random.default_rng(12)
    rejected = []

    def receive(obs: dict[str, np.ndarray], stamp_ns: int, now_ns: int) -> None:
        sec, nanosec = ns_to_stamp(stamp_ns)
        msg = SimpleNamespace(
            header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec))
        )
        for key, value in obs.items():
            try:
                loop.observe(key, value, observation_stamp(msg, now_ns, 1.0), now_ns)
            except MessageError as err:
                rejected.append(err.reason)

    stamps = []
    for k in range(6):
        now = T0 + k * PERIOD_NS
        if k == 2:
            receive(frame(rng), now + 100_000 * 10**9, now)
            assert not loop.step_ready()  # nothing new to act on
        receive(frame(rng), now, now)
        assert loop.step_ready()
        cmd = loop.step(now, now)
        assert not cmd.safe and loop.state == RUNNING
        stamps.append(cmd.stamp_ns)
    assert rejected == ["future_stamp", "future_stamp"]  # state and image of that step
    assert stamps == [T0 + k * PERIOD_NS for k in range(6)]
