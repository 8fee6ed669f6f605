"""Synthetic NAMO-like goal-mask samples with the exact seed-001 keys (numpy only).

A stand-in until real NAMO collections are at hand, and a task with a known answer for tests:
walls around the border, a robot disc, a robot-goal disc, 2-4 movable boxes, one of them the
target object; the target goal is the target object pushed horizontally away from the robot by
`push` pixels (so the goal depends on the scene, not just the object).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)


def _box(size: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w] = 1.0
    return m


def synthetic_sample(rng: np.random.Generator, size: int = 64) -> dict[str, np.ndarray]:
    s = size / 64.0
    wall = max(1, round(2 * s))
    static = np.zeros((size, size), np.float32)
    static[:wall], static[-wall:], static[:, :wall], static[:, -wall:] = 1, 1, 1, 1
    lo, hi = round(14 * s), size - round(14 * s)
    boxes = []
    for _ in range(int(rng.integers(2, 5))):
        h, w = (int(v) for v in rng.integers(round(8 * s), round(15 * s), 2))
        boxes.append((int(rng.integers(lo, hi - h)), int(rng.integers(lo, hi - w)), h, w))
    movable = np.clip(sum(_box(size, *b) for b in boxes), 0, 1)
    y0, x0, h, w = boxes[0]
    target = _box(size, y0, x0, h, w)
    ry, rx = rng.uniform(lo, hi, 2)
    robot = _disc(size, ry, rx, 3 * s)
    goal = _disc(size, *rng.uniform(lo, hi, 2), 3 * s)
    push = round(12 * s)
    x0 += push if x0 + w / 2 >= rx else -push
    target_goal = _box(size, y0, x0, h, w)
    return {
        "robot_image": robot,
        "goal_image": goal,
        "movable_objects_image": movable,
        "static_objects_image": static,
        "target_object": target,
        "target_goal": target_goal,
    }


def write_synthetic_dataset(
    out_dir: str | os.PathLike, num_files: int, size: int = 64, seed: int = 0, episodes: int = 0
) -> list[Path]:
    """Write `num_files` npz samples named like NAMO's (`episodes` > 0 groups them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_files):
        ep = i % episodes if episodes else i
        path = out / f"episode_{ep}_goal_0_proposal_{i}.npz"
        np.savez_compressed(path, **synthetic_sample(rng, size))
        paths.append(path)
    return paths
