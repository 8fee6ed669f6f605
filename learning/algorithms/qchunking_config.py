"""The seed's ACRLPD configuration as a typed view of configs/train_acrlpd.yaml's root keys.

    from learning.algorithms.qchunking_config import get_aloha_config
    config = get_aloha_config()              # train_acrlpd.yaml + configs/preset/aloha.yaml
    config = config.replace(horizon_length=10, bc_alpha=0.01)
    config.validate()                        # ConfigError, one line naming the key, if invalid
    config.overrides()                       # ["horizon_length=10", ...] for learning.train

`ACRLPD.check_config` runs `ACRLPDConfig.from_config(cfg).validate()` on every run config before
the loop builds anything (learning/online/loop.py), so the Hydra path and the seed's Python API
share one set of rules. The presets are the same YAML files Hydra's `preset=` reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from learning.config_rules import check
from learning.errors import ConfigError

PRESETS = ("none", "droid", "aloha", "libero")


@dataclass(frozen=True)
class ACRLPDConfig:
    """The seed's ACRLPDPi0Config / TrainingConfig keys (root keys of train_acrlpd.yaml, which
    holds the defaults: build one with `get_config` or `from_config`)."""

    horizon_length: int
    num_critics: int
    batch_size: int
    best_of_n_samples: int
    discount: float
    bc_alpha: float
    flow_steps: int
    use_adaptive_temperature: bool
    actor_lr: float
    critic_lr: float
    offline_steps: int
    online_steps: int
    eval_frequency: int
    eval_episodes: int
    mixed_precision: bool
    freeze_backbone: bool
    gradient_accumulation_steps: int
    max_memory_gb: float
    env_id: str | None = None
    dataset: str | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ACRLPDConfig:
        """The root keys of a composed train_acrlpd config (a missing `???` value: None)."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in cfg and not OmegaConf.is_missing(cfg, f.name):
                values[f.name] = cfg[f.name]
        return cls(**values)

    def replace(self, **changes: Any) -> ACRLPDConfig:
        """A copy with `changes` (the seed's `config.replace(horizon_length=10)`)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> ACRLPDConfig:
        """ConfigError (one line naming the key and value) for values no run could use."""
        for f in dataclasses.fields(self):  # the numbers: the rules of every training config
            check(f.name, getattr(self, f.name))
        for name in ("mixed_precision", "freeze_backbone", "use_adaptive_temperature"):
            _check(self, name, isinstance(getattr(self, name), bool), "true or false")
        if self.offline_steps + self.online_steps == 0:
            raise ConfigError("offline_steps=0 and online_steps=0: nothing to train")
        if self.offline_steps and not self.dataset:
            raise ConfigError(
                f"offline_steps={self.offline_steps} needs dataset=<episode file> "
                "(or offline_steps=0)"
            )
        if self.dataset and not Path(self.dataset).is_file():
            raise ConfigError(f"dataset={self.dataset}: no such file")
        return self

    def overrides(self) -> list[str]:
        """Hydra overrides of train_acrlpd.yaml that give these values."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                out.append(f"{f.name}={text}")
        return out


def _check(config: ACRLPDConfig, name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={getattr(config, name)!r}: must be {rule}")


def get_config(preset: str = "none", overrides: list[str] | tuple[str, ...] = ()) -> ACRLPDConfig:
    """train_acrlpd.yaml with configs/preset/<preset>.yaml (and `overrides`), as composed by
    `python -m learning.train --config-name=train_acrlpd preset=<preset>`."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}: one of {', '.join(PRESETS)}")
    from learning.train import compose_config

    return ACRLPDConfig.from_config(
        compose_config("train_acrlpd", [f"preset={preset}", *overrides])
    )


def get_droid_config() -> ACRLPDConfig:
    return get_config("droid")


def get_aloha_config() -> ACRLPDConfig:
    return get_config("aloha")


def get_libero_config() -> ACRLPDConfig:
    return get_config("libero")
