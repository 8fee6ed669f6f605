"""Where the recorder's topic map comes from (no rclpy): parameter lists, a dataset, or a robot.

Three sources, one result (`Recording`: topic specs, env_args, control rate, real-time factor):

- the parallel-array parameters `topics/types/keys/shapes/fields` (any robot, written by hand);
- `spec_path`: an existing dataset (e.g. one written by `sim.collect`, or the file being
  appended to): its observation/action KeySpecs and env_args;
- `spec_topic`: the latched spec a sim bridge publishes (`<namespace>/spec`,
  `roboloop_node_common.robot_spec`: the topic of each key and the bridge's real-time factor).

A dataset spec becomes topics by the one convention (`roboloop_runtime.topics`): each key is
read from its KeySpec's `source_topic` when the spec names one, else from
`<topic_namespace>/<key>`; actions from `<topic_namespace>/applied_action`, rewards and dones
from `.../reward` and `.../done`. An image key (KeySpec `encoding` rgb8) is an Image topic, any
other a JointState (`position`; actions: `effort`).

`control_rate_hz` means control steps per second of robot time everywhere (the spec's
env_args.control_rate_hz); a robot run slower than real time has a `real_time_factor`, and the
recorded timeline then runs at control_rate_hz x real_time_factor steps per stamp second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from roboloop_node_common.robot_spec import DatasetSpec

from episode_dataset import ACTIONS, DONES, OBS, REWARDS, EpisodeReader
from episode_dataset.recording.params import Recording, make_recording
from episode_dataset.recording.topics import RecorderConfigError, TopicSpec, parse_topics
from roboloop_runtime.topics import observation_message_type, observation_topic, step_topic


def read_dataset_spec(path: str) -> DatasetSpec:
    """The spec of an existing dataset file (DatasetError names the file when it is not one)."""
    with EpisodeReader(path) as reader:
        return DatasetSpec(dict(reader.obs_specs), reader.action_spec, dict(reader.env_args))


def topics_from_spec(spec: DatasetSpec, namespace: str) -> list[TopicSpec]:
    """One TopicSpec per observation key, actions, rewards and dones (module docstring)."""
    topics, types, keys, shapes, fields = [], [], [], [], []
    for key, ks in spec.obs_specs.items():
        topics.append(ks.source_topic or observation_topic(key, namespace))
        types.append(observation_message_type(key, ks.feature_type))
        keys.append(f"{OBS}/{key}")
        shapes.append(",".join(str(d) for d in ks.shape))
        fields.append("" if ks.is_image else "position")
    steps = (
        (ACTIONS, spec.action_spec.source_topic or step_topic("applied_action", namespace)),
        (REWARDS, step_topic("reward", namespace)),
        (DONES, step_topic("done", namespace)),
    )
    for key, topic in steps:
        topics.append(topic)
        keys.append(key)
    types += ["sensor_msgs/msg/JointState", "std_msgs/msg/Float32", "std_msgs/msg/Bool"]
    shapes += [",".join(str(d) for d in spec.action_spec.shape), "", ""]
    fields += ["effort", "", ""]
    return parse_topics(topics, types, keys, shapes, fields)


def plan_recording(
    lists: Sequence[Sequence[str]] | None,
    spec: DatasetSpec | None,
    *,
    namespace: str,
    env_args: Mapping[str, Any],
    control_rate_hz: float,
    real_time_factor: float,
    source: str = "parameters",
) -> Recording:
    """Topics from the lists (topics, types, keys, shapes, fields) or from `spec` (exactly one);
    env_args and rates as `make_recording` resolves them against the spec's."""
    if (lists is None) == (spec is None):
        raise RecorderConfigError("give either the topic lists or a spec, not both")
    topics = parse_topics(*lists) if lists is not None else topics_from_spec(spec, namespace)
    return make_recording(
        topics,
        env_args=env_args,
        control_rate_hz=control_rate_hz,
        real_time_factor=real_time_factor,
        spec_env_args=spec.env_args if spec else None,
        spec_real_time_factor=spec.real_time_factor if spec else None,
        source=source,
    )
