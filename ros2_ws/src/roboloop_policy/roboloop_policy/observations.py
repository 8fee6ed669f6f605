"""Observation topics -> numpy arrays for the model (ROS-free: messages are duck-typed).

Which ROS message type a model observation arrives in follows from its spec in the model
metadata, the only bridge from training to the robot:

    uint8 (H, W, 3)   -> sensor_msgs/msg/Image, encoding rgb8, exactly H x W
    float32 (D,)      -> sensor_msgs/msg/JointState, D values in one field (default `position`)

`bind_observations` checks the node's topic -> key parameters against the metadata at configure
time; `decode` turns one received message into the array for its key or raises
`ObservationError` (the node counts and drops such messages, it never feeds them to the model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from learning.policy_interface import ObsSpec

IMAGE = "sensor_msgs/msg/Image"
JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_STATE_FIELDS = ("position", "velocity", "effort")


class ObservationError(ValueError):
    """A received message cannot be used as the observation it is bound to (names the topic)."""


class BindingError(ValueError):
    """The topic -> key parameters do not match the model's observations."""


@dataclass(frozen=True)
class ObservationBinding:
    """One subscribed topic feeding one model observation key."""

    topic: str
    key: str
    spec: ObsSpec
    msg_type: str  # IMAGE or JOINT_STATE
    field: str = "position"  # JointState field holding the vector (unused for images)


def message_type_for(key: str, spec: ObsSpec) -> str:
    """The ROS message type that carries observation `key` with this spec."""
    if spec.dtype == "uint8" and len(spec.shape) == 3 and spec.shape[2] == 3:
        return IMAGE
    if spec.dtype.startswith("float") and len(spec.shape) == 1:
        return JOINT_STATE
    raise BindingError(
        f"observation {key!r}: no ROS message type for {spec.dtype} {spec.shape} "
        "(supported: uint8 (H, W, 3) -> Image rgb8, float (D,) -> JointState)"
    )


def bind_observations(
    topics: Sequence[str],
    keys: Sequence[str],
    observations: dict[str, ObsSpec],
    joint_state_field: str = "position",
    model: str = "model",
) -> list[ObservationBinding]:
    """Pair `observation_topics[i]` with `observation_keys[i]`; every model key exactly once."""
    if len(topics) != len(keys):
        raise BindingError(
            f"observation_topics has {len(topics)} entries but observation_keys has {len(keys)}"
        )
    if joint_state_field not in JOINT_STATE_FIELDS:
        raise BindingError(
            f"joint_state_field {joint_state_field!r} is not one of {JOINT_STATE_FIELDS}"
        )
    seen_topics: set[str] = set()
    bindings: dict[str, ObservationBinding] = {}
    for topic, key in zip(topics, keys, strict=True):
        if key not in observations:
            raise BindingError(
                f"observation_keys: {key!r} (topic {topic}) is not an observation of {model}; "
                f"its observations are {sorted(observations)}"
            )
        if key in bindings:
            raise BindingError(f"observation_keys: {key!r} is bound twice")
        if topic in seen_topics:
            raise BindingError(f"observation_topics: {topic} is listed twice")
        seen_topics.add(topic)
        spec = observations[key]
        bindings[key] = ObservationBinding(
            topic, key, spec, message_type_for(key, spec), joint_state_field
        )
    missing = sorted(set(observations) - set(bindings))
    if missing:
        raise BindingError(
            f"{model} needs observation(s) {missing} but observation_keys only maps "
            f"{sorted(bindings)}"
        )
    return list(bindings.values())


def decode(binding: ObservationBinding, msg: Any) -> np.ndarray:
    """Message -> array of `binding.spec` (no batch/time axes), or raise ObservationError."""
    if binding.msg_type == IMAGE:
        return decode_image(msg, binding.spec, binding.topic)
    return decode_joint_state(msg, binding.spec, binding.topic, binding.field)


def decode_image(msg: Any, spec: ObsSpec, topic: str) -> np.ndarray:
    """sensor_msgs/Image rgb8 -> uint8 (H, W, 3), a zero-copy view when rows are unpadded."""
    height, width = spec.shape[0], spec.shape[1]
    if msg.encoding != "rgb8":
        raise ObservationError(f"{topic}: image encoding {msg.encoding!r}, expected 'rgb8'")
    if (msg.height, msg.width) != (height, width):
        raise ObservationError(
            f"{topic}: image is {msg.height}x{msg.width} (HxW), model expects {height}x{width}"
        )
    row = width * 3
    if msg.step < row:
        raise ObservationError(f"{topic}: image step {msg.step} < width*3 = {row}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != msg.step * height:
        raise ObservationError(
            f"{topic}: image data has {data.size} bytes, expected step*height = "
            f"{msg.step * height}"
        )
    # Rows may be padded to `step` bytes; drop the padding.
    return data.reshape(height, msg.step)[:, :row].reshape(height, width, 3)


def decode_joint_state(msg: Any, spec: ObsSpec, topic: str, field: str = "position") -> np.ndarray:
    """sensor_msgs/JointState `field` -> float (D,); wrong length or non-finite is an error."""
    values = getattr(msg, field)
    (dim,) = spec.shape
    if len(values) != dim:
        raise ObservationError(
            f"{topic}: JointState.{field} has {len(values)} values, expected {dim}"
        )
    arr = np.asarray(values, dtype=spec.dtype)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ObservationError(f"{topic}: JointState.{field}[{bad}] is {arr[bad]} (not finite)")
    return arr


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp_fields(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) for builtin_interfaces/Time."""
    sec = math.floor(ns / 1_000_000_000)
    return sec, ns - sec * 1_000_000_000
