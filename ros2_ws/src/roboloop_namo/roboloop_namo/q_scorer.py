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
Lifecycle, configure failures and /diagnostics are the `ModelNode` skeleton's
(roboloop_node_common.model_node).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from roboloop_node_common.faults import SequenceGaps
from roboloop_node_common.model_node import ModelNode, ModelParams, model_parameters
from roboloop_node_common.runtime import run_node
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, MultiArrayDimension

from episode_dataset.codecs import MessageError
from episode_dataset.ranges import count
from roboloop_namo.core import RequestLimits, ScoringStats, score_request
from roboloop_runtime import ModelOutputError, OnnxModel
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

PARAMETERS: dict[str, tuple[Any, ...]] = {
    **model_parameters("ONNX Q-function from learning.export (model_type q_function)"),
    "request_topic": ("~/request", "sensor_msgs/Image 32FC<8+5K>: shared state + K proposals"),
    "response_topic": ("~/q_values", "std_msgs/Float32MultiArray (1, K) Q-values + key"),
    "max_pending": (
        2,
        "requests kept while one is scored (subscription depth); older dropped",
        count(1, high=1000),
    ),
    "max_proposals": (
        256,
        "largest K of a request; larger requests are refused unread",
        count(1, high=65536),
    ),
    "max_request_bytes": (
        32 << 20,
        "largest request data (step * height); larger refused",
        count(1, high=2**31 - 1),
    ),
}


@dataclass(frozen=True)
class ScorerParams(ModelParams):
    request_topic: str
    response_topic: str
    max_pending: int
    max_proposals: int
    max_request_bytes: int


class QScorerNode(ModelNode):
    """Thin adapter around OnnxQScorer + roboloop_namo.core: request in, Q-values out."""

    NAME, WHAT, PARAMETERS, Params = NODE_NAME, "q_scorer", PARAMETERS, ScorerParams

    def __init__(self, **kwargs: Any) -> None:
        self._gaps = SequenceGaps()
        self._scorer: OnnxQScorer | None = None
        self._limits: RequestLimits | None = None
        self._stats = ScoringStats()
        self._request_sub: Any = None
        self._response_pub: Any = None
        super().__init__(**kwargs)

    # ---- model node hooks -----------------------------------------------------------------
    def load(self, params: ScorerParams) -> OnnxModel:
        scorer = OnnxQScorer(params.model_path, params.device, params.inference_threads or None)
        if params.max_pending < 1:
            raise ValueError(f"max_pending={params.max_pending} must be >= 1")
        limits = RequestLimits(
            params.max_proposals, params.max_request_bytes, tuple(scorer.input_hw)
        )
        self._scorer, self._limits = scorer, limits
        return scorer.model

    def configured(self, params: ScorerParams) -> str:
        self._response_pub = self.create_lifecycle_publisher(
            Float32MultiArray, params.response_topic, RESPONSE_QOS
        )
        (h, w), limits = self._scorer.input_hw, self._limits
        return (
            f"configured {params.model_path} on {self._scorer.provider}: requests {h}x{w} "
            f"32FC<8+5K> on {self.resolve_topic_name(params.request_topic)} "
            f"(K <= {limits.max_proposals}, <= {limits.max_request_bytes} bytes)"
        )

    def start(self, params: ScorerParams) -> None:
        self._gaps.reset()  # sequence numbers restart with the new subscription
        self._request_sub = self.create_subscription(
            Image,
            params.request_topic,
            self._on_request,
            QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=params.max_pending,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE,
            ),
        )
        self.get_logger().info(
            f"active: scoring {self._request_sub.topic_name} -> {self._response_pub.topic_name}"
        )

    def stop(self) -> None:
        if self._request_sub is not None:
            self.destroy_subscription(self._request_sub)
            self._request_sub = None

    def release(self) -> None:
        self.stop()
        if self._response_pub is not None:
            self.destroy_lifecycle_publisher(self._response_pub)
            self._response_pub = None
        self._scorer = None

    # ---- data path ------------------------------------------------------------------------
    def _on_request(self, msg: Image, info: dict) -> None:
        self._stats.requests += 1
        missed = self._gaps.take(info)  # requests DDS replaced while one was scored
        if missed:
            self.faults.count("dropped_requests", missed)
        with self.lock:
            if self._scorer is not None and self._response_pub is not None:
                self._score_one(msg)

    def _score_one(self, msg: Image) -> None:
        topic = self._request_sub.topic_name if self._request_sub else "request"
        key = f"(frame_id={msg.header.frame_id!r})"
        try:
            scored = score_request(self._scorer, msg, self._limits)
        except MessageError as err:
            self.error(f"bad_requests:{err.reason}", f"{topic}: bad request {key}: {err}")
            return
        except ModelOutputError as err:
            self.error(f"bad_outputs:{err.reason}", f"{topic}: not published {key}: {err}")
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

    # ---- diagnostics ----------------------------------------------------------------------
    def status(self, values: dict[str, str], level: int, message: str) -> tuple[int, str]:
        values.update(self._stats.values())
        values["bad_requests"] = str(self.faults.total("bad_requests:"))
        values["bad_outputs"] = str(self.faults.total("bad_outputs:"))
        values["dropped_requests"] = str(self.faults.total("dropped_requests"))
        values["dropped_requests_counted"] = str(self._gaps.supported).lower()
        return level, message


def main(args: list[str] | None = None) -> int:
    return run_node(QScorerNode, args)


if __name__ == "__main__":
    sys.exit(main())
