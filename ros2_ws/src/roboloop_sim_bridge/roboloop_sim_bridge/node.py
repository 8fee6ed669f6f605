"""Sim bridge lifecycle node: thin ROS adapter over `SimRunner` (docs/ros_bridge_recorder.md).

configure: build the env (`sim.make`) and the action source, publishers, services; publish the
env's dataset spec (`sim.spec.env_spec`) latched on `<topic_namespace>/spec`.
activate: reset the first episode (once `wait_for_subscribers` readers are matched on every
output topic) and step on a timer at the env's control rate (1 / env.dt of simulated time) times
`real_time_factor` wall-clock steps per second. deactivate: stop the timer.
cleanup/shutdown: close the env.

Every observation key of the env is published on its topic by the one convention
(`roboloop_runtime.topics`: `<topic_namespace>/<key>`, JointState `position` for low-dim keys,
Image rgb8 for image keys). Each tick applies an action to the newest observation and publishes,
in this order, `applied_action` (header.stamp = stamp of that observation), `reward`, `done`,
then the next observation (every key, one shared stamp). Observations are stamped with the
scheduled time of the timer tick that produced them (a regular grid, even when a loaded machine
runs the callback late), so consumers that align by stamp see exactly one observation per period.
"""

from __future__ import annotations

import json
import sys
import time
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
from roboloop_node_common.robot_spec import SPEC_QOS, spec_message
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    TableParameters,
    publish_status,
    run_node,
)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32, String
from std_srvs.srv import Trigger

from episode_dataset.codecs import MessageError, decode_joint_state, encode_image
from roboloop_runtime import check_control_rate
from roboloop_runtime.topics import (
    IMAGE_FEATURE,
    observation_topic,
    spec_topic,
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
PARAMETERS: dict[str, tuple[Any, str]] = {
    "env_id": ("Reacher-v5", "Environment id registered by sim (sim.make)."),
    "env_kwargs_json": ("{}", "JSON dict of extra keyword arguments for sim.make."),
    "camera": (0, "Camera image size in pixels (square); 0 = no camera topic."),
    "real_time_factor": (
        1.0,
        "Simulated seconds per wall-clock second: the env steps at its control rate "
        "(1 / env.dt) times this many steps per wall-clock second (< 1: slower than real time).",
    ),
    "seed": (0, "Episode i is reset with seed + i."),
    "action_source": ("expert", "topic | expert | random: where each step's action comes from."),
    "action_timeout_s": (0.5, "action_source=topic: older commands are ignored (zero action)."),
    "auto_restart": (True, "Reset and continue after done (else pause until ~/start_episode)."),
    "max_episodes": (0, "Pause for good after this many episodes (0 = unlimited)."),
    "run_on_activate": (True, "Start the first episode when activated."),
    "wait_for_subscribers": (0, "Start the first episode once every output topic has this many."),
    "wait_for_action_publisher": (
        True,
        "action_source=topic: start the first episode only once the action topic has a "
        "publisher, so no episode begins with zero actions while the policy is loading.",
    ),
    "start_delay_s": (
        1.5,
        "After wait_for_subscribers is met, wait this long: a best-effort reader drops samples "
        "from a writer it has not matched yet, although the writer already matched it.",
    ),
    "sensor_qos": ("sensor_data", "QoS of observations: sensor_data (best effort) | reliable."),
    "frame_id": ("sim", "header.frame_id of published messages."),
    "topic_namespace": (
        "/sim",
        "Every topic is <namespace>/<name> (roboloop_runtime.topics): one per observation key, "
        "action, applied_action, reward, done, spec.",
    ),
    "diagnostics_period_s": (1.0, "Period of /diagnostics publishing."),
    "autostart": (True, "Configure and activate at startup (no lifecycle manager needed)."),
}


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
    diagnostics_period_s: float
    autostart: bool


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
        }
        self._latency: list[float] = []
        self._tick_time: list[float] = []
        self._started = False
        self._ready_since: float | None = None
        self._step_timer: Any = None
        self._last_stamp_ns = 0

    # -- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.reload_params()  # a parameter set while unconfigured counts from here
        try:
            from sim.spec import env_spec, observation_features

            self._runner = SimRunner(
                p.env_id,
                seed=p.seed,
                action_source=p.action_source,
                camera=p.camera,
                auto_restart=p.auto_restart,
                max_episodes=p.max_episodes,
                env_kwargs=json.loads(p.env_kwargs_json),
            )
            spec = env_spec(self._runner.env, p.env_id, p.camera)
            rate_hz = spec.env_args["control_rate_hz"]
            wall_rate_hz = check_control_rate(
                rate_hz * p.real_time_factor, "control rate x real_time_factor"
            )
            sensor_qos = SENSOR_QOS[p.sensor_qos]
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
        self._pubs["spec"].publish(String(data=spec_message(spec, topics, p.real_time_factor)))
        self._diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._action_topic = action_topic
        self._entities = [
            self.create_subscription(JointState, action_topic, self._on_action, COMMAND_QOS),
            self.create_service(Trigger, "~/reset", self._srv_reset),
            self.create_service(Trigger, "~/start_episode", self._srv_start),
        ]
        self._action_names = [f"action_{i}" for i in range(self._runner.action_dim)]
        self.get_logger().info(
            f"configured {p.env_id} action_source={p.action_source} camera={p.camera}: "
            f"{rate_hz:g} Hz control rate x real_time_factor {p.real_time_factor:g} = "
            f"{wall_rate_hz:g} steps per wall-clock second; observations "
            + ", ".join(f"{k} -> {t}" for k, t in topics.items())
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._step_timer = self.create_timer(self._period_s, self._on_tick)
        self._active_timers = [
            self._step_timer,
            self.create_timer(self.params.diagnostics_period_s, self._publish_diagnostics),
        ]
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
            return self.count_publishers(self._action_topic) >= 1
        return True

    def _on_tick(self) -> None:
        runner = self._runner
        if runner is None:
            return
        t0 = time.perf_counter()
        if not self._started:
            if not (self.params.run_on_activate and self._ready_to_start()):
                return
            if self._ready_since is None:
                self._ready_since = time.monotonic()
            if time.monotonic() - self._ready_since < self.params.start_delay_s:
                return
            self._started = True
            self._publish_obs(*runner.reset())
            return
        result = runner.tick(self._fresh_action())
        if result is None:
            return
        # Step outputs go out first: the reset below (and its render) must not delay them.
        self._publish_step(result)
        if runner.restart_pending:
            self._publish_obs(*runner.reset())
        dt = time.perf_counter() - t0
        self._tick_time.append(dt)
        if dt > self._period_s:
            self._counts["overruns"] += 1

    def _fresh_action(self) -> np.ndarray | None:
        if self._action is None:
            if self._runner is not None and self._runner.uses_external_actions:
                self._counts["action_timeouts"] += 1
            return None
        action, arrival = self._action
        if time.monotonic() - arrival > self.params.action_timeout_s:
            self._counts["action_timeouts"] += 1
            return None
        return action

    def _publish_step(self, r: TickResult) -> None:
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
            self.get_logger().info(
                f"episode {r.episode} done after {r.episode_steps} steps (seed "
                f"{self.params.seed + r.episode})"
            )
        if r.obs is not None and r.obs_id is not None:
            self._publish_obs(r.obs, r.obs_id)

    def _stamp(self, in_tick: bool) -> Any:
        """Scheduled time of the running timer tick (now, outside a tick); strictly increasing."""
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
        except MessageError as e:
            self._counts["invalid_actions"] += 1
            self.get_logger().warning(
                f"{self._action_topic}: rejected: {e}", throttle_duration_sec=2.0
            )
            return
        self._action = (action, time.monotonic())
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        if stamp > 0:
            self._latency.append(self.get_clock().now().nanoseconds * 1e-9 - stamp * 1e-9)

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        if self._runner is None or not self._active_timers:
            response.success, response.message = False, "sim_bridge is not active"
            return response
        self._started = True
        self._action = None
        self._publish_obs(*self._runner.reset(), in_tick=False)
        response.success = True
        response.message = (
            f"episode {self._runner.episode} (seed {self._runner.seed + self._runner.episode})"
        )
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
        }
        if self._tick_time:
            values["tick_ms_mean"] = round(1e3 * float(np.mean(self._tick_time)), 3)
            self._tick_time = []
        if self._latency:
            values["obs_to_action_latency_ms_mean"] = round(1e3 * float(np.mean(self._latency)), 3)
            self._latency = []
        problems = self._counts["invalid_actions"] + self._counts["overruns"]
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
