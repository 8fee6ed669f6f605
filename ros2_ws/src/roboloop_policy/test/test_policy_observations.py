"""Decoding Image/JointState messages and binding topics to model keys (no ROS graph needed)."""

from __future__ import annotations

import numpy as np
import pytest
from roboloop_policy.observations import (
    IMAGE,
    JOINT_STATE,
    BindingError,
    ObservationError,
    bind_observations,
    decode,
    decode_image,
    decode_joint_state,
    ns_to_stamp_fields,
    stamp_to_ns,
)
from sensor_msgs.msg import Image, JointState

from learning.policy_interface import ObsSpec

IMG = ObsSpec((4, 5, 3), "uint8")
STATE = ObsSpec((3,), "float32")
OBS = {"state": STATE, "image": IMG}


def image_msg(img: np.ndarray, encoding: str = "rgb8", pad: int = 0) -> Image:
    h, w, _ = img.shape
    rows = np.zeros((h, w * 3 + pad), np.uint8)
    rows[:, : w * 3] = img.reshape(h, w * 3)
    return Image(height=h, width=w, encoding=encoding, step=w * 3 + pad, data=rows.tobytes())


def test_image_roundtrip_and_row_padding() -> None:
    img = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(image_msg(img), IMG, "/cam"), img)
    np.testing.assert_array_equal(decode_image(image_msg(img, pad=7), IMG, "/cam"), img)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: setattr(m, "encoding", "bgr8"), "encoding 'bgr8'"),
        (lambda m: setattr(m, "width", 6), "model expects 4x5"),
        (lambda m: setattr(m, "step", 9), "step 9 < width*3 = 15"),
        (lambda m: setattr(m, "data", bytes(10)), "10 bytes, expected step*height = 60"),
    ],
)
def test_malformed_images_name_the_topic(mutate, message: str) -> None:
    msg = image_msg(np.zeros((4, 5, 3), np.uint8))
    mutate(msg)
    with pytest.raises(ObservationError, match="^/cam: ") as err:
        decode_image(msg, IMG, "/cam")
    assert message in str(err.value)


def test_joint_state_fields_length_and_finiteness() -> None:
    msg = JointState(position=[1.0, 2.0, 3.0], velocity=[4.0, 5.0, 6.0])
    out = decode_joint_state(msg, STATE, "/s")
    assert out.dtype == np.float32 and out.tolist() == [1.0, 2.0, 3.0]
    assert decode_joint_state(msg, STATE, "/s", "velocity").tolist() == [4.0, 5.0, 6.0]
    with pytest.raises(
        ObservationError, match=r"/s: JointState.position has 2 values, expected 3"
    ):
        decode_joint_state(JointState(position=[1.0, 2.0]), STATE, "/s")
    with pytest.raises(ObservationError, match=r"/s: JointState.position\[1\] is nan"):
        decode_joint_state(JointState(position=[1.0, float("nan"), 0.0]), STATE, "/s")


def test_binding_follows_metadata_and_decode_dispatches() -> None:
    bindings = bind_observations(["/cam", "/s"], ["image", "state"], OBS)
    by_key = {b.key: b for b in bindings}
    assert by_key["image"].msg_type == IMAGE and by_key["image"].topic == "/cam"
    assert by_key["state"].msg_type == JOINT_STATE
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
        bind_observations(["/x"], ["x"], {"x": ObsSpec((2, 2), "float32")})
    with pytest.raises(BindingError, match="joint_state_field 'torque'"):
        bind_observations(["/s"], ["state"], {"state": STATE}, joint_state_field="torque")


def test_stamp_conversion_roundtrip() -> None:
    from builtin_interfaces.msg import Time

    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        sec, nanosec = ns_to_stamp_fields(ns)
        assert stamp_to_ns(Time(sec=sec, nanosec=nanosec)) == ns
