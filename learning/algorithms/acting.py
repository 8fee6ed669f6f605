"""What every acting model (contract v2 `policy` / `actor`) exports from its hyperparameters.

The models keep their data-derived arguments (`obs_specs`, `action_dim`, `control_rate_hz`,
`action_bounds`: learning/data/spec.py) in `hparams`; these two helpers turn them into the
contract's acting fields and the example observation inputs of `export_graph`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def acting_fields(
    model_type: str,
    hparams: Mapping[str, Any],
    *,
    obs_steps: int,
    horizon: int,
    n_action_steps: int,
    stats: Mapping[str, Any],
) -> dict[str, Any]:
    """The metadata fields of an acting model (docs/export_contract.md); `stats`: the
    normalization baked into its graph, per key."""
    specs, bounds = hparams["obs_specs"], hparams.get("action_bounds")
    return {
        "model_type": model_type,
        "observations": {k: dict(specs[k]) for k in sorted(specs)},
        "obs_steps": obs_steps,
        "action_dim": hparams["action_dim"],
        "horizon": horizon,
        "n_action_steps": n_action_steps,
        "control_rate_hz": hparams.get("control_rate_hz"),
        # {"low", "high", "source"}: where the served policy clips; absent in checkpoints
        # older than the field (the ROS policy node refuses such a model).
        **({"action_bounds": dict(bounds)} if bounds else {}),
        "normalization": {"baked": True, "stats": dict(stats)},
    }


def example_observations(
    obs_specs: Mapping[str, Mapping[str, Any]], obs_steps: int, batch: int = 2
) -> dict[str, torch.Tensor]:
    """Zero inputs `obs.<key>` (batch, obs_steps, *shape) of each key's dtype, sorted keys."""
    return {
        f"obs.{k}": torch.zeros(
            (batch, obs_steps, *obs_specs[k]["shape"]),
            dtype=getattr(torch, obs_specs[k]["dtype"]),
        )
        for k in sorted(obs_specs)
    }
