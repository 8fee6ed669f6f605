"""What an env looks like to the outside: the one dataset spec derived from a built env.

`env_spec` gives the observation KeySpecs (each key's feature as the wrappers declare it), the
action KeySpec and the `env_args` (env name, kwargs, control rate, action space). `sim.collect`
writes it into its datasets; the sim bridge publishes every observation key it lists (topic names:
`roboloop_runtime.topics`) and announces the spec on its `spec` topic; the recorder writes the
same spec, and training and the exported model read it back. Nothing retypes it.

Control rate, one meaning everywhere: `control_rate_hz` is control steps per second of robot
time, for a sim task 1 / env.dt of simulated time (Reacher-v5: 50 Hz). A sim run slower than real
time says so with a real-time factor (simulated seconds per wall-clock second); its nodes then
tick at control_rate_hz x real_time_factor wall-clock steps per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from episode_dataset import IMAGE, KeySpec


@dataclass(frozen=True)
class EnvSpec:
    obs_specs: dict[str, KeySpec]
    action_spec: KeySpec
    env_args: dict[str, Any]


def _attr(env: gym.Env | gym.vector.VectorEnv, name: str) -> Any:
    """An attribute anywhere in the wrapper chain (of the first sub-env of a vector env)."""
    if isinstance(env, gym.vector.VectorEnv):
        return env.get_attr(name)[0]
    return env.get_wrapper_attr(name)


def observation_features(env: gym.Env | gym.vector.VectorEnv) -> dict[str, str]:
    """Observation key -> feature type (episode_dataset: image | low_dim), as declared."""
    return dict(_attr(env, "observation_features"))


def control_rate_hz(env: gym.Env | gym.vector.VectorEnv) -> float:
    """Control steps per second of simulated time, 1 / env.dt (MuJoCo: timestep x frame_skip)."""
    try:
        dt = float(_attr(env, "dt"))
    except AttributeError:
        raise ValueError(f"{env}: no dt, so no control rate (give the task a dt)") from None
    return round(1.0 / dt, 6)


def action_space_args(space: gym.Space) -> dict[str, list[float]] | None:
    """env_args["action_space"] = {"low", "high"} of a bounded Box, else None: training reads it
    as the bounds an exported policy's actions are clipped to (`action_bounds`, source "env")."""
    if not isinstance(space, gym.spaces.Box) or not space.is_bounded("both"):
        return None
    return {"low": space.low.astype(float).tolist(), "high": space.high.astype(float).tolist()}


def env_spec(
    env: gym.Env | gym.vector.VectorEnv, env_id: str, camera: int | None = None
) -> EnvSpec:
    """The dataset spec of `env` (a `sim.make` env, or a vector env of them)."""
    vector = isinstance(env, gym.vector.VectorEnv)
    obs_space = env.single_observation_space if vector else env.observation_space
    action_space = env.single_action_space if vector else env.action_space
    features = observation_features(env)
    obs_specs = {}
    for key, box in obs_space.spaces.items():
        if features[key] == IMAGE:
            obs_specs[key] = KeySpec("uint8", box.shape, encoding="rgb8", feature_type=IMAGE)
        else:
            obs_specs[key] = KeySpec(str(box.dtype), box.shape, feature_type=features[key])
    bounds = action_space_args(action_space)
    env_args = {
        "env_name": env_id.removeprefix("roboloop/"),
        "type": "roboloop",
        "env_kwargs": {"camera": camera or None},
        "control_rate_hz": control_rate_hz(env),
        **({"action_space": bounds} if bounds else {}),
    }
    return EnvSpec(obs_specs, KeySpec("float32", action_space.shape), env_args)
