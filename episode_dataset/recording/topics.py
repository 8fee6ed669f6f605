"""What to record: parallel-array parameters -> validated per-topic specs (no rclpy).

Parameters (all the same length, one entry per topic)::

    topics: [/sim/state, /sim/camera/image_raw, /sim/applied_action, /sim/reward, /sim/done]
    types:  [sensor_msgs/msg/JointState, sensor_msgs/msg/Image, sensor_msgs/msg/JointState,
             std_msgs/msg/Float32, std_msgs/msg/Bool]
    keys:   [obs/state, obs/image, actions, rewards, dones]
    shapes: ["10", "64,64,3", "2", "", ""]          # per-step shape; "" = scalar
    fields: [position, "", effort, "", ""]          # JointState field; "" = type default
"""

from __future__ import annotations

from dataclasses import dataclass

from episode_dataset import ACTIONS, DONES, OBS, REWARDS, KeySpec
from episode_dataset.codecs import (
    BOOL,
    FLOAT32,
    FLOAT32_MULTI_ARRAY,
    IMAGE,
    JOINT_STATE,
    JOINT_STATE_FIELDS,
)

SUPPORTED_TYPES = (IMAGE, JOINT_STATE, FLOAT32_MULTI_ARRAY, FLOAT32, BOOL)
SCALAR_TYPES = {FLOAT32: "float32", BOOL: "bool"}


class RecorderConfigError(ValueError):
    """Bad recorder parameters; the message is one line naming the parameter and topic."""


@dataclass(frozen=True)
class TopicSpec:
    """One recorded topic: where it comes from and which dataset key it fills."""

    topic: str
    type: str
    key: str  # "obs/<name>", "actions", "rewards" or "dones"
    shape: tuple[int, ...]
    dtype: str
    field: str = ""  # JointState field
    encoding: str | None = None  # images: "rgb8"

    @property
    def obs_name(self) -> str | None:
        return self.key.split("/", 1)[1] if self.key.startswith(OBS + "/") else None

    def key_spec(self) -> KeySpec:
        return KeySpec(
            dtype=self.dtype, shape=self.shape, encoding=self.encoding, source_topic=self.topic
        )


def parse_shape(text: str, where: str) -> tuple[int, ...]:
    """ "64,64,3" -> (64, 64, 3); "" -> ()."""
    text = text.strip().strip("[]()")
    if not text:
        return ()
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise RecorderConfigError(f"{where}: bad shape {text!r} (want e.g. '64,64,3')") from None
    if any(d <= 0 for d in shape):
        raise RecorderConfigError(f"{where}: shape {shape} has a non-positive dimension")
    return shape


def parse_topics(
    topics: list[str],
    types: list[str],
    keys: list[str],
    shapes: list[str],
    fields: list[str] | None = None,
) -> list[TopicSpec]:
    """Validate the parallel arrays and build one TopicSpec per topic."""
    fields = list(fields) if fields else [""] * len(topics)
    lengths = {len(topics), len(types), len(keys), len(shapes), len(fields)}
    if len(lengths) != 1:
        raise RecorderConfigError(
            f"parameters topics/types/keys/shapes/fields differ in length: {len(topics)}, "
            f"{len(types)}, {len(keys)}, {len(shapes)}, {len(fields)}"
        )
    if not topics:
        raise RecorderConfigError("parameter topics is empty: nothing to record")
    specs = []
    for topic, typ, key, shape_text, fld in zip(topics, types, keys, shapes, fields, strict=True):
        where = f"topic {topic}"
        if typ not in SUPPORTED_TYPES:
            raise RecorderConfigError(f"{where}: type {typ!r} not one of {SUPPORTED_TYPES}")
        obs_name = key[len(OBS) + 1 :] if key.startswith(OBS + "/") else None
        if not (key in (ACTIONS, REWARDS, DONES) or (obs_name and "/" not in obs_name)):
            raise RecorderConfigError(
                f"{where}: key {key!r} not obs/<name>|actions|rewards|dones (no '/' in name)"
            )
        shape = parse_shape(shape_text, where)
        encoding = None
        if typ == IMAGE:
            if len(shape) != 3 or shape[2] != 3:
                raise RecorderConfigError(f"{where}: rgb8 image shape must be H,W,3, got {shape}")
            dtype, encoding = "uint8", "rgb8"
        elif typ in SCALAR_TYPES:
            if shape:
                raise RecorderConfigError(f"{where}: {typ} is a scalar, shape must be ''")
            dtype = SCALAR_TYPES[typ]
        else:
            if len(shape) != 1:
                raise RecorderConfigError(f"{where}: vector shape must be one dimension: {shape}")
            dtype = "float32"
        if typ == JOINT_STATE:
            fld = fld or ("effort" if key == ACTIONS else "position")
            if fld not in JOINT_STATE_FIELDS:
                raise RecorderConfigError(f"{where}: field {fld!r} not in {JOINT_STATE_FIELDS}")
        elif fld:
            raise RecorderConfigError(f"{where}: field {fld!r} only applies to JointState")
        if key == REWARDS and dtype != "float32" or key == DONES and dtype != "bool":
            raise RecorderConfigError(f"{where}: key {key} needs a scalar Float32/Bool topic")
        specs.append(TopicSpec(topic, typ, key, shape, dtype, fld, encoding))
    seen: dict[str, str] = {}
    for s in specs:
        for name, kind in ((s.topic, "topic"), (s.key, "key")):
            if name in seen:
                raise RecorderConfigError(f"{kind} {name} listed twice")
            seen[name] = kind
    if not any(s.key == ACTIONS for s in specs):
        raise RecorderConfigError("no topic has key 'actions' (one is required)")
    if not any(s.obs_name for s in specs):
        raise RecorderConfigError("no topic has an obs/<name> key (one is required)")
    return specs


def dataset_specs(specs: list[TopicSpec]) -> tuple[dict[str, KeySpec], KeySpec]:
    """(obs_specs by obs name, action_spec) for EpisodeWriter."""
    obs = {s.obs_name: s.key_spec() for s in specs if s.obs_name}
    action = next(s for s in specs if s.key == ACTIONS).key_spec()
    return obs, action
