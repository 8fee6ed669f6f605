"""Observation wrappers: flat Gymnasium observations -> dict observations (+ rendered camera)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from episode_dataset import IMAGE, LOW_DIM
from episode_dataset.ranges import one_line


class DictObservation(gym.Wrapper):
    """{"state": float32 (D,)} observations, plus `info["is_success"]` when the task defines it.

    `observation_features` declares the feature of every key (read through the wrapper chain
    with `env.get_wrapper_attr`): datasets, topics and models take it from here, never from a
    shape.
    """

    def __init__(self, env: gym.Env, success: Callable[[gym.Env], bool] | None = None) -> None:
        super().__init__(env)
        box = env.observation_space
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(box.low.astype(np.float32), box.high.astype(np.float32))}
        )
        self._success = success
        self.observation_features = {"state": LOW_DIM}

    def _wrap(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[dict, dict]:
        if self._success is not None:
            info["is_success"] = bool(self._success(self.env))
        return {"state": np.asarray(obs, dtype=np.float32)}, info

    def reset(self, **kwargs: Any) -> tuple[dict, dict]:
        obs, info = self.env.reset(**kwargs)
        return self._wrap(obs, info)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs, info = self._wrap(obs, info)
        return obs, float(reward), terminated, truncated, info


class OffscreenCamera:
    """Renders a MuJoCo model's data offscreen: uint8 (height, width, 3) rgb, shadows and
    reflections off (several times faster for small renders, and no information for learning).

    `camera` holds mjvCamera settings: lookat/distance/elevation/azimuth for a free camera,
    trackbody (body id) for a tracking one, or fixed (camera id or name) for one of the model's own
    cameras.
    """

    def __init__(
        self, model: Any, data: Any, width: int, height: int, camera: dict[str, Any]
    ) -> None:
        self._model, self._data = model, data
        try:
            self._renderer: mujoco.Renderer | None = mujoco.Renderer(
                model, height=height, width=width
            )
        except ValueError as err:  # larger than the model's offscreen buffer: 6 lines
            raise ValueError(f"camera {width}x{height}: {one_line(err)}") from None
        self._camera = mujoco.MjvCamera()
        mujoco.mjv_defaultFreeCamera(model, self._camera)
        if "fixed" in camera:
            self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            fixed = camera["fixed"]  # a camera id or name
            if isinstance(fixed, str):
                fixed = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, fixed)
                if fixed < 0:
                    raise ValueError(f"the model has no camera named {camera['fixed']!r}")
            self._camera.fixedcamid = int(fixed)
        if "trackbody" in camera:
            self._camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            self._camera.trackbodyid = int(camera["trackbody"])
        if "lookat" in camera:
            self._camera.lookat[:] = camera["lookat"]
        for key in ("distance", "elevation", "azimuth"):
            if key in camera:
                setattr(self._camera, key, float(camera[key]))

    def render(self) -> np.ndarray:
        assert self._renderer is not None, "render after close"
        self._renderer.update_scene(self._data, self._camera)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            # mujoco 3.17's Renderer.close frees its GL objects in whichever GL context is
            # current: a render binds ours first, else closing blanks other envs' cameras.
            self._renderer.render()
            self._renderer.close()
            self._renderer = None


class CameraObservation(gym.Wrapper):
    """Adds `image`: uint8 (height, width, 3) rgb rendered offscreen (`OffscreenCamera`, whose
    docstring says what `camera` holds)."""

    def __init__(self, env: gym.Env, width: int, height: int, camera: dict[str, Any]) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not hasattr(base, "model") or not hasattr(base, "data"):
            raise ValueError(f"{base}: camera observation needs a MuJoCo env (model/data)")
        self._camera = OffscreenCamera(base.model, base.data, width, height, camera)
        spaces = dict(env.observation_space.spaces)
        spaces["image"] = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.observation_features = {
            **env.get_wrapper_attr("observation_features"),
            "image": IMAGE,
        }

    def render_image(self) -> np.ndarray:
        return self._camera.render()

    def reset(self, **kwargs: Any) -> tuple[dict, dict]:
        obs, info = self.env.reset(**kwargs)
        return {**obs, "image": self.render_image()}, info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return {**obs, "image": self.render_image()}, reward, terminated, truncated, info

    def close(self) -> None:
        self._camera.close()
        super().close()
