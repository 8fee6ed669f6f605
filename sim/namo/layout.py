"""Wire layout of q_scorer requests/responses as plain numpy (torch-free, rclpy-free).

Bytes <-> arrays is the shared Image decoder's job (episode_dataset.codecs: padded rows,
byte order, size limit, finiteness); this module splits the decoded (H, W, C) request into
state and action masks, and builds one from them.

The 8 pre-action state masks are the same for every proposal of a state; the 3 post-action
masks and the 2 action masks differ per proposal. A request therefore sends the shared part
once and 5 channels per proposal.

Request: ONE sensor_msgs/Image
    encoding  "32FC<C>" with C = 8 + 5K (K proposals, K >= 1), either byte order
    height H, width W, step >= W * 4 * C, data row-major H x W x C float32 (channels
    interleaved, the usual ROS multi-channel layout), every value finite
    channels 0..7:        robot, goal, movable, static, reachable, robot_distance,
                          goal_distance, combined_distance                (shared)
    channels 8+5k..12+5k: proposal k's post_action_robot, post_action_movable,
                          post_action_robot_distance, target_object, target_goal
    header.stamp + header.frame_id: the request key, echoed in the response
Response: ONE std_msgs/Float32MultiArray
    layout.dim[0] = {label: "stamp=<sec>.<nanosec 9 digits> best=<k> frame_id=<frame_id>",
                     size: 1, stride: K}
    layout.dim[1] = {label: "proposals", size: K, stride: 1}
    layout.data_offset = 0, data = K Q-values (proposal order of the request)
Shape (1, K): one request of K proposals; dim[0]'s label carries the request key and the best
proposal (argmax Q), because Float32MultiArray has no header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sim.namo.keys import (
    ACTION_CHANNELS,
    PER_PROPOSAL_CHANNELS,
    SHARED_CHANNELS,
    STATE_CHANNELS,
)

PROPOSALS_LABEL = "proposals"
_KEY_RE = re.compile(r"^stamp=(\d+)\.(\d{9}) best=(-?\d+) frame_id=(.*)$", re.DOTALL)


class LayoutError(ValueError):
    """A request or response does not follow the documented layout."""


def check_batch(
    state_masks: np.ndarray, action_masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and broadcast -> state (K, 11, H, W), actions (K, 2, H, W) float32.

    state_masks may be (11, H, W) (one state for all K proposals) or (K, 11, H, W).
    """
    s = np.asarray(state_masks, np.float32)
    a = np.asarray(action_masks, np.float32)
    if a.ndim != 4 or a.shape[1] != ACTION_CHANNELS or a.shape[0] < 1:
        raise LayoutError(
            f"action_masks shape {a.shape}, expected (K>=1, {ACTION_CHANNELS}, H, W)"
        )
    if s.ndim == 3:
        s = np.broadcast_to(s, (a.shape[0], *s.shape))
    if s.ndim != 4 or s.shape[1] != STATE_CHANNELS or s.shape[0] != a.shape[0]:
        raise LayoutError(
            f"state_masks shape {s.shape}, expected ({STATE_CHANNELS}, H, W) or "
            f"(K={a.shape[0]}, {STATE_CHANNELS}, H, W)"
        )
    if s.shape[2:] != a.shape[2:]:
        raise LayoutError(f"action_masks H, W {a.shape[2:]} != state_masks H, W {s.shape[2:]}")
    return s, a


def proposals_in(channels: int) -> int:
    """K of a request with `channels` = 8 + 5K channels (LayoutError otherwise)."""
    k, rem = divmod(channels - SHARED_CHANNELS, PER_PROPOSAL_CHANNELS)
    if k < 1 or rem:
        raise LayoutError(f"{channels} channels is not 8 + 5K with K >= 1")
    return k


def join_request(state_masks: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
    """(11|K x 11, H, W) + (K, 2, H, W) -> the request image (H, W, 8 + 5K) float32.

    Send it with episode_dataset.codecs.encode_image (an Image 32FC<8+5K>).
    """
    s, a = check_batch(state_masks, action_masks)
    k, _, h, w = a.shape
    shared = s[0, :SHARED_CHANNELS]
    if k > 1 and not np.array_equal(
        s[:, :SHARED_CHANNELS], np.broadcast_to(shared, (k, *shared.shape))
    ):
        raise LayoutError("the 8 pre-action state masks differ between proposals (not one state)")
    per = np.concatenate([s[:, SHARED_CHANNELS:], a], axis=1)  # (K, 5, H, W)
    chw = np.concatenate([shared, per.reshape(k * PER_PROPOSAL_CHANNELS, h, w)])
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def split_request(hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of join_request: an already decoded (H, W, 8 + 5K) image ->
    state_masks (K, 11, H, W), action_masks (K, 2, H, W) float32."""
    if hwc.ndim != 3:
        raise LayoutError(f"request image has shape {hwc.shape}, expected (H, W, 8 + 5K)")
    height, width, channels = hwc.shape
    k = proposals_in(channels)
    chw = hwc.transpose(2, 0, 1)
    shared = chw[:SHARED_CHANNELS]
    per = chw[SHARED_CHANNELS:].reshape(k, PER_PROPOSAL_CHANNELS, height, width)
    n_post = PER_PROPOSAL_CHANNELS - ACTION_CHANNELS
    state = np.empty((k, STATE_CHANNELS, height, width), np.float32)
    state[:, :SHARED_CHANNELS] = shared
    state[:, SHARED_CHANNELS:] = per[:, :n_post]
    return state, np.ascontiguousarray(per[:, n_post:], dtype=np.float32)


@dataclass(frozen=True)
class Response:
    """Decoded response: request key, Q-values (K,), best proposal index."""

    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    q_values: np.ndarray
    best_index: int


def response_dims(
    q_values: np.ndarray, stamp_sec: int, stamp_nanosec: int, frame_id: str
) -> tuple[list[tuple[str, int, int]], int]:
    """(label, size, stride) for layout.dim[0], dim[1] and the best index (argmax Q)."""
    k = int(np.asarray(q_values).size)
    best = int(np.argmax(q_values))
    key = f"stamp={stamp_sec}.{stamp_nanosec:09d} best={best} frame_id={frame_id}"
    return [(key, 1, k), (PROPOSALS_LABEL, k, 1)], best


def decode_response(dims: list[tuple[str, int, int]], data: np.ndarray) -> Response:
    """Parse (label, size, stride) dims + data of a q_scorer response."""
    if len(dims) != 2 or dims[1][0] != PROPOSALS_LABEL:
        raise LayoutError(f"response dims {dims}: expected [request key, {PROPOSALS_LABEL!r}]")
    match = _KEY_RE.match(dims[0][0])
    if match is None:
        raise LayoutError(f"response dim[0] label {dims[0][0]!r} is not a request key")
    k = dims[1][1]
    q = np.asarray(data, np.float32)
    if q.size != k:
        raise LayoutError(f"response data holds {q.size} values, dims say {k}")
    sec, nsec, best, frame_id = match.groups()
    return Response(int(sec), int(nsec), frame_id, q, int(best))
