"""Synthetic NAMO mask files with the exact seed-000 keys and a learnable Q.

For tests that must not wait for MCTS; real data comes from the sim/namo CLIs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sim.namo.keys import ACTION_KEYS, STATE_KEYS, TARGET_KEY


def _square(size: int, cy: int, cx: int, half: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1] = 1.0
    return m


def _distance(size: int, cy: int, cx: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - cy, xx - cx) / (np.sqrt(2) * size)
    return d.astype(np.float32)


def write_synthetic(
    out: Path,
    episodes: int = 10,
    goals: int = 2,
    proposals: int = 4,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Q = 1 - goal distance at the proposed object pose: closer to the goal scores higher."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for e in range(episodes):
        static = _square(size, *rng.integers(4, size - 4, 2), 2)
        for g in range(goals):
            ry, rx, gy, gx = rng.integers(3, size - 3, 4)
            robot, goal = _square(size, ry, rx, 1), _square(size, gy, gx, 1)
            robot_d, goal_d = _distance(size, ry, rx), _distance(size, gy, gx)
            objects = [rng.integers(3, size - 3, 2) for _ in range(3)]
            movable = np.clip(sum(_square(size, y, x, 2) for y, x in objects), 0, 1)
            for p in range(proposals):
                oy, ox = objects[p % len(objects)]
                ty, tx = rng.integers(3, size - 3, 2)
                masks = {
                    "robot": robot,
                    "goal": goal,
                    "movable": movable,
                    "static": static,
                    "reachable": movable,
                    "robot_distance": robot_d,
                    "goal_distance": goal_d,
                    "combined_distance": 0.5 * (robot_d + goal_d),
                    "post_action_robot": _square(size, oy, ox, 1),
                    "post_action_movable": movable,
                    "post_action_robot_distance": _distance(size, oy, ox),
                    "target_object": _square(size, oy, ox, 2),
                    "target_goal": _square(size, ty, tx, 2),
                }
                assert set(masks) == set(STATE_KEYS) | set(ACTION_KEYS)
                q = 1.0 - 2.0 * float(goal_d[ty, tx])
                np.savez(
                    out / f"episode_{e}_goal_{g}_proposal_{p}.npz",
                    **masks,
                    **{TARGET_KEY: np.float32(q)},
                    object_id=np.str_(f"obstacle_{p % len(objects)}"),
                    goal_coordinates=np.array([tx, ty, 0.0], np.float32),
                )
    return out
