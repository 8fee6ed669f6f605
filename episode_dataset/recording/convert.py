"""Recorded topic -> (stamp, numpy array) through the shared decoders (no rclpy).

Decoding is `roboloop_runtime.codecs`, the one decoder per message type every node uses, so
the recorder and the policy node accept and reject the same messages (row-padded images
accepted, JointStates whose names disagree with their values rejected). This module only picks
the decoder and its expectations from a `TopicSpec`. A converter returns the array; `convert`
adds the header stamp (`None` for headerless types: the caller stamps the sample). Anything
malformed raises `MessageError` with a short reason that the recorder counts per topic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from episode_dataset import codecs
from episode_dataset.codecs import MessageError
from episode_dataset.recording.topics import TopicSpec

__all__ = ["CONVERTERS", "Converter", "MessageError", "convert", "converter_for"]


def _image(msg: Any, spec: TopicSpec) -> np.ndarray:
    image = codecs.decode_image(msg, encoding=spec.encoding, dtype=spec.dtype, shape=spec.shape)
    # Unpadded, the array is a zero-copy view of the message. Padded rows (any amount, as the
    # policy node accepts them) are copied out, so that a buffered sample never holds padding.
    return image if image.flags.c_contiguous else np.ascontiguousarray(image)


def _joint_state(msg: Any, spec: TopicSpec) -> np.ndarray:
    return codecs.decode_joint_state(msg, spec.field, size=math.prod(spec.shape))


def _multi_array(msg: Any, spec: TopicSpec) -> np.ndarray:
    return codecs.decode_multi_array(msg, spec.shape)


@dataclass(frozen=True)
class Converter:
    convert: Callable[[Any, TopicSpec], np.ndarray]
    has_header: bool


# ROS type name -> how to read it. Extend here (not with if-branches in the node).
CONVERTERS: dict[str, Converter] = {
    codecs.IMAGE: Converter(_image, has_header=True),
    codecs.JOINT_STATE: Converter(_joint_state, has_header=True),
    codecs.FLOAT32_MULTI_ARRAY: Converter(_multi_array, has_header=False),
    codecs.FLOAT32: Converter(lambda msg, _spec: codecs.decode_float32(msg), has_header=False),
    codecs.BOOL: Converter(lambda msg, _spec: codecs.decode_bool(msg), has_header=False),
}


def convert(msg: Any, spec: TopicSpec) -> tuple[float | None, np.ndarray]:
    """Validate `msg` against `spec`: (header stamp in seconds or None, array of spec.shape)."""
    conv = CONVERTERS[spec.type]
    stamp = codecs.stamp_to_sec(msg.header.stamp) if conv.has_header else None
    return stamp, conv.convert(msg, spec)


def converter_for(spec: TopicSpec) -> Callable[[Any], tuple[float | None, np.ndarray]]:
    """`convert` bound to one topic's spec, its converter looked up once (the recorder calls
    it for every message)."""
    conv, stamp_to_sec = CONVERTERS[spec.type], codecs.stamp_to_sec
    read = conv.convert
    if conv.has_header:
        return lambda msg: (stamp_to_sec(msg.header.stamp), read(msg, spec))
    return lambda msg: (None, read(msg, spec))
