"""`policy_node`: lifecycle adapter running an exported ONNX policy on observation topics.

    policy_node --ros-args --params-file config/policy.yaml -p model_path:=policy.onnx

configure: load the model + metadata, bind observation topics to model keys, subscribe.
activate: start the control timer (inference runs there, never in subscription callbacks) and
publish actions. deactivate: stop the timer. cleanup: drop subscriptions and the model.
A failed configure logs one line and leaves the node alive and unconfigured. The logic lives in
ROS-free modules: `observations` (decoding, binding), `control` (history, queue, watchdog) and
`safety` (action and observation checks). Faults are counted in a FaultLog (/diagnostics).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from roboloop_node_common.faults import ERROR, WARN, FaultLog
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    declare_parameters,
    publish_status,
    read_parameters,
    run_node,
)
from sensor_msgs.msg import Image, JointState

from roboloop_policy.control import STALE, Command, PolicyLoop
from roboloop_policy.observations import (
    BindingError,
    ObservationBinding,
    bind_observations,
    decode,
)
from roboloop_policy.safety import DEFAULT_MAX_NORMALIZED, ObservationRange
from roboloop_runtime import ModelLoadError, OnnxPolicy, check_control_rate
from roboloop_runtime.codecs import IMAGE, MessageError, ns_to_stamp, stamp_to_ns

NODE_NAME = "policy_node"
# Observations are sensor streams: best effort, shallow; the newest sample is all we use.
OBSERVATION_QOS = qos_profile_sensor_data
# Commands: reliable, depth 1 (a queued old command is worse than none).
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# name -> (default, description); declared once in __init__, read once per configure.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model_path": ("", "ONNX policy exported by learning.export (roboloop metadata required)"),
    "device": ("auto", "onnxruntime device: auto | cpu | cuda (fallbacks are reported)"),
    "inference_threads": (0, "onnxruntime intra-op threads (0: onnxruntime default)"),
    "seed": (0, "seed of the sampler noise generator"),
    "observation_topics": (["/sim/state"], "observation topics, parallel to observation_keys"),
    "observation_keys": (["state"], "model observation key fed by each observation topic"),
    "joint_state_field": ("position", "JointState field holding vector observations"),
    "action_topic": ("/sim/action", "sensor_msgs/JointState actions (effort = action)"),
    "control_rate_hz": (0.0, "control timer rate; 0 = control_rate_hz from model metadata"),
    "stale_periods": (3.0, "an observation older than this many control periods is stale"),
    "safe_action": ("zeros", "action published while stale: zeros | hold (last action)"),
    "max_normalized_observation": (
        DEFAULT_MAX_NORMALIZED,
        "reject observations farther than this many std (half-ranges) from the training data",
    ),
    "error_hold_s": (10.0, "diagnostics stay ERROR (WARN) this long after the last error"),
    "diagnostics_period_s": (1.0, "period of /diagnostics messages"),
    "autostart": (True, "configure and activate at startup (no lifecycle manager needed)"),
}


@dataclass(frozen=True)
class PolicyParams:
    model_path: str
    device: str
    inference_threads: int
    seed: int
    observation_topics: list[str]
    observation_keys: list[str]
    joint_state_field: str
    action_topic: str
    control_rate_hz: float
    stale_periods: float
    safe_action: str
    max_normalized_observation: float
    error_hold_s: float
    diagnostics_period_s: float
    autostart: bool


class PolicyNode(LifecycleNode):
    """Thin lifecycle adapter: parameters, subscriptions, timers, publishers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self, PARAMETERS)
        params = self.read_params()
        self.autostart = params.autostart
        self._control_lock = threading.Lock()  # control tick vs lifecycle transitions
        self._lifecycle = "unconfigured"
        self._configure_error = ""  # a condition, ERROR for as long as it holds
        self._faults = FaultLog(params.error_hold_s)  # events: ERROR/WARN while recent
        self._params: PolicyParams | None = None
        self._policy: OnnxPolicy | None = None
        self._loop: PolicyLoop | None = None
        self._bindings: list[ObservationBinding] = []
        self._observation_subs: list[Any] = []
        self._action_pub: Any = None
        self._control_timer: Any = None
        self._action_names: list[str] = []
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(
            params.diagnostics_period_s, self._publish_diagnostics
        )

    def read_params(self) -> PolicyParams:
        return read_parameters(self, PARAMETERS, PolicyParams)

    # ---- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.read_params()
        try:
            loop, bindings = self._load(params)
        except (ModelLoadError, BindingError, ValueError) as err:
            return self._configure_failed(str(err))
        except Exception as err:  # anything else a broken model file can raise
            return self._configure_failed(f"{params.model_path}: {type(err).__name__}: {err}")
        self._params, self._loop, self._bindings = params, loop, bindings
        self._policy = loop.policy  # type: ignore[assignment]
        self._configure_error = ""
        self._faults.hold_s = params.error_hold_s
        self._action_names = [f"action_{i}" for i in range(loop.meta.action_dim)]
        self._action_pub = self.create_lifecycle_publisher(
            JointState, params.action_topic, COMMAND_QOS
        )
        for binding in bindings:
            msg_type = Image if binding.msg_type == IMAGE else JointState
            self._observation_subs.append(
                self.create_subscription(
                    msg_type,
                    binding.topic,
                    lambda msg, b=binding: self._on_observation(b, msg),
                    OBSERVATION_QOS,
                )
            )
        meta = loop.meta
        bounds = loop.guard
        self.get_logger().info(
            f"configured {params.model_path} on {self._policy.provider}: "
            + ", ".join(f"{b.topic} -> {b.key} {list(b.spec.shape)}" for b in bindings)
            + f"; obs_steps={meta.obs_steps} horizon={meta.horizon} "
            f"n_action_steps={meta.n_action_steps} rate={1.0 / loop.period_s:g} Hz; "
            f"action bounds ({bounds.source}) {bounds.low.tolist()} .. {bounds.high.tolist()}"
        )
        self._lifecycle = "inactive"
        return super().on_configure(state)

    def _configure_failed(self, error: str) -> TransitionCallbackReturn:
        self._configure_error = error
        self._faults.record("configure_failures", error, ERROR)
        self.get_logger().error(f"configure failed: {error}")
        return TransitionCallbackReturn.FAILURE

    def _load(self, params: PolicyParams) -> tuple[PolicyLoop, list[ObservationBinding]]:
        if not params.model_path:
            raise ValueError("parameter model_path is empty")
        policy = OnnxPolicy(
            params.model_path,
            device=params.device,
            seed=params.seed,
            threads=params.inference_threads or None,
        )
        meta = policy.metadata
        limits = {}
        for key in meta.observations:
            affine = meta.observation_affine(key)
            if affine is not None:
                limits[key] = ObservationRange(*affine, params.max_normalized_observation)
        bindings = bind_observations(
            params.observation_topics,
            params.observation_keys,
            meta.observations,
            params.joint_state_field,
            model=params.model_path,
            limits=limits,
        )
        if params.control_rate_hz:
            check_control_rate(params.control_rate_hz, "parameter control_rate_hz")
        rate = params.control_rate_hz or meta.control_rate_hz
        if not rate:
            raise ValueError(
                f"{params.model_path}: metadata has no control_rate_hz; set parameter "
                "control_rate_hz"
            )
        trained = meta.control_rate_hz
        if params.control_rate_hz and trained and abs(params.control_rate_hz - trained) > 1e-6:
            self.get_logger().warning(
                f"control_rate_hz {params.control_rate_hz:g} overrides the rate the model was "
                f"trained at ({trained:g} Hz)"
            )
        try:
            loop = PolicyLoop(policy, 1.0 / rate, params.stale_periods, params.safe_action)
            # Runs the graph once: a model that cannot run, or whose output disagrees with
            # its metadata, fails here, not on the first control tick.
            loop.warm_up()
        except ValueError as err:  # ModelOutputError is a ValueError too
            raise ValueError(f"{params.model_path}: {err}") from None
        return loop, bindings

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._loop is not None
        with self._control_lock:
            self._loop.activate()
            self._control_timer = self.create_timer(self._loop.period_s, self._on_control_tick)
        self._lifecycle = "active"
        self.get_logger().info(f"active: publishing actions on {self._action_pub.topic_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._control_lock:
            if self._control_timer is not None:
                self.destroy_timer(self._control_timer)
                self._control_timer = None
            if self._loop is not None:
                self._loop.reset()
        self._lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._control_lock:
            if self._control_timer is not None:
                self.destroy_timer(self._control_timer)
                self._control_timer = None
        self._release()
        self._lifecycle = "finalized"
        return super().on_shutdown(state)

    def _release(self) -> None:
        with self._control_lock:
            for sub in self._observation_subs:
                self.destroy_subscription(sub)
            self._observation_subs.clear()
            if self._action_pub is not None:
                self.destroy_lifecycle_publisher(self._action_pub)
                self._action_pub = None
            self._loop = self._policy = None
            self._bindings = []

    # ---- data path ------------------------------------------------------------------------
    def _on_observation(self, binding: ObservationBinding, msg: Any) -> None:
        """Decode and store only: inference runs on the control timer."""
        arrival_ns = time.monotonic_ns()
        loop = self._loop
        if loop is None:
            return
        try:
            value = decode(binding, msg)
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except MessageError as err:
            text = f"{binding.topic}: {err}"
            self._faults.record(f"malformed:{binding.topic}:{err.reason}", text, WARN)
            self.get_logger().warning(
                f"dropped malformed observation: {text}", throttle_duration_sec=5.0
            )
            return
        loop.observe(binding.key, value, stamp_ns, arrival_ns)

    def _on_control_tick(self) -> None:
        with self._control_lock:
            loop = self._loop
            if loop is None or self._action_pub is None:
                return
            before = loop.state
            try:
                command = loop.step(self.get_clock().now().nanoseconds, time.monotonic_ns())
            except Exception as err:  # keep the node up; diagnostics turn ERROR
                text = f"control tick failed: {type(err).__name__}: {err}"
                self._faults.record("control_tick_errors", text, ERROR)
                self.get_logger().error(text, throttle_duration_sec=5.0)
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
            self._faults.record(f"bad_model_output:{command.fault.reason}", text, ERROR)
            self.get_logger().error(text, throttle_duration_sec=5.0)
        if command.clipped:
            text = f"policy action outside the action bounds, clipped to {command.action.tolist()}"
            self._faults.record("actions_clipped", text, WARN)
            self.get_logger().warning(text, throttle_duration_sec=5.0)
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
    def _publish_diagnostics(self) -> None:
        values: dict[str, str] = {"lifecycle_state": self._lifecycle}
        loop, policy, params = self._loop, self._policy, self._params
        level, message = DiagnosticStatus.OK, self._lifecycle
        if policy is not None and loop is not None and params is not None:
            meta = loop.meta
            values.update(
                model_path=params.model_path,
                requested_device=params.device,
                execution_provider=policy.provider,
                provider_fallback_reason=policy.fallback_reason or "",
                control_rate_hz=f"{1.0 / loop.period_s:g}",
                obs_steps=str(meta.obs_steps),
                horizon=str(meta.horizon),
                n_action_steps=str(meta.n_action_steps),
                action_topic=params.action_topic,
            )
            values.update(loop.diagnostics())
            if self._lifecycle == "active" and loop.state != "running":
                level, message = DiagnosticStatus.WARN, loop.state
            elif policy.fallback_reason:
                level, message = DiagnosticStatus.WARN, f"running on {policy.provider}"
            elif self._lifecycle == "active" and loop.rate_mismatch:
                level, message = DiagnosticStatus.WARN, loop.rate_mismatch
            elif self._lifecycle == "active":
                message = loop.state
        values["malformed_observations"] = str(self._faults.total("malformed:"))
        values.update(self._faults.values())
        worst, message = self._faults.status(level[0], message, self._configure_error)
        level = bytes([worst])
        hardware_id = params.model_path if params is not None else ""
        publish_status(self, self._diag_pub, "policy", level, message, values, hardware_id)

    def bring_up(self) -> None:
        """autostart: configure, then activate if configuring worked."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
