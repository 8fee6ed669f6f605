"""ROS-free logic of the goal generator node: one scene Image in, checked proposals out.

Scene in: one sensor_msgs/Image, encoding 32FC5, (H, W) any size, channels in `CONTEXT_KEYS`
order (robot_image, goal_image, movable_objects_image, static_objects_image, target_object) in
[0, 1], decoded by the shared decoder (episode_dataset.codecs: padded rows, either byte
order, finite values, at most `max_request_bytes`). Proposals out: (S, S, K) float32 at the
model's resolution (`image_size` in metadata), channel k = proposal k, goal occupancy in [0, 1]
(threshold: metadata `mask_threshold`), sent with `codecs.encode_image` as an Image 32FC<K>.

A scene that cannot be used raises `MessageError` / `SceneError`; a model output that is not K
finite masks raises `ModelOutputError` and is never published; values outside [0, 1] are
clipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from episode_dataset.codecs import decode_image
from sim.namo.goal_generator import GoalGenerator, SceneError
from sim.namo.keys import CONTEXT_KEYS

__all__ = ["GoalGenerator", "Proposals", "SceneError", "generate"]


@dataclass(frozen=True)
class Proposals:
    """What the node publishes for one scene."""

    hwk: np.ndarray  # (S, S, K) float32 in [0, 1]
    clipped: int  # values the model put outside [0, 1]


def generate(generator: GoalGenerator, msg: Any, max_request_bytes: int) -> Proposals:
    """Decode a scene Image (checked), propose K goal masks (checked), clip them to [0, 1]."""
    scene = decode_image(
        msg, dtype="float32", shape=(None, None, len(CONTEXT_KEYS)), max_bytes=max_request_bytes
    )
    masks = generator.propose(scene)  # (K, S, S), finite
    clipped = np.clip(masks, 0.0, 1.0)
    return Proposals(
        np.ascontiguousarray(clipped.transpose(1, 2, 0), dtype=np.float32),
        int(np.count_nonzero(clipped != masks)),
    )
