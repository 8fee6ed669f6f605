"""One decoder per ROS message type, shared by every roboloop node (rclpy-free, duck-typed).

Messages are read by attribute only, so the same code runs on rclpy messages, on messages that
`rosbags` deserialized from a bag and on plain test doubles. It lives in the dataset layer
because recording (live or from a bag, `episode_dataset.recording`) decodes with it too. Every
decoder either returns a numpy array or raises `MessageError`, whose `reason` is a short counter
name (nodes count rejections per topic and reason) and whose text is one line.

    sensor_msgs/msg/Image        rgb8 -> uint8 (H, W, 3); mono8 -> uint8 (H, W, 1);
                                 32FC<n> -> float32 (H, W, n), finite, either byte order
    sensor_msgs/msg/JointState   one field (position | velocity | effort) -> float32 (D,), finite
    std_msgs/msg/Float32MultiArray  data -> float32 of a given shape, finite
    std_msgs/msg/Float32, Bool   scalars (Float32 finite)

Images follow the ROS rule: rows may be padded (`step >= width * pixel bytes`) and `data` holds
exactly `step * height` bytes; the decoded array is a view that drops the padding. A size limit
(`max_bytes`) is checked on the header fields before any data is touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE = "sensor_msgs/msg/Image"
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT32_MULTI_ARRAY = "std_msgs/msg/Float32MultiArray"
FLOAT32 = "std_msgs/msg/Float32"
BOOL = "std_msgs/msg/Bool"
JOINT_STATE_FIELDS = ("position", "velocity", "effort")

_FIXED_ENCODINGS = {"rgb8": (np.dtype(np.uint8), 3), "mono8": (np.dtype(np.uint8), 1)}
_FLOAT_ENCODING = re.compile(r"^32FC([1-9][0-9]*)$")
NSEC_PER_SEC = 1_000_000_000


class MessageError(ValueError):
    """A message that cannot be used; `reason` is the counter name (encoding, shape, size, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---- stamps ------------------------------------------------------------------------------
def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (nanosec must be below one second)."""
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nanosec < NSEC_PER_SEC:
        raise MessageError("stamp", f"header.stamp.nanosec {nanosec} is not in [0, 1e9)")
    return sec * NSEC_PER_SEC + nanosec


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return stamp_to_ns(stamp) * 1e-9


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) for builtin_interfaces/Time."""
    sec = math.floor(ns / NSEC_PER_SEC)
    return sec, ns - sec * NSEC_PER_SEC


# ---- sensor_msgs/Image -------------------------------------------------------------------
def image_encoding(encoding: str) -> tuple[np.dtype, int]:
    """Supported encoding -> (dtype, channels); MessageError("encoding") otherwise."""
    if encoding in _FIXED_ENCODINGS:
        return _FIXED_ENCODINGS[encoding]
    match = _FLOAT_ENCODING.match(encoding)
    if match is None:
        raise MessageError(
            "encoding", f"image encoding {encoding!r} is not rgb8, mono8 or 32FC<n>"
        )
    return np.dtype(np.float32), int(match.group(1))


def decode_image(
    msg: Any,
    *,
    encoding: str | None = None,
    dtype: str | None = None,
    shape: Sequence[int | None] | None = None,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Image -> (H, W, C) array, checked against what the caller expects.

    encoding: exact encoding wanted (None: any supported one); dtype: element type wanted
    ("uint8" / "float32"); shape: (H, W, C) with None for "any"; max_bytes: largest `data`.
    """
    if encoding is not None and msg.encoding != encoding:
        raise MessageError("encoding", f"image encoding {msg.encoding!r}, expected {encoding!r}")
    elem, channels = image_encoding(msg.encoding)
    if dtype is not None and elem != np.dtype(dtype):
        raise MessageError(
            "encoding", f"image encoding {msg.encoding!r} holds {elem}, expected {dtype}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise MessageError("shape", f"image is empty ({height}x{width})")
    got = (height, width, channels)
    if shape is not None and tuple(shape) != got:  # (equal: the usual case, decided at once)
        if any(w is not None and w != g for w, g in zip(shape, got, strict=True)):
            want = "x".join("*" if w is None else str(w) for w in shape)
            raise MessageError("shape", f"image is {height}x{width}x{channels}, expected {want}")
    row = width * channels * elem.itemsize
    if step < row:
        raise MessageError("size", f"image step {step} < width*pixel bytes = {row}")
    if max_bytes is not None and step * height > max_bytes:
        raise MessageError(
            "too_large", f"image of {step * height} bytes exceeds the limit of {max_bytes}"
        )
    raw = np.frombuffer(msg.data, dtype=np.uint8)  # zero-copy over the message buffer
    if raw.size != step * height:
        raise MessageError(
            "size", f"image data has {raw.size} bytes, expected step*height = {step * height}"
        )
    if step == row and elem == np.uint8:  # unpadded bytes (the usual case): one view
        return raw.reshape(got)
    rows = raw.reshape(height, step)[:, :row]  # a view without the row padding
    if elem == np.uint8:
        return rows.reshape(height, width, channels)
    big_endian = bool(msg.is_bigendian)
    values = rows.view(elem.newbyteorder(">" if big_endian else "<"))
    values = values.reshape(height, width, channels)
    if big_endian:
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise MessageError("nonfinite", f"image holds {bad} non-finite values")
    return values


def encode_image(hwc: np.ndarray) -> tuple[int, int, str, int, bytes]:
    """(H, W, C) uint8 (C = 1 or 3) or float32 -> (height, width, encoding, step, data)."""
    if hwc.ndim != 3:
        raise ValueError(f"encode_image needs (H, W, C), got shape {hwc.shape}")
    height, width, channels = hwc.shape
    if hwc.dtype == np.uint8:
        encoding = {1: "mono8", 3: "rgb8"}.get(channels)
        if encoding is None:
            raise ValueError(f"uint8 images need 1 or 3 channels, got {channels}")
        data = np.ascontiguousarray(hwc)
    else:
        encoding = f"32FC{channels}"
        data = np.ascontiguousarray(hwc, dtype="<f4")
    return height, width, encoding, width * channels * data.itemsize, data.tobytes()


# ---- vectors and scalars -----------------------------------------------------------------
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SHORT = 64  # values checked in Python up to this many; numpy's check is cheaper for more


def _within_float32(values: Any) -> bool:
    """True when `values` is a short flat sequence of finite numbers within float32's range,
    so that their cast to float32 is finite (and warns of nothing): checked in Python, ~4x
    cheaper than numpy's check for a message's few values. False for anything else; the
    caller's numpy path then decides (and names the bad value)."""
    try:
        if len(values) > _SHORT:
            return False
        vals = values.tolist() if hasattr(values, "tolist") else values  # ndarray, array.array
        if not isinstance(vals, (list, tuple)):
            return False
        # fsum is finite only if every value is (nan/inf give nan/inf or raise)
        return (
            math.isfinite(math.fsum(vals))
            and -_FLOAT32_MAX <= min(vals)
            and max(vals) <= _FLOAT32_MAX
        )
    except (TypeError, ValueError, OverflowError):  # not numbers, empty, or sums past 1e308
        return False


def _finite_vector(values: Any, size: int | None, what: str) -> np.ndarray:
    if _within_float32(values):
        arr = np.asarray(values, dtype=np.float32)
        if size is not None and arr.size != size:
            raise MessageError("size", f"{what} has {arr.size} values, expected {size}")
        return arr
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: rejected just below
        arr = np.asarray(values, dtype=np.float32)
    if size is not None and arr.size != size:
        raise MessageError("size", f"{what} has {arr.size} values, expected {size}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise MessageError("nonfinite", f"{what}[{bad}] is {arr.flat[bad]} (not finite)")
    return arr


def decode_joint_state(msg: Any, field: str = "position", size: int | None = None) -> np.ndarray:
    """JointState `field` -> float32 (size,). When `name` is filled, the field must match it."""
    if field not in JOINT_STATE_FIELDS:
        raise ValueError(f"JointState field {field!r} is not one of {JOINT_STATE_FIELDS}")
    values = getattr(msg, field)
    names = len(msg.name)
    if names and len(values) != names:
        raise MessageError(
            "names", f"JointState.name has {names} entries but {field} has {len(values)}"
        )
    return _finite_vector(values, size, f"JointState.{field}")


def decode_multi_array(msg: Any, shape: Sequence[int]) -> np.ndarray:
    """Float32MultiArray `data` -> float32 array of `shape` (row-major)."""
    arr = _finite_vector(msg.data, math.prod(shape), "Float32MultiArray.data")
    return arr.reshape(tuple(shape))


def decode_float32(msg: Any) -> np.ndarray:
    """std_msgs/Float32 -> float32 scalar array (finite)."""
    x = msg.data
    if type(x) is float and -_FLOAT32_MAX <= x <= _FLOAT32_MAX:  # the common case, quickly
        return np.array(x, dtype=np.float32)
    return _finite_vector([msg.data], None, "Float32.data").reshape(())


def decode_bool(msg: Any) -> np.ndarray:
    """std_msgs/Bool -> bool scalar array."""
    return np.asarray(bool(msg.data), dtype=bool)
