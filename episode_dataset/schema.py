"""Names, key specs and errors of the episode dataset format (see docs/dataset_format.md).

Layout (robomimic-compatible)::

    data/                      attrs: total, env_args (JSON), obs_specs (JSON), action_spec (JSON)
      demo_<i>/                attrs: num_samples, meta (JSON)
        obs/<key>              (T, *shape)  attrs: dtype, shape, feature_type, units, encoding,
                                            source_topic
        actions                (T, A)
        rewards                (T,) float32
        dones                  (T,) bool
    mask/<filter>              (N,) bytes demo names
    episode_index/demos, num_samples   (roboloop extra: lengths without opening shards)
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Batch / group keys, shared with the learning DataModules.
DATA = "data"
MASK = "mask"
OBS = "obs"
ACTIONS = "actions"
REWARDS = "rewards"
DONES = "dones"
EPISODE_INDEX = "episode_index"

# Attribute names.
NUM_SAMPLES = "num_samples"
TOTAL = "total"
ENV_ARGS = "env_args"
OBS_SPECS = "obs_specs"
ACTION_SPEC = "action_spec"
META = "meta"
FORMAT_VERSION_ATTR = "roboloop_format_version"
FORMAT_VERSION = 1

# Shards of a linked dataset live next to the index file: `<FILE>.episodes/demo_<i>.h5`.
SHARD_DIR_SUFFIX = ".episodes"
SHARD_SUFFIX = ".h5"

# Feature types: what a key holds, declared so no consumer guesses "image" from a shape.
IMAGE = "image"  # (H, W, C) pixels
LOW_DIM = "low_dim"  # a vector (D,) (or any other non-image array)
FEATURE_TYPES = (IMAGE, LOW_DIM)

REWARD_DTYPE = np.dtype("float32")
DONE_DTYPE = np.dtype("bool")

_DEMO_RE = re.compile(r"demo_([0-9]+)")  # fullmatch: no trailing newline, ASCII digits only


class DatasetError(ValueError):
    """Malformed dataset or bad input. The message is one line naming file/episode/key."""


def demo_name(index: int) -> str:
    return f"demo_{index}"


def demo_index(name: str) -> int:
    """`demo_12` -> 12; raises DatasetError for any other name."""
    m = _DEMO_RE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise DatasetError(f"bad episode name {name!r} (expected demo_<int>)")
    return int(m.group(1))


def sort_demos(names: list[str]) -> list[str]:
    return sorted(names, key=demo_index)


@dataclass(frozen=True)
class KeySpec:
    """Per-step layout of one key: an episode stores an array of shape (T, *shape).

    `dtype` is normalized to numpy's name ("float32", "uint8", "bool"). `encoding` names the image
    encoding (e.g. "rgb8") for image keys; `source_topic` is the ROS topic it was recorded from.
    `feature_type` is IMAGE (shape (H, W, C)) or LOW_DIM; left out (files written before the
    field, writers that do not say) it is derived once, here: IMAGE when `encoding` is set.
    """

    dtype: str
    shape: tuple[int, ...] = field(default=())
    units: str | None = None
    encoding: str | None = None
    source_topic: str | None = None
    feature_type: str | None = None

    def __post_init__(self) -> None:
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as e:
            raise DatasetError(f"KeySpec: bad dtype {self.dtype!r}: {e}") from None
        if dtype.kind not in "biuf":
            raise DatasetError(f"KeySpec: dtype {dtype.name} not supported (bool/int/uint/float)")
        try:  # KeySpec("float32", 3) is a common slip; 3.5 is no size
            shape = tuple(operator.index(s) for s in self.shape)
        except TypeError:
            raise DatasetError(
                f"KeySpec: shape must be a tuple of integers, got {self.shape!r}"
            ) from None
        if any(s <= 0 for s in shape):
            raise DatasetError(f"KeySpec: shape {shape} must be positive")
        feature_type = self.feature_type
        if feature_type is None:
            feature_type = IMAGE if self.encoding is not None else LOW_DIM
        if feature_type not in FEATURE_TYPES:
            raise DatasetError(f"KeySpec: feature_type {feature_type!r} not in {FEATURE_TYPES}")
        if feature_type == IMAGE and len(shape) != 3:
            raise DatasetError(f"KeySpec: an image has shape (H, W, C), got {shape}")
        object.__setattr__(self, "dtype", dtype.name)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "feature_type", feature_type)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def is_image(self) -> bool:
        return self.feature_type == IMAGE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeySpec:
        return cls(
            dtype=d["dtype"],
            shape=tuple(d.get("shape", ())),
            units=d.get("units"),
            encoding=d.get("encoding"),
            source_topic=d.get("source_topic"),
            feature_type=d.get("feature_type"),
        )

    def to_attrs(self) -> dict[str, Any]:
        """Attributes stored on the HDF5 dataset (None fields are left out: HDF5 has no null)."""
        attrs: dict[str, Any] = {
            "dtype": self.dtype,
            "shape": np.asarray(self.shape, np.int64),
            "feature_type": self.feature_type,
        }
        for name in ("units", "encoding", "source_topic"):
            value = getattr(self, name)
            if value is not None:
                attrs[name] = value
        return attrs

    def coerce(self, value: Any, where: str, *, leading: int | None = None) -> np.ndarray:
        """Return `value` as this spec's dtype with shape (*leading, *shape).

        leading=None means one step (shape exactly `shape`); an int means T steps. Casts only
        within a kind family (float64 -> float32 ok, float -> uint8 is an error).
        """
        arr = np.asarray(value)
        want = self.shape if leading is None else (leading, *self.shape)
        if arr.shape != want:
            raise DatasetError(f"{where}: shape {arr.shape} != expected {want}")
        if arr.dtype != self.np_dtype:
            if not np.can_cast(arr.dtype, self.np_dtype, casting="same_kind"):
                raise DatasetError(f"{where}: dtype {arr.dtype} cannot be stored as {self.dtype}")
            if arr.dtype.kind in "iu" and self.np_dtype.kind in "iu" and arr.size:
                # same_kind allows int64 -> uint8, which would wrap 300 to 44.
                lim = np.iinfo(self.np_dtype)
                if arr.min() < lim.min or arr.max() > lim.max:
                    raise DatasetError(
                        f"{where}: values [{arr.min()}, {arr.max()}] outside {self.dtype} range"
                    )
            arr = arr.astype(self.np_dtype)
        return arr


def specs_to_json(specs: dict[str, KeySpec]) -> str:
    return json.dumps({k: s.to_dict() for k, s in specs.items()}, sort_keys=True)


def attr_str(value: Any) -> str:
    """h5py returns str attrs as str, but bytes when written by other tools."""
    return value.decode() if isinstance(value, bytes) else str(value)
