"""The recorder's topic map from a dataset spec or a bridge's spec message (ROS-free)."""

from __future__ import annotations

import json

import pytest
from roboloop_node_common.robot_spec import (
    DatasetSpec,
    SpecError,
    parse_spec_message,
    spec_message,
)
from roboloop_recorder.spec import plan_recording, read_dataset_spec

from episode_dataset import EpisodeWriter, KeySpec
from episode_dataset.recording.topics import RecorderConfigError

STATE = KeySpec("float32", (10,))
IMAGE = KeySpec("uint8", (8, 6, 3), encoding="rgb8")
ACTION = KeySpec("float32", (2,))
RATE = {"control_rate_hz": 50.0}


def plan(spec: DatasetSpec | None = None, lists=None, **kw):
    args = {"namespace": "/robot", "env_args": {}, "control_rate_hz": 0.0, "real_time_factor": 0.0}
    return plan_recording(lists, spec, **{**args, **kw})


def test_a_dataset_spec_becomes_topics_by_the_convention(tmp_path) -> None:
    path = tmp_path / "spec.hdf5"
    EpisodeWriter(path, {"state": STATE, "wrist": IMAGE}, ACTION, env_args=RATE).close()
    rec = plan(read_dataset_spec(str(path)), source=f"spec_path {path}")
    got = {t.key: (t.topic, t.type, t.shape, t.field) for t in rec.topics}
    assert got == {
        "obs/state": ("/robot/state", "sensor_msgs/msg/JointState", (10,), "position"),
        "obs/wrist": ("/robot/wrist", "sensor_msgs/msg/Image", (8, 6, 3), ""),
        "actions": ("/robot/applied_action", "sensor_msgs/msg/JointState", (2,), "effort"),
        "rewards": ("/robot/reward", "std_msgs/msg/Float32", (), ""),
        "dones": ("/robot/done", "std_msgs/msg/Bool", (), ""),
    }
    assert (rec.control_rate_hz, rec.real_time_factor) == (50.0, 1.0)
    assert rec.env_args == RATE


def test_a_spec_message_names_its_topics_and_real_time_factor() -> None:
    obs = {"state": {**STATE.to_dict(), "source_topic": "/arm/joints"}}
    text = json.dumps(
        {
            "obs_specs": obs,
            "action_spec": {**ACTION.to_dict(), "source_topic": "/arm/applied"},
            "env_args": {"env_name": "Reacher-v5", **RATE},
            "real_time_factor": 0.4,
        }
    )
    rec = plan(parse_spec_message(text, "/sim/spec"), env_args={"operator": "me"})
    assert {t.key: t.topic for t in rec.topics}["obs/state"] == "/arm/joints"
    assert {t.key: t.topic for t in rec.topics}["actions"] == "/arm/applied"
    assert (rec.control_rate_hz, rec.real_time_factor) == (50.0, 0.4)
    assert rec.env_args == {"env_name": "Reacher-v5", "operator": "me", **RATE}


def test_rates_that_disagree_with_the_spec_are_one_line_errors() -> None:
    spec = DatasetSpec({"state": STATE}, ACTION, RATE, real_time_factor=0.4)
    with pytest.raises(RecorderConfigError, match="control_rate_hz 20 disagrees with 50 of /s"):
        plan(spec, control_rate_hz=20.0, source="/s")
    with pytest.raises(RecorderConfigError, match="real_time_factor 1 disagrees with 0.4"):
        plan(spec, real_time_factor=1.0)
    assert plan(spec, control_rate_hz=50.0, real_time_factor=0.4).real_time_factor == 0.4
    lists = [["/s", "/a"], [*["sensor_msgs/msg/JointState"] * 2], ["obs/s", "actions"]]
    lists += [["3", "2"], ["", ""]]
    with pytest.raises(RecorderConfigError, match="no control rate in env_args_json"):
        plan(lists=lists, source="env_args_json")
    assert plan(lists=lists, control_rate_hz=30.0).real_time_factor == 1.0
    with pytest.raises(RecorderConfigError, match="either the topic lists or a spec"):
        plan(spec, lists=lists)


def test_a_bad_spec_message_is_one_line_naming_the_topic() -> None:
    with pytest.raises(SpecError, match="spec on /sim/spec is not a dataset spec"):
        parse_spec_message('{"obs_specs": {}}', "/sim/spec")


def test_what_the_bridge_latches_is_what_the_readers_parse() -> None:
    spec = DatasetSpec({"state": STATE, "image": IMAGE}, ACTION, RATE)
    text = spec_message(spec, {"state": "/sim/state", "image": "/sim/image"}, 0.4)
    back = parse_spec_message(text, "/sim/spec")
    assert back.obs_specs["image"].is_image and back.obs_specs["image"].shape == (8, 6, 3)
    assert back.obs_specs["state"].source_topic == "/sim/state"
    assert (back.env_args, back.real_time_factor) == (RATE, 0.4)


def test_spec_rates_are_held_to_the_parameter_ranges() -> None:
    # a latched spec's real_time_factor 1e9 (the parameter's range is [0, 1000]): one line
    for rtf in (1e9, 1000.5):
        spec = DatasetSpec({"state": STATE}, ACTION, RATE, real_time_factor=rtf)
        with pytest.raises(RecorderConfigError, match=r"real_time_factor .* of /s must be a nu"):
            plan(spec, source="/s")
    spec = DatasetSpec({"state": STATE}, ACTION, {"control_rate_hz": 5e4}, real_time_factor=1.0)
    with pytest.raises(RecorderConfigError, match=r"control_rate_hz 50000 of .* \[0, 1000\]"):
        plan(spec)
    spec = DatasetSpec({"state": STATE}, ACTION, RATE, real_time_factor=1000.0)
    assert plan(spec).real_time_factor == 1000.0


def test_an_invalid_topic_name_is_one_line() -> None:
    from roboloop_recorder.node import check_topic_name

    check_topic_name("/sim/state")
    check_topic_name("sim/state")
    with pytest.raises(RecorderConfigError, match="'sim state' is not a valid ROS topic name"):
        check_topic_name("sim state")
    with pytest.raises(RecorderConfigError) as e:
        check_topic_name("/sim/x?")
    assert "\n" not in str(e.value)
