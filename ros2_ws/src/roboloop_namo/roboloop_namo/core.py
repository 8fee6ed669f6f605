"""rclpy-free logic of q_scorer: check and decode a request, score it, check the Q-values.

    limits = RequestLimits(max_proposals=256, max_request_bytes=32 << 20, input_hw=(56, 56))
    scored = score_request(scorer, msg, limits)   # msg: a sensor_msgs/Image (duck-typed)

A request is refused before any work when its header asks for more than the limits (K from the
encoding, bytes from step * height), and when its values are not finite. Q-values that are not
K finite numbers are never published. Both raise `MessageError` / `ModelOutputError`, whose
`reason` the node counts. Layout of requests/responses: sim.namo.layout.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

from episode_dataset.codecs import MessageError, decode_image, image_encoding
from roboloop_runtime import ModelOutputError, check_output
from sim.namo.layout import LayoutError, proposals_in, response_dims, split_request
from sim.namo.scoring import QScorer


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for (node parameters) and the model's mask size."""

    max_proposals: int
    max_request_bytes: int
    input_hw: tuple[int, int]

    def __post_init__(self) -> None:
        if self.max_proposals < 1 or self.max_request_bytes < 1:
            raise ValueError(
                f"max_proposals={self.max_proposals} and max_request_bytes="
                f"{self.max_request_bytes} must be >= 1"
            )


@dataclass(frozen=True)
class ScoredRequest:
    """What the node publishes for one request."""

    dims: list[tuple[str, int, int]]  # (label, size, stride) for layout.dim
    q_values: np.ndarray  # (K,) finite
    best_index: int
    latency_s: float


def request_proposals(msg: Any, limits: RequestLimits) -> int:
    """K from the request's encoding, within the limit (header only: no data touched)."""
    _, channels = image_encoding(msg.encoding)
    try:
        k = proposals_in(channels)
    except LayoutError as err:
        raise MessageError("encoding", f"encoding {msg.encoding!r}: {err}") from None
    if k > limits.max_proposals:
        raise MessageError(
            "too_many_proposals", f"{k} proposals exceed max_proposals={limits.max_proposals}"
        )
    return k


def score_request(scorer: QScorer, msg: Any, limits: RequestLimits) -> ScoredRequest:
    """Check the header, decode, score all K proposals in one batch, check the Q-values."""
    k = request_proposals(msg, limits)
    hwc = decode_image(
        msg, dtype="float32", shape=(*limits.input_hw, None), max_bytes=limits.max_request_bytes
    )
    state, actions = split_request(hwc)
    try:
        result = scorer.score(state, actions)
    except Exception as err:  # onnxruntime raises its own types
        raise ModelOutputError("inference_failed", f"{type(err).__name__}: {err}") from err
    q = check_output("q_values", result.q_values, (k,))
    stamp = msg.header.stamp
    dims, best = response_dims(q, stamp.sec, stamp.nanosec, msg.header.frame_id)
    return ScoredRequest(dims, q, best, result.latency_s)


class ScoringStats:
    """Counts and a window of recent scoring latencies for /diagnostics."""

    def __init__(self, window: int = 100) -> None:
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=window)
        self.requests = 0
        self.responses = 0
        self.last_proposals = 0

    def record(self, scored: ScoredRequest) -> None:
        self.responses += 1
        self.last_proposals = int(scored.q_values.size)
        self.latencies_s.append(scored.latency_s)

    def values(self) -> dict[str, str]:
        lat = np.asarray(self.latencies_s) * 1e3
        out = {
            "requests": str(self.requests),
            "responses": str(self.responses),
            "last_proposals": str(self.last_proposals),
        }
        if lat.size:
            out.update(
                last_latency_ms=f"{lat[-1]:.3f}",
                mean_latency_ms=f"{lat.mean():.3f}",
                p95_latency_ms=f"{np.percentile(lat, 95):.3f}",
            )
        return out
