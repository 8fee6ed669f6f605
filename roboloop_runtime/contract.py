"""The export contract shared by every exporter, runner and node (torch-free).

Names of graph inputs/outputs, the metadata key and format version, the errors a runner raises,
and the checked value types (observation specs, action bounds, normalization maps) that the
`roboloop` metadata JSON carries. docs/export_contract.md is the prose version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METADATA_KEY = "roboloop"  # ONNX metadata_props key holding the JSON contract
FORMAT_VERSION = 1
OBS_INPUT_PREFIX = "obs."  # ONNX input name of observation key k is "obs.<k>"
NOISE_INPUT = "noise"
ACTIONS_OUTPUT = "actions"
MAX_CONTROL_RATE_HZ = 1000.0  # above this a metadata rate is a bug, not a robot
ACTION_BOUNDS_SOURCES = ("env", "data")
SCALE_EPS = 1e-6  # a spread below this is a constant dimension: scale 1, no blow-up


class ModelInputError(ValueError):
    """An observation/feed does not match the model's declared inputs (names the input)."""


class ModelOutputError(ValueError):
    """A model output that must not be used (wrong shape, NaN/Inf); `reason` is its counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_output(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`value` as an array if it has `shape` and only finite values, else ModelOutputError."""
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ModelOutputError(
            "shape", f"model output {name!r} has shape {arr.shape}, expected {shape}"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        bad = arr[~finite]
        raise ModelOutputError(
            "nonfinite", f"model output {name!r} holds {bad.size} non-finite values ({bad[0]})"
        )
    return arr


@dataclass(frozen=True)
class ObsSpec:
    """Shape and dtype of one observation key for a single step (no batch, no time axis)."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" for low-dim, "uint8" for images


def check_control_rate(rate_hz: float, what: str = "control_rate_hz") -> float:
    """`rate_hz` if it is a rate a robot can run at (0, MAX_CONTROL_RATE_HZ], else ValueError."""
    if not (math.isfinite(rate_hz) and 0 < rate_hz <= MAX_CONTROL_RATE_HZ):
        raise ValueError(f"{what} {rate_hz:g} Hz is outside (0, {MAX_CONTROL_RATE_HZ:g}] Hz")
    return float(rate_hz)


def _finite_vector(values: Any, size: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != size:
        raise ValueError(f"{what} has {arr.size} values, expected {size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds non-finite values")
    return arr


@dataclass(frozen=True)
class ActionBounds:
    """Per-dimension action limits (dataset units) and where they came from (env or data)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    source: str

    @classmethod
    def from_dict(cls, bounds: Mapping[str, Any]) -> ActionBounds:
        """Parse and check `{"low": [A], "high": [A], "source": "env" | "data"}`."""
        try:
            low = _finite_vector(bounds["low"], np.size(bounds["low"]), "action_bounds.low")
            high = _finite_vector(bounds["high"], low.size, "action_bounds.high")
            source = str(bounds["source"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"action_bounds {bounds!r} is not {{low, high, source}}") from err
        if (low > high).any():
            i = int(np.flatnonzero(low > high)[0])
            raise ValueError(f"action_bounds low[{i}]={low[i]:g} > high[{i}]={high[i]:g}")
        if source not in ACTION_BOUNDS_SOURCES:
            raise ValueError(
                f"action_bounds.source {source!r} is not one of {ACTION_BOUNDS_SOURCES}"
            )
        return cls(tuple(low.tolist()), tuple(high.tolist()), source)

    def to_dict(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high), "source": self.source}


def observation_affine(
    stats: Mapping[str, Any], shape: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) of one key's normalization stats, checked: finite, spreads >= 0.

    y = (x - center) / scale; learning.normalization bakes the same map into the graph.
    """
    mode = stats.get("mode")
    if mode == "image":
        return np.zeros(shape or (), np.float64), np.full(shape or (), 255.0)
    if mode == "mean_std":
        center, spread = stats.get("mean"), stats.get("std")
    elif mode == "min_max":
        lo, hi = stats.get("min"), stats.get("max")
        if lo is None or hi is None:
            raise ValueError(f"min_max stats need min and max, got {sorted(stats)}")
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        center, spread = (hi + lo) / 2, (hi - lo) / 2
    else:
        raise ValueError(f"unknown normalization mode {mode!r} (mean_std, min_max, image)")
    shape = tuple(np.shape(center)) if shape is None else tuple(shape)
    center = _finite_vector(center, math.prod(shape), f"{mode} center").reshape(shape)
    spread = _finite_vector(spread, math.prod(shape), f"{mode} spread").reshape(shape)
    if (spread < 0).any():
        raise ValueError(f"{mode} stats have a negative spread")
    return center, np.where(spread < SCALE_EPS, 1.0, spread)


@dataclass(frozen=True)
class PolicyMetadata:
    """What a caller needs to drive a policy; mirrors the `roboloop` ONNX metadata JSON.

    Checked when built: positive sizes, a control rate in (0, MAX_CONTROL_RATE_HZ], action
    bounds of `action_dim` finite values, finite normalization stats. `action_bounds` is None
    for exports from before the bounds were part of the contract (the ROS node refuses those).
    """

    observations: dict[str, ObsSpec]
    obs_steps: int
    action_dim: int
    horizon: int
    n_action_steps: int
    control_rate_hz: float | None = None
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "euler", "steps": 10})
    model_type: str = "policy"
    action_bounds: ActionBounds | None = None
    normalization: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> stats

    def __post_init__(self) -> None:
        for name in ("obs_steps", "action_dim", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(
                f"n_action_steps={self.n_action_steps} must be in [1, horizon={self.horizon}]"
            )
        if self.control_rate_hz is not None:
            check_control_rate(self.control_rate_hz)
        if self.action_bounds is not None and len(self.action_bounds.low) != self.action_dim:
            raise ValueError(
                f"action_bounds have {len(self.action_bounds.low)} values, "
                f"action_dim={self.action_dim}"
            )
        for key in self.normalization:
            self.observation_affine(key)  # raises on non-finite or malformed stats

    def observation_affine(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(center, scale) of observation `key` from the normalization stats (None: no stats)."""
        stats = self.normalization.get(key)
        if stats is None:
            return None
        shape = self.observations[key].shape if key in self.observations else None
        try:
            return observation_affine(stats, shape)
        except ValueError as err:
            raise ValueError(f"normalization stats of {key!r}: {err}") from None

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> PolicyMetadata:
        """Build from the `roboloop` metadata JSON (extra keys are ignored)."""
        try:
            observations = {
                key: ObsSpec(tuple(int(d) for d in spec["shape"]), str(spec["dtype"]))
                for key, spec in meta["observations"].items()
            }
            rate = meta.get("control_rate_hz")
            bounds = meta.get("action_bounds")
            stats = (meta.get("normalization") or {}).get("stats") or {}
            return cls(
                observations=observations,
                obs_steps=int(meta["obs_steps"]),
                action_dim=int(meta["action_dim"]),
                horizon=int(meta["horizon"]),
                n_action_steps=int(meta["n_action_steps"]),
                control_rate_hz=None if rate is None else float(rate),
                sampler=dict(meta.get("sampler", {"type": "euler", "steps": 10})),
                model_type=str(meta.get("model_type", "policy")),
                action_bounds=None if bounds is None else ActionBounds.from_dict(bounds),
                normalization={str(k): dict(v) for k, v in stats.items()},
            )
        except KeyError as err:
            raise ValueError(f"policy metadata is missing key {err.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model_type": self.model_type,
            "observations": {
                k: {"shape": list(s.shape), "dtype": s.dtype} for k, s in self.observations.items()
            },
            "obs_steps": self.obs_steps,
            "action_dim": self.action_dim,
            "horizon": self.horizon,
            "n_action_steps": self.n_action_steps,
            "control_rate_hz": self.control_rate_hz,
            "sampler": dict(self.sampler),
            "normalization": {"baked": True, "stats": dict(self.normalization)},
        }
        if self.action_bounds is not None:
            out["action_bounds"] = self.action_bounds.to_dict()
        return out


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable, not ONNX, or lacks roboloop metadata."""
