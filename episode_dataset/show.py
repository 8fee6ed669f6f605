"""Look before you train: one episode as a picture or a video, and per-episode returns/lengths.

`show_episode` draws the episode's cameras on top (a strip of frames spread over the episode
for .png; the frame of each step for .mp4) and, below them against time, the actions, each
low-dim observation key, and the rewards with the dones marked. The .mp4 has one frame per
step at the control rate, with a cursor at the current step: the plots are drawn once and the
camera pixels and cursor pasted per frame, so an episode of 1000 steps takes seconds.
`plot_info` draws the return and length of every episode.

matplotlib is used through its Agg canvas (no pyplot, no display, no global backend state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from episode_dataset.reader import EpisodeReader
from episode_dataset.schema import DatasetError

STRIP_FRAMES = 8  # frames per camera in a .png strip
DPI = 100
WIDTH_IN = 12.0
CURSOR_RGB = (220, 30, 30)
MAX_LEGEND = 8  # dimensions labelled in a legend; more are drawn unlabelled


def show_episode(path: str | os.PathLike[str], episode: int, out: str | os.PathLike[str]) -> str:
    """Draw episode number `episode` (0-based, in file order) to `out` (.png or .mp4); returns a
    one-line summary."""
    path, out = Path(path), Path(out)
    if out.suffix not in (".png", ".mp4"):
        raise DatasetError(f"{out}: output must end in .png or .mp4")
    with EpisodeReader(path) as reader:
        if not 0 <= episode < len(reader):
            raise DatasetError(
                f"{path}: episode {episode} out of range ({len(reader)} episodes: "
                f"0..{len(reader) - 1})"
            )
        ep = reader.episodes[episode]
        images = [k for k, spec in reader.obs_specs.items() if spec.is_image]
        data = reader.read_window(ep, keys=[k for k in reader.obs_specs if k not in images])
        rate = reader.env_args.get("control_rate_hz")
        n = len(data["actions"])
        t = np.arange(n) / rate if rate else np.arange(n, dtype=np.float64)
        cameras = {k: _Camera(reader, ep, k, n) for k in images}
        unit, title = "s" if rate else "step", f"{path.name} {ep}"
        if out.suffix == ".png":
            picks = np.unique(np.linspace(0, n - 1, min(STRIP_FRAMES, n)).round().astype(int))
            shown = {
                k: np.concatenate([cam.frame(i) for i in picks], axis=1)
                for k, cam in cameras.items()
            }
            fig, _, _ = _figure(data, t, shown, unit, title)
            _save_png(fig, out)
            return f"{out}: {ep}, {n} steps, {len(cameras)} cameras ({len(picks)} frames each)"
        first = {k: cam.frame(0) for k, cam in cameras.items()}
        fig, cam_axes, plot_axes = _figure(data, t, first, unit, title)
        _write_mp4(fig, cam_axes, plot_axes, cameras, t, out, fps=rate or 10)
    return f"{out}: {ep}, {n} frames at {rate or 10:g} fps, {len(cameras)} cameras"


class _Camera:
    """One image key of an episode as rgb8 frames, read CHUNK steps at a time, so that a long
    episode (an hour of 640x480 video is 100 GB) is never in memory whole."""

    CHUNK = 64

    def __init__(self, reader: EpisodeReader, ep: str, key: str, steps: int) -> None:
        self.reader, self.ep, self.key, self.steps = reader, ep, key, steps
        self.shape = tuple(reader.obs_specs[key].shape[:2])
        self._start, self._frames = -1, np.empty(0)
        self.range: tuple[float, float] | None = None
        if np.dtype(reader.obs_specs[key].dtype) != np.uint8:  # depth: the episode's range
            lo, hi = np.inf, -np.inf
            for start in range(0, steps, self.CHUNK):
                chunk = self._read(start)
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            self.range = (lo, hi)

    def _read(self, start: int) -> np.ndarray:
        return self.reader.read_obs(self.ep, self.key, start, min(start + self.CHUNK, self.steps))

    def frame(self, step: int) -> np.ndarray:
        start = step - step % self.CHUNK
        if start != self._start:
            self._start, self._frames = start, _as_rgb8(self._read(start), self.range)
        return self._frames[step - start]


def _as_rgb8(frames: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 for display: other channel counts become gray, other dtypes (depth)
    are scaled from `value_range` (the episode's min and max)."""
    if frames.dtype != np.uint8:
        lo, hi = value_range or (float(frames.min()), float(frames.max()))
        frames = ((frames - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8)
    if frames.shape[-1] != 3:
        frames = np.repeat(frames[..., :1], 3, axis=-1)
    return frames


def _figure(
    data: dict[str, Any],
    t: np.ndarray,
    images: dict[str, np.ndarray],
    unit: str,
    title: str,
) -> tuple[Figure, dict[str, Axes], list[Axes]]:
    """The episode's figure: one row of camera images, then one plot per signal."""
    low_dim = {k: v.reshape(len(v), -1) for k, v in data["obs"].items()}  # cameras taken out
    signals = {"actions": data["actions"].reshape(len(t), -1)} | {
        f"obs/{k}": v for k, v in low_dim.items()
    }
    rows = len(signals) + 1  # + rewards
    cam_h = 2.6 if images else 0.0
    fig = Figure(figsize=(WIDTH_IN, cam_h + 1.8 * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    grid = fig.add_gridspec(
        rows + (1 if images else 0), max(1, len(images)),
        height_ratios=([cam_h] if images else []) + [1.8] * rows,
    )  # fmt: skip
    cam_axes = {}
    for i, (key, img) in enumerate(images.items()):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(img, interpolation="nearest", aspect="equal")
        ax.set_title(f"obs/{key}", fontsize=9)
        ax.set_axis_off()
        cam_axes[key] = ax
    first = 1 if images else 0
    plot_axes = []
    for row, (name, values) in enumerate(signals.items()):
        ax = fig.add_subplot(grid[first + row, :])
        for d in range(values.shape[1]):
            label = f"{d}" if values.shape[1] > 1 and d < MAX_LEGEND else None
            ax.plot(t, values[:, d], lw=1, label=label)
        if values.shape[1] > 1:
            ax.legend(fontsize=7, ncol=MAX_LEGEND, loc="upper right")
        ax.set_ylabel(name, fontsize=9)
        plot_axes.append(ax)
    ax = fig.add_subplot(grid[first + rows - 1, :])
    ax.plot(t, data["rewards"], lw=1, color="tab:green", label="reward")
    done = np.flatnonzero(data["dones"])
    ax.scatter(t[done], data["rewards"][done], color="black", marker="x", zorder=3, label="done")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_ylabel("rewards", fontsize=9)
    ax.set_xlabel(f"time ({unit})")
    plot_axes.append(ax)
    for ax in plot_axes:
        ax.set_xlim(t[0], max(t[-1], t[0] + 1e-9))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, cam_axes, plot_axes


def _render(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of the figure, cropped to even sides (H.264's 4:2:0)."""
    canvas = fig.canvas
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    return rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2].copy()


def _save_png(fig: Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def _pixel_box(fig: Figure, ax: Axes) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel rows/columns of the axes' image area in `_render`."""
    (x0, y0), (x1, y1) = ax.get_window_extent().get_points()
    height = fig.canvas.get_width_height()[1]
    return int(round(height - y1)), int(round(height - y0)), int(round(x0)), int(round(x1))


def _write_mp4(
    fig: Figure,
    cam_axes: dict[str, Axes],
    plot_axes: list[Axes],
    cameras: dict[str, _Camera],
    t: np.ndarray,
    out: Path,
    fps: float,
) -> None:
    background = _render(fig)
    boxes = {key: _image_box(fig, ax, cameras[key].shape) for key, ax in cam_axes.items()}
    columns = [
        [int(round(ax.transData.transform((x, 0))[0])) for x in t] for ax in plot_axes
    ]  # cursor x pixel per plot and step
    rows = [_pixel_box(fig, ax)[:2] for ax in plot_axes]
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps), options={"crf": "23"})
        stream.height, stream.width = background.shape[:2]
        stream.pix_fmt = "yuv420p"
        for step in range(len(t)):
            img = background.copy()
            for key, (top, left, h, w) in boxes.items():
                h, w = min(h, img.shape[0] - top), min(w, img.shape[1] - left)
                img[top : top + h, left : left + w] = _resize(cameras[key].frame(step), h, w)
            for (top, bottom), xs in zip(rows, columns, strict=True):
                x = min(xs[step], img.shape[1] - 1)
                img[top:bottom, x] = CURSOR_RGB
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = step
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _image_box(fig: Figure, ax: Axes, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) in pixels of where imshow put an image of `shape` (H, W)."""
    (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, shape[0] - 0.5), (shape[1] - 0.5, -0.5)])
    height = fig.canvas.get_width_height()[1]
    top, left = int(round(height - y1)), int(round(x0))
    return top, left, max(1, int(round(y1 - y0))), max(1, int(round(x1 - x0)))


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize (what imshow's nearest interpolation shows)."""
    rows = (np.arange(h) * img.shape[0] / h).astype(int)
    cols = (np.arange(w) * img.shape[1] / w).astype(int)
    return img[rows][:, cols]


def plot_info(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> str:
    """Per-episode return and length of `path` as a .png; returns a one-line summary."""
    path, out = Path(path), Path(out)
    if out.suffix != ".png":
        raise DatasetError(f"{out}: --plot output must end in .png")
    with EpisodeReader(path) as reader:
        if not len(reader):
            raise DatasetError(f"{path}: no episodes to plot")
        returns = np.array([reader.episode_return(ep) for ep in reader.episodes])
        lengths = np.array([reader.num_steps(ep) for ep in reader.episodes])
    index = np.arange(len(returns))
    fig = Figure(figsize=(WIDTH_IN, 6), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{path.name}: {len(returns)} episodes, {lengths.sum()} steps")
    ax_r, ax_l = fig.subplots(2, 1, sharex=True)
    ax_r.plot(index, returns, marker="o", ms=3, lw=1)
    ax_r.axhline(returns.mean(), color="gray", ls="--", lw=1, label=f"mean {returns.mean():.3g}")
    ax_r.set_ylabel("return")
    ax_r.legend(fontsize=8, loc="upper right")
    ax_l.bar(index, lengths, color="tab:orange")
    ax_l.set_ylabel("steps")
    ax_l.set_xlabel("episode")
    for ax in (ax_r, ax_l):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_png(fig, out)
    return (
        f"{out}: returns {returns.min():.3g}..{returns.max():.3g} (mean {returns.mean():.3g}), "
        f"lengths {lengths.min()}..{lengths.max()}"
    )
