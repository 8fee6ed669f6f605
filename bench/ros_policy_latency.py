"""policy_node obs->action latency over ROS vs the same policy's in-process runner latency.

    python -m bench.ros_policy_latency [--quick] [--model PATH.onnx]

A publisher in this process stamps observations (header.stamp = now) at 0.9x the control rate;
policy_node runs as its own process, once per trigger: on its control timer at that rate, and
on observations (`trigger: observation`: it acts when a step's observations have arrived),
the latter also on rclpy's EventsExecutor (`executor: events`);
latency is the time from an observation's stamp to the arrival here of the first action
carrying that stamp. A timer-driven node waits for its next tick, so about half a control period
of the latency is that wait (`tick_wait_ms`); an observation-triggered one does not wait. The
in-process number is `OnnxPolicy.predict_action_chunk` at batch 1 on 1 thread, the node's
inference also runs on 1 thread.

The floor: the same observations answered by a bare rclpy echo process (`--echo`: the node's
QoS, single-threaded executor, no decoding, no model) that publishes an action as soon as every
observation of a stamp has arrived. It is what DDS and rclpy's wake-ups cost on this machine
before the node does anything; `ros_minus_floor` is what the node adds (decoding,
the loop, inference, publishing).

Models: the reference linear policy with a 10-d state and a 64x64 rgb8 camera (the sim
bridge's default topics: decoding and transport dominate) and, unless --model is given, a
Reacher-sized flow-BC policy with random weights (obs_steps 2, horizon 8, 10 Euler steps;
built as in bench.policy_latency).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset import IMAGE
from episode_dataset.ranges import HelpFormatter
from roboloop_runtime.topics import observation_topic

NAME = "ros_policy_latency"
REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "ros2_ws/src/roboloop_policy/config/policy.yaml"
TOPIC_PREFIX = "/bench_policy"
PUBLISH_RATIO = 0.9
NOTE = (
    "ros = observation stamp -> action arrival across processes; trigger timer: the node acts "
    "on its timer, so tick_wait (half a period on average) is part of it; trigger observation: "
    "it acts on arrival; executor: the node's rclpy executor (events = EventsExecutor); "
    "ros_minus_in_process = ros p50 - in-process p50 (back to back); "
    "in_process_paced = the same calls once per control period, idle between them as in the node; "
    "ros_floor = the same stream answered by a bare rclpy echo (no decoding, no model); "
    "node_* = the node's own diagnostics"
)
# (trigger, executor) of the node's runs: its default executor with both triggers, and the
# observation trigger on rclpy's EventsExecutor (`executor: events`)
RUNS = (
    ("timer", "single_threaded"),
    ("observation", "single_threaded"),
    ("observation", "events"),
)
ECHO = "echo"  # the responder of the floor row, in place of policy_node


def _ros_environment() -> None:
    """Loopback DDS, a private domain and a local log dir for this process + children."""
    from roboloop_bringup.processes import LOOPBACK_DDS

    os.environ.update(LOOPBACK_DDS)  # DDS on 127.0.0.1 + shared memory, as the nodes use it
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randrange(91, 100)))
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="bench_ros_log_"))


def _observations(metadata: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        key: rng.integers(0, 256, spec.shape, dtype=np.uint8)
        if spec.feature_type == IMAGE
        else rng.standard_normal(spec.shape).astype(spec.dtype)
        for key, spec in metadata.observations.items()
    }


def in_process_latency(
    model_path: Path, iters: int, rate_hz: float | None = None
) -> dict[str, float]:
    """predict_action_chunk at batch 1 (obs history built like the node does), ms: back to back,
    or once per period at `rate_hz` (idle between calls, as in the node: colder caches)."""
    from roboloop_runtime import OnnxPolicy

    policy = OnnxPolicy(model_path, device="cpu", threads=1)
    m = policy.metadata
    obs = _observations(m, np.random.default_rng(0))
    batch = {k: np.stack([v] * m.obs_steps)[None] for k, v in obs.items()}
    for _ in range(10):
        policy.predict_action_chunk(batch)
    period = 1.0 / rate_hz if rate_hz else 0.0
    times = []
    next_call = time.perf_counter()
    for _ in range(iters):
        if period:
            next_call += period
            time.sleep(max(0.0, next_call - time.perf_counter()))
        start = time.perf_counter()
        policy.predict_action_chunk(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def _start_echo(meta: Any, log_path: Path) -> Any:
    """The floor's responder: `python -m bench.ros_policy_latency --echo KEY=TYPE ...`."""
    import subprocess
    import sys

    from roboloop_bringup.processes import STARTED, RosProcess, ros_env

    keys = [f"{key}={spec.feature_type}" for key, spec in meta.observations.items()]
    cmd = [sys.executable, "-m", "bench.ros_policy_latency", "--echo", *keys]
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ros_env(),
            start_new_session=True,
            cwd=REPO,
        )
    proc = RosProcess(name=ECHO, popen=popen, log_path=log_path)
    STARTED.append(proc)
    return proc


def echo(keys: list[str]) -> None:
    """The floor's responder (its own process): subscribe `<prefix>/<key>` with the policy
    node's QoS and types, and publish an action carrying the stamp once every key of that stamp
    has arrived; nothing is decoded or checked."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from roboloop_policy.node import COMMAND_QOS, OBSERVATION_QOS
    from sensor_msgs.msg import Image, JointState

    rclpy.init()
    node = rclpy.create_node("ros_policy_latency_echo", start_parameter_services=False)
    pub = node.create_publisher(JointState, f"{TOPIC_PREFIX}/action", COMMAND_QOS)
    arrived: dict[tuple[int, int], int] = {}
    bound = [tuple(k.split("=", 1)) for k in keys]

    def on_observation(msg: Any) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        arrived[stamp] = arrived.get(stamp, 0) + 1
        if arrived[stamp] == len(bound):
            del arrived[stamp]
            action = JointState()
            action.header.stamp = msg.header.stamp
            action.effort = [0.0, 0.0]
            pub.publish(action)
        if len(arrived) > 100:  # stamps that lost a message
            arrived.clear()

    for key, feature_type in bound:
        msg_type = Image if feature_type == IMAGE else JointState
        topic = observation_topic(key, TOPIC_PREFIX)
        node.create_subscription(msg_type, topic, on_observation, OBSERVATION_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def ros_latency(
    model_path: Path,
    rate_hz: float,
    seconds: float,
    log_dir: Path,
    trigger: str = "timer",
    executor: str = "single_threaded",
) -> dict[str, Any]:
    """Run policy_node on `model_path` at `rate_hz` with `trigger` on `executor` (or, with
    trigger ECHO, the floor's echo), publish observations, time the actions."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from roboloop_bringup.processes import start_node
    from sensor_msgs.msg import Image, JointState

    from roboloop_runtime import OnnxModel, PolicyMetadata

    meta = PolicyMetadata.from_dict(OnnxModel(model_path, device="cpu").metadata)
    keys = list(meta.observations)
    topics = [observation_topic(key, TOPIC_PREFIX) for key in keys]  # the node's convention
    log_path = log_dir / f"{model_path.stem}_{rate_hz:g}hz_{trigger}_{executor}.log"
    if trigger == ECHO:
        proc = _start_echo(meta, log_path)
    else:
        proc = start_node(
            "policy_node",
            params_file=PARAMS_FILE,
            params={
                "model_path": str(model_path),
                "device": "cpu",
                "inference_threads": 1,
                "observation_namespace": TOPIC_PREFIX,  # <namespace>/<key> for every model key
                "spec_topic": "",  # no sim bridge here: the bench paces in real time
                "real_time_factor": 1.0,
                "action_topic": f"{TOPIC_PREFIX}/action",
                "control_rate_hz": float(rate_hz),
                "stale_periods": 20.0,  # measure latency, not the watchdog
                "diagnostics_period_s": 0.5,
                "trigger": trigger,
                "executor": executor,
            },
            log_path=log_path,
        )
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node(
        "ros_policy_latency_bench", context=context, start_parameter_services=False
    )
    lock = threading.Lock()
    sent: set[int] = set()
    latency_ms: dict[int, float] = {}  # stamp -> first arrival
    diagnostics: dict[str, str] = {}
    publishing = threading.Event()
    obs = _observations(meta, np.random.default_rng(1))
    pubs = []
    for key, topic in zip(keys, topics, strict=True):
        msg_type = Image if meta.observations[key].feature_type == IMAGE else JointState
        pubs.append((key, node.create_publisher(msg_type, topic, qos_profile_sensor_data)))

    def publish() -> None:
        if not publishing.is_set():
            return
        stamp = node.get_clock().now().to_msg()
        for key, pub in pubs:
            value = obs[key]
            if meta.observations[key].feature_type == IMAGE:
                h, w, _ = value.shape
                msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
                msg.data = value.tobytes()  # bytes: assigning the array is ~1000x slower
            else:
                msg = JointState(position=value.tolist())
            msg.header.stamp = stamp
            pub.publish(msg)
        with lock:
            sent.add(stamp.sec * 1_000_000_000 + stamp.nanosec)

    def on_action(msg: JointState) -> None:
        now = node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            if stamp in sent and stamp not in latency_ms:
                latency_ms[stamp] = (now - stamp) * 1e-6

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "/policy_node: policy":
                diagnostics.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(JointState, f"{TOPIC_PREFIX}/action", on_action, QoSProfile(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    # 0.9x the control rate: the phase between publishing and the node's ticks drifts through
    # a whole period, so the tick wait averages period/2 instead of one arbitrary fixed phase.
    node.create_timer(1.0 / (PUBLISH_RATIO * rate_hz), publish)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 60
        while not (
            all(pub.get_subscription_count() for _, pub in pubs)
            and node.count_publishers(f"{TOPIC_PREFIX}/action")
        ):
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"{proc.name} did not come up:\n{proc.log_text()[-2000:]}")
            time.sleep(0.02)
        publishing.set()
        time.sleep(1.0)  # warm-up: first inferences, discovery of the reverse path
        with lock:
            latency_ms.clear()
        time.sleep(seconds)
        publishing.clear()
        time.sleep(0.5)  # let the last actions and a diagnostics message arrive
        with lock:
            values = np.array(list(latency_ms.values()))
            n_sent = len(sent)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(5)
        proc.stop()
    if values.size == 0:
        raise RuntimeError(f"no actions received from {proc.name}:\n{proc.log_text()[-2000:]}")
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "samples": int(values.size),
        "sent": n_sent,
        "node_inference_p50": diagnostics.get("inference_latency_p50_ms", "n/a"),
        "node_inference_p99": diagnostics.get("inference_latency_p99_ms", "n/a"),
        "node_obs_to_action_p50": diagnostics.get("obs_to_action_latency_p50_ms", "n/a"),
        "provider": diagnostics.get("execution_provider", "n/a"),
    }


def _flow_bc_model(directory: Path) -> Path:
    from bench.policy_latency import _toy_checkpoint
    from learning.export import export_checkpoint

    onnx_path = directory / "flow_bc_reacher.onnx"
    export_checkpoint(_toy_checkpoint(directory / "toy.ckpt"), onnx_path)
    return onnx_path


def run(quick: bool, model: str | None = None) -> list[dict]:
    _ros_environment()
    from roboloop_policy.reference_model import make_reference_policy

    seconds, iters = (3.0, 100) if quick else (10.0, 500)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ros_policy_") as tmp:
        tmp_path = Path(tmp)
        reference = tmp_path / "reference_state10_image64.onnx"
        make_reference_policy(reference, state_dim=10, action_dim=2, image_hw=(64, 64))
        second = Path(model) if model else _flow_bc_model(tmp_path)
        cases = [(reference, 20.0), (second, 20.0), (second, 100.0)]
        for path, rate in cases:
            floor = ros_latency(path, rate, seconds, tmp_path, ECHO)
            for trigger, executor in RUNS:
                inproc = in_process_latency(path, iters)  # beside each ROS run: the same load
                paced = in_process_latency(path, int(seconds * rate), rate)
                ros = ros_latency(path, rate, seconds, tmp_path, trigger, executor)
                tick_wait = 500.0 / rate if trigger == "timer" else 0.0  # mean wait for a tick
                rows.append(
                    {
                        "model": path.stem,
                        "rate_hz": rate,
                        "trigger": trigger,
                        "executor": executor,
                        "in_process_p50_ms": round(inproc["p50"], 3),
                        "in_process_p99_ms": round(inproc["p99"], 3),
                        "ros_obs_to_action_p50_ms": round(ros["p50"], 3),
                        "ros_obs_to_action_p99_ms": round(ros["p99"], 3),
                        "ros_minus_in_process_p50_ms": round(ros["p50"] - inproc["p50"], 3),
                        "in_process_paced_p50_ms": round(paced["p50"], 3),
                        "ros_minus_paced_p50_ms": round(ros["p50"] - paced["p50"], 3),
                        "ros_floor_p50_ms": round(floor["p50"], 3),
                        "ros_minus_floor_p50_ms": round(ros["p50"] - floor["p50"], 3),
                        "tick_wait_ms": round(tick_wait, 1),
                        "ros_minus_tick_wait_p50_ms": round(ros["p50"] - tick_wait, 3),
                        "node_inference_p50_ms": ros["node_inference_p50"],
                        "node_inference_p99_ms": ros["node_inference_p99"],
                        # stamp -> publish inside the node (tick wait + inference, no transport)
                        "node_obs_to_action_p50_ms": ros["node_obs_to_action_p50"],
                        "provider": ros["provider"],
                        "samples": ros["samples"],
                        "observations_sent": ros["sent"],
                    }
                )
    from bench.report import report

    report(NAME, rows, note=NOTE)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ros_policy_latency",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=None, help="an exported policy instead of flow-BC")
    parser.add_argument("--echo", nargs="+", metavar="KEY=FEATURE_TYPE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        echo(args.echo)
    else:
        run(args.quick, args.model)


if __name__ == "__main__":
    main()
