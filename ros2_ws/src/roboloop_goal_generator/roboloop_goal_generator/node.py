"""goal_generator: lifecycle node, a thin adapter over `generator.GoalGenerator`.

Subscribes a scene (sensor_msgs/Image 32FC5), publishes K goal proposals (Image 32FC<K>, same
header). The subscription only stores the newest scene; a worker thread runs inference, so a
scene arriving during inference replaces any older pending one (no backlog). Replaced scenes and
scenes DDS dropped (gaps in the publisher's sequence numbers) are counted as dropped; scenes that
cannot be used (malformed, empty, non-finite, beyond `max_request_bytes`) and model outputs that
are not finite are counted per reason and reported (ERROR while recent), never published.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from roboloop_node_common.faults import WARN, FaultLog, SequenceGaps
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    declare_parameters,
    publish_status,
    read_parameters,
    run_node,
)
from sensor_msgs.msg import Image

from roboloop_goal_generator.generator import GoalGenerator, SceneError, generate
from roboloop_runtime import ModelLoadError, ModelOutputError
from roboloop_runtime.codecs import MessageError, encode_image

NODE_NAME = "goal_generator"
# Scenes are requests: reliable, only the newest matters.
REQUEST_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model_path": ("", "ONNX file exported with model_type goal_generator"),
    "device": ("auto", "auto | cpu | cuda (the provider that runs is logged)"),
    "inference_threads": (1, "onnxruntime intra-op threads (0: onnxruntime default)"),
    "num_proposals": (8, "K goal proposals per scene"),
    "seed": (0, "seed of the noise generator"),
    "scene_topic": ("/namo/scene_masks", "sensor_msgs/Image 32FC5 scene masks"),
    "proposals_topic": ("/namo/goal_proposals", "sensor_msgs/Image 32FC<K> proposals"),
    "max_request_bytes": (16 << 20, "largest scene data (step * height); larger is refused"),
    "error_hold_s": (10.0, "diagnostics stay ERROR this long after the last error"),
    "diagnostics_period_s": (1.0, "period of the /diagnostics status"),
    "autostart": (True, "configure and activate at startup (no lifecycle manager needed)"),
}


@dataclass(frozen=True)
class GeneratorParams:
    model_path: str
    device: str
    inference_threads: int
    num_proposals: int
    seed: int
    scene_topic: str
    proposals_topic: str
    max_request_bytes: int
    error_hold_s: float
    diagnostics_period_s: float
    autostart: bool


class GoalGeneratorNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self, PARAMETERS)
        self.params = read_parameters(self, PARAMETERS, GeneratorParams)
        self.autostart = self.params.autostart
        self._generator: GoalGenerator | None = None
        self._pub: Any = None
        self._sub: Any = None
        self._pending: Image | None = None
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running = False
        self._lifecycle = "unconfigured"
        self._configure_error = ""  # a condition: ERROR for as long as it holds
        self._faults = FaultLog(self.params.error_hold_s)  # events: ERROR while recent
        self._gaps = SequenceGaps()
        self._processed = 0
        self._last_ms = float("nan")
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(
            self.params.diagnostics_period_s, self._publish_diagnostics
        )

    # ---- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            if p.max_request_bytes < 1:
                raise ValueError(f"max_request_bytes={p.max_request_bytes} must be >= 1")
            self._generator = GoalGenerator(
                p.model_path,
                num_proposals=p.num_proposals,
                seed=p.seed,
                device=p.device,
                threads=p.inference_threads or None,
            )
        except (ModelLoadError, ValueError) as err:
            self._configure_error = str(err)
            self._faults.record("configure_failures", str(err))
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        self._pub = self.create_lifecycle_publisher(Image, p.proposals_topic, REQUEST_QOS)
        model = self._generator.model
        self.get_logger().info(
            f"configured: {p.model_path} on {model.provider}"
            + (f" (fallback: {model.fallback_reason})" if model.fallback_reason else "")
            + f", K={p.num_proposals}, {self._generator.image_size}px"
        )
        self._lifecycle = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publisher first
        self._running = True
        self._gaps.reset()  # sequence numbers restart with the new subscription
        self._worker = threading.Thread(target=self._work, name="goal_generator", daemon=True)
        self._worker.start()
        self._sub = self.create_subscription(
            Image, self.params.scene_topic, self._on_scene, REQUEST_QOS
        )
        self.get_logger().info(
            f"active: {self.params.scene_topic} -> {self.params.proposals_topic}"
        )
        self._lifecycle = "active"
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        self._lifecycle = "finalized"
        return super().on_shutdown(state)

    def _stop_worker(self) -> None:
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        with self._wake:
            self._running = False
            self._pending = None
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def _release(self) -> None:
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        self._generator = None

    # ---- data path ------------------------------------------------------------------------
    def _on_scene(self, msg: Image, info: dict) -> None:
        """Store only; the worker thread generates. Replaced and lost scenes are dropped."""
        dropped = self._gaps.take(info)
        with self._wake:
            dropped += self._pending is not None
            self._pending = msg
            self._wake.notify()
        if dropped:
            self._faults.count("dropped_scenes", dropped)

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._running and self._pending is None:
                    self._wake.wait()
                if not self._running:
                    return
                msg, self._pending = self._pending, None
            self._generate(msg)

    def _generate(self, msg: Image) -> None:
        generator, pub = self._generator, self._pub
        if generator is None or pub is None:
            return
        start = time.perf_counter()
        topic = self.params.scene_topic
        try:
            proposals = generate(generator, msg, self.params.max_request_bytes)
        except MessageError as err:
            return self._error(f"bad_scenes:{err.reason}", f"{topic}: bad scene: {err}")
        except SceneError as err:
            return self._error("bad_scenes:scene", f"{topic}: bad scene: {err}")
        except ModelOutputError as err:
            return self._error(f"bad_outputs:{err.reason}", f"{topic}: not published: {err}")
        if proposals.clipped:
            text = f"{topic}: {proposals.clipped} proposal values outside [0, 1] clipped"
            self._faults.record("scenes_clipped", text, WARN)
            self.get_logger().warning(text, throttle_duration_sec=5.0)
        self._processed += 1
        self._last_ms = 1e3 * (time.perf_counter() - start)
        out = Image()
        out.header = msg.header
        out.height, out.width, out.encoding, out.step, out.data = encode_image(proposals.hwk)
        out.is_bigendian = 0
        pub.publish(out)

    def _error(self, counter: str, text: str) -> None:
        self._faults.record(counter, text)
        self.get_logger().error(text, throttle_duration_sec=5.0)

    # ---- diagnostics ----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        p, generator = self.params, self._generator
        level, message = DiagnosticStatus.OK, self._lifecycle
        values = {
            "lifecycle_state": self._lifecycle,
            "model_path": p.model_path,
            "requested_device": p.device,
            "scene_topic": p.scene_topic,
            "proposals_topic": p.proposals_topic,
            "num_proposals": str(p.num_proposals),
            "scenes_processed": str(self._processed),
            "bad_scenes": str(self._faults.total("bad_scenes:")),
            "bad_outputs": str(self._faults.total("bad_outputs:")),
            "dropped_scenes": str(self._faults.total("dropped_scenes")),
            "dropped_scenes_counted": str(self._gaps.supported).lower(),
            "last_inference_ms": f"{self._last_ms:.2f}",
        }
        if generator is not None:
            model = generator.model
            values.update(
                execution_provider=model.provider,
                provider_fallback_reason=model.fallback_reason or "",
                image_size=str(generator.image_size),
            )
            if model.fallback_reason:
                level, message = DiagnosticStatus.WARN, f"running on {model.provider}"
        values.update(self._faults.values())
        worst, message = self._faults.status(level[0], message, self._configure_error)
        level = bytes([worst])
        hardware_id = p.model_path if generator is not None else ""
        publish_status(self, self._diag_pub, "goal generator", level, message, values, hardware_id)

    def bring_up(self) -> None:
        """autostart: configure, then activate if configuring worked."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()


def main(args: list[str] | None = None) -> int:
    return run_node(GoalGeneratorNode, args, on_exit=lambda node: node._stop_worker())


if __name__ == "__main__":
    sys.exit(main())
