"""Scene/goal masks of NAMO samples: keys, loading and resizing (numpy only, torch-free).

A sample is one `.npz` file. Context channels (in this order) and the target:

    robot_image, goal_image, movable_objects_image, static_objects_image, target_object
    -> target_goal

Legacy files name the first four `robot`, `goal`, `movable`, `static`. Masks are float in [0, 1].
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

CONTEXT_KEYS: tuple[str, ...] = (
    "robot_image",
    "goal_image",
    "movable_objects_image",
    "static_objects_image",
    "target_object",
)
TARGET_KEY = "target_goal"
LEGACY_KEYS: dict[str, str] = {
    "robot_image": "robot",
    "goal_image": "goal",
    "movable_objects_image": "movable",
    "static_objects_image": "static",
}
NUM_CONTEXT = len(CONTEXT_KEYS)


class MaskFileError(ValueError):
    """A sample file is missing a key or holds a mask of the wrong shape/range."""


def _read_key(data: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    if key in data.files:
        name = key
    elif key in LEGACY_KEYS and LEGACY_KEYS[key] in data.files:
        name = LEGACY_KEYS[key]
    else:
        legacy = f" (or legacy {LEGACY_KEYS[key]!r})" if key in LEGACY_KEYS else ""
        raise MaskFileError(f"{path}: missing key {key!r}{legacy}; has {sorted(data.files)}")
    try:
        arr = data[name]  # allow_pickle=False: an object array (a pickle) raises, never runs
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise MaskFileError(f"{path}: key {name!r} unreadable ({err})") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise MaskFileError(f"{path}: key {key!r} has shape {arr.shape}, expected (H, W)")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise MaskFileError(f"{path}: key {key!r} values outside [0, 1] or not finite")
    return arr


def load_sample(path: str | os.PathLike, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample -> (context (5, S, S), target (S, S)) float32, resized to `size`."""
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise MaskFileError(f"{path}: cannot read npz: {err}") from None
    with data:
        context = [_read_key(data, key, path) for key in CONTEXT_KEYS]
        target = _read_key(data, TARGET_KEY, path)
    shapes = {a.shape for a in [*context, target]}
    if len(shapes) != 1:
        raise MaskFileError(f"{path}: masks have different shapes {sorted(shapes)}")
    ctx = np.stack(context)
    if size is not None:
        # Clip float round-off of the area average (it can overshoot 1 by ~1e-7).
        ctx = np.clip(resize_area(ctx, size), 0.0, 1.0)
        target = np.clip(resize_area(target, size), 0.0, 1.0)
    return ctx.astype(np.float32), target.astype(np.float32)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: output cell i averages the input cells it overlaps, by overlap."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Area-average resize of the last two axes to (size, size); works for any ratio.

    Exact box filter (each output pixel is the overlap-weighted mean of the input pixels it
    covers), so a binary mask becomes its occupancy fraction. Identity when already that size.
    """
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img.astype(np.float32, copy=False)
    wy, wx = _area_weights(h, size), _area_weights(w, size)
    return wy @ img.astype(np.float32) @ wx.T
