"""ROS-free logic of the goal generator: Image codec (numpy; no rclpy, no torch); proposals come
from `learning.generative.proposals.GoalGenerator`.

Scene in: one sensor_msgs/Image, encoding 32FC5, (H, W) any size, channel c of pixel (r, col)
at data[(r * W + col) * 5 + c] (little-endian float32), channels in `CONTEXT_KEYS` order:
robot_image, goal_image, movable_objects_image, static_objects_image, target_object, in [0, 1].
Proposals out: one Image 32FC<K> at the model's resolution (S x S, `image_size` in metadata),
channel k = proposal k, goal occupancy in [0, 1] (threshold: metadata `mask_threshold`).
"""

from __future__ import annotations

import numpy as np

from learning.generative.proposals import GoalGenerator, SceneError

__all__ = ["GoalGenerator", "SceneError", "decode_float_image", "encode_float_image"]


def decode_float_image(
    height: int, width: int, encoding: str, step: int, data: bytes, big_endian: bool = False
) -> np.ndarray:
    """32FC<n> Image fields -> (H, W, n) float32 (zero-copy view when possible)."""
    if not encoding.startswith("32FC"):
        raise SceneError(f"encoding {encoding!r}, expected 32FC<n>")
    try:
        channels = int(encoding[4:])
    except ValueError:
        raise SceneError(f"encoding {encoding!r}, expected 32FC<n>") from None
    row = width * channels * 4
    if step != row or len(data) != height * step:
        raise SceneError(
            f"{encoding} {height}x{width}: step {step} / {len(data)} bytes, expected step {row} "
            f"and {height * row} bytes"
        )
    dtype = np.dtype(">f4" if big_endian else "<f4")
    return np.frombuffer(data, dtype=dtype).reshape(height, width, channels)


def encode_float_image(channels_first: np.ndarray) -> tuple[str, int, bytes]:
    """(C, H, W) float -> (encoding "32FC<C>", step, little-endian bytes, channels interleaved)."""
    c, _, w = channels_first.shape
    hwc = np.ascontiguousarray(channels_first.transpose(1, 2, 0), dtype="<f4")
    return f"32FC{c}", w * c * 4, hwc.tobytes()
