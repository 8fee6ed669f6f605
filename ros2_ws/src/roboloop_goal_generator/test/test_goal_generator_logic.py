"""ROS-free goal-generator logic: Image codec and ONNX proposals (no rclpy)."""

from __future__ import annotations

import numpy as np
import pytest
from roboloop_goal_generator.generator import (
    SceneError,
    decode_float_image,
    encode_float_image,
)


def test_codec_round_trip_and_layout() -> None:
    chw = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    encoding, step, data = encode_float_image(chw)
    assert (encoding, step, len(data)) == ("32FC3", 4 * 3 * 4, 2 * 4 * 3 * 4)
    hwc = decode_float_image(2, 4, encoding, step, data)
    np.testing.assert_array_equal(hwc, chw.transpose(1, 2, 0))
    # channel c of pixel (r, col) sits at flat index (r * W + col) * C + c
    assert np.frombuffer(data, "<f4")[(1 * 4 + 2) * 3 + 1] == chw[1, 1, 2]
    big = decode_float_image(2, 4, encoding, step, hwc.astype(">f4").tobytes(), big_endian=True)
    np.testing.assert_array_equal(big, hwc)


@pytest.mark.parametrize(
    ("encoding", "step", "nbytes", "match"),
    [("rgb8", 12, 24, "expected 32FC"), ("32FC2", 30, 60, "step 30"), ("32FC2", 32, 8, "8 bytes")],
)
def test_decode_rejects_bad_images(encoding: str, step: int, nbytes: int, match: str) -> None:
    with pytest.raises(SceneError, match=match):
        decode_float_image(2, 4, encoding, step, bytes(nbytes))
