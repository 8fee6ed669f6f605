"""LeRobot's own reader on our LeRobotDataset v3 exports: every frame LeRobotDataset returns is
compared with the episode dataset it was exported from.

    bash bench/lerobot_venv.sh                      # once: .venvs/lerobot (lerobot 0.4.4)
    python -m bench lerobot_reader [--quick]
    python -m bench.lerobot_reader [--quick] [--venv DIR]

The workspace side writes a dataset (two 64x64 cameras, a 6-D state, 2-D actions; episodes
of different lengths), exports it with each codec (`python -m episode_dataset
lerobot-export`), and saves what every global index must hold. The LeRobot side runs in the
bench venv, offline: `LeRobotDataset(repo_id, root=...)` (video_backend pyav: torchcodec needs
FFmpeg's shared libraries, which this machine does not have; its error is reported), reads
every index and a `delta_timestamps` window, and reports the largest differences. Low-dim
values must be equal; frames bit-exact with the lossless codec, within H.264's loss otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "lerobot_reader"
REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venvs" / "lerobot"
CODECS = ("h264", "av1", "lossless")  # av1: LeRobot's own default encoder
CAMERAS = ("front", "wrist")
SIZE = 64
FPS = 20


def _frames(n: int, seed: int) -> np.ndarray:
    """Smooth, moving, per-episode-different frames: an offset of one frame shows."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    t = np.arange(n)[:, None, None]
    red = 128 + 100 * np.sin((x + 2 * t) / 9 + seed)
    green = 128 + 100 * np.cos((y + 3 * t) / 7 + seed / 2)
    blue = np.broadcast_to(40.0 + 15 * (seed % 12), red.shape)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def _write_dataset(path: Path, episodes: int, rng: np.random.Generator) -> list[int]:
    from episode_dataset import EpisodeWriter, KeySpec

    specs = {k: KeySpec("uint8", (SIZE, SIZE, 3), encoding="rgb8") for k in CAMERAS}
    specs["state"] = KeySpec("float32", (6,))
    env_args = {"env_name": "Bench-v0", "type": 4, "env_kwargs": {}, "control_rate_hz": FPS}
    lengths = [int(n) for n in rng.integers(20, 60, episodes)]
    with EpisodeWriter(path, specs, KeySpec("float32", (2,)), env_args=env_args) as w:
        for i, n in enumerate(lengths):
            obs = {k: _frames(n, 2 * i + j) for j, k in enumerate(CAMERAS)}
            obs["state"] = rng.normal(size=(n, 6))
            w.write_episode(
                obs=obs, actions=rng.normal(size=(n, 2)), rewards=rng.normal(size=n),
                dones=np.arange(n) == n - 1,
            )  # fmt: skip
    return lengths


def _expected(src: Path, out: Path) -> None:
    """What LeRobotDataset must return per global index, in LeRobot's names."""
    from episode_dataset import EpisodeReader

    with EpisodeReader(src) as r:
        arrays: dict[str, list[np.ndarray]] = {}
        for ep in r.episodes:
            cols = {"action": r.read_actions(ep), "observation.state": r.read_obs(ep, "state")}
            cols |= {f"observation.images.{k}": r.read_obs(ep, k) for k in CAMERAS}
            cols["next.reward"] = r.read_rewards(ep)
            cols["episode_index"] = np.full(r.num_steps(ep), r.episodes.index(ep))
            for k, v in cols.items():
                arrays.setdefault(k, []).append(v)
    np.savez(out, **{k: np.concatenate(v) for k, v in arrays.items()})


def lerobot_side(root: Path, expected: Path, backend: str) -> dict[str, Any]:
    """In the bench venv: load `root` with LeRobotDataset and compare with `expected`."""
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    want = dict(np.load(expected))
    t0 = time.perf_counter()
    ds = LeRobotDataset("roboloop/bench", root=root, video_backend=backend)
    load_s = time.perf_counter() - t0
    n = len(want["action"])
    assert len(ds) == n and ds.num_episodes == int(want["episode_index"][-1]) + 1
    low_dim_equal, frame_err = True, []
    t0 = time.perf_counter()
    for i in range(n):
        item = ds[i]
        for k in ("action", "observation.state", "next.reward", "episode_index"):
            low_dim_equal &= bool(np.array_equal(item[k].numpy(), want[k][i]))
        for cam in CAMERAS:
            key = f"observation.images.{cam}"
            got = np.rint(item[key].numpy().transpose(1, 2, 0) * 255)  # (C, H, W) in [0, 1]
            frame_err.append(np.abs(got - want[key][i]).astype(np.float32))
    read_s = time.perf_counter() - t0
    frame_err_all = np.stack(frame_err)
    # a window across the start of episode 1: padded at the boundary, values from its own file
    dt = 1 / ds.fps
    windowed = LeRobotDataset(
        "roboloop/bench", root=root, video_backend=backend,
        delta_timestamps={"action": [-dt, 0.0, dt], "observation.images.front": [-dt, 0.0]},
    )  # fmt: skip
    start = int(np.argmax(want["episode_index"] == 1))
    item = windowed[start]
    window_ok = item["action_is_pad"].tolist() == [True, False, False]
    window_ok &= bool(
        np.array_equal(item["action"][1:].numpy(), want["action"][start : start + 2])
    )
    front = np.rint(item["observation.images.front"][1].numpy().transpose(1, 2, 0) * 255)
    window_ok &= bool(np.abs(front - want["observation.images.front"][start]).mean() < 8)
    return {
        "lerobot": lerobot.__version__,
        "items": n,
        "load_s": load_s,
        "items_per_s": n / read_s,
        "low_dim_equal": low_dim_equal,
        "frame_mean_abs": float(frame_err_all.mean()),
        "frame_max_abs": float(frame_err_all.max()),
        "window_ok": window_ok,
    }


def _in_venv(python: Path, root: Path, expected: Path, backend: str) -> dict[str, Any]:
    cmd = [str(python), "-m", "bench.lerobot_reader", "--worker", str(root), str(expected)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(root.parent / "hf_home"),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [*cmd, "--backend", backend], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        # the first two exception lines: torchcodec's own, then the library it could not load
        lines = [ln for ln in proc.stderr.splitlines() if re.match(r"\w+(Error|Exception): ", ln)]
        return {"error": f"{backend}: {' / '.join(lines[:2]) or proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False, venv: Path = VENV) -> list[dict[str, Any]]:
    from bench.report import report
    from episode_dataset.lerobot import export_lerobot

    python = Path(venv) / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"needs the LeRobot bench venv {venv}: bash bench/lerobot_venv.sh")
    rows, errors = [], []
    with tempfile.TemporaryDirectory(prefix="lerobot_reader_") as tmp:
        src = Path(tmp) / "ws.hdf5"
        lengths = _write_dataset(src, 3 if quick else 20, np.random.default_rng(0))
        expected = Path(tmp) / "expected.npz"
        _expected(src, expected)
        for codec in CODECS:
            root = Path(tmp) / codec
            t0 = time.perf_counter()
            export_lerobot(src, root, codec=codec)
            export_s = time.perf_counter() - t0
            mb = sum(p.stat().st_size for p in root.rglob("*.mp4")) / 2**20
            result = _in_venv(python, root, expected, "pyav")
            if "error" in result:
                errors.append(f"{codec}: {result['error']}")
                continue
            rows.append(
                {"codec": codec, "episodes": len(lengths), "frames": sum(lengths),
                 "export_s": round(export_s, 2), "video_mb": round(mb, 2), "backend": "pyav"}
                | result
            )  # fmt: skip
        probe = _in_venv(python, Path(tmp) / "lossless", expected, "torchcodec")
        if "error" in probe:
            errors.append(f"torchcodec backend: {probe['error']}")
    note = (
        f"LeRobotDataset (lerobot {rows[0]['lerobot'] if rows else '?'}, bench venv, offline) "
        f"reading our exports: {len(CAMERAS)} cameras {SIZE}x{SIZE}, fps {FPS}; frame errors in "
        "uint8 units over every index and camera"
    ) + "".join(f"\nerror: {e}" for e in errors)
    report(NAME, rows, note=note)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lerobot_reader",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--quick", action="store_true", help="3 episodes instead of 20")
    parser.add_argument(
        "--venv", type=Path, default=VENV, help="the LeRobot bench venv (default: .venvs/lerobot)"
    )
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="pyav", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(lerobot_side(*args.worker, args.backend)))
        return
    try:
        run(args.quick, args.venv)
    except RuntimeError as err:  # the bench venv is missing: what to run, in one line
        parser.exit(1, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
