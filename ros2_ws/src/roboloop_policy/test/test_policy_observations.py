"""Decoding Image/JointState messages and binding topics to model keys (no ROS graph needed)."""

from __future__ import annotations

import numpy as np
import pytest
from roboloop_policy.observations import (
    BindingError,
    bind_observations,
    decode,
    observation_stamp,
)
from roboloop_policy.safety import ObservationRange
from sensor_msgs.msg import Image, JointState

from episode_dataset.codecs import IMAGE, JOINT_STATE, MessageError
from roboloop_runtime import ObsSpec

IMG = ObsSpec((4, 5, 3), "uint8", "image")
STATE = ObsSpec((3,), "float32", "low_dim")
OBS = {"state": STATE, "image": IMG}


def image_msg(img: np.ndarray, encoding: str = "rgb8", pad: int = 0) -> Image:
    h, w, _ = img.shape
    rows = np.zeros((h, w * 3 + pad), np.uint8)
    rows[:, : w * 3] = img.reshape(h, w * 3)
    return Image(height=h, width=w, encoding=encoding, step=w * 3 + pad, data=rows.tobytes())


def bindings(**kwargs) -> dict:  # noqa: ANN003
    return {b.key: b for b in bind_observations(["/cam", "/s"], ["image", "state"], OBS, **kwargs)}


def test_images_decode_with_the_shared_rules() -> None:
    image = bindings()["image"]
    img = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(image, image_msg(img)), img)
    np.testing.assert_array_equal(decode(image, image_msg(img, pad=7)), img)  # padded rows
    for msg, reason in [
        (image_msg(img, encoding="bgr8"), "encoding"),
        (Image(height=4, width=6, encoding="rgb8", step=18, data=bytes(72)), "shape"),
    ]:
        with pytest.raises(MessageError) as err:
            decode(image, msg)
        assert err.value.reason == reason


def test_joint_state_field_length_finiteness_and_range() -> None:
    limit = ObservationRange(np.array([0.0, 10.0, 0.0]), np.array([1.0, 2.0, 1.0]), 1e3)
    state = bindings(joint_state_field="velocity", limits={"state": limit})["state"]
    msg = JointState(position=[9.0, 9.0, 9.0], velocity=[4.0, 5.0, 6.0])
    out = decode(state, msg)
    assert out.dtype == np.float32 and out.tolist() == [4.0, 5.0, 6.0]
    # Far out of distribution but plausible passes: 900 std from the training data.
    assert decode(state, JointState(velocity=[900.0, -1790.0, 0.0]))[1] == -1790.0
    cases = [
        (JointState(velocity=[1.0, 2.0]), "size"),
        (JointState(velocity=[1.0, float("nan"), 0.0]), "nonfinite"),
        (JointState(velocity=[1e39, 0.0, 0.0]), "nonfinite"),  # inf as float32
        (JointState(velocity=[0.0, -1e38, 0.0]), "out_of_range"),
        (JointState(velocity=[1001.0, 10.0, 0.0]), "out_of_range"),
        (JointState(name=["a", "b"], velocity=[1.0, 2.0, 3.0]), "names"),
    ]
    for msg, reason in cases:
        with pytest.raises(MessageError) as err:
            decode(state, msg)
        assert err.value.reason == reason and "\n" not in str(err.value)
    with pytest.raises(MessageError, match=r"state\[1\] = -1e\+38 is 5e\+37 normalized units"):
        decode(state, JointState(velocity=[0.0, -1e38, 0.0]))


def test_binding_follows_metadata_and_decode_dispatches() -> None:
    bindings = bind_observations(["/cam", "/s"], ["image", "state"], OBS)
    by_key = {b.key: b for b in bindings}
    assert by_key["image"].msg_type == IMAGE and by_key["image"].topic == "/cam"
    assert by_key["state"].msg_type == JOINT_STATE and by_key["state"].limit is None
    assert decode(by_key["state"], JointState(position=[0.0, 1.0, 2.0])).shape == (3,)
    assert decode(by_key["image"], image_msg(np.ones((4, 5, 3), np.uint8))).shape == (4, 5, 3)


@pytest.mark.parametrize(
    "topics, keys, message",
    [
        (
            ["/s", "/c"],
            ["state", "rgb"],
            "'rgb' (topic /c) is not an observation of m.onnx; "
            "its observations are ['image', 'state']",
        ),
        (
            ["/s"],
            ["state"],
            "m.onnx needs observation(s) ['image'] but observation_keys only maps ['state']",
        ),
        (["/s", "/c"], ["state"], "observation_topics has 2 entries but observation_keys has 1"),
        (["/s", "/c"], ["state", "state"], "'state' is bound twice"),
        (["/s", "/s"], ["state", "image"], "/s is listed twice"),
    ],
)
def test_binding_errors_are_one_line_and_specific(topics, keys, message: str) -> None:
    with pytest.raises(BindingError) as err:
        bind_observations(topics, keys, OBS, model="m.onnx")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unsupported_spec_and_field() -> None:
    with pytest.raises(BindingError, match="no ROS message type for float32 \\(2, 2\\)"):
        bind_observations(["/x"], ["x"], {"x": ObsSpec((2, 2), "float32", "low_dim")})
    with pytest.raises(BindingError, match="joint_state_field 'torque'"):
        bind_observations(["/s"], ["state"], {"state": STATE}, joint_state_field="torque")


def test_topics_follow_from_the_declared_features_by_the_convention() -> None:
    from roboloop_policy.observations import convention_topic_map

    topics, keys = convention_topic_map(OBS, "/robot")
    bindings = {b.key: b for b in bind_observations(topics, keys, OBS)}
    assert {k: (b.topic, b.msg_type) for k, b in bindings.items()} == {
        "state": ("/robot/state", JOINT_STATE),
        "image": ("/robot/image", IMAGE),
    }
    # The declared feature type decides, not the shape: an rgb-shaped array declared low-dim
    # has no message type.
    with pytest.raises(BindingError, match="declared low_dim"):
        bind_observations(["/x"], ["x"], {"x": ObsSpec((4, 5, 3), "uint8", "low_dim")})
    with pytest.raises(BindingError, match="observation_namespace: topic namespace 'robot'"):
        convention_topic_map(OBS, "robot")


def test_the_robot_spec_gives_the_real_time_factor_and_must_publish_the_model_inputs() -> None:
    from roboloop_node_common.robot_spec import DatasetSpec
    from roboloop_policy.observations import check_against_spec, real_time_factor_of

    from episode_dataset import KeySpec

    state, image = KeySpec("float32", (3,)), KeySpec("uint8", (4, 5, 3), encoding="rgb8")
    spec = DatasetSpec({"state": state, "image": image}, KeySpec("float32", (2,)), {}, 0.4)
    check_against_spec(list(bindings().values()), spec, "/sim/spec")
    assert real_time_factor_of(0.0, spec, "/sim/spec") == 0.4
    assert real_time_factor_of(0.0, None, "") == 1.0 and real_time_factor_of(0.5, None, "") == 0.5
    with pytest.raises(BindingError, match=r"real_time_factor \(0.4\) and spec_topic \(/s\)"):
        real_time_factor_of(0.4, spec, "/s")
    for rtf in (-0.4, 0.0, float("nan"), 2000.0):  # a hand-made spec, not the model's fault
        bad = DatasetSpec(spec.obs_specs, spec.action_spec, {}, rtf)
        with pytest.raises(
            BindingError, match=r"^the spec on /s has real_time_factor .*, outside"
        ):
            real_time_factor_of(0.0, bad, "/s")
    cases = [
        ({"state": state}, "needs observation 'image' but the spec on /s has only \\['state'\\]"),
        (
            {"state": KeySpec("float32", (7,)), "image": image},
            r"'state': the model takes low_dim \(3,\), the spec on /s publishes low_dim \(7,\)",
        ),
    ]
    for obs, match in cases:
        with pytest.raises(BindingError, match=match):
            check_against_spec(list(bindings().values()), DatasetSpec(obs, state), "/s")


def test_observation_stamp_rejects_stamps_ahead_of_the_node_clock_like_the_recorder() -> None:
    """Beyond future_tolerance_s ahead of the node clock: MessageError future_stamp (the
    recorder's reason); within it, or in the past, the stamp in ns."""
    now = 1_000 * 10**9

    def msg(sec: int, nanosec: int = 0) -> JointState:
        m = JointState()
        m.header.stamp.sec, m.header.stamp.nanosec = sec, nanosec
        return m

    assert observation_stamp(msg(1000), now, 1.0) == now
    assert observation_stamp(msg(1001), now, 1.0) == now + 10**9  # at the tolerance: kept
    assert observation_stamp(msg(900), now, 0.0) == 900 * 10**9
    for stamp, tolerance in (((1001, 1), 1.0), ((101_000,), 1.0), ((1000, 1), 0.0)):
        with pytest.raises(MessageError) as err:
            observation_stamp(msg(*stamp), now, tolerance)
        assert err.value.reason == "future_stamp"
    assert observation_stamp(msg(101_000), now, float("inf")) == 101_000 * 10**9  # no limit
