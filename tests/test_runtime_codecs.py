"""The one decoder per message type every node uses, on real rclpy message objects."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32, Float32MultiArray

from episode_dataset.codecs import (
    MessageError,
    decode_bool,
    decode_float32,
    decode_image,
    decode_joint_state,
    decode_multi_array,
    encode_image,
    ns_to_stamp,
    stamp_to_ns,
)

RNG = np.random.default_rng(0)


def image(hwc: np.ndarray, pad: int = 0, big_endian: bool = False) -> Image:
    """An Image message of `hwc`, rows padded with `pad` junk bytes."""
    height, width, encoding, step, data = encode_image(hwc)
    if big_endian:
        data = np.ascontiguousarray(hwc, dtype=">f4").tobytes()
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        step=step + pad,
        is_bigendian=int(big_endian),
        data=padded.tobytes(),
    )


@pytest.mark.parametrize("pad", [0, 1, 7, 16])
def test_rgb8_and_float_images_roundtrip_with_padded_rows(pad: int) -> None:
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(image(rgb, pad), encoding="rgb8"), rgb)
    masks = RNG.random((3, 4, 13), dtype=np.float32)
    out = decode_image(image(masks, pad), dtype="float32", shape=(3, 4, None))
    assert out.dtype == np.float32 and out.shape == (3, 4, 13)
    np.testing.assert_array_equal(out, masks)


def test_big_endian_float_image_is_byte_swapped() -> None:
    masks = RNG.random((2, 3, 5), dtype=np.float32)
    out = decode_image(image(masks, big_endian=True), dtype="float32")
    assert out.dtype == np.dtype("float32") and out.dtype.isnative
    np.testing.assert_array_equal(out, masks)


def _with(msg: Image, **fields: object) -> Image:
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    "msg, kwargs, reason, text",
    [
        (_with(image(np.zeros((4, 5, 3), np.uint8)), encoding="bgr8"), {}, "encoding", "bgr8"),
        (image(np.zeros((4, 5, 3), np.uint8)), {"dtype": "float32"}, "encoding", "float32"),
        (image(np.zeros((4, 5, 3), np.uint8)), {"shape": (4, 6, 3)}, "shape", "4x6x3"),
        (Image(height=0, width=0, encoding="32FC5", step=0), {}, "shape", "empty (0x0)"),
        (_with(image(np.zeros((4, 5, 3), np.uint8)), step=9), {}, "size", "step 9 <"),
        (_with(image(np.zeros((4, 5, 3), np.uint8)), data=bytes(59)), {}, "size", "59 bytes"),
        (image(np.zeros((64, 64, 48), np.float32)), {"max_bytes": 1 << 16}, "too_large", "limit"),
        (image(np.full((2, 2, 5), np.nan, np.float32)), {}, "nonfinite", "20 non-finite"),
    ],
)
def test_bad_images_raise_one_counted_reason(
    msg: Image, kwargs: dict, reason: str, text: str
) -> None:
    with pytest.raises(MessageError) as err:
        decode_image(msg, **kwargs)
    assert err.value.reason == reason
    assert text in str(err.value) and "\n" not in str(err.value)


def test_joint_state_field_names_size_and_finiteness() -> None:
    msg = JointState(name=["a", "b", "c"], position=[1.0, 2.0, 3.0], effort=[])
    out = decode_joint_state(msg, "position", 3)
    assert out.dtype == np.float32 and out.tolist() == [1.0, 2.0, 3.0]
    # Unnamed joints are fine; named ones must match the field they fill.
    assert decode_joint_state(JointState(effort=[0.5, -0.5]), "effort", 2).tolist() == [0.5, -0.5]
    with pytest.raises(MessageError, match="names: JointState.name has 3 entries but effort"):
        decode_joint_state(JointState(name=["a", "b", "c"], effort=[1.0, 2.0]), "effort")
    with pytest.raises(MessageError, match="size: JointState.position has 2 values, expected 3"):
        decode_joint_state(JointState(position=[1.0, 2.0]), "position", 3)
    with pytest.raises(MessageError, match=r"nonfinite: JointState.position\[1\] is inf"):
        decode_joint_state(JointState(position=[0.0, float("inf")]), "position")


def test_multi_array_and_scalars() -> None:
    out = decode_multi_array(Float32MultiArray(data=[1.0, 2.0, 3.0, 4.0]), (2, 2))
    assert out.shape == (2, 2) and out[1, 0] == 3.0
    with pytest.raises(MessageError, match="size"):
        decode_multi_array(Float32MultiArray(data=[1.0]), (2,))
    assert decode_float32(Float32(data=0.25)) == np.float32(0.25)
    with pytest.raises(MessageError, match="nonfinite"):
        decode_float32(Float32(data=float("nan")))
    assert decode_bool(Bool(data=True)).dtype == np.bool_


def test_stamps_roundtrip_and_reject_bad_nanoseconds() -> None:
    for ns in (0, 1, 1_500_000_000, -1):
        sec, nanosec = ns_to_stamp(ns)
        assert 0 <= nanosec < 1_000_000_000
        assert stamp_to_ns(Image().header.stamp.__class__(sec=sec, nanosec=nanosec)) == ns

    class Stamp:
        sec, nanosec = 1, 1_000_000_000

    with pytest.raises(MessageError, match="stamp"):
        stamp_to_ns(Stamp())
