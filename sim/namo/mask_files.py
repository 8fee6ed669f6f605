"""Reading NAMO mask files (`.npz`) as data, numpy only: one error type, goal-generator samples.

A goal-generator sample is one file; its context channels (``CONTEXT_KEYS`` order) and target:

    robot_image, goal_image, movable_objects_image, static_objects_image, target_object
    -> target_goal

Files with only the seed-000 names of the first four (``SEED001_ALIASES``: ``robot``, ``goal``,
``movable``, ``static``) load the same. Masks are float in [0, 1]. The Q-function's loader
(``learning.namo.data``) reads the same files with the same ``read_array`` and error.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib

import numpy as np

from sim.namo.keys import CONTEXT_KEYS, GOAL_MASK_KEY, SEED001_ALIASES


class MaskFileError(ValueError):
    """A mask file is missing, unreadable, or lacks/misshapes a required key (names both)."""


# What numpy and zipfile raise on a damaged .npz (found by fuzzing): a bad directory, header
# or CRC (BadZipFile, EOFError, struct.error), a flag or compression method zipfile does not
# handle (RuntimeError, NotImplementedError), a corrupt deflate stream (zlib.error), a bad
# .npy header (ValueError).
NPZ_ERRORS = (
    OSError, ValueError, EOFError, RuntimeError, NotImplementedError, struct.error,
    zipfile.BadZipFile, zlib.error,
)  # fmt: skip


def open_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
    """np.load(path, allow_pickle=False); a file numpy cannot open is one MaskFileError."""
    try:
        return np.load(path, allow_pickle=False)
    except NPZ_ERRORS as err:
        raise MaskFileError(f"{os.fspath(path)}: cannot read npz: {err}") from None


def read_array(data: np.lib.npyio.NpzFile, path: str | os.PathLike, key: str) -> np.ndarray:
    """The array stored under `key` (MaskFileError naming file and key when absent/unreadable)."""
    if key not in data.files:
        raise MaskFileError(f"{path}: missing key {key!r}")
    try:
        return data[key]  # allow_pickle=False: an object array (a pickle) raises, never runs
    except NPZ_ERRORS as err:
        raise MaskFileError(f"{path}: key {key!r} unreadable ({err})") from None


def _read_key(data: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    name = key if key in data.files else SEED001_ALIASES.get(key, key)
    if name not in data.files:
        alias = f" (or its seed-000 name {name!r})" if name != key else ""
        raise MaskFileError(f"{path}: missing key {key!r}{alias}; has {sorted(data.files)}")
    arr = np.asarray(read_array(data, path, name), dtype=np.float32)
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
    with open_npz(path) as data:
        context = [_read_key(data, key, path) for key in CONTEXT_KEYS]
        target = _read_key(data, GOAL_MASK_KEY, path)
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
