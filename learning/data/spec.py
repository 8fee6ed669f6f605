"""Model dimensions: what a model's constructor needs to know about its inputs and outputs,
derived from the one dataset spec (episode_dataset KeySpecs + env_args) wherever that spec comes
from: a dataset file (`EpisodeDataModule.model_kwargs`), a sim env (`env_model_dims`, for runs
without a dataset), or values written in the config (`model_dims:` in learning.train).

    obs_specs        {key: {"shape": [...], "dtype": ..., "feature_type": "image" | "low_dim"}}
    action_dim       A
    control_rate_hz  control steps per second of robot time (None when the spec has none)
    action_bounds    {"low": [A], "high": [A], "source": "env"} when the env declares them
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from episode_dataset import KeySpec


def model_dims(
    obs_specs: Mapping[str, KeySpec], action_spec: KeySpec, env_args: Mapping[str, Any]
) -> dict[str, Any]:
    """The model dimensions of a dataset spec (JSON-able)."""
    rate = env_args.get("control_rate_hz")
    dims: dict[str, Any] = {
        "obs_specs": {
            k: {"shape": list(s.shape), "dtype": s.dtype, "feature_type": s.feature_type}
            for k, s in sorted(obs_specs.items())
        },
        "action_dim": int(action_spec.shape[0]),
        "control_rate_hz": None if rate is None else float(rate),
    }
    space = env_args.get("action_space")
    if space is not None:
        dims["action_bounds"] = {"low": list(space["low"]), "high": list(space["high"])}
        dims["action_bounds"]["source"] = "env"
    return dims


def env_model_dims(env_id: str, camera: int | None = None) -> dict[str, Any]:
    """The model dimensions of a `sim` task, e.g. in a config:
    `model_dims: {_target_: learning.data.spec.env_model_dims, env_id: Reacher-v5}`."""
    from sim.envs import make  # MuJoCo loads only when a run asks for an env's dimensions
    from sim.spec import env_spec

    env = make(env_id, camera=camera)
    try:
        spec = env_spec(env, env_id, camera)
    finally:
        env.close()
    return model_dims(spec.obs_specs, spec.action_spec, spec.env_args)
