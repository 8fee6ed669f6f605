"""What the policy node checks before it trusts a model's output or an observation (ROS-free).

    guard = ActionGuard(meta.action_bounds, meta.horizon, meta.action_dim)
    actions, clipped = guard.check_chunk(raw)   # (horizon, A) in bounds, (horizon,) bool
                                                # ModelOutputError("shape" | "nonfinite")
    limit = ObservationRange(center, scale, 1e3)
    limit.check(value, "state")                 # MessageError("out_of_range") when absurd

A chunk of the wrong shape or with a NaN/Inf is never published: the node publishes its safe
action instead and reports an ERROR. A finite action outside the bounds is clipped to them and
counted. An observation more than `limit` normalized units (std, or half-ranges for min_max
stats) from the training data's center is rejected like a malformed message; the default 1e3
keeps every plausible out-of-distribution value and drops the absurd (±1e38).
"""

from __future__ import annotations

import numpy as np

from episode_dataset.codecs import MessageError
from roboloop_runtime import ACTIONS_OUTPUT, ActionBounds, check_output

DEFAULT_MAX_NORMALIZED = 1e3
RE_EXPORT = "re-export it with `python -m learning.export` (the export writes them)"


class ActionGuard:
    """Shape, finiteness and bounds of every action chunk, before any of it is queued."""

    def __init__(self, bounds: ActionBounds | None, horizon: int, action_dim: int) -> None:
        if bounds is None:
            raise ValueError(f"the model metadata has no action_bounds: {RE_EXPORT}")
        self.low = np.asarray(bounds.low, np.float32)
        self.high = np.asarray(bounds.high, np.float32)
        self.source = bounds.source
        # predict_action_chunk of one observation window: (batch, horizon, action_dim)
        self.shape = (1, horizon, action_dim)

    def clip(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self.low, self.high).astype(np.float32)

    def check_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, horizon, A) model output -> actions (horizon, A) within bounds, clipped rows."""
        actions = check_output(ACTIONS_OUTPUT, chunk, self.shape)[0].astype(np.float32)
        clipped = self.clip(actions)
        return clipped, (clipped != actions).any(axis=1)


class ObservationRange:
    """Rejects observations absurdly far from the training data (in normalized units)."""

    def __init__(self, center: np.ndarray, scale: np.ndarray, limit: float) -> None:
        if not limit > 0:
            raise ValueError(f"max_normalized_observation must be > 0, got {limit}")
        self.center = np.asarray(center, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self.limit = float(limit)

    def check(self, value: np.ndarray, key: str) -> None:
        distance = np.abs(np.asarray(value, np.float64) - self.center) / self.scale
        if distance.max(initial=0.0) > self.limit:
            i = int(np.argmax(distance))
            raise MessageError(
                "out_of_range",
                f"{key}[{i}] = {np.ravel(value)[i]:g} is {distance.flat[i]:.3g} normalized units "
                f"from the training data (limit {self.limit:g})",
            )
