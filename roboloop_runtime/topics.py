"""Which ROS topic carries which key: the one naming convention (torch-, rclpy-, MuJoCo-free).

The sim bridge publishes every observation key of its env under this convention, and the recorder
and the policy node subscribe to the same names when they take their topic map from a dataset's
or a model's spec instead of a hand-written parameter list:

    observation key k                 <namespace>/<k>
        low-dim feature (float (D,))  sensor_msgs/msg/JointState, D values in `position`
        image feature (uint8 (H, W, 3)) sensor_msgs/msg/Image rgb8
    per-step topics                   <namespace>/action (commands in), /applied_action,
                                      /reward, /done

with namespace "/sim" by default: `/sim/state`, `/sim/image`, `/sim/applied_action`. The feature
of a key is declared by its producer (the env's wrappers, a dataset KeySpec's `encoding`, a
model's metadata), never guessed from its shape here.
"""

from __future__ import annotations

import re

from episode_dataset import IMAGE as IMAGE_FEATURE
from episode_dataset import LOW_DIM as LOW_DIM_FEATURE
from episode_dataset.codecs import BOOL, FLOAT32, IMAGE, JOINT_STATE

DEFAULT_NAMESPACE = "/sim"
# feature type (episode_dataset, the export contract) -> ROS message type
FEATURE_MESSAGE_TYPES = {IMAGE_FEATURE: IMAGE, LOW_DIM_FEATURE: JOINT_STATE}
# Per-step topics of a robot (or sim bridge) -> message type. Actions go in `effort`.
STEP_TOPICS = {
    "action": JOINT_STATE,
    "applied_action": JOINT_STATE,
    "reward": FLOAT32,
    "done": BOOL,
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # one token of a ROS topic name


class TopicNameError(ValueError):
    """A key or namespace that cannot become a ROS topic name (one line, names it)."""


def _join(namespace: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TopicNameError(
            f"key {name!r} cannot be a ROS topic name token (letters, digits, '_', "
            "starting with a letter)"
        )
    parts = [p for p in namespace.split("/") if p]
    bad = [p for p in parts if not _NAME.fullmatch(p)]
    if bad or not namespace.startswith("/"):
        raise TopicNameError(f"topic namespace {namespace!r} is not an absolute ROS name")
    return "/" + "/".join([*parts, name])


def observation_topic(key: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The topic observation `key` is published on: `<namespace>/<key>`."""
    return _join(namespace, key)


def observation_message_type(key: str, feature: str) -> str:
    """The ROS message type that carries an observation of this feature."""
    try:
        return FEATURE_MESSAGE_TYPES[feature]
    except KeyError:
        raise TopicNameError(
            f"observation {key!r}: feature {feature!r} is not one of "
            f"{sorted(FEATURE_MESSAGE_TYPES)}"
        ) from None


def step_topic(name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """`<namespace>/<name>` for one of STEP_TOPICS (action, applied_action, reward, done)."""
    if name not in STEP_TOPICS:
        raise TopicNameError(f"{name!r} is not one of the step topics {sorted(STEP_TOPICS)}")
    return _join(namespace, name)


def spec_topic(namespace: str = DEFAULT_NAMESPACE) -> str:
    """`<namespace>/spec`: std_msgs/String JSON, latched, the dataset spec of the robot's keys."""
    return _join(namespace, "spec")


def step_ack_topic(namespace: str = DEFAULT_NAMESPACE) -> str:
    """`<namespace>/step_ack`: std_msgs/Header from each reader a lockstep sim waits for."""
    return _join(namespace, "step_ack")
