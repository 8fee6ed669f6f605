"""Sim bridge lifecycle node: thin ROS adapter over `SimRunner` (docs/ros_bridge_recorder.md).

configure: build the env (`sim.make`) and the action source, publishers, services; publish the
env's dataset spec (`sim.spec.env_spec`) latched on `<topic_namespace>/spec`.
activate: reset the first episode (once `wait_for_subscribers` readers are matched on every
output topic) and step on a timer at the env's control rate (1 / env.dt of simulated time) times
`real_time_factor` wall-clock steps per second, or, in `lockstep`, as soon as every reader that
acknowledges steps has received the last one (`roboloop_node_common.lockstep`).
deactivate: stop stepping. cleanup/shutdown: close the env.

Time: wall clock (stamps are the node's clock), or with `publish_clock` simulated time: it starts
at 0, advances env.dt per tick, is published on `/clock` (rosgraph_msgs/Clock) before the tick's
messages and stamps them; readers set `use_sim_time`.

Every observation key of the env is published on its topic by the one convention
(`roboloop_runtime.topics`: `<topic_namespace>/<key>`, JointState `position` for low-dim keys,
Image rgb8 for image keys). Each tick applies an action to the newest observation and publishes,
in this order, `applied_action` (header.stamp = stamp of that observation), `reward`, `done`,
then the next observation (every key, one shared stamp). Observations are stamped with the
scheduled time of the timer tick that produced them (a regular grid, even when a loaded machine
runs the callback late), so consumers that align by stamp see exactly one observation per period.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)
from rclpy.time import Time
from roboloop_node_common.lockstep import LockstepGate
from roboloop_node_common.robot_spec import SPEC_QOS, spec_message
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    TableParameters,
    publish_status,
    run_node,
)
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32, Header, String
from std_srvs.srv import Trigger

from episode_dataset.codecs import MessageError, decode_joint_state, encode_image
from episode_dataset.ranges import SEED, count, number
from episode_dataset.recording.alignment import FUTURE_STAMP, is_future_stamp
from episode_dataset.recording.params import RECORDING_PARAMETERS, json_object_parameter
from roboloop_runtime import check_control_rate
from roboloop_runtime.topics import (
    IMAGE_FEATURE,
    observation_topic,
    spec_topic,
    step_ack_topic,
    step_topic,
)
from roboloop_sim_bridge.runner import SimRunner, TickResult

# Named QoS decisions. Sensor streams: latest sample matters, loss tolerated (the recorder
# adapts to best effort). Per-step events (reward/done/applied action): reliable, a few deep.
# Commands: reliable, depth 1 (only the newest action is ever applied).
SENSOR_QOS = {"sensor_data": qos_profile_sensor_data, "reliable": qos_profile_system_default}
EVENT_QOS = QoSProfile(
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
COMMAND_QOS = QoSProfile(
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
PARAMETERS: dict[str, tuple[Any, ...]] = {
    "env_id": ("Reacher-v5", "Environment id registered by sim (sim.make)."),
    "env_kwargs_json": ("{}", "JSON dict of extra keyword arguments for sim.make."),
    "camera": (
        0,
        "Camera image size in pixels (square); 0 = no camera topic.",
        count(0, high=4096),
    ),
    "real_time_factor": (
        1.0,
        "Simulated seconds per wall-clock second: the env steps at its control rate "
        "(1 / env.dt) times this many steps per wall-clock second (< 1: slower than real time).",
        number(0.001, 1000),
    ),
    "seed": (0, "Episode i is reset with seed + i.", SEED),
    "action_source": ("expert", "topic | expert | random: where each step's action comes from."),
    "action_timeout_s": (
        0.5,
        "action_source=topic: older commands are ignored (zero action).",
        number(0.001, 3600),
    ),
    "auto_restart": (True, "Reset and continue after done (else pause until ~/start_episode)."),
    "max_episodes": (
        0,
        "Pause for good after this many episodes (0 = unlimited).",
        count(0, high=2**31 - 1),
    ),
    "run_on_activate": (True, "Start the first episode when activated."),
    "wait_for_subscribers": (
        0,
        "Start the first episode once every output topic has this many.",
        count(0, high=1000),
    ),
    "wait_for_action_publisher": (
        True,
        "action_source=topic: start the first episode only once the action topic has a "
        "publisher, so no episode begins with zero actions while the policy is loading.",
    ),
    "start_delay_s": (
        1.5,
        "After wait_for_subscribers is met, wait this long: a best-effort reader drops samples "
        "from a writer it has not matched yet, although the writer already matched it.",
        number(0, 3600),
    ),
    "sensor_qos": ("sensor_data", "QoS of observations: sensor_data (best effort) | reliable."),
    "frame_id": ("sim", "header.frame_id of published messages."),
    "topic_namespace": (
        "/sim",
        "Every topic is <namespace>/<name> (roboloop_runtime.topics): one per observation key, "
        "action, applied_action, reward, done, spec.",
    ),
    "publish_clock": (
        False,
        "Keep simulated time (from 0, env.dt per tick), publish it on /clock before each tick's "
        "messages and stamp them with it; readers set use_sim_time. The spec then says "
        "real_time_factor 1 (robot seconds per stamp second).",
    ),
    "lockstep": (
        False,
        "publish_clock: step as soon as every node acknowledging on <namespace>/step_ack has "
        "received the last step and (action_source=topic) the action stamped with the newest "
        "observation has arrived, instead of real_time_factor x the control rate.",
    ),
    "lockstep_timeout_s": (
        2.0,
        "lockstep: wall-clock seconds to wait for acknowledgements or the action, then step "
        "anyway (counted: lockstep_timeouts; action_source=topic applies the zero action).",
        number(0.01, 3600),
    ),
    "wait_for_ackers": (
        0,
        "lockstep: the first episode also waits until <namespace>/step_ack has this many "
        "publishers (e.g. 1: the recorder).",
        count(0, high=1000),
    ),
    "future_tolerance_s": (
        RECORDING_PARAMETERS["future_tolerance_s"][0],
        "action_source=topic: commands stamped more than this ahead of the node clock at "
        "arrival are rejected (counted as future_stamp), the recorder's rule.",
        RECORDING_PARAMETERS["future_tolerance_s"][2],
    ),
    "diagnostics_period_s": (1.0, "Period of /diagnostics publishing.", number(0.01, 3600)),
    "autostart": (True, "Configure and activate at startup (no lifecycle manager needed)."),
}
LOCKSTEP_POLL_S = 0.05  # lockstep: wall period of the start, timeout and ack-reader checks
CLOCK_RESEND_S = 0.2  # lockstep: /clock is sent again while a reader's acknowledgement is missing
# /clock: reliable, shallow (rclpy's time source reads it best effort, depth 1: only the newest).
CLOCK_QOS = QoSProfile(
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)


@dataclass(frozen=True)
class SimBridgeParams:
    env_id: str
    env_kwargs_json: str
    camera: int
    real_time_factor: float
    seed: int
    action_source: str
    action_timeout_s: float
    auto_restart: bool
    max_episodes: int
    run_on_activate: bool
    wait_for_subscribers: int
    wait_for_action_publisher: bool
    start_delay_s: float
    sensor_qos: str
    frame_id: str
    topic_namespace: str
    publish_clock: bool
    lockstep: bool
    lockstep_timeout_s: float
    wait_for_ackers: int
    future_tolerance_s: float
    diagnostics_period_s: float
    autostart: bool


def sensor_qos_profile(name: str) -> Any:
    """The observations' QoS named by the `sensor_qos` parameter, or one ValueError line."""
    if name not in SENSOR_QOS:
        raise ValueError(f"parameter sensor_qos {name!r} is not one of {sorted(SENSOR_QOS)}")
    return SENSOR_QOS[name]


class SimBridgeNode(TableParameters, LifecycleNode):
    PARAMETERS, Params = PARAMETERS, SimBridgeParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_bridge", **kwargs)
        self.declare_params()
        self.autostart = self.params.autostart
        self._runner: SimRunner | None = None
        self._period_s = 0.0  # wall-clock seconds per step
        self._features: dict[str, str] = {}
        self._obs_pubs: dict[str, Any] = {}
        self._pubs: dict[str, Any] = {}
        self._names: dict[str, list[str]] = {}
        self._active_timers: list[Any] = []
        self._entities: list[Any] = []
        self._action: tuple[np.ndarray, float] | None = None  # (action, arrival time)
        self._obs_stamps: dict[int, Any] = {}
        self._counts = {
            "invalid_actions": 0,
            "action_timeouts": 0,
            "overruns": 0,
            "clock_resends": 0,
        }
        # per topic and reason, as the recorder names them: topics/sim/action/invalid/<reason>
        self._invalid_by_reason: dict[str, int] = {}
        self._latency: list[float] = []
        self._tick_time: list[float] = []
        self._started = False
        self._ready_since: float | None = None
        self._step_timer: Any = None
        self._last_stamp_ns = 0
        self._sim_ns = 0  # publish_clock: simulated time of the last tick
        self._sim_period_ns = 0  # env.dt
        self._gate = LockstepGate()
        self._kick: Any = None  # lockstep: guard condition that runs the next step
        self._phase_at = 0.0  # lockstep: monotonic time the current phase began
        self._clock_sent_at = 0.0  # monotonic time /clock was last published
        self._pending: Callable[[], None] | None = None  # lockstep: publishes the step's messages
        self._action_stamp_ns = -1  # stamp of the newest valid action command
        self._reset_requested = False  # timer mode: ~/reset mid-episode, done at the next tick

    # -- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.reload_params()  # a parameter set while unconfigured counts from here
        try:
            from sim.spec import env_spec, observation_features

            sensor_qos = sensor_qos_profile(p.sensor_qos)
            self._runner = SimRunner(
                p.env_id,
                seed=p.seed,
                action_source=p.action_source,
                camera=p.camera,
                auto_restart=p.auto_restart,
                max_episodes=p.max_episodes,
                env_kwargs=json_object_parameter("env_kwargs_json", p.env_kwargs_json),
            )
            spec = env_spec(self._runner.env, p.env_id, p.camera)
            rate_hz = spec.env_args["control_rate_hz"]
            wall_rate_hz = check_control_rate(
                rate_hz * p.real_time_factor, "control rate x real_time_factor"
            )
            if p.lockstep and not p.publish_clock:
                raise ValueError("lockstep needs publish_clock: true (steps run on sim time)")
            self._features = observation_features(self._runner.env)
            ns = p.topic_namespace
            topics = {key: observation_topic(key, ns) for key in self._features}
            events = {name: step_topic(name, ns) for name in ("applied_action", "reward", "done")}
            action_topic, announce_topic = step_topic("action", ns), spec_topic(ns)
        except Exception as e:  # one line, stay unconfigured
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            self._close()
            return TransitionCallbackReturn.FAILURE
        self._period_s = 1.0 / wall_rate_hz
        self._sim_period_ns = round(1e9 / rate_hz)
        self._sim_ns = 0
        self._obs_pubs = {
            key: self.create_publisher(
                Image if self._features[key] == IMAGE_FEATURE else JointState, topic, sensor_qos
            )
            for key, topic in topics.items()
        }
        self._names = {
            key: [f"{key}_{i}" for i in range(int(np.prod(s.shape)))]
            for key, s in spec.obs_specs.items()
            if self._features[key] != IMAGE_FEATURE
        }
        self._pubs = {
            "applied_action": self.create_publisher(
                JointState, events["applied_action"], EVENT_QOS
            ),
            "reward": self.create_publisher(Float32, events["reward"], EVENT_QOS),
            "done": self.create_publisher(Bool, events["done"], EVENT_QOS),
            "spec": self.create_publisher(String, announce_topic, SPEC_QOS),
        }
        if p.publish_clock:
            self._pubs["clock"] = self.create_publisher(Clock, "/clock", CLOCK_QOS)
        # Stamps on sim time: one robot second per stamp second, whatever the pace.
        stamp_rtf = 1.0 if p.publish_clock else p.real_time_factor
        self._pubs["spec"].publish(String(data=spec_message(spec, topics, stamp_rtf)))
        self._diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._action_topic = action_topic
        self._ack_topic = step_ack_topic(ns)
        self._gate = LockstepGate()
        self._entities = [
            self.create_subscription(JointState, action_topic, self._on_action, COMMAND_QOS),
            self.create_subscription(Header, self._ack_topic, self._on_ack, EVENT_QOS),
            self.create_service(Trigger, "~/reset", self._srv_reset),
            self.create_service(Trigger, "~/start_episode", self._srv_start),
        ]
        self._action_names = [f"action_{i}" for i in range(self._runner.action_dim)]
        pace = (
            "lockstep on sim time (/clock)"
            if p.lockstep
            else f"{rate_hz:g} Hz control rate x real_time_factor {p.real_time_factor:g} = "
            f"{wall_rate_hz:g} steps per wall-clock second"
            + (", sim time on /clock" if p.publish_clock else "")
        )
        self.get_logger().info(
            f"configured {p.env_id} action_source={p.action_source} camera={p.camera}: "
            f"{pace}; observations " + ", ".join(f"{k} -> {t}" for k, t in topics.items())
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        diagnostics = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        if p.lockstep:
            self._kick = self.create_guard_condition(self._lockstep_tick)
            self._active_timers = [self.create_timer(LOCKSTEP_POLL_S, self._lockstep_poll)]
        else:
            self._step_timer = self.create_timer(self._period_s, self._on_tick)
            self._active_timers = [self._step_timer]
        self._active_timers.append(diagnostics)
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_timers()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_timers()
        self._close()
        return TransitionCallbackReturn.SUCCESS

    def _stop_timers(self) -> None:
        for t in self._active_timers:
            self.destroy_timer(t)
        self._active_timers = []
        self._step_timer = None
        self._reset_requested = False
        if self._kick is not None:
            self.destroy_guard_condition(self._kick)
            self._kick = None

    def _close(self) -> None:
        for e in self._entities:
            if hasattr(e, "srv_type"):
                self.destroy_service(e)
            else:
                self.destroy_subscription(e)
        self._entities = []
        for pub in [*self._pubs.values(), *self._obs_pubs.values()]:
            self.destroy_publisher(pub)
        self._pubs, self._obs_pubs = {}, {}
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    # -- stepping --------------------------------------------------------------------------
    def _ready_to_start(self) -> bool:
        need = self.params.wait_for_subscribers
        outputs = [*self._obs_pubs.values(), *(self._pubs[k] for k in STEP_OUTPUTS)]
        if not all(pub.get_subscription_count() >= need for pub in outputs):
            return False
        runner = self._runner
        if (
            runner is not None
            and runner.uses_external_actions
            and self.params.wait_for_action_publisher
        ):
            if self.count_publishers(self._action_topic) < 1:
                return False
        if self.params.lockstep:
            return self.count_publishers(self._ack_topic) >= self.params.wait_for_ackers
        return True

    def _starting(self) -> bool:
        """Before the first episode: True once it may begin (readers matched, then the delay)."""
        if not (self.params.run_on_activate and self._ready_to_start()):
            return False
        if self._ready_since is None:
            self._ready_since = time.monotonic()
        return time.monotonic() - self._ready_since >= self.params.start_delay_s

    def _on_tick(self) -> None:
        """Timer mode: the first reset once ready, else a step (and a reset after done)."""
        runner = self._runner
        if runner is None:
            return
        t0 = time.perf_counter()
        if not self._started:
            if self._starting():
                self._started = True
                obs = runner.reset()
                self._advance_clock()
                self._publish_obs(*obs)
            return
        truncate, self._reset_requested = self._reset_requested, False
        result = runner.tick(self._fresh_action(), truncate=truncate)
        if result is None:
            return
        if truncate:  # ~/reset mid-episode: this truncated step ends it, the next one starts
            runner.restart_pending = True
        self._advance_clock()
        self._publish_tick(result, reason="reset" if truncate else "")
        dt = time.perf_counter() - t0
        self._tick_time.append(dt)
        if dt > self._period_s:
            self._counts["overruns"] += 1

    def _publish_tick(self, result: TickResult, reason: str = "") -> None:
        # Step outputs go out first: the reset below (and its render) must not delay them.
        self._publish_step(result, reason)
        runner = self._runner
        if runner is not None and runner.restart_pending:
            self._publish_obs(*runner.reset())

    # -- simulated time and lockstep -------------------------------------------------------
    def _advance_clock(self) -> None:
        """publish_clock: one env.dt later, on /clock before the tick's messages go out."""
        if not self.params.publish_clock:
            return
        self._sim_ns += self._sim_period_ns
        self._send_clock()

    def _send_clock(self) -> None:
        msg = Clock()
        msg.clock = Time(nanoseconds=self._sim_ns).to_msg()
        self._pubs["clock"].publish(msg)
        self._clock_sent_at = time.monotonic()

    def _lockstep_poll(self) -> None:
        """Wall-clock housekeeping: the readers that acknowledge (from the ROS graph), the
        start of the first episode, and phases whose acknowledgements are overdue."""
        self._gate.set_readers(
            f"{i.node_namespace.rstrip('/')}/{i.node_name}"
            for i in self.get_publishers_info_by_topic(self._ack_topic)
        )
        self._lockstep_tick()

    def _lockstep_tick(self) -> None:
        """Run the two lockstep phases (roboloop_node_common.lockstep) as far as the readers
        and the policy's action allow; with nobody to wait for, go on at once."""
        runner = self._runner
        if runner is None or not self._phase_done(runner):
            return
        t0 = time.perf_counter()
        if self._pending is not None:  # phase 1 done: every reader's clock is at t_k
            publish, self._pending = self._pending, None
            publish()
        elif not self._started:
            if not self._starting():
                return
            self._started = True
            self._advance_clock()
            self._pending = functools.partial(self._publish_obs, *runner.reset())
        elif runner.running:  # phase 2 done: the next step's clock, then its env work
            action = self._fresh_action()
            self._advance_clock()
            result = runner.tick(action)
            assert result is not None  # running
            self._pending = functools.partial(self._publish_tick, result)
        else:
            return
        self._gate.begin(self._sim_ns)
        self._phase_at = time.monotonic()
        self._tick_time.append(time.perf_counter() - t0)
        if not self._gate.readers and self._kick is not None:
            if self._pending is not None or not runner.uses_external_actions:
                self._kick.trigger()  # nobody to wait for: as fast as the executor runs

    def _phase_done(self, runner: SimRunner) -> bool:
        """Every reader acknowledged the current phase (and, before a step with actions from
        the topic, the action for the newest observation is here), or the deadline passed."""
        if not self._started or (self._pending is None and not runner.running):
            return True  # nothing published to wait for
        waiting = self._gate.waiting_for()
        if self._pending is None and runner.uses_external_actions:
            if self._action_stamp_ns < self._gate.step_ns:
                waiting.append(self._action_topic)
        if not waiting:
            return True
        now = time.monotonic()
        if self._pending is not None and now - self._clock_sent_at > CLOCK_RESEND_S:
            # rclpy reads /clock best effort: a reader that lost t_k gets it again (one that
            # has it sees no jump and stays quiet)
            self._counts["clock_resends"] += 1
            self._send_clock()
        if now - self._phase_at < self.params.lockstep_timeout_s:
            return False
        self._gate.timeouts += 1
        self.get_logger().warning(
            f"lockstep: nothing from {waiting} within {self.params.lockstep_timeout_s:g} s "
            f"(sim time {self._sim_ns * 1e-9:.3f} s): going on",
            throttle_duration_sec=2.0,
        )
        return True

    def _on_ack(self, msg: Header) -> None:
        self._gate.acknowledge(msg.frame_id, Time.from_msg(msg.stamp).nanoseconds)
        if self._kick is not None:
            self._kick.trigger()

    def _fresh_action(self) -> np.ndarray | None:
        if self._action is None:
            if self._runner is not None and self._runner.uses_external_actions:
                self._counts["action_timeouts"] += 1
            return None
        action, arrival = self._action
        stale = (
            self._action_stamp_ns < self._gate.step_ns  # lockstep: for an older observation
            if self.params.lockstep
            else time.monotonic() - arrival > self.params.action_timeout_s
        )
        if stale:
            self._counts["action_timeouts"] += 1
            return None
        return action

    def _publish_step(self, r: TickResult, reason: str = "") -> None:
        stamp = self._obs_stamps.pop(r.applied_to, None)
        msg = JointState()
        msg.header.frame_id = self.params.frame_id
        if stamp is not None:
            msg.header.stamp = stamp
        msg.name = self._action_names
        msg.effort = r.applied_action.astype(float).tolist()
        self._pubs["applied_action"].publish(msg)
        self._pubs["reward"].publish(Float32(data=r.reward))
        self._pubs["done"].publish(Bool(data=r.done))
        if r.done:
            how = f"ended by {reason}" if reason else "done"
            self.get_logger().info(
                f"episode {r.episode} {how} after {r.episode_steps} steps (seed "
                f"{self.params.seed + r.episode})"
            )
        if r.obs is not None and r.obs_id is not None:
            self._publish_obs(r.obs, r.obs_id)

    def _stamp(self, in_tick: bool) -> Any:
        """Scheduled time of the running timer tick (now, outside a tick); strictly increasing.
        publish_clock: the simulated time (a reset outside a tick takes the next period)."""
        if self.params.publish_clock:
            if not in_tick:
                self._advance_clock()
            self._last_stamp_ns = self._sim_ns
            return Time(nanoseconds=self._sim_ns).to_msg()
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = now_ns
        until = self._step_timer.time_until_next_call() if self._step_timer else None
        period_ns = int(1e9 * self._period_s)
        if in_tick and until is not None and until <= period_ns:
            # `until` < 0 when the executor runs behind: ticks then fire back to back, each
            # still stamped with its own slot of the grid.
            stamp_ns = now_ns + until - period_ns
        stamp_ns = max(stamp_ns, self._last_stamp_ns + 1)
        self._last_stamp_ns = stamp_ns
        return Time(nanoseconds=stamp_ns).to_msg()

    def _publish_obs(self, obs: dict[str, np.ndarray], obs_id: int, in_tick: bool = True) -> None:
        stamp = self._stamp(in_tick)
        self._obs_stamps = {obs_id: stamp}  # only the newest observation can get an action
        for key, pub in self._obs_pubs.items():
            if self._features[key] == IMAGE_FEATURE:
                msg = Image()
                # data as bytes, never a numpy array (us vs ms)
                msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(
                    np.asarray(obs[key], dtype=np.uint8)
                )
            else:
                msg = JointState()
                msg.name = self._names[key]
                msg.position = np.asarray(obs[key], dtype=float).ravel().tolist()
            msg.header.stamp = stamp
            msg.header.frame_id = self.params.frame_id
            pub.publish(msg)

    # -- subscriptions / services ------------------------------------------------------------
    def _on_action(self, msg: JointState) -> None:
        if self._runner is None:
            return
        try:
            action = decode_joint_state(msg, "effort", self._runner.action_dim)
            stamp = Time.from_msg(msg.header.stamp).nanoseconds
            sim = self.params.publish_clock
            now_ns = self._sim_ns if sim else self.get_clock().now().nanoseconds
            tolerance = self.params.future_tolerance_s
            if is_future_stamp(stamp * 1e-9, now_ns * 1e-9, tolerance):
                raise MessageError(
                    FUTURE_STAMP,
                    f"stamp {stamp * 1e-9:.3f} s is more than future_tolerance_s {tolerance:g} "
                    f"ahead of the node clock ({now_ns * 1e-9:.3f} s)",
                )
        except MessageError as e:
            self._counts["invalid_actions"] += 1
            key = f"topics/{self._action_topic.lstrip('/')}/invalid/{e.reason}"
            self._invalid_by_reason[key] = self._invalid_by_reason.get(key, 0) + 1
            self.get_logger().warning(
                f"{self._action_topic}: rejected: {e}", throttle_duration_sec=2.0
            )
            return
        self._action = (action, time.monotonic())
        self._action_stamp_ns = stamp
        if stamp > 0:
            self._latency.append((now_ns - stamp) * 1e-9)
        if self._kick is not None:
            self._kick.trigger()

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        if self._runner is None or not self._active_timers:
            response.success, response.message = False, "sim_bridge is not active"
            return response
        runner = self._runner
        episode = runner.episode
        if self._started and runner.running and not self.params.lockstep:
            # Mid-episode, timer mode: the next tick applies the action for the newest
            # observation as a truncated step (done=true: every consumer ends the episode as
            # after a time limit) and starts the next episode on the grid, like a natural done.
            self._reset_requested = True
            response.success = True
            response.message = (
                f"episode {episode + 1} (seed {runner.seed + episode + 1}) at the next step; "
                f"episode {episode} ends truncated"
            )
            return response
        pending, self._pending = self._pending, None
        if pending is not None and getattr(pending, "func", None) == self._publish_tick:
            # lockstep: the env already took this step; its messages go out first (a done
            # among them ends the episode as usual, and auto_restart starts the next)
            pending()
        # (a pending first observation of an episode was never published: it is dropped)
        if self._started and runner.episode != episode and runner.running:
            pass  # that step ended the episode and the next one has just begun
        else:
            if self._started and runner.running and runner.obs_id in self._obs_stamps:
                # Mid-episode: end it for every consumer as the bridge ends episodes otherwise,
                # with a step (the action for the newest observation) published as truncated
                # (done=true), then start the next one.
                result = runner.tick(self._fresh_action(), truncate=True)
                assert result is not None  # running
                self._advance_clock()
                self._publish_step(result, reason="reset")
            self._started = True
            self._publish_obs(*runner.reset(), in_tick=False)
        self._action = None
        response.success = True
        response.message = f"episode {runner.episode} (seed {runner.seed + runner.episode})"
        return response

    def _srv_start(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        if self._runner is not None and self._runner.running:
            response.success, response.message = False, "an episode is already running"
            return response
        return self._srv_reset(request, response)

    def _publish_diagnostics(self) -> None:
        runner = self._runner
        if runner is None:
            return
        values = {
            "episode": runner.episode,
            "running": runner.running,
            "total_steps": runner.total_steps,
            **self._counts,
            **self._invalid_by_reason,
        }
        if self.params.publish_clock:
            values["sim_time_s"] = round(self._sim_ns * 1e-9, 6)
        if self.params.lockstep:
            values["lockstep_timeouts"] = self._gate.timeouts
            values["lockstep_readers"] = ",".join(sorted(self._gate.readers))
        if self._tick_time:
            values["tick_ms_mean"] = round(1e3 * float(np.mean(self._tick_time)), 3)
            self._tick_time = []
        if self._latency:
            values["obs_to_action_latency_ms_mean"] = round(1e3 * float(np.mean(self._latency)), 3)
            self._latency = []
        problems = self._counts["invalid_actions"] + self._counts["overruns"] + self._gate.timeouts
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        message = f"episode={runner.episode} steps={runner.total_steps}"
        publish_status(self, self._diag, "sim_bridge", level, message, values, self.params.env_id)

    def bring_up(self) -> None:
        """autostart: configure (a failure ends the process with 1), then activate."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise SystemExit(1)
        self.trigger_activate()

    def close(self) -> None:
        """Process exit: stop stepping, close the env."""
        self._stop_timers()
        self._close()


STEP_OUTPUTS = ("applied_action", "reward", "done")  # with the observations: wait_for_subscribers


def main(args: list[str] | None = None) -> int:
    return run_node(SimBridgeNode, args, on_exit=SimBridgeNode.close)


if __name__ == "__main__":
    sys.exit(main())
