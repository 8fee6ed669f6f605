"""The export contract shared by every exporter, runner and node (torch-free).

Names of graph inputs/outputs, the metadata key and format version, the errors a runner raises,
the checked value types (observation specs, action bounds, recurrent state, normalization maps)
that the `roboloop` metadata JSON carries, and `MODEL_TYPES`: for every model type, the graph
inputs/outputs (names, shapes, dtypes) its metadata implies. `build_metadata` (exporters,
reference models) and `check_metadata` (runners) both go through that registry, so a file whose
graph does not match its declared type never loads. docs/export_contract.md is the prose version.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from episode_dataset.schema import FEATURE_TYPES, IMAGE, LOW_DIM  # declared once, by the format

METADATA_KEY = "roboloop"  # ONNX metadata_props key holding the JSON contract
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # v1 files are upgraded on load (`upgrade_v1`)
OBS_INPUT_PREFIX = "obs."  # ONNX input name of observation key k is "obs.<k>"
NOISE_INPUT = "noise"
ACTIONS_OUTPUT = "actions"
ACTIONS_INPUT = "actions"  # the action chunk a critic scores
Q_OUTPUT = "q"  # critic value(s): (B,) or (B, K) for an ensemble of K heads
STATE_IN_PREFIX = "state_in."  # recurrent state fed to a call ...
STATE_OUT_PREFIX = "state_out."  # ... and returned for the next call
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
    """Shape, dtype and feature type of one observation key for a single step (no batch, no
    time axis). The feature type is declared by whoever knows it (the dataset, the exporter),
    never guessed from the shape: encoders and nodes branch on it."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32" (low-dim, masks) or "uint8" (rgb HWC images)
    feature_type: str  # one of FEATURE_TYPES

    def __post_init__(self) -> None:
        if self.feature_type not in FEATURE_TYPES:
            raise ValueError(
                f"feature_type {self.feature_type!r} is not one of {list(FEATURE_TYPES)}"
            )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ObsSpec:
        """Parse `{"shape": [...], "dtype": ..., "feature_type": "image" | "low_dim"}`."""
        if "feature_type" not in spec:
            raise ValueError(f"observation spec {dict(spec)!r} declares no feature_type")
        return cls(
            tuple(int(d) for d in spec["shape"]), str(spec["dtype"]), str(spec["feature_type"])
        )

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "feature_type": self.feature_type}


def v1_feature_type(dtype: str) -> str:
    """The v1 upgrade rule (v1 files declared no feature type): uint8 is an image, anything
    else low-dim. Only `upgrade_v1` applies it; v2 metadata must declare the type."""
    return IMAGE if dtype == "uint8" else LOW_DIM


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor of a stateful model: graph input `state_in.<name>`
    (B, *shape), output `state_out.<name>` (B, *shape), and its value at episode start."""

    shape: tuple[int, ...]
    dtype: str
    initial: np.ndarray  # (*shape), broadcast over the batch by `initial_batch`

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> StateSpec:
        """Parse `{"shape": [...], "dtype": ..., "initial": number | nested list of shape}`."""
        try:
            shape, dtype = tuple(int(d) for d in spec["shape"]), str(spec["dtype"])
            initial = np.asarray(spec["initial"], dtype=np.dtype(dtype))
        except (KeyError, TypeError) as err:
            raise ValueError(f"state spec {dict(spec)!r} is not {{shape, dtype, initial}}") from (
                err
            )
        if initial.shape not in ((), shape):
            raise ValueError(f"state initial value has shape {initial.shape}, expected {shape}")
        if initial.dtype.kind == "f" and not np.isfinite(initial).all():
            raise ValueError("state initial value holds non-finite values")
        return cls(shape, dtype, np.broadcast_to(initial, shape))

    def to_dict(self) -> dict[str, Any]:
        init = self.initial
        flat = init.reshape(-1)
        value = flat[0].item() if flat.size and (flat == flat[0]).all() else init.tolist()
        return {"shape": list(self.shape), "dtype": self.dtype, "initial": value}

    def initial_batch(self, batch: int) -> np.ndarray:
        """(batch, *shape): the episode-start state of `batch` independent rows."""
        return np.ascontiguousarray(np.broadcast_to(self.initial, (batch, *self.shape)))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StateSpec)
            and (self.shape, self.dtype) == (other.shape, other.dtype)
            and np.array_equal(self.initial, other.initial)
        )

    __hash__ = None  # type: ignore[assignment]


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

    Checked when built: an acting model type, positive sizes, a control rate in
    (0, MAX_CONTROL_RATE_HZ], action bounds of `action_dim` finite values, finite normalization
    stats. `action_bounds` is None for exports from before the bounds were part of the contract
    (the ROS policy node refuses those). `noise_shape` is what the caller draws per batch row
    (None: a deterministic model, no noise input); `state` the recurrent tensors it carries.
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
    num_samples: int | None = None  # best_of_n: candidates sampled per row
    state: dict[str, StateSpec] = field(default_factory=dict)  # name -> recurrent state

    def __post_init__(self) -> None:
        kind = MODEL_TYPES.get(self.model_type)
        if kind is None or not kind.acting:
            acting = sorted(k for k, t in MODEL_TYPES.items() if t.acting)
            raise ValueError(f"model_type {self.model_type!r} is not a policy (one of {acting})")
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
        if self.state and not kind.stateful:
            raise ValueError(f"model_type {self.model_type!r} cannot carry state")
        for key in self.normalization:
            self.observation_affine(key)  # raises on non-finite or malformed stats
        kind.noise_shape(self)  # raises when a field the type needs is missing

    @property
    def noise_shape(self) -> tuple[int, ...] | None:
        """Per-row shape of the `noise` input, or None when the model takes no noise."""
        return MODEL_TYPES[self.model_type].noise_shape(self)

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
    def from_dict(cls, meta: Mapping[str, Any]) -> PolicyMetadata:
        """Build from the `roboloop` metadata JSON (v2 fields; extra keys are ignored)."""
        try:
            rate = meta.get("control_rate_hz")
            bounds = meta.get("action_bounds")
            stats = (meta.get("normalization") or {}).get("stats") or {}
            samples = meta.get("num_samples")
            return cls(
                observations=_observations(meta),
                obs_steps=int(meta["obs_steps"]),
                action_dim=int(meta["action_dim"]),
                horizon=int(meta["horizon"]),
                n_action_steps=int(meta["n_action_steps"]),
                control_rate_hz=None if rate is None else float(rate),
                sampler=dict(meta.get("sampler", {"type": "euler", "steps": 10})),
                model_type=str(meta.get("model_type", "policy")),
                action_bounds=None if bounds is None else ActionBounds.from_dict(bounds),
                normalization={str(k): dict(v) for k, v in stats.items()},
                num_samples=None if samples is None else int(samples),
                state=_states(meta),
            )
        except KeyError as err:
            raise ValueError(f"policy metadata is missing key {err.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model_type": self.model_type,
            "observations": {k: s.to_dict() for k, s in self.observations.items()},
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
        if self.num_samples is not None:
            out["num_samples"] = self.num_samples
        if self.state:
            out["state"] = {k: s.to_dict() for k, s in self.state.items()}
        return out


def _observations(meta: Mapping[str, Any]) -> dict[str, ObsSpec]:
    try:
        return {str(k): ObsSpec.from_dict(v) for k, v in meta["observations"].items()}
    except ValueError as err:
        raise ValueError(f"observations: {err}") from None


def _states(meta: Mapping[str, Any]) -> dict[str, StateSpec]:
    states = {}
    for name, spec in (meta.get("state") or {}).items():
        try:
            states[str(name)] = StateSpec.from_dict(spec)
        except ValueError as err:
            raise ValueError(f"state {name!r}: {err}") from None
    return states


# ---- model types -------------------------------------------------------------------------
Tensors = dict[str, tuple[tuple[int, ...], str]]  # graph tensor name -> (shape, -1 = batch; dtype)


def _chunk(m: PolicyMetadata) -> tuple[int, ...]:
    return (m.horizon, m.action_dim)


def _obs_history(m: PolicyMetadata) -> Tensors:
    return {
        OBS_INPUT_PREFIX + k: ((-1, m.obs_steps, *s.shape), s.dtype)
        for k, s in m.observations.items()
    }


def _state_io(m: PolicyMetadata, prefix: str) -> Tensors:
    return {prefix + k: ((-1, *s.shape), s.dtype) for k, s in m.state.items()}


def _acting_io(m: PolicyMetadata, outputs: Tensors) -> tuple[Tensors, Tensors]:
    inputs = _obs_history(m)
    if m.noise_shape is not None:
        inputs[NOISE_INPUT] = ((-1, *m.noise_shape), "float32")
    return (
        {**inputs, **_state_io(m, STATE_IN_PREFIX)},
        {**outputs, **_state_io(m, STATE_OUT_PREFIX)},
    )


def _policy_io(meta: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    m = PolicyMetadata.from_dict(meta)
    outputs: Tensors = {ACTIONS_OUTPUT: ((-1, *_chunk(m)), "float32")}
    if m.model_type == "best_of_n":
        outputs[Q_OUTPUT] = ((-1,), "float32")  # the chosen candidate's value
    return _acting_io(m, outputs)


@dataclass(frozen=True)
class CriticMetadata:
    """What a caller needs to query a critic: Q over an observation history + action chunk."""

    observations: dict[str, ObsSpec]
    obs_steps: int
    horizon: int
    action_dim: int
    ensemble_size: int | None = None  # K heads (critic_ensemble), None for one critic

    def __post_init__(self) -> None:
        for name in ("obs_steps", "horizon", "action_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.ensemble_size is not None and self.ensemble_size < 1:
            raise ValueError(f"ensemble_size={self.ensemble_size} must be >= 1")

    @property
    def q_shape(self) -> tuple[int, ...]:
        """Per-row shape of the q output: () for one critic, (K,) for an ensemble."""
        return () if self.ensemble_size is None else (self.ensemble_size,)

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> CriticMetadata:
        """Build from the `roboloop` metadata JSON of a critic or critic_ensemble."""
        ensemble = meta.get("ensemble_size")
        try:
            return cls(
                _observations(meta),
                int(meta["obs_steps"]),
                int(meta["horizon"]),
                int(meta["action_dim"]),
                None if ensemble is None else int(ensemble),
            )
        except KeyError as err:
            raise ValueError(f"critic metadata is missing key {err.args[0]!r}") from None


def _critic_io(meta: Mapping[str, Any], ensemble: bool = False) -> tuple[Tensors, Tensors]:
    """obs.* (B, obs_steps, *shape) + actions (B, horizon, A) -> q (B,) or (B, ensemble_size)."""
    m = CriticMetadata.from_dict(meta)
    if ensemble != (m.ensemble_size is not None):
        raise ValueError(
            "a critic_ensemble declares ensemble_size"
            if ensemble
            else "ensemble_size belongs to a critic_ensemble"
        )
    inputs: Tensors = {
        OBS_INPUT_PREFIX + k: ((-1, m.obs_steps, *s.shape), s.dtype)
        for k, s in m.observations.items()
    }
    inputs[ACTIONS_INPUT] = ((-1, m.horizon, m.action_dim), "float32")
    return inputs, {Q_OUTPUT: ((-1, *m.q_shape), "float32")}


def _goal_generator_io(meta: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    obs = _observations(meta)
    s = int(meta["image_size"])
    keys = meta["context_keys"]
    inputs = {OBS_INPUT_PREFIX + k: ((-1, *obs[k].shape), obs[k].dtype) for k in keys}
    inputs[NOISE_INPUT] = ((-1, 1, s, s), "float32")
    return inputs, {"goal_masks": ((-1, 1, s, s), "float32")}


def _q_function_io(meta: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    # Mask height/width are fixed at export (any size; the network pools to `image_size`).
    h, w = (int(d) for d in meta["inputs"]["state_masks"]["shape"][-2:])
    return (
        {
            "state_masks": ((-1, len(meta["state_keys"]), h, w), "float32"),
            "action_masks": ((-1, len(meta["action_keys"]), h, w), "float32"),
        },
        {"q_values": ((-1, 1), "float32")},
    )


# The graphs of a world model (`step` field); `actor` is Dreamer's policy on the latent.
WORLD_MODEL_STEPS = ("filter", "imagine", "decode", "actor")
PREDICTION_OUTPUT_PREFIX = "prediction."  # decode: output name of observation key k


def _world_model_io(meta: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    """RSSM steps over an explicit latent (state deter, stoch; Z = the stoch size):
    filter   obs.<key> (B, *shape), prev_action (B, A), noise (B, Z), state_in.* -> state_out.*
    imagine  action (B, A), noise (B, Z), state_in.* -> state_out.*, reward (B,), continue (B,)
    decode   state_in.* -> prediction.<key> (B, *shape) float32, the observation in raw units
    actor    state_in.*, noise (B, A) -> actions (B, A) in env units (noise 0: the mode)
    """
    step = meta["step"]
    if step not in WORLD_MODEL_STEPS:
        raise ValueError(f"step {step!r} is not one of {list(WORLD_MODEL_STEPS)}")
    states = _states(meta)
    if sorted(states) != ["deter", "stoch"]:
        raise ValueError(f"state must be deter and stoch, got {sorted(states)}")
    action: tuple[tuple[int, ...], str] = ((-1, int(meta["action_dim"])), "float32")
    noise: tuple[tuple[int, ...], str] = ((-1, *states["stoch"].shape), "float32")
    state_in = {STATE_IN_PREFIX + k: ((-1, *s.shape), s.dtype) for k, s in states.items()}
    state_out = {STATE_OUT_PREFIX + k: ((-1, *s.shape), s.dtype) for k, s in states.items()}
    observations = _observations(meta)
    if step == "imagine":
        scalar: tuple[tuple[int, ...], str] = ((-1,), "float32")
        inputs = {"action": action, NOISE_INPUT: noise, **state_in}
        return inputs, {**state_out, "reward": scalar, "continue": scalar}
    if step == "decode":
        predictions = {
            PREDICTION_OUTPUT_PREFIX + k: ((-1, *s.shape), "float32")
            for k, s in observations.items()
        }
        return state_in, predictions
    if step == "actor":
        return {**state_in, NOISE_INPUT: action}, {"actions": action}
    obs = {OBS_INPUT_PREFIX + k: ((-1, *s.shape), s.dtype) for k, s in observations.items()}
    return {**obs, "prev_action": action, NOISE_INPUT: noise, **state_in}, state_out


@dataclass(frozen=True)
class ModelType:
    """One entry of MODEL_TYPES: what a model of this type exposes.

    io(meta) -> (inputs, outputs): the graph tensors the other metadata fields imply; the
    metadata's own `inputs`/`outputs` must equal them. `acting`: runs behind the `Policy`
    interface (PolicyMetadata fields). `noise_shape(policy_metadata)`: per-row noise the caller
    draws (None: no noise input). `stateful`: may carry `state_in.*` / `state_out.*` tensors.
    `v1_feature_type`: the v1 upgrade rule for its observations (dtype -> feature type).
    """

    name: str
    summary: str
    io: Callable[[Mapping[str, Any]], tuple[Tensors, Tensors]]
    acting: bool = False
    noise_shape: Callable[[PolicyMetadata], tuple[int, ...] | None] = lambda m: None
    stateful: bool = False
    v1_feature_type: Callable[[str], str] = v1_feature_type


MODEL_TYPES: dict[str, ModelType] = {}


def register_model_type(kind: ModelType) -> ModelType:
    """Add a model type (extend here, not with if-branches in runners or exporters)."""
    if kind.name in MODEL_TYPES:
        raise ValueError(f"model type {kind.name!r} is already registered")
    MODEL_TYPES[kind.name] = kind
    return kind


def _best_of_n_noise(m: PolicyMetadata) -> tuple[int, ...]:
    if m.num_samples is None or m.num_samples < 1:
        raise ValueError(f"best_of_n needs num_samples >= 1, got {m.num_samples}")
    return (m.num_samples, *_chunk(m))


for _kind in (
    ModelType(
        "policy",
        "stochastic sampler: obs.* (B, obs_steps, *shape) + noise (B, horizon, A) -> actions",
        _policy_io,
        acting=True,
        noise_shape=_chunk,
        stateful=True,
    ),
    ModelType(
        "actor",
        "deterministic actor: obs.* (B, obs_steps, *shape) -> actions (B, horizon, A), no noise",
        _policy_io,
        acting=True,
        stateful=True,
    ),
    ModelType(
        "best_of_n",
        "sampler + critic + argmax in one graph: obs.* + noise (B, N, horizon, A) -> actions "
        "(B, horizon, A), q (B,) of the chosen candidate",
        _policy_io,
        acting=True,
        noise_shape=_best_of_n_noise,
        stateful=True,
    ),
    ModelType(
        "critic",
        "Q over observation + action chunk: obs.* + actions (B, horizon, A) -> q (B,)",
        _critic_io,
    ),
    ModelType(
        "critic_ensemble",
        "K critic heads in one graph: obs.* + actions (B, horizon, A) -> q (B, K)",
        functools.partial(_critic_io, ensemble=True),
    ),
    ModelType(
        "goal_generator",
        "NAMO goal masks: obs.<context mask> (B, S, S) + noise (B, 1, S, S) -> goal_masks",
        _goal_generator_io,
        v1_feature_type=lambda dtype: "image",  # every v1 generator input is a mask image
    ),
    ModelType(
        "q_function",
        "NAMO Q: state_masks (B, 11, H, W) + action_masks (B, 2, H, W) -> q_values (B, 1)",
        _q_function_io,
    ),
    ModelType(
        "world_model",
        "RSSM step (`step`): filter obs.* + prev_action + noise + state_in.{deter, stoch} -> "
        "state_out.*; imagine action + noise + state_in.* -> state_out.*, reward, continue; "
        "decode state_in.* -> prediction.*; actor state_in.* + noise -> actions",
        _world_model_io,
        stateful=True,
    ),
):
    register_model_type(_kind)


def _tensor_specs(tensors: Tensors) -> dict[str, dict[str, Any]]:
    return {n: {"shape": list(shape), "dtype": dtype} for n, (shape, dtype) in tensors.items()}


def upgrade_v1(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 metadata dict in v2 form: observations get the feature type of their model type's
    v1 rule (`v1_feature_type`: uint8 -> image, else low-dim; goal generators: image);
    `upgraded_from` records the version the file was written with."""
    kind = MODEL_TYPES.get(str(meta.get("model_type")))
    rule = kind.v1_feature_type if kind is not None else v1_feature_type
    out = dict(meta, format_version=FORMAT_VERSION, upgraded_from=1)
    if isinstance(meta.get("observations"), Mapping):
        out["observations"] = {
            k: {**spec, "feature_type": spec.get("feature_type") or rule(str(spec.get("dtype")))}
            for k, spec in meta["observations"].items()
        }
    return out


def check_metadata(meta: Any) -> dict[str, Any]:
    """The metadata in v2 form if it is a readable version of a registered model type whose
    declared `inputs`/`outputs` are exactly what its other fields imply; else ValueError."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"metadata is a {type(meta).__name__}, not a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"metadata format_version {version!r}, expected one of "
            f"{list(READABLE_FORMAT_VERSIONS)}"
        )
    for key in ("model_type", "inputs", "outputs"):
        if key not in meta:
            raise ValueError(f"metadata lacks key {key!r}")
    meta = upgrade_v1(meta) if version == 1 else dict(meta)
    kind = MODEL_TYPES.get(str(meta["model_type"]))
    if kind is None:
        raise ValueError(f"model_type {meta['model_type']!r} is not one of {sorted(MODEL_TYPES)}")
    try:
        inputs, outputs = kind.io(meta)
    except KeyError as err:
        raise ValueError(f"{kind.name} metadata is missing key {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{kind.name} metadata: {err}") from None
    for what, want in (("inputs", inputs), ("outputs", outputs)):
        have = meta[what]
        if not isinstance(have, Mapping):
            raise ValueError(f"metadata {what} is not a mapping")
        for name in sorted(set(want) | set(have)):
            if name not in have:
                raise ValueError(f"{kind.name} metadata {what} lack {name!r}")
            if name not in want:
                raise ValueError(
                    f"{kind.name} metadata {what} have {name!r}, not one of {sorted(want)}"
                )
            expected = _tensor_specs({name: want[name]})[name]
            if dict(have[name]) != expected:
                raise ValueError(
                    f"{kind.name} metadata {what}[{name!r}] is {dict(have[name])}, its other "
                    f"fields imply {expected}"
                )
    return meta


def graph_io(model_type: str, fields: Mapping[str, Any]) -> tuple[dict, dict]:
    """(inputs, outputs) metadata specs the registry derives for `model_type` from `fields`."""
    inputs, outputs = MODEL_TYPES[model_type].io({**fields, "model_type": model_type})
    return _tensor_specs(inputs), _tensor_specs(outputs)


def build_metadata(
    model_type: str,
    fields: Mapping[str, Any],
    *,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    training_config: Any = None,
    code_version: str = "unknown",
) -> dict[str, Any]:
    """The `roboloop` metadata JSON of a model: the one builder (exporter, reference models).

    `fields` are the type's own keys (observations, horizon, ...). `inputs`/`outputs` are the
    graph's tensors when the caller traced them (checked against the registry); left None
    they are derived from the registry. ValueError for anything `check_metadata` refuses.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {sorted(MODEL_TYPES)}")
    if (inputs is None) != (outputs is None):
        raise ValueError("give both graph inputs and outputs, or neither")
    if inputs is None:
        inputs, outputs = graph_io(model_type, fields)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_type": model_type,
        **{k: v for k, v in fields.items() if k != "model_type"},
        "inputs": dict(inputs),
        "outputs": dict(outputs),
        "training_config": {} if training_config is None else training_config,
        "code_version": code_version,
    }
    return check_metadata(meta)


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable, not ONNX, or lacks roboloop metadata."""
