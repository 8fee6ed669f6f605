"""Observation topics -> numpy arrays for the model (ROS-free: messages are duck-typed).

Which ROS message type a model observation arrives in follows from the feature type its spec
declares in the model metadata, the only bridge from training to the robot
(`roboloop_runtime.topics`):

    image   uint8 (H, W, 3) -> sensor_msgs/msg/Image, encoding rgb8, exactly H x W
    low_dim float (D,)      -> sensor_msgs/msg/JointState, D values in one field (`position`)

The topic of each key is either listed by hand (`observation_topics` / `observation_keys`) or
follows from the model's declared observations by the one convention, `<namespace>/<key>`
(`convention_topic_map`), the names the sim bridge publishes them under.
`bind_observations` checks the node's topic -> key map against the metadata at configure
time; `decode` turns one received message into the array for its key with the shared decoders
(episode_dataset.codecs) and rejects values absurdly far from the training data's
normalization stats, or raises `MessageError` (whose `reason` the node counts per topic; such a
message is dropped, never fed to the model). `observation_stamp` reads a message's header stamp
and rejects one further ahead of the node clock than `future_tolerance_s` (`future_stamp`, the
recorder's rule and reason: `episode_dataset.recording.alignment`): acted on, it would become
the stamp the loop last acted on and hold back every real observation after it.

With `spec_topic` the robot's latched spec (`roboloop_node_common.robot_spec`) says how fast it
runs (`real_time_factor_of`) and what it publishes: `check_against_spec` refuses, at configure,
a model observation the robot does not publish, or publishes with another feature or shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from episode_dataset.codecs import (
    IMAGE,
    JOINT_STATE,
    JOINT_STATE_FIELDS,
    MessageError,
    decode_image,
    decode_joint_state,
    stamp_to_ns,
)
from episode_dataset.recording.alignment import FUTURE_STAMP, is_future_stamp
from episode_dataset.recording.params import RECORDING_PARAMETERS
from roboloop_policy.safety import ObservationRange
from roboloop_runtime import ObsSpec
from roboloop_runtime.topics import TopicNameError, observation_message_type, observation_topic

# The recorder's real-time factor parameter: its range holds a spec's factor too.
REAL_TIME_FACTOR = RECORDING_PARAMETERS["real_time_factor"]

if TYPE_CHECKING:  # a type only: this module stays ROS-free
    from roboloop_node_common.robot_spec import DatasetSpec


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
    limit: ObservationRange | None = None  # None: no normalization stats (or an image)


def message_type_for(key: str, spec: ObsSpec) -> str:
    """The ROS message type that carries observation `key`: its declared feature type's, when
    the shape and dtype are what that message can hold."""
    try:
        msg_type = observation_message_type(key, spec.feature_type)
    except TopicNameError as err:
        raise BindingError(str(err)) from None
    image_like = spec.dtype == "uint8" and len(spec.shape) == 3 and spec.shape[2] == 3
    vector_like = spec.dtype.startswith("float") and len(spec.shape) == 1
    if (msg_type == IMAGE and image_like) or (msg_type == JOINT_STATE and vector_like):
        return msg_type
    raise BindingError(
        f"observation {key!r}: no ROS message type for {spec.dtype} {spec.shape} declared "
        f"{spec.feature_type} (supported: image uint8 (H, W, 3) -> Image rgb8, low_dim float "
        "(D,) -> JointState)"
    )


def convention_topic_map(
    observations: Mapping[str, ObsSpec], namespace: str
) -> tuple[list[str], list[str]]:
    """(topics, keys): every model observation key on `<namespace>/<key>` (the sim bridge's)."""
    keys = list(observations)
    try:
        return [observation_topic(k, namespace) for k in keys], keys
    except TopicNameError as err:
        raise BindingError(f"observation_namespace: {err}") from None


def bind_observations(
    topics: Sequence[str],
    keys: Sequence[str],
    observations: dict[str, ObsSpec],
    joint_state_field: str = "position",
    model: str = "model",
    limits: Mapping[str, ObservationRange] | None = None,
) -> list[ObservationBinding]:
    """Pair `observation_topics[i]` with `observation_keys[i]`; every model key exactly once.

    `limits[key]` is the range check of a low-dimensional key (from its normalization stats).
    """
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
        msg_type = message_type_for(key, spec)
        limit = (limits or {}).get(key) if msg_type == JOINT_STATE else None
        bindings[key] = ObservationBinding(topic, key, spec, msg_type, joint_state_field, limit)
    missing = sorted(set(observations) - set(bindings))
    if missing:
        raise BindingError(
            f"{model} needs observation(s) {missing} but observation_keys only maps "
            f"{sorted(bindings)}"
        )
    return list(bindings.values())


def decode(binding: ObservationBinding, msg: Any) -> np.ndarray:
    """Message -> array of `binding.spec` (no batch/time axes), or raise MessageError."""
    spec = binding.spec
    if binding.msg_type == IMAGE:
        value = decode_image(msg, encoding="rgb8", shape=spec.shape)
    else:
        value = decode_joint_state(msg, binding.field, spec.shape[0]).astype(
            spec.dtype, copy=False
        )
    if binding.limit is not None:
        binding.limit.check(value, binding.key)
    return value


def observation_stamp(msg: Any, now_ns: int, future_tolerance_s: float) -> int:
    """`msg.header.stamp` in ns, or MessageError: a bad stamp, or (`future_stamp`) one more
    than `future_tolerance_s` ahead of `now_ns` (the node clock at arrival), as the recorder
    rejects them (`Aligner.add`)."""
    stamp_ns = stamp_to_ns(msg.header.stamp)
    if is_future_stamp(stamp_ns * 1e-9, now_ns * 1e-9, future_tolerance_s):
        ahead_s = (stamp_ns - now_ns) * 1e-9
        raise MessageError(
            FUTURE_STAMP,
            f"header.stamp {stamp_ns * 1e-9:.9f} is {ahead_s:.3f} s ahead of the node clock "
            f"(future_tolerance_s {future_tolerance_s:g})",
        )
    return stamp_ns


def check_against_spec(
    bindings: Sequence[ObservationBinding], spec: DatasetSpec, spec_topic: str
) -> None:
    """Every bound model observation is a key of the robot's spec, of the same feature type and
    shape (BindingError, one line, otherwise)."""
    for b in bindings:
        published = spec.obs_specs.get(b.key)
        if published is None:
            raise BindingError(
                f"the model needs observation {b.key!r} but the spec on {spec_topic} has only "
                f"{sorted(spec.obs_specs)}"
            )
        if (published.feature_type, published.shape) != (b.spec.feature_type, b.spec.shape):
            raise BindingError(
                f"observation {b.key!r}: the model takes {b.spec.feature_type} "
                f"{b.spec.shape}, the spec on {spec_topic} publishes {published.feature_type} "
                f"{published.shape}"
            )


def real_time_factor_of(parameter: float, spec: DatasetSpec | None, spec_topic: str) -> float:
    """The real-time factor from exactly one source: the parameter (0 = unset: 1) or the spec."""
    if spec is None:
        return parameter or 1.0
    if parameter:
        raise BindingError(
            f"parameters real_time_factor ({parameter:g}) and spec_topic ({spec_topic}) both "
            "give the real-time factor: set only one (real_time_factor 0 takes the spec's)"
        )
    rtf = spec.real_time_factor
    if rtf is None:
        raise BindingError(f"the spec on {spec_topic} has no real_time_factor")
    high = REAL_TIME_FACTOR[2].high
    if not (math.isfinite(rtf) and 0 < rtf <= high):
        raise BindingError(
            f"the spec on {spec_topic} has real_time_factor {rtf:g}, outside (0, {high:g}]"
        )
    return rtf
