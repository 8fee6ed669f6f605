"""Recorder lifecycle node: thin ROS adapter over `RecordingSession` (docs/ros_bridge_recorder.md).

configure: take the topic map from the parameter lists, a dataset (`spec_path`) or the latched
spec of a sim bridge (`spec_topic`, waited for up to `spec_timeout_s`; see `spec.py`), validate
it, then open the dataset (its parent directories are created; a configure that fails before
leaves no file), create services and diagnostics.
activate: subscribe to each topic once a publisher of its type exists, with a QoS matching what
publishers offer (publishers of another type are counted and logged); start the alignment timer;
start recording if `record_on_activate`.
deactivate: stop timers and subscriptions; the open episode is discarded (or ended, with
`keep_partial_on_deactivate`). cleanup: drain the writer queue and close the dataset.
shutdown and process exit (SIGINT, SIGTERM): the open episode is kept, `end_reason` "shutdown"
(its log line says it was interrupted).
"""

from __future__ import annotations

import importlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.time import Time
from roboloop_node_common.entry import STOP
from roboloop_node_common.lockstep import StepAcknowledger
from roboloop_node_common.robot_spec import DatasetSpec, wait_for_spec
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    TableParameters,
    publish_status,
    run_node,
    topic_name_problem,
)
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from episode_dataset.ranges import count, number
from episode_dataset.recording.params import (
    RECORDING_PARAMETERS,
    TOPIC_LISTS,
    Recording,
    env_args_from_json,
    session_config,
)
from episode_dataset.recording.session import RecordingSession
from episode_dataset.recording.topics import RecorderConfigError, dataset_specs
from roboloop_recorder.qos_choice import (
    BEST_EFFORT,
    RELIABLE,
    TRANSIENT_LOCAL,
    VOLATILE,
    QosChoice,
    choose_qos,
    needs_resubscribe,
)
from roboloop_recorder.spec import plan_recording, read_dataset_spec
from roboloop_recorder.writer_thread import EpisodeWriterThread
from roboloop_runtime.topics import step_ack_topic

# name -> (default, description). Declared once in __init__, read at each configure: what to
# record and how to align it (shared with bag import), then what only the node needs.
PARAMETERS: dict[str, tuple[Any, ...]] = {
    **RECORDING_PARAMETERS,
    "spec_path": (
        "",
        "Dataset whose spec (observation/action keys, shapes, source topics, env_args) says "
        "what to record, instead of topics/types/keys/shapes/fields ('' = those lists).",
    ),
    "spec_topic": (
        "",
        "Latched std_msgs/String spec of a sim bridge (e.g. /sim/spec) to take the topic map, "
        "env_args, control rate and real-time factor from ('' = not used).",
    ),
    "spec_timeout_s": (
        30.0,
        "spec_topic: configure fails when no spec arrives within this.",
        number(0.1, 86400),
    ),
    "topic_namespace": (
        "/sim",
        "With a spec: keys without a source topic, actions, rewards and dones are read from "
        "<namespace>/<key>, applied_action, reward, done (roboloop_runtime.topics).",
    ),
    "output_path": (
        "recording.hdf5",
        "Dataset file (episode_dataset); appended to if it exists; missing parents are created.",
    ),
    "keep_partial_on_deactivate": (False, "End (keep) instead of discard an open episode."),
    "queue_size": (
        256,
        "Writer queue length in steps; a full queue drops steps (counted).",
        count(1, high=1_000_000),
    ),
    "fsync": (True, "fsync each committed episode (crash safety)."),
    "subscription_depth": (10, "History depth of every subscription.", count(1, high=10_000)),
    "discovery_period_s": (
        0.2,
        "How often to look for (new) publishers to match their QoS.",
        number(0.01, 60),
    ),
    "diagnostics_period_s": (1.0, "Period of /diagnostics publishing.", number(0.01, 3600)),
    "lockstep_ack": (
        False,
        "On sim time (use_sim_time): acknowledge each step on <topic_namespace>/step_ack once "
        "all its messages arrived, so that a lockstep sim bridge steps as fast as this "
        "recorder keeps up (roboloop_node_common.lockstep).",
    ),
    "autostart": (True, "Configure and activate at startup (no lifecycle manager needed)."),
}
ACK_QOS = QoSProfile(depth=10)  # step acknowledgements: reliable, volatile

_RELIABILITY = {
    ReliabilityPolicy.RELIABLE: RELIABLE,
    ReliabilityPolicy.BEST_EFFORT: BEST_EFFORT,
}
_DURABILITY = {
    DurabilityPolicy.TRANSIENT_LOCAL: TRANSIENT_LOCAL,
    DurabilityPolicy.VOLATILE: VOLATILE,
}
STOP_WAIT_S = 10.0  # ~/stop_episode waits this long for the commit before it answers
# Counters that make /diagnostics WARN once above zero (a failed write makes it ERROR).
WARN_COUNTERS = (
    "invalid_total",
    "stale_steps",
    "dropped_steps",
    "wrong_type_publishers",
    "time_jumps",
    "write_errors",
)


def message_class(type_name: str) -> type:
    """ "sensor_msgs/msg/Image" -> sensor_msgs.msg.Image."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def to_profile(choice: QosChoice) -> QoSProfile:
    return QoSProfile(
        depth=choice.depth,
        reliability=(
            ReliabilityPolicy.RELIABLE
            if choice.reliability == RELIABLE
            else ReliabilityPolicy.BEST_EFFORT
        ),
        durability=(
            DurabilityPolicy.TRANSIENT_LOCAL
            if choice.durability == TRANSIENT_LOCAL
            else DurabilityPolicy.VOLATILE
        ),
    )


@dataclass(frozen=True)
class RecorderParams:
    topics: list[str]
    types: list[str]
    keys: list[str]
    shapes: list[str]
    fields: list[str]
    spec_path: str
    spec_topic: str
    spec_timeout_s: float
    topic_namespace: str
    output_path: str
    env_args_json: str
    control_rate_hz: float
    real_time_factor: float
    max_age_s: float
    headerless_anchor_key: str
    headerless_anchor_tolerance_s: float
    headerless_offset_periods: float
    reference_key: str
    future_tolerance_s: float
    record_on_activate: bool
    restart_after_done: bool
    keep_partial_on_deactivate: bool
    max_episodes: int
    queue_size: int
    fsync: bool
    subscription_depth: int
    discovery_period_s: float
    diagnostics_period_s: float
    lockstep_ack: bool
    autostart: bool


def check_topic_name(topic: str) -> None:
    """rclpy's topic-name rule, as one RecorderConfigError line naming the topic."""
    if problem := topic_name_problem(topic):
        raise RecorderConfigError(f"topic {topic!r} is not a valid ROS topic name: {problem}")


class RecorderNode(TableParameters, LifecycleNode):
    PARAMETERS, Params = PARAMETERS, RecorderParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("recorder", **kwargs)
        self.declare_params()
        self.autostart = self.params.autostart
        self._session: RecordingSession | None = None
        self._writer: EpisodeWriterThread | None = None
        self._subs: dict[str, tuple[Any, QosChoice]] = {}
        self._active_timers: list[Any] = []
        self._episode_services: list[Any] = []
        self._diag_pub = None
        self._wrong_type_seen: set[tuple[str, tuple[int, ...]]] = set()
        self._acker: StepAcknowledger | None = None
        self._ack_pub: Any = None
        self._clock_jumps: Any = None  # lockstep_ack: the node clock's jump callback

    # -- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.reload_params()  # a parameter set while unconfigured counts from here
        try:
            plan = self._plan(p)
            specs = plan.topics
            for s in specs:  # before any file exists: subscribing would raise later
                check_topic_name(s.topic)
            obs_specs, action_spec = dataset_specs(specs)
            self._msg_classes = {s.topic: message_class(s.type) for s in specs}
            self._session = RecordingSession(
                specs, session_config(vars(p), plan), log=self._log_warning
            )
            # Everything is valid: only now touch the disk.
            output = Path(p.output_path)
            output.parent.mkdir(parents=True, exist_ok=True)
            self._writer = EpisodeWriterThread(
                output,
                obs_specs,
                action_spec,
                plan.env_args,
                queue_size=p.queue_size,
                fsync=p.fsync,
                on_episode_written=self._on_written,
                on_error=self._on_write_error,
            )
            self._session.attach(self._writer)
        except Exception as e:  # one line naming what is wrong, then stay unconfigured
            self.get_logger().error(f"configure failed: {e}")
            self._session = None
            return TransitionCallbackReturn.FAILURE
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._episode_services = [
            self.create_service(Trigger, "~/start_episode", self._srv_start),
            self.create_service(Trigger, "~/stop_episode", self._srv_stop),
        ]
        self.get_logger().info(
            f"configured: recording {len(specs)} topics to {self._writer.path} at "
            f"{plan.control_rate_hz:g} Hz control rate x real_time_factor "
            f"{plan.real_time_factor:g}: " + ", ".join(f"{s.topic} -> {s.key}" for s in specs)
        )
        return TransitionCallbackReturn.SUCCESS

    def _plan(self, p: RecorderParams) -> Recording:
        """The topic map and rates from the lists, spec_path or spec_topic (exactly one)."""
        sources = [name for name in ("spec_path", "spec_topic") if getattr(p, name)]
        changed = [n for n in TOPIC_LISTS if list(getattr(p, n)) != PARAMETERS[n][0]]
        if len(sources) > 1 or (sources and changed):
            raise RecorderConfigError(
                f"parameters {sources + changed} each give the topic map: set only one of "
                "spec_path, spec_topic or the topics/types/keys/shapes/fields lists"
            )
        env_args = env_args_from_json(p.env_args_json)
        spec: DatasetSpec | None = None
        if p.spec_path:
            spec, source = read_dataset_spec(p.spec_path), f"spec_path {p.spec_path}"
        elif p.spec_topic:
            spec = wait_for_spec(self, p.spec_topic, p.spec_timeout_s)
            source = f"spec on {p.spec_topic}"
        else:
            source = "env_args_json"
        lists = None if spec else [list(getattr(p, n)) for n in TOPIC_LISTS]
        return plan_recording(
            lists,
            spec,
            namespace=p.topic_namespace,
            env_args=env_args,
            control_rate_hz=p.control_rate_hz,
            real_time_factor=p.real_time_factor,
            source=source,
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._session is not None
        period = self._session.period  # stamp seconds per step
        # Alignment follows the node clock (/clock with use_sim_time); discovery and diagnostics
        # run on wall time: a sim waiting for this recorder's subscriptions has no clock yet.
        wall = Clock(clock_type=ClockType.STEADY_TIME)
        p = self.params
        self._active_timers = [
            self.create_timer(period / 2, self._on_tick),
            self.create_timer(p.discovery_period_s, self._discover, clock=wall),
            self.create_timer(p.diagnostics_period_s, self._publish_diagnostics, clock=wall),
        ]
        if p.lockstep_ack:
            specs = self._session.specs
            obs = [t for t, spec in specs.items() if spec.key.startswith("obs/")]
            self._acker = StepAcknowledger(obs, [t for t in specs if t not in obs])
            self._ack_pub = self.create_publisher(
                Header, step_ack_topic(p.topic_namespace), ACK_QOS
            )
            self._clock_jumps = self.get_clock().create_jump_callback(
                JumpThreshold(min_forward=Duration(nanoseconds=1), min_backward=None),
                post_callback=self._on_clock_jump,
            )
        self._discover()
        if self.params.record_on_activate:
            self._session.start_episode()
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_io(finish=True)
        self._close()
        return TransitionCallbackReturn.SUCCESS

    def _stop_io(self, finish: bool = False) -> None:
        for t in self._active_timers:
            self.destroy_timer(t)
        self._active_timers = []
        for sub, _ in self._subs.values():
            self.destroy_subscription(sub)
        self._subs = {}
        if self._ack_pub is not None:
            self._clock_jumps.unregister()
            self.destroy_publisher(self._ack_pub)
            self._ack_pub = self._acker = self._clock_jumps = None
        if self._session is not None and self._session.recording:
            if finish:
                self._session.finish(self._now())
            elif self.params.keep_partial_on_deactivate:
                self._session.stop_episode("deactivate")
            else:
                self._session.discard_episode()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for srv in self._episode_services:
            self.destroy_service(srv)
        self._episode_services = []
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        self._session = None
        self._wrong_type_seen.clear()

    # -- subscriptions with matching QoS -----------------------------------------------------
    def _discover(self) -> None:
        depth = self.params.subscription_depth
        for topic, cls in self._msg_classes.items():
            offered = []
            for info in self.get_publishers_info_by_topic(topic):
                if info.topic_type != self._session.specs[topic].type:
                    self._wrong_type(topic, info)  # DDS never delivers its messages to us
                    continue
                offered.append(
                    (
                        _RELIABILITY.get(info.qos_profile.reliability, BEST_EFFORT),
                        _DURABILITY.get(info.qos_profile.durability, VOLATILE),
                    )
                )
            current = self._subs.get(topic)
            if current is not None and not needs_resubscribe(current[1], offered):
                continue
            choice = choose_qos(offered, depth)
            if choice is None:
                continue
            if current is not None:
                self.get_logger().warning(
                    f"{topic}: a publisher offers QoS {offered} that the {current[1]} "
                    "subscription cannot match; resubscribing"
                )
                self.destroy_subscription(current[0])
            sub = self.create_subscription(
                cls, topic, lambda msg, t=topic: self._on_message(t, msg), to_profile(choice)
            )
            self._subs[topic] = (sub, choice)
            self.get_logger().info(
                f"subscribed {topic} ({choice.reliability}, {choice.durability})"
            )

    def _wrong_type(self, topic: str, info: Any) -> None:
        """Count a publisher of another type on a recorded topic once, and say so once."""
        seen = (topic, tuple(info.endpoint_gid))
        if seen in self._wrong_type_seen:
            return
        self._wrong_type_seen.add(seen)
        self._session.count_wrong_type_publisher(topic)
        node = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
        self.get_logger().warning(
            f"{topic}: publisher {node} sends {info.topic_type}, but the topic is recorded as "
            f"{self._session.specs[topic].type}: its messages are not recorded"
        )

    # -- callbacks: cheap only ---------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_message(self, topic: str, msg: Any) -> None:
        if self._session is not None:
            self._session.on_message(topic, msg, self._now())
            if self._acker is not None:
                self._acknowledge(topic, msg)

    def _acknowledge(self, topic: str, msg: Any) -> None:
        header = getattr(msg, "header", None)
        stamp = None if header is None else Time.from_msg(header.stamp).nanoseconds
        self._send_ack(self._acker.on_message(topic, stamp))

    def _on_clock_jump(self, jump: Any) -> None:
        if self._acker is not None:
            self._send_ack(self._acker.on_clock(self.get_clock().now().nanoseconds))

    def _send_ack(self, stamp_ns: int | None) -> None:
        if stamp_ns is not None and self._ack_pub is not None:
            # frame_id: the name the bridge finds this publisher under in the ROS graph
            stamp = Time(nanoseconds=stamp_ns).to_msg()
            self._ack_pub.publish(Header(stamp=stamp, frame_id=self.get_fully_qualified_name()))

    def _on_tick(self) -> None:
        if self._session is not None:
            self._session.tick(self._now())

    def _log_warning(self, text: str) -> None:
        # Not throttled here: the session throttles rejections per (topic, reason).
        self.get_logger().warning(text)

    # Both run on the writer thread; rclpy logging is thread-safe.
    def _on_written(self, name: str, steps: int, end_reason: str) -> None:
        # Its steps are intact, but an episode the env did not end (a stop signal, shutdown,
        # stop_episode, deactivate) is cut short: say so, as its `end_reason` does.
        cut = ""
        if not end_reason.startswith("done"):
            cut = f"; interrupted ({end_reason}), not ended by the env"
        self.get_logger().info(f"episode {name} written ({steps} steps{cut})")

    def _on_write_error(self, text: str) -> None:
        self.get_logger().error(f"{text}; recording stopped (start_episode retries)")

    def _srv_start(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        if self._session is None or not self._active_timers:
            response.success, response.message = False, "recorder is not active"
        else:
            response.success, response.message = self._session.start_episode()
        return response

    def _srv_stop(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        if self._session is None:
            response.success, response.message = False, "recorder is not configured"
        else:
            response.success, response.message = self._session.stop_episode(wait_s=STOP_WAIT_S)
        return response

    def _publish_diagnostics(self) -> None:
        if self._session is None or self._diag_pub is None:
            return
        c = self._session.counters()
        problems = sum(c[k] for k in WARN_COUNTERS)
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        message = (
            f"recording={self._session.recording} episodes={self._session.episodes_ended} "
            f"invalid={c['invalid_total']} stale={c['stale_steps']} dropped={c['dropped_steps']} "
            f"wrong_type={c['wrong_type_publishers']} time_jumps={c['time_jumps']} "
            f"write_errors={c['write_errors']}"
        )
        if self._session.write_error:
            level = DiagnosticStatus.ERROR
            message = f"recording stopped, write failed: {self._session.write_error}"
        values = flatten(c) | {
            "recording": self._session.recording,
            "queue_depth": self._writer.queue_depth() if self._writer else 0,
        }
        output = str(self.params.output_path)
        publish_status(self, self._diag_pub, "recorder", level, message, values, output)

    def bring_up(self) -> None:
        """autostart: configure (a failure ends the process with 1, unless a stop signal cut
        the configure short), then activate."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise SystemExit(0 if STOP.is_set() else 1)
        self.trigger_activate()

    def close(self) -> None:
        """Process exit: keep the open episode ("shutdown"), drain the writer, release the
        dataset."""
        self._stop_io(finish=True)
        self._close()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"topics": {"/sim/state": {"valid": 3}}} -> {"topics/sim/state/valid": 3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k.lstrip('/')}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def main(args: list[str] | None = None) -> int:
    # A write past the file-size limit must fail with EFBIG (reported, the episode dropped, the
    # committed ones kept) instead of killing the process with the open episode and no word:
    # SIGXFSZ's default action. Python ignores it already; say so here rather than rely on it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return run_node(RecorderNode, args, on_exit=RecorderNode.close)


if __name__ == "__main__":
    sys.exit(main())
