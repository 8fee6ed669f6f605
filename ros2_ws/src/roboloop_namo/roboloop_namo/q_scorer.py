"""`q_scorer`: lifecycle node scoring K candidate proposals of one NAMO state with a Q-function.

    q_scorer --ros-args --params-file config/q_scorer.yaml -p model_path:=q_function.onnx

Request: sensor_msgs/Image `32FC<8+5K>` on `~/request` (8 shared state masks + 5 per proposal).
Response: std_msgs/Float32MultiArray on `~/q_values`, shape (1, K), dim[0].label carries the
request key (header stamp + frame_id) and the best proposal index. Layout: sim.namo.layout.

configure: load the ONNX Q-function (model_type q_function). activate: subscribe; each request
is scored in its subscription callback, and while one is scored the subscription keeps the newest
`max_pending` (KEEP_LAST depth; DDS drops older ones, counted from gaps in the publisher's
sequence numbers). A request beyond `max_proposals` / `max_request_bytes`, malformed, or with
non-finite values is refused before any work; Q-values that are not finite are never published.
Both are counted per reason. deactivate: unsubscribe. Diagnostics: counts, latency, provider.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from roboloop_node_common.faults import FaultLog, SequenceGaps
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    declare_parameters,
    publish_status,
    read_parameters,
    run_node,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, MultiArrayDimension

from roboloop_namo.core import RequestLimits, ScoringStats, score_request
from roboloop_runtime import ModelLoadError, ModelOutputError
from roboloop_runtime.codecs import MessageError
from sim.namo.scoring import OnnxQScorer

NODE_NAME = "q_scorer"
# Requests and responses are commands/results: reliable; requests are large images, so the
# request depth is small (parameter max_pending).
RESPONSE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

PARAMETERS: dict[str, tuple[Any, str]] = {
    "model_path": ("", "ONNX Q-function from learning.namo.export (model_type q_function)"),
    "device": ("auto", "onnxruntime device: auto | cpu | cuda (fallbacks are reported)"),
    "inference_threads": (1, "onnxruntime intra-op threads (0: onnxruntime default)"),
    "request_topic": ("~/request", "sensor_msgs/Image 32FC<8+5K>: shared state + K proposals"),
    "response_topic": ("~/q_values", "std_msgs/Float32MultiArray (1, K) Q-values + key"),
    "max_pending": (2, "requests kept while one is scored (subscription depth); older dropped"),
    "max_proposals": (256, "largest K of a request; larger requests are refused unread"),
    "max_request_bytes": (32 << 20, "largest request data (step * height); larger refused"),
    "error_hold_s": (10.0, "diagnostics stay ERROR this long after the last error"),
    "diagnostics_period_s": (1.0, "period of /diagnostics messages"),
    "autostart": (True, "configure and activate at startup (no lifecycle manager needed)"),
}


@dataclass(frozen=True)
class ScorerParams:
    model_path: str
    device: str
    inference_threads: int
    request_topic: str
    response_topic: str
    max_pending: int
    max_proposals: int
    max_request_bytes: int
    error_hold_s: float
    diagnostics_period_s: float
    autostart: bool


class QScorerNode(LifecycleNode):
    """Thin lifecycle adapter around sim.namo.scoring + roboloop_namo.core."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self, PARAMETERS)
        params = self.read_params()
        self.autostart = params.autostart
        self._lock = threading.Lock()  # scoring vs lifecycle transitions
        self._lifecycle = "unconfigured"
        self._configure_error = ""  # a condition: ERROR for as long as it holds
        self._faults = FaultLog(params.error_hold_s)  # events: ERROR while recent
        self._gaps = SequenceGaps()
        self._params: ScorerParams | None = None
        self._scorer: OnnxQScorer | None = None
        self._limits: RequestLimits | None = None
        self._stats = ScoringStats()
        self._request_sub: Any = None
        self._response_pub: Any = None
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(
            params.diagnostics_period_s, self._publish_diagnostics
        )

    def read_params(self) -> ScorerParams:
        return read_parameters(self, PARAMETERS, ScorerParams)

    # ---- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.read_params()
        try:
            if not params.model_path:
                raise ValueError("parameter model_path is empty")
            scorer = OnnxQScorer(
                params.model_path, params.device, params.inference_threads or None
            )
            if params.max_pending < 1:
                raise ValueError(f"max_pending={params.max_pending} must be >= 1")
            limits = RequestLimits(
                params.max_proposals, params.max_request_bytes, tuple(scorer.input_hw)
            )
        except (ModelLoadError, ValueError) as err:
            self._configure_error = str(err)
            self._faults.record("configure_failures", str(err))
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        self._params, self._scorer, self._limits = params, scorer, limits
        self._faults.hold_s = params.error_hold_s
        self._configure_error = ""
        self._response_pub = self.create_lifecycle_publisher(
            Float32MultiArray, params.response_topic, RESPONSE_QOS
        )
        h, w = scorer.input_hw
        self.get_logger().info(
            f"configured {params.model_path} on {scorer.provider}: requests {h}x{w} "
            f"32FC<8+5K> on {self.resolve_topic_name(params.request_topic)} "
            f"(K <= {limits.max_proposals}, <= {limits.max_request_bytes} bytes)"
        )
        self._lifecycle = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._params is not None
        self._gaps.reset()  # sequence numbers restart with the new subscription
        self._request_sub = self.create_subscription(
            Image,
            self._params.request_topic,
            self._on_request,
            QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=self._params.max_pending,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE,
            ),
        )
        self._lifecycle = "active"
        self.get_logger().info(
            f"active: scoring {self._request_sub.topic_name} -> {self._response_pub.topic_name}"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            if self._request_sub is not None:
                self.destroy_subscription(self._request_sub)
                self._request_sub = None
        self._lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lifecycle = "finalized"
        return super().on_shutdown(state)

    def _release(self) -> None:
        with self._lock:
            if self._request_sub is not None:
                self.destroy_subscription(self._request_sub)
                self._request_sub = None
            if self._response_pub is not None:
                self.destroy_lifecycle_publisher(self._response_pub)
                self._response_pub = None
            self._scorer = None

    # ---- data path ------------------------------------------------------------------------
    def _on_request(self, msg: Image, info: dict) -> None:
        self._stats.requests += 1
        missed = self._gaps.take(info)  # requests DDS replaced while one was scored
        if missed:
            self._faults.count("dropped_requests", missed)
        with self._lock:
            if self._scorer is not None and self._response_pub is not None:
                self._score_one(msg)

    def _score_one(self, msg: Image) -> None:
        topic = self._request_sub.topic_name if self._request_sub else "request"
        key = f"(frame_id={msg.header.frame_id!r})"
        try:
            scored = score_request(self._scorer, msg, self._limits)
        except MessageError as err:
            self._error(f"bad_requests:{err.reason}", f"{topic}: bad request {key}: {err}")
            return
        except ModelOutputError as err:
            self._error(f"bad_outputs:{err.reason}", f"{topic}: not published {key}: {err}")
            return
        out = Float32MultiArray()
        out.layout.dim = [
            MultiArrayDimension(label=label, size=size, stride=stride)
            for label, size, stride in scored.dims
        ]
        out.layout.data_offset = 0
        out.data = scored.q_values.tolist()
        self._response_pub.publish(out)
        self._stats.record(scored)

    def _error(self, counter: str, text: str) -> None:
        self._faults.record(counter, text)
        self.get_logger().error(text, throttle_duration_sec=5.0)

    # ---- diagnostics ----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        values = {"lifecycle_state": self._lifecycle}
        level, message = DiagnosticStatus.OK, self._lifecycle
        scorer, params = self._scorer, self._params
        if scorer is not None and params is not None:
            values.update(
                model_path=params.model_path,
                requested_device=params.device,
                execution_provider=scorer.provider,
                provider_fallback_reason=scorer.fallback_reason or "",
            )
            if scorer.fallback_reason:
                level, message = DiagnosticStatus.WARN, f"running on {scorer.provider}"
        values.update(self._stats.values())
        values["bad_requests"] = str(self._faults.total("bad_requests:"))
        values["bad_outputs"] = str(self._faults.total("bad_outputs:"))
        values["dropped_requests"] = str(self._faults.total("dropped_requests"))
        values["dropped_requests_counted"] = str(self._gaps.supported).lower()
        values.update(self._faults.values())
        worst, message = self._faults.status(level[0], message, self._configure_error)
        level = bytes([worst])
        hardware_id = params.model_path if params is not None else ""
        publish_status(self, self._diag_pub, "q_scorer", level, message, values, hardware_id)

    def bring_up(self) -> None:
        """autostart: configure, then activate if configuring worked."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()


def main(args: list[str] | None = None) -> int:
    return run_node(QScorerNode, args)


if __name__ == "__main__":
    sys.exit(main())
