"""Videos of an env's episodes (the online loop's `online.capture_video`, `python -m sim.evaluate
--video`), as CleanRL's `--capture_video` and SB3's VecVideoRecorder give: rendered offscreen
from the env's MuJoCo model while its episode runs, encoded to H.264 frame by frame (an episode
is never held in memory), written whole or not at all."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import av

from episode_dataset import whole_or_absent
from sim.envs import task_spec
from sim.wrappers import OffscreenCamera

VIDEO_SIZE = 256  # pixels a side of the square frames, unless asked otherwise


def why_not_filmable(env_id: str) -> str | None:
    """Why `env_id` cannot be filmed (no MuJoCo model to render), or None."""
    if not task_spec(env_id).mujoco:
        return f"{env_id} has no MuJoCo model to render"
    return None


class EpisodeVideo:
    """`with EpisodeVideo(path, env, env_id, size) as video:`, then `video.frame()` after each
    reset and step of `env` (an env of task `env_id`; of a vector env, one of its `envs`)."""

    def __init__(self, path: Path, env: Any, env_id: str, size: int) -> None:
        if why_not := why_not_filmable(env_id):
            raise ValueError(f"{path}: {why_not}")
        self.path, self.size, self.frames = path, size, 0
        base = env.unwrapped
        camera = task_spec(env_id).camera
        self._camera = OffscreenCamera(base.model, base.data, size, size, camera)
        dt = getattr(base, "dt", None)  # the control period: the video plays in real time
        self._fps = max(1, round(1.0 / dt)) if dt else int(base.metadata.get("render_fps", 30))
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> EpisodeVideo:
        self._stack.callback(self._camera.close)
        try:  # a with statement does not exit what its __enter__ fails to finish
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._stack.enter_context(whole_or_absent(self.path))
            self._container = self._stack.enter_context(av.open(str(tmp), "w", format="mp4"))
            options = {"crf": "23", "preset": "veryfast"}  # 1.0 ms a frame at 256 px (default 1.8)
            self._stream = self._container.add_stream("libx264", rate=self._fps, options=options)
            self._stream.pix_fmt = "yuv420p"
            self._stream.height = self._stream.width = self.size
        except BaseException:
            if not self._stack.__exit__(*sys.exc_info()):  # as failed: no half file renamed
                raise
        return self

    def frame(self) -> None:
        frame = av.VideoFrame.from_ndarray(self._camera.render(), format="rgb24")
        frame.pts = self.frames
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            try:  # the encoder's last packets: a full disk shows here, and must not commit
                self._container.mux(self._stream.encode(None))
            except BaseException:
                if not self._stack.__exit__(*sys.exc_info()):
                    raise
                return
        self._stack.__exit__(*exc)
