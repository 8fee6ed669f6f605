"""The workspace's tasks, registered as `roboloop/<id>` Gymnasium envs with dict observations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gymnasium as gym

from episode_dataset.ranges import count
from sim.dmc import DMC_TASKS, DMCEnv
from sim.wrappers import CameraObservation, DictObservation

PREFIX = "roboloop/"
SIZE = count(1)  # an image side in pixels


@dataclass(frozen=True)
class TaskSpec:
    """A workspace task: how to build the base env and how to look at it."""

    base_id: str  # Gymnasium id of the underlying env, or "" when `factory` builds it
    factory: Callable[..., gym.Env] | None = None
    mujoco: bool = True  # has a MuJoCo model/data, so the camera wrapper can render it
    camera: dict[str, Any] = field(default_factory=dict)  # mjvCamera settings for the wrapper
    has_expert: bool = False
    success: Callable[[gym.Env], bool] | None = None  # per-step success test on the base env
    max_episode_steps: int | None = None  # None: the base env's own limit


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, spec: TaskSpec) -> None:
    """Add a task and register `roboloop/<name>` with Gymnasium (idempotent)."""
    TASKS[name] = spec
    env_id = PREFIX + name
    if env_id not in gym.registry:
        steps = spec.max_episode_steps
        if steps is None and spec.base_id:
            steps = gym.spec(spec.base_id).max_episode_steps
        # The time limit wraps the dict/camera wrappers, exactly as for the base env.
        gym.register(id=env_id, entry_point=_build, kwargs={"task": name}, max_episode_steps=steps)


def task_spec(env_id: str) -> TaskSpec:
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a task id string, got {type(env_id).__name__}")
    name = env_id.removeprefix(PREFIX)
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {env_id!r}; registered: {sorted(TASKS)}") from None


def make(env_id: str, camera: int | tuple[int, int] | None = None, **kwargs: Any) -> gym.Env:
    """Build a registered task with dict observations; `camera` adds an rgb `image` key.

    env_id may be given with or without the `roboloop/` prefix. `camera` is a size (square)
    or (width, height); None or 0: none. Extra kwargs go to the underlying Gymnasium env.
    """
    task_spec(env_id)  # clear error for unknown ids
    return gym.make(PREFIX + env_id.removeprefix(PREFIX), camera=camera, **kwargs)


def camera_size(camera: Any) -> tuple[int, int] | None:
    """(width, height) of a `camera` argument, None for none; one-line ValueError for a size
    that is no integer >= 1 (before: (0, 64) rendered an empty image, True a 1x1 one)."""
    if camera is None or (isinstance(camera, int) and camera == 0):
        return None
    pair = tuple(camera) if isinstance(camera, Sequence) else (camera, camera)
    if len(pair) != 2 or not all(SIZE.accepts(side) for side in pair):
        raise ValueError(
            f"camera={camera!r}: must be a size or a (width, height) pair of integers >= 1 "
            "(None: no camera)"
        )
    return pair


def _build(task: str, camera: int | tuple[int, int] | None = None, **kwargs: Any) -> gym.Env:
    spec = TASKS[task]
    size = camera_size(camera)  # before the env is built
    base = spec.factory(**kwargs) if spec.factory else gym.make(spec.base_id, **kwargs).unwrapped
    env: gym.Env = DictObservation(base, success=spec.success)
    if size:
        if not spec.mujoco:
            raise ValueError(f"task {task!r} has no MuJoCo model: camera observations unsupported")
        env = CameraObservation(env, width=size[0], height=size[1], camera=spec.camera)
    return env


REACHER_SUCCESS_DISTANCE = 0.02  # metres between fingertip and target


def _reacher_distance(env: gym.Env) -> float:
    delta = env.get_body_com("fingertip") - env.get_body_com("target")
    return float((delta[0] ** 2 + delta[1] ** 2) ** 0.5)


register_task(
    "Reacher-v5",
    TaskSpec(
        "Reacher-v5",
        camera={"lookat": (0.0, 0.0, 0.0), "distance": 0.45, "elevation": -90.0, "azimuth": 90.0},
        has_expert=True,
        success=lambda env: _reacher_distance(env) < REACHER_SUCCESS_DISTANCE,
    ),
)
register_task("Pendulum-v1", TaskSpec("Pendulum-v1", mujoco=False, has_expert=True))
register_task(
    "InvertedPendulum-v5",
    TaskSpec(
        "InvertedPendulum-v5",
        camera={"trackbody": 2, "distance": 1.3, "elevation": 0.0, "azimuth": 90.0},
    ),
)
register_task(
    "HalfCheetah-v5",
    TaskSpec(
        "HalfCheetah-v5",
        camera={"trackbody": 1, "distance": 4.0, "elevation": -15.0, "azimuth": 90.0},
    ),
)
register_task(
    "Hopper-v5",
    TaskSpec(
        "Hopper-v5",
        camera={"trackbody": 1, "distance": 3.0, "elevation": -15.0, "azimuth": 90.0},
    ),
)
# DeepMind Control (sim/dmc.py): dm_control ends the episodes itself, so no time limit here.
for _name, (_domain, _task, _camera) in DMC_TASKS.items():
    register_task(
        _name, TaskSpec("", factory=partial(DMCEnv, _domain, _task), camera={"fixed": _camera})
    )
# OGBench manipulation (sim/ogbench.py): ogbench is imported when one of them is built.
from sim import ogbench as _ogbench  # noqa: E402  (needs register_task above)

_ogbench.register()
