"""Look before you train (episode_dataset/show.py): `show` draws an episode as a .png strip or
an .mp4 with one frame per step, `info --plot` draws returns and lengths; real files written
and read back (PIL for the images, PyAV for the video)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from episode_dataset import EpisodeWriter, KeySpec
from episode_dataset.cli import main
from episode_dataset.show import DPI, WIDTH_IN

LENGTHS = (12, 30, 9)
CAMERA_BLUE = 200  # every camera pixel has this blue and no green: findable in the drawing


def camera(n: int) -> np.ndarray:
    """(n, 16, 20, 3) frames whose red grows with the step."""
    img = np.zeros((n, 16, 20, 3), np.uint8)
    img[..., 0] = (np.arange(n) * 255 // max(n - 1, 1))[:, None, None]
    img[..., 2] = CAMERA_BLUE
    return img


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.hdf5"
    specs = {
        "front": KeySpec("uint8", (16, 20, 3), encoding="rgb8"),
        "joints": KeySpec("float32", (3,)),
    }
    env_args = {"env_name": "Toy-v0", "type": 4, "env_kwargs": {}, "control_rate_hz": 20}
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, specs, KeySpec("float32", (2,)), env_args=env_args) as w:
        for n in LENGTHS:
            w.write_episode(
                obs={"front": camera(n), "joints": np.cumsum(rng.normal(size=(n, 3)), 0)},
                actions=rng.uniform(-1, 1, (n, 2)), rewards=np.linspace(0, 1, n) * n,
                dones=np.arange(n) == n - 1,
            )  # fmt: skip
    return path


def camera_mask(img: np.ndarray) -> np.ndarray:
    """The pixels that look like the camera's (blue ~200, no green)."""
    rgb = img[..., :3].astype(int)
    return (abs(rgb[..., 2] - CAMERA_BLUE) < 12) & (rgb[..., 1] < 12)


def test_png_strip_and_plots(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ep1.png"
    assert main(["show", str(dataset), "--episode", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: demo_1, 30 steps, 1 cameras (8 frames each)"
    img = np.asarray(Image.open(out))
    # 12 in wide at 100 dpi; 2.6 in of cameras + 1.8 in per plot (actions, joints, rewards)
    assert img.shape[:2] == (round((2.6 + 3 * 1.8) * DPI), round(WIDTH_IN * DPI))
    assert img[..., :3].std() > 30  # not blank
    # the strip: 8 frames side by side, each drawn larger than 16x20 pixels
    assert camera_mask(img).sum() > 8 * 16 * 20
    top = img[: round(2.6 * DPI)]
    reds = top[..., 0][camera_mask(top)]
    assert reds.min() < 20 and reds.max() > 235  # the first and the last step are in the strip


def test_mp4_one_frame_per_step(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ep0.mp4"
    assert main(["show", str(dataset), "--episode", "0", "--out", str(out)]) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 20  # the control rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == LENGTHS[0]
    assert frames[0].shape == (round((2.6 + 3 * 1.8) * DPI), round(WIDTH_IN * DPI), 3)
    assert all(f.std() > 30 for f in frames)
    assert camera_mask(frames[0]).sum() > 16 * 20
    # the camera plays: its red goes from 0 at the first step to 255 at the last
    first, last = (f[..., 0][camera_mask(f)].mean() for f in (frames[0], frames[-1]))
    assert first < 30 and last > 220


def test_info_plot(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "info.png"
    assert main(["info", str(dataset), "--plot", str(out)]) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"{out}: returns 40.5..450 (mean 187), lengths 9..30")
    )
    img = np.asarray(Image.open(out))
    assert img.shape[:2] == (6 * DPI, round(WIDTH_IN * DPI))
    assert img[..., :3].std() > 20


def test_depth_camera_and_no_control_rate(tmp_path: Path) -> None:
    """A float (H, W, 1) camera is drawn in gray from its range; without a control rate the
    time axis is in steps and the video runs at 10 fps."""
    path = tmp_path / "depth.hdf5"
    specs = {"depth": KeySpec("float32", (16, 20, 1), feature_type="image")}
    depth = np.linspace(0.5, 4.0, 6 * 16 * 20, dtype=np.float32).reshape(6, 16, 20, 1)
    with EpisodeWriter(path, specs, KeySpec("float32", (1,)), env_args={"env_name": "x"}) as w:
        w.write_episode(obs={"depth": depth}, actions=np.zeros((6, 1)), rewards=np.zeros(6),
                        dones=np.arange(6) == 5)  # fmt: skip
    assert main(["show", str(path), "--episode", "0", "--out", str(tmp_path / "d.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "d.png"))[..., :3].astype(int)
    gray = (img[..., 0] == img[..., 1]) & (img[..., 1] == img[..., 2])
    band = img[: round(2.6 * DPI), :, 0][gray[: round(2.6 * DPI)]]
    mid_gray = (band > 10) & (band < 245)  # not the white page, not black text
    assert mid_gray.sum() > 6 * 16 * 20  # every frame drawn, larger than 16x20, in grays
    assert len(np.unique(band[mid_gray])) > 100  # the depth range spread over the grays
    assert main(["show", str(path), "--episode", "0", "--out", str(tmp_path / "d.mp4")]) == 0
    with av.open(str(tmp_path / "d.mp4")) as container:
        assert float(container.streams.video[0].average_rate) == 10
        assert sum(1 for _ in container.decode(video=0)) == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "{d}", "--episode", "3", "--out", "{o}.png"],
         "{d}: episode 3 out of range (3 episodes: 0..2)"),
        (["show", "{d}", "--episode", "-1", "--out", "{o}.png"],
         "{d}: episode -1 out of range (3 episodes: 0..2)"),
        (["show", "{d}", "--episode", "0", "--out", "{o}.gif"],
         "{o}.gif: output must end in .png or .mp4"),
        (["info", "{d}", "--plot", "{o}.jpg"], "{o}.jpg: --plot output must end in .png"),
    ],
)  # fmt: skip
def test_bad_requests_are_one_line(
    dataset: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    names = {"d": str(dataset), "o": str(tmp_path / "x")}
    assert main([a.format(**names) for a in args]) == 1
    err = capsys.readouterr().err
    assert err == f"ERROR: {message.format(**names)}\n"
    assert not list(tmp_path.glob("x.*"))


def test_a_long_episode_is_read_a_chunk_of_frames_at_a_time(
    tmp_path: Path, obs_reads: list[int]
) -> None:
    """An hour of camera frames does not fit in memory: `show` reads 64 steps at a time."""
    from episode_dataset.show import show_episode

    path, n = tmp_path / "long.hdf5", 300
    specs = {"front": KeySpec("uint8", (16, 20, 3), encoding="rgb8")}
    with EpisodeWriter(path, specs, KeySpec("float32", (2,)), env_args={}) as w:
        w.write_episode(
            obs={"front": camera(n)}, actions=np.zeros((n, 2)), rewards=np.zeros(n),
            dones=np.arange(n) == n - 1,
        )  # fmt: skip
    show_episode(path, 0, tmp_path / "long.mp4")
    assert max(obs_reads) == 64 and sum(obs_reads) == n  # each frame read once, in chunks
    with av.open(str(tmp_path / "long.mp4")) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == n
    red = [f[..., 0][camera_mask(f)].mean() for f in (frames[0], frames[-1])]
    assert red[0] < 20 < 235 < red[1]  # the first and the last step's frames, not one chunk's
