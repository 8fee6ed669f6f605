"""Validate ROS messages and convert them to numpy, without importing rclpy.

Messages are duck-typed (attribute access only), so the same code runs on rclpy messages and on
plain test doubles. A converter returns `(stamp_s | None, array)`; `None` means the type has no
header and the caller stamps the sample on arrival. Anything malformed raises `InvalidMessage`
with a short reason that the recorder counts per topic; malformed data is never written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from roboloop_recorder.topics import TopicSpec


class InvalidMessage(ValueError):
    """A message that does not match its declared key spec. `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def _image(msg: Any, spec: TopicSpec) -> np.ndarray:
    h, w, c = spec.shape
    if msg.encoding != spec.encoding:
        raise InvalidMessage("encoding", f"got {msg.encoding!r}, expected {spec.encoding!r}")
    if (msg.height, msg.width) != (h, w):
        raise InvalidMessage("shape", f"got {msg.height}x{msg.width}, expected {h}x{w}")
    if msg.step != w * c:
        raise InvalidMessage("size", f"step {msg.step} != width*channels {w * c}")
    # np.frombuffer is zero-copy over the message's buffer; the array keeps the message alive.
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != h * w * c:
        raise InvalidMessage("size", f"{data.size} bytes, expected {h * w * c}")
    return data.reshape(h, w, c)


def _vector(values: Any, spec: TopicSpec) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    expected = math.prod(spec.shape)
    if arr.size != expected:
        raise InvalidMessage("size", f"{arr.size} values, expected {expected}")
    if not np.isfinite(arr).all():
        raise InvalidMessage("nan", "non-finite value")
    return arr.reshape(spec.shape)


def _joint_state(msg: Any, spec: TopicSpec) -> np.ndarray:
    return _vector(getattr(msg, spec.field), spec)


def _multi_array(msg: Any, spec: TopicSpec) -> np.ndarray:
    return _vector(msg.data, spec)


def _float32(msg: Any, spec: TopicSpec) -> np.ndarray:
    value = float(msg.data)
    if not math.isfinite(value):
        raise InvalidMessage("nan", "non-finite value")
    return np.asarray(value, dtype=np.float32)


def _bool(msg: Any, spec: TopicSpec) -> np.ndarray:
    return np.asarray(bool(msg.data), dtype=bool)


@dataclass(frozen=True)
class Converter:
    convert: Callable[[Any, TopicSpec], np.ndarray]
    has_header: bool


# ROS type name -> how to read it. Extend here (not with if-branches in the node).
CONVERTERS: dict[str, Converter] = {
    "sensor_msgs/msg/Image": Converter(_image, has_header=True),
    "sensor_msgs/msg/JointState": Converter(_joint_state, has_header=True),
    "std_msgs/msg/Float32MultiArray": Converter(_multi_array, has_header=False),
    "std_msgs/msg/Float32": Converter(_float32, has_header=False),
    "std_msgs/msg/Bool": Converter(_bool, has_header=False),
}


def convert(msg: Any, spec: TopicSpec) -> tuple[float | None, np.ndarray]:
    """Validate `msg` against `spec`: (header stamp in seconds or None, array of spec.shape)."""
    conv = CONVERTERS[spec.type]
    stamp = stamp_to_sec(msg.header.stamp) if conv.has_header else None
    return stamp, conv.convert(msg, spec)
