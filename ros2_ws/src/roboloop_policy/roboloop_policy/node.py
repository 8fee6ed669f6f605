"""`policy_node`: lifecycle adapter running an exported ONNX policy on observation topics.

    policy_node --ros-args --params-file config/policy.yaml -p model_path:=policy.onnx

configure: load the model + metadata, bind observation topics to model keys, subscribe.
activate: start the control timer (inference runs there, never in subscription callbacks) and
publish actions. deactivate: stop the timer. cleanup: drop subscriptions and the model.
A failed configure logs one line and leaves the node alive and unconfigured. Lifecycle,
configure failures, faults and /diagnostics are the `roboloop_node_common.model_node.ModelNode`
skeleton's; the logic lives in ROS-free modules: `observations` (decoding, binding), `control`
(acting buffer, watchdog) and `safety` (action and observation checks).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from roboloop_node_common.faults import OK, WARN
from roboloop_node_common.model_node import ModelNode, ModelParams, model_parameters
from roboloop_node_common.robot_spec import wait_for_spec
from roboloop_node_common.runtime import run_node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from episode_dataset.codecs import IMAGE, MessageError, ns_to_stamp
from episode_dataset.ranges import SEED, number
from episode_dataset.recording.params import RECORDING_PARAMETERS
from roboloop_policy.control import STALE, TRIGGERS, Command, PolicyLoop
from roboloop_policy.observations import (
    REAL_TIME_FACTOR,
    BindingError,
    ObservationBinding,
    bind_observations,
    check_against_spec,
    convention_topic_map,
    decode,
    observation_stamp,
    real_time_factor_of,
)
from roboloop_policy.safety import DEFAULT_MAX_NORMALIZED, ObservationRange
from roboloop_runtime import ObsSpec, OnnxPolicy, check_control_rate

NODE_NAME = "policy_node"
# Observations are sensor streams: best effort, shallow; the newest sample is all we use.
OBSERVATION_QOS = qos_profile_sensor_data
# Episode ends: reliable, as the bridge sends them (its per-step events).
EPISODE_EVENT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Commands: reliable, depth 1 (a queued old command is worse than none).
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


def observation_parameters(safe_action_help: str) -> dict[str, tuple[Any, ...]]:
    """The parameters of a node whose loop is fed by observation topics (`ObservingNode`: the
    policy and world-model nodes): the topic map, the robot spec, the control rate, staleness
    and the observation range check. `safe_action` says what this node does while stale."""
    return {
        "observation_namespace": (
            "",
            "'' = observation_topics/observation_keys map topics to keys; else every model "
            "observation key is read from <namespace>/<key> (roboloop_runtime.topics, the sim "
            "bridge's names) and those two lists must stay at their defaults",
        ),
        "observation_topics": (
            ["/sim/state"],
            "observation topics, parallel to observation_keys",
        ),
        "observation_keys": (["state"], "model observation key fed by each observation topic"),
        "joint_state_field": ("position", "JointState field holding vector observations"),
        "control_rate_hz": (
            0.0,
            "control steps per second of robot time; 0 = control_rate_hz from model metadata",
            number(0, 1000),
        ),
        "real_time_factor": (
            0.0,
            "robot seconds per wall-clock second (a sim run slower than real time): the "
            "control timer ticks control_rate_hz x this per wall-clock second; 0 = the "
            "spec_topic's, else 1",
            REAL_TIME_FACTOR[2],
        ),
        "spec_topic": (
            "",
            "latched spec of the robot (a sim bridge's /sim/spec) to take real_time_factor "
            "from and check the model's observations against; '' = not used",
        ),
        "spec_timeout_s": (
            30.0,
            "spec_topic: configure fails when no spec arrives within this",
            number(0.1, 86400),
        ),
        "stale_periods": (
            3.0,
            "an observation older than this many control periods is stale",
            number(1, 1000),
        ),
        "safe_action": ("zeros", safe_action_help),
        "max_normalized_observation": (
            DEFAULT_MAX_NORMALIZED,
            "reject observations farther than this many std (half-ranges) from the training data",
            number(0.001, 1e12),
        ),
        # The recorder's parameter (default, range, meaning): observations stamped further
        # ahead of the node clock are dropped as malformed (future_stamp).
        "future_tolerance_s": RECORDING_PARAMETERS["future_tolerance_s"],
    }


PARAMETERS: dict[str, tuple[Any, ...]] = {
    **model_parameters(
        "ONNX policy exported by learning.export (roboloop metadata required)",
        inference_threads=0,
    ),
    "seed": (0, "seed of the sampler noise generator", SEED),
    "noise_scale": (
        1.0,
        "sampler start points ~ noise_scale x N(0, I); 0 = deterministic (the flow from 0; a "
        "best_of_n model's N candidates are then one)",
        number(0, 100),
    ),
    **observation_parameters("action published while stale: zeros | hold (last action)"),
    "action_topic": ("/sim/action", "sensor_msgs/JointState actions (effort = action)"),
    "trigger": (
        "timer",
        "timer: act on the control timer; observation: act as soon as the observations that "
        "complete a control step arrive (one action per step, lowest latency), the timer then "
        "only publishes the safe action when they go stale",
    ),
    "episode_done_topic": (
        "",
        "std_msgs/Bool (a sim bridge's <namespace>/done): after True the next observation "
        "starts a fresh history and chunk, as evaluation resets per episode; '' = not used",
    ),
    "executor": (
        "single_threaded",
        "rclpy executor, read at start: single_threaded | events (rclpy's experimental "
        "EventsExecutor: 0.33 ms less obs->action latency measured for a two-message model, "
        "not for every model)",
    ),
}


def observation_bindings(
    node: ModelNode,
    params: ObservationParams,
    observations: Mapping[str, ObsSpec],
    limits: Mapping[str, Any],
) -> tuple[list[ObservationBinding], Any, float]:
    """What a model node that reads observation topics sets up at configure, from its
    observation parameters (PARAMETERS' names): the topic map (`observation_namespace`, or the
    explicit lists), its bindings, the robot spec (`spec_topic`) they are checked against, and
    the real-time factor. (bindings, spec or None, real-time factor)"""
    topics, keys = params.observation_topics, params.observation_keys
    if params.observation_namespace:
        lists = ("observation_topics", "observation_keys")
        defaults = type(node).PARAMETERS
        if [getattr(params, n) for n in lists] != [defaults[n][0] for n in lists]:
            raise BindingError(
                "observation_namespace and observation_topics/observation_keys both give "
                "the topic map: set only one"
            )
        topics, keys = convention_topic_map(observations, params.observation_namespace)
    bindings = bind_observations(
        topics, keys, observations, params.joint_state_field,
        model=params.model_path, limits=limits,
    )  # fmt: skip
    spec = None
    if params.spec_topic:
        spec = wait_for_spec(node, params.spec_topic, params.spec_timeout_s)
        check_against_spec(bindings, spec, params.spec_topic)
    return bindings, spec, real_time_factor_of(params.real_time_factor, spec, params.spec_topic)


@dataclass(frozen=True)
class ObservationParams(ModelParams):
    """What every node that reads observation topics and publishes actions is configured by
    (the policy node's table; the world-model node adds its own)."""

    seed: int
    observation_namespace: str
    observation_topics: list[str]
    observation_keys: list[str]
    joint_state_field: str
    action_topic: str
    control_rate_hz: float
    real_time_factor: float
    spec_topic: str
    spec_timeout_s: float
    stale_periods: float
    safe_action: str
    max_normalized_observation: float
    future_tolerance_s: float


@dataclass(frozen=True)
class PolicyParams(ObservationParams):
    """The policy node's parameters: the observation node's, the sampler's noise scale, the
    episode-done topic and the executor."""

    noise_scale: float
    trigger: str
    episode_done_topic: str
    executor: str


class ObservingNode(ModelNode):
    """A ModelNode whose ROS-free loop (`observe(key, value, stamp_ns, arrival_ns)`) is fed by
    observation topics, as the policy and world-model nodes are: configure binds the topics
    and resolves the control rate (`bind`), the subscriptions decode each message into the
    loop, and the watchdog's arrival clock follows /clock on sim time."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop: Any = None  # the node's loop, set by its `load`
        self._bindings: list[ObservationBinding] = []
        self._observation_subs: list[Any] = []
        self._rates = (0.0, 1.0, "")  # robot rate, real-time factor, where the factor is from
        self._sim_time = False  # use_sim_time: the watchdog's arrival clock is /clock
        super().__init__(**kwargs)

    def bind(
        self,
        params: ObservationParams,
        observations: Mapping[str, ObsSpec],
        limits: Mapping[str, Any],
        trained_rate_hz: float | None,
    ) -> float:
        """Configure: bind the observation topics (checked against the robot's spec), resolve
        the control rate (the parameter, else the model's) and the real-time factor; return
        the control timer's period in wall-clock seconds."""
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        bindings, spec, rtf = observation_bindings(self, params, observations, limits)
        rate = params.control_rate_hz
        if rate:
            check_control_rate(rate, "parameter control_rate_hz")
            if trained_rate_hz and abs(rate - trained_rate_hz) > 1e-6:
                self.get_logger().warning(
                    f"control_rate_hz {rate:g} overrides the rate the model was trained at "
                    f"({trained_rate_hz:g} Hz)"
                )
        elif trained_rate_hz:
            rate = trained_rate_hz
        else:
            raise ValueError(
                f"{params.model_path}: metadata has no control_rate_hz; set parameter "
                "control_rate_hz"
            )
        source = f"spec on {params.spec_topic}" if spec else "parameter"
        rate_source = "parameter" if params.control_rate_hz else f"{params.model_path} metadata"
        wall_rate = check_control_rate(
            rate * rtf,
            f"control rate {rate:g} Hz ({rate_source}) x real_time_factor {rtf:g} ({source}) =",
        )
        self._bindings = bindings
        self._rates = (rate, rtf, source if spec or params.real_time_factor else "default")
        return 1.0 / wall_rate

    def subscribe_observations(self) -> None:
        """One subscription per bound topic, each decoding into the loop."""
        for binding in self._bindings:
            msg_type = Image if binding.msg_type == IMAGE else JointState
            self._observation_subs.append(
                self.create_subscription(
                    msg_type,
                    binding.topic,
                    lambda msg, b=binding: self._on_observation(b, msg),
                    OBSERVATION_QOS,
                )
            )

    def release(self) -> None:
        for sub in self._observation_subs:
            self.destroy_subscription(sub)
        self._observation_subs.clear()
        self._loop = None
        self._bindings = []

    def rate_text(self, period_s: float) -> str:
        """The control rate for the configure line."""
        rate, rtf, source = self._rates
        return (
            f"control rate {rate:g} Hz (robot time) x real_time_factor {rtf:g} ({source}) = "
            f"{1.0 / period_s:g} ticks per wall-clock second"
        )

    def rate_values(self, period_s: float) -> dict[str, str]:
        """The control rate's diagnostic values."""
        return {
            "control_rate_hz": f"{self._rates[0]:g}",  # robot steps per second
            "real_time_factor": f"{self._rates[1]:g}",
            "control_ticks_per_s": f"{1.0 / period_s:g}",  # wall-clock timer rate
        }

    def _arrival_ns(self) -> int:
        """Arrival clock of the watchdog: /clock on sim time (a paused sim is not stale)."""
        if self._sim_time:
            return self.get_clock().now().nanoseconds
        return time.monotonic_ns()

    def _on_observation(self, binding: ObservationBinding, msg: Any) -> bool:
        """Decode and hand to the loop; False when there is no loop or the message was
        malformed (counted and logged)."""
        arrival_ns = self._arrival_ns()
        loop = self._loop
        if loop is None:
            return False
        try:
            value = decode(binding, msg)
            now_ns = self.get_clock().now().nanoseconds
            stamp_ns = observation_stamp(msg, now_ns, self.params.future_tolerance_s)
        except MessageError as err:
            text = f"dropped malformed observation: {binding.topic}: {err}"
            self.warn(f"malformed:{binding.topic}:{err.reason}", text)
            return False
        loop.observe(binding.key, value, stamp_ns, arrival_ns)
        return True


class PolicyNode(ObservingNode):
    """Thin adapter: observation subscriptions, the control timer, the action publisher."""

    NAME, WHAT, PARAMETERS, Params = NODE_NAME, "policy", PARAMETERS, PolicyParams

    def __init__(self, **kwargs: Any) -> None:
        self._action_pub: Any = None
        self._control_timer: Any = None
        self._action_names: list[str] = []
        super().__init__(**kwargs)

    # ---- model node hooks -----------------------------------------------------------------
    def load(self, params: PolicyParams) -> OnnxPolicy:
        if params.trigger not in TRIGGERS:
            raise ValueError(f"parameter trigger {params.trigger!r} is not one of {TRIGGERS}")
        policy = OnnxPolicy(
            params.model_path,
            device=params.device,
            seed=params.seed,
            threads=params.inference_threads or None,
            noise_scale=params.noise_scale,
        )
        meta = policy.metadata
        limits = {}
        for key in meta.observations:
            affine = meta.observation_affine(key)
            if affine is not None:
                limits[key] = ObservationRange(*affine, params.max_normalized_observation)
        period_s = self.bind(params, meta.observations, limits, meta.control_rate_hz)
        try:
            loop = PolicyLoop(policy, period_s, params.stale_periods, params.safe_action)
            # Runs the graph once: a model that cannot run, or whose output disagrees with
            # its metadata, fails here, not on the first control tick.
            loop.warm_up()
        except ValueError as err:  # ModelOutputError is a ValueError too
            raise ValueError(f"{params.model_path}: {err}") from None
        self._loop = loop
        return policy

    def configured(self, params: PolicyParams) -> str:
        loop = self._loop
        assert loop is not None
        self._action_names = [f"action_{i}" for i in range(loop.meta.action_dim)]
        self._action_pub = self.create_lifecycle_publisher(
            JointState, params.action_topic, COMMAND_QOS
        )
        if params.episode_done_topic:
            self._observation_subs.append(
                self.create_subscription(
                    Bool, params.episode_done_topic, self._on_done, EPISODE_EVENT_QOS
                )
            )
        self.subscribe_observations()
        meta, bounds = loop.meta, loop.guard
        return (
            f"configured {params.model_path} on {self.model.provider}: "
            + ", ".join(f"{b.topic} -> {b.key} {list(b.spec.shape)}" for b in self._bindings)
            + f"; obs_steps={meta.obs_steps} horizon={meta.horizon} "
            f"n_action_steps={meta.n_action_steps}; {self.rate_text(loop.period_s)}; "
            f"action bounds ({bounds.source}) {bounds.low.tolist()} .. {bounds.high.tolist()}"
        )

    def start(self, params: PolicyParams) -> None:
        assert self._loop is not None
        self._loop.activate()
        self._control_timer = self.create_timer(self._loop.period_s, self._on_control_tick)
        self.get_logger().info(f"active: publishing actions on {self._action_pub.topic_name}")

    def stop(self) -> None:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        if self._loop is not None:
            self._loop.reset()

    def release(self) -> None:
        super().release()
        if self._action_pub is not None:
            self.destroy_lifecycle_publisher(self._action_pub)
            self._action_pub = None

    # ---- data path ------------------------------------------------------------------------
    def _on_observation(self, binding: ObservationBinding, msg: Any) -> bool:
        """Decode and store; trigger=observation: act at once when this completed a step (the
        same thread as the timer would, minus the wait for its tick)."""
        stored = super()._on_observation(binding, msg)
        loop = self._loop  # (None once cleaned up)
        if stored and loop is not None and self.params.trigger == "observation":
            if loop.step_ready():
                self._act()
        return stored

    def _on_done(self, msg: Any) -> None:
        loop = self._loop
        if msg.data and loop is not None:
            loop.episode_done()

    def _on_control_tick(self) -> None:
        loop = self._loop
        if self.params.trigger == "observation" and loop is not None:
            if not loop.stale(self.get_clock().now().nanoseconds, self._arrival_ns()):
                return  # observations drive the actions; the timer is the watchdog
        self._act()

    def _act(self) -> None:
        with self.lock:
            loop = self._loop
            if loop is None or self._action_pub is None:
                return
            before = loop.state
            try:
                command = loop.step(self.get_clock().now().nanoseconds, self._arrival_ns())
            except Exception as err:  # keep the node up; diagnostics turn ERROR
                self.error(
                    "control_tick_errors", f"control tick failed: {type(err).__name__}: {err}"
                )
                return
            if command is None:
                return
            msg = JointState()
            msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(command.stamp_ns)
            msg.name = self._action_names
            msg.effort = command.action.tolist()
            self._action_pub.publish(msg)
            loop.published(command, self.get_clock().now().nanoseconds)
        self._report(loop, command, before)

    def _report(self, loop: PolicyLoop, command: Command, before: str) -> None:
        """Log and count what a tick did that someone should know about."""
        if command.fault is not None:
            text = f"model output rejected, safe action published: {command.fault}"
            self.error(f"bad_model_output:{command.fault.reason}", text)
        if command.clipped:
            text = f"policy action outside the action bounds, clipped to {command.action.tolist()}"
            self.warn("actions_clipped", text)
        mismatch = loop.check_rates()
        if mismatch is not None:
            self.get_logger().warning(mismatch)
        if loop.state == STALE and before != STALE:
            topics = [b.topic for b in self._bindings if b.key in command.stale_keys]
            self.get_logger().warning(
                f"stale observations on {topics}: publishing safe action ({loop.safe_action})"
            )
        elif before == STALE and loop.state != STALE:
            self.get_logger().info("observations fresh again: policy history and queue reset")

    # ---- diagnostics ----------------------------------------------------------------------
    def status(self, values: dict[str, str], level: int, message: str) -> tuple[int, str]:
        loop, params = self._loop, self.params
        if loop is not None and self.model is not None:
            meta = loop.meta
            values.update(self.rate_values(loop.period_s))
            values.update(
                obs_steps=str(meta.obs_steps),
                horizon=str(meta.horizon),
                n_action_steps=str(meta.n_action_steps),
                action_topic=params.action_topic,
                # what the model is fed, e.g. "image: image 64x64x3 uint8 <- /sim/image"
                observations="; ".join(
                    f"{b.key}: {b.spec.feature_type} {'x'.join(map(str, b.spec.shape))} "
                    f"{b.spec.dtype} <- {b.topic}"
                    for b in self._bindings
                ),
            )
            values.update(loop.diagnostics())
            active = self.lifecycle == "active"
            if active and loop.state != "running":
                level, message = WARN, loop.state
            elif level == OK and active and loop.rate_mismatch:
                level, message = WARN, loop.rate_mismatch
            elif level == OK and active:
                message = loop.state
        values["malformed_observations"] = str(self.faults.total("malformed:"))
        return level, message


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args, executor_of=lambda node: node.params.executor)


if __name__ == "__main__":
    sys.exit(main())
