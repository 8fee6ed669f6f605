"""`policy_node`: lifecycle adapter running an exported ONNX policy on observation topics.

    policy_node --ros-args --params-file config/policy.yaml -p model_path:=policy.onnx

configure: load the model + metadata, bind observation topics to model keys, subscribe.
activate: start the control timer (inference runs there, never in subscription callbacks) and
publish actions. deactivate: stop the timer. cleanup: drop subscriptions and the model.
A failed configure logs one line and leaves the node alive and unconfigured. The logic lives in
ROS-free modules: `observations` (decoding, binding) and `control` (history, queue, watchdog).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
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
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    declare_parameters,
    publish_status,
    read_parameters,
    run_node,
)
from sensor_msgs.msg import Image, JointState

from learning.onnx_runner import ModelLoadError, OnnxPolicy
from roboloop_policy.control import STALE, PolicyLoop
from roboloop_policy.observations import (
    IMAGE,
    BindingError,
    ObservationBinding,
    ObservationError,
    bind_observations,
    decode,
    ns_to_stamp_fields,
    stamp_to_ns,
)

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
        self._last_error = ""
        self._params: PolicyParams | None = None
        self._policy: OnnxPolicy | None = None
        self._loop: PolicyLoop | None = None
        self._bindings: list[ObservationBinding] = []
        self._observation_subs: list[Any] = []
        self._action_pub: Any = None
        self._control_timer: Any = None
        self._action_names: list[str] = []
        self._malformed: Counter[str] = Counter()
        self._tick_errors = 0
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
            self._last_error = str(err)
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        except Exception as err:  # anything else a broken model file can raise
            self._last_error = f"{params.model_path}: {type(err).__name__}: {err}"
            self.get_logger().error(f"configure failed: {self._last_error}")
            return TransitionCallbackReturn.FAILURE
        self._params, self._loop, self._bindings = params, loop, bindings
        self._policy = loop.policy  # type: ignore[assignment]
        self._last_error = ""
        self._malformed.clear()
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
        self.get_logger().info(
            f"configured {params.model_path} on {self._policy.provider}: "
            + ", ".join(f"{b.topic} -> {b.key} {list(b.spec.shape)}" for b in bindings)
            + f"; obs_steps={meta.obs_steps} horizon={meta.horizon} "
            f"n_action_steps={meta.n_action_steps} rate={1.0 / loop.period_s:g} Hz"
        )
        self._lifecycle = "inactive"
        return super().on_configure(state)

    def _load(self, params: PolicyParams) -> tuple[PolicyLoop, list[ObservationBinding]]:
        if not params.model_path:
            raise ValueError("parameter model_path is empty")
        policy = OnnxPolicy(
            params.model_path,
            device=params.device,
            seed=params.seed,
            threads=params.inference_threads or None,
        )
        bindings = bind_observations(
            params.observation_topics,
            params.observation_keys,
            policy.metadata.observations,
            params.joint_state_field,
            model=params.model_path,
        )
        rate = params.control_rate_hz or policy.metadata.control_rate_hz
        if not rate or rate <= 0:
            raise ValueError(
                f"{params.model_path}: metadata has no control_rate_hz; set parameter "
                "control_rate_hz"
            )
        trained = policy.metadata.control_rate_hz
        if params.control_rate_hz and trained and abs(params.control_rate_hz - trained) > 1e-6:
            self.get_logger().warning(
                f"control_rate_hz {params.control_rate_hz:g} overrides the rate the model was "
                f"trained at ({trained:g} Hz)"
            )
        loop = PolicyLoop(policy, 1.0 / rate, params.stale_periods, params.safe_action)
        loop.warm_up()  # a model that cannot run fails here, not on the first control tick
        return loop, bindings

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._loop is not None
        with self._control_lock:
            self._loop.reset()
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
        except ObservationError as err:
            self._malformed[binding.topic] += 1
            self.get_logger().warning(
                f"dropped malformed observation: {err}", throttle_duration_sec=5.0
            )
            return
        loop.observe(binding.key, value, stamp_to_ns(msg.header.stamp), arrival_ns)

    def _on_control_tick(self) -> None:
        with self._control_lock:
            loop = self._loop
            if loop is None or self._action_pub is None:
                return
            before = loop.state
            try:
                command = loop.step(self.get_clock().now().nanoseconds, time.monotonic_ns())
            except Exception as err:  # keep the node up; diagnostics turn ERROR
                self._tick_errors += 1
                self._last_error = f"control tick failed: {err}"
                self.get_logger().error(self._last_error, throttle_duration_sec=5.0)
                return
            if command is None:
                return
            msg = JointState()
            msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp_fields(command.stamp_ns)
            msg.name = self._action_names
            msg.effort = command.action.tolist()
            self._action_pub.publish(msg)
            loop.published(command, self.get_clock().now().nanoseconds)
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
            elif self._lifecycle == "active":
                message = loop.state
        values["malformed_observations"] = str(sum(self._malformed.values()))
        for topic, count in sorted(self._malformed.items()):
            values[f"malformed:{topic}"] = str(count)
        values["control_tick_errors"] = str(self._tick_errors)
        values["last_error"] = self._last_error
        if self._last_error:
            level, message = DiagnosticStatus.ERROR, self._last_error
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
