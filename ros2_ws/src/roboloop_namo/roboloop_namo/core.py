"""rclpy-free logic of q_scorer: decode a request, score it, build the response, keep stats.

Layout of requests/responses: learning.namo.layout (documented in docs/q_function.md).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

from learning.namo.layout import LayoutError, decode_request, response_dims
from learning.namo.scoring import QScorer


@dataclass(frozen=True)
class ScoredRequest:
    """What the node publishes for one request."""

    dims: list[tuple[str, int, int]]  # (label, size, stride) for layout.dim
    q_values: np.ndarray  # (K,)
    best_index: int
    latency_s: float


class RequestError(ValueError):
    """A request that cannot be scored (bad layout or shape for the model)."""


def score_request(
    scorer: QScorer,
    data: Any,
    height: int,
    width: int,
    encoding: str,
    step: int,
    is_bigendian: bool,
    stamp_sec: int,
    stamp_nanosec: int,
    frame_id: str,
) -> ScoredRequest:
    """Decode the Image fields, score all K proposals in one batch, build the response."""
    try:
        state, actions = decode_request(data, height, width, encoding, step, is_bigendian)
        result = scorer.score(state, actions)
    except (LayoutError, ValueError) as err:  # ModelInputError is a ValueError too
        raise RequestError(str(err)) from None
    dims, best = response_dims(result.q_values, stamp_sec, stamp_nanosec, frame_id)
    return ScoredRequest(dims, result.q_values, best, result.latency_s)


class ScoringStats:
    """Counts and a window of recent scoring latencies for /diagnostics."""

    def __init__(self, window: int = 100) -> None:
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=window)
        self.requests = 0
        self.responses = 0
        self.bad_requests = 0
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
            "bad_requests": str(self.bad_requests),
            "last_proposals": str(self.last_proposals),
        }
        if lat.size:
            out.update(
                last_latency_ms=f"{lat[-1]:.3f}",
                mean_latency_ms=f"{lat.mean():.3f}",
                p95_latency_ms=f"{np.percentile(lat, 95):.3f}",
            )
        return out
