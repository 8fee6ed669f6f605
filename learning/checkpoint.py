"""Checkpoints that can rebuild their model without the training script, and carry no code.

`train.py` adds `RecordConfig` to the callbacks, so every Lightning checkpoint carries the
resolved training config and the data-derived model arguments (`model_kwargs`: shapes,
normalization stats). `load_model` re-instantiates `cfg.model` from them and loads the weights:
one generic path for every algorithm, used by export and `TorchPolicy`.

A checkpoint is data, never code (docs/security.md):
- it is unpickled with `torch.load(weights_only=True)`: tensors and builtin containers only, so
  a pickle that names a callable (`__reduce__` -> `os.system`) is refused before anything runs;
- every `_target_` in the stored model config (and in the kwargs merged into it) must resolve
  to a class defined under `TRUSTED_TARGETS`, checked before Hydra imports or calls anything.

Checkpoints from before contract v2 (issue 9) still load: `read_checkpoint` moves the config
keys renamed since (`RENAMED_KEYS`, old dotted path -> new) and gives every observation spec of
the model kwargs the feature type the old encoder inferred from its shape (`OLD_FEATURE_TYPE`).
Resuming needs nothing: Lightning restores weights and optimizer into the model of today's config.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate

CONFIG_KEY = "roboloop_config"
MODEL_KWARGS_KEY = "roboloop_model_kwargs"

log = logging.getLogger(__name__)

# Stored config keys renamed by issue 9: old dotted path -> new (None: gone, nothing reads it).
RENAMED_KEYS: dict[str, str | None] = {
    # configs/model/flow_bc.yaml: the image encoder comes from a registry (default name "conv").
    "model.encoder.image_channels": "model.encoder.image_encoder.channels",
    "model.encoder.image_feature_dim": "model.encoder.image_encoder.feature_dim",
    # configs/data/*.yaml: one spelling for splits (the quality tool rebuilds `data`).
    "data.seed": "data.split_seed",
    "data.val_split": "data.val_fraction",
    "data.test_split": "data.test_fraction",
    "data.train_split": None,  # train gets the rest
    # configs/train_{fbc,bc}.yaml (issue 12): the chunk length is the seed's horizon_length.
    "horizon": "horizon_length",
}
# Observation specs stored without a feature type: what the old ObservationEncoder made of the
# shape's rank, so the rebuilt encoder matches the stored weights.
OLD_FEATURE_TYPE = {3: "image", 1: "low_dim"}

# Module prefixes a stored `_target_` may name: the workspace's own code, and torch's optimizers
# and LR schedulers (the training-only `_partial_` factories of every model config).
TRUSTED_TARGETS = ("learning.", "torch.optim.")

# torch names the callable a refused pickle asked for: "... unsupported GLOBAL posix.system ...".
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class RecordConfig(L.Callback):
    """Store the training config and data-derived model kwargs in every checkpoint."""

    def __init__(self, config: dict[str, Any], model_kwargs: dict[str, Any]) -> None:
        self.config, self.model_kwargs = config, model_kwargs

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[MODEL_KWARGS_KEY] = self.model_kwargs


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, refused, or not written by `learning.train`."""


def load_error(path: str, err: BaseException) -> CheckpointError:
    """One line for what torch or Lightning raised while loading `path`."""
    text = str(err)
    needed = _GLOBAL.search(text)
    if needed:
        return CheckpointError(
            f"{path}: refused: its pickle calls {needed.group(1)}; a checkpoint may hold only "
            "tensors and plain data (torch.load weights_only=True)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # torch wraps the unpickler's own message between a long preamble and a docs link.
    detail = lines[-2] if text.startswith("Weights only load failed") and len(lines) > 2 else ""
    detail = detail or (lines[0] if lines else "")
    return CheckpointError(
        f"{path}: not a readable torch checkpoint ({type(err).__name__}: {detail})"
    )


def torch_load(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; any failure is one CheckpointError line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises whatever its unpickler meets in a corrupt file
        raise load_error(path, err) from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A `learning.train` checkpoint as plain data, its config and kwargs in today's keys."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt:
        raise CheckpointError(
            f"{os.fspath(path)}: checkpoint has no {CONFIG_KEY!r} (not written by learning.train)"
        )
    return upgrade_checkpoint(ckpt, os.fspath(path))


def _pop(node: Any, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _check_encoder_layout(cfg: Any, specs: Any, where: str) -> None:
    """CheckpointError for an `ObservationEncoder` model from before issue 12 whose features
    would now come in another order: it concatenated each key over time, today's encoder lays
    them out step by step (the same order for one key or one step). Its config predates
    `low_dim_encoder`, which every encoder config names since."""
    model = cfg.get("model") if isinstance(cfg, dict) else None
    encoder = model.get("encoder") if isinstance(model, dict) else None
    if not isinstance(encoder, dict) or "low_dim_encoder" in encoder:
        return
    if not str(encoder.get("_target_", "")).endswith("encoders.ObservationEncoder"):
        return
    steps = 1 if model.get("use_sequences") else int(model.get("obs_steps") or 1)  # BC's LSTM
    keys = len(specs) if isinstance(specs, dict) else 1
    if keys > 1 and steps > 1:
        raise CheckpointError(
            f"{where}: trained before the step-major observation encoder (issue 12): its "
            f"{keys} obs keys x {steps} steps are ordered key by key; retrain it"
        )


def upgrade_checkpoint(ckpt: dict[str, Any], where: str) -> dict[str, Any]:
    """`ckpt` with `RENAMED_KEYS` moved in its config and `OLD_FEATURE_TYPE` filled into its
    observation specs (module docstring); a checkpoint in today's keys comes back unchanged."""
    cfg, kwargs = ckpt[CONFIG_KEY], ckpt.get(MODEL_KWARGS_KEY)
    moved: list[str] = []
    if isinstance(cfg, dict):
        cfg = copy.deepcopy(cfg)
        for old, new in RENAMED_KEYS.items():
            found, value = _pop(cfg, old)
            if not found:
                continue
            moved.append(old)
            if new is None:
                continue
            *parents, leaf = new.split(".")
            node = cfg
            for key in parents:
                node = node.setdefault(key, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf in node:
                raise CheckpointError(f"{where}: config has both {old} and {new}")
            node[leaf] = value
    specs = kwargs.get("obs_specs") if isinstance(kwargs, dict) else None
    _check_encoder_layout(cfg, specs, where)
    if isinstance(specs, dict) and any("feature_type" not in s for s in specs.values()):
        kwargs = copy.deepcopy(kwargs)
        for key, spec in kwargs["obs_specs"].items():
            if "feature_type" not in spec:
                spec["feature_type"] = OLD_FEATURE_TYPE.get(len(spec.get("shape", ())))
                moved.append(f"obs_specs.{key}.feature_type")
    if not moved:
        return ckpt
    log.warning("%s: checkpoint from before contract v2, upgraded %s", where, ", ".join(moved))
    return {**ckpt, CONFIG_KEY: cfg, MODEL_KWARGS_KEY: kwargs}


def load_lightning(cls: type[L.LightningModule], path: str | os.PathLike) -> L.LightningModule:
    """`cls.load_from_checkpoint` (hparams are kwargs of the fixed class) with weights_only=True;
    eval mode on CPU, failures as one CheckpointError line."""
    torch_load(path)  # missing, refused or corrupt: the same lines as every other loader
    try:
        model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # Lightning raises whatever a foreign checkpoint causes
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(
            f"{os.fspath(path)}: not a {cls.__name__} checkpoint ({type(err).__name__}: {first})"
        ) from None
    return model.eval()


def _is_trusted_class(target: str) -> bool:
    if not target.startswith(TRUSTED_TARGETS):
        return False  # checked before resolving: nothing outside the prefixes gets imported
    try:
        obj = get_object(target)
    except Exception:  # not importable: refused like any other foreign target
        return False
    # The object itself, not only the dotted path, must live there: `learning.export.subprocess
    # .run` starts with "learning." but is subprocess.run. Classes only (constructors), no
    # functions such as `learning.export.main`.
    module = getattr(obj, "__module__", None) or ""
    return isinstance(obj, type) and module.startswith(TRUSTED_TARGETS)


def check_config(node: Any, where: str, at: str) -> None:
    """Raise CheckpointError unless every `_target_` under `node` is a trusted class and no
    string is an OmegaConf interpolation (resolvers are code too). `at` names `node`."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and not (isinstance(target, str) and _is_trusted_class(target)):
            allowed = ", ".join(f"{p}*" for p in TRUSTED_TARGETS)
            raise CheckpointError(
                f"{where}: refused: {at}._target_ {target!r} is not a workspace class "
                f"(allowed: classes in {allowed})"
            )
        for key, value in node.items():
            check_config(value, where, f"{at}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_config(value, where, f"{at}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise CheckpointError(f"{where}: refused: {at} holds an interpolation {node!r}")


def instantiate_trusted(config: Mapping[str, Any], where: str, at: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(config, **kwargs)` for a config read from a file: `check_config`
    first over the config and the kwargs merged into it."""
    check_config(config, where, at)
    check_config(kwargs, where, at)
    return instantiate(config, **kwargs)


PRETRAINED_KEY = "pretrained_path"  # a module's external-weights file (learning/networks/pi0.py)


def _without_pretrained(node: Any) -> Any:
    """The config with every `pretrained_path` set to None: the checkpoint's weights replace
    what such a file gave at training time, so rebuilding must not need the file."""
    if isinstance(node, dict):
        return {
            k: None if k == PRETRAINED_KEY else _without_pretrained(v) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_without_pretrained(v) for v in node]
    return node


def load_model(path: str | os.PathLike) -> tuple[L.LightningModule, dict[str, Any]]:
    """(model in eval mode on CPU, training config) from a `learning.train` checkpoint."""
    ckpt = read_checkpoint(path)
    cfg, where = ckpt[CONFIG_KEY], os.fspath(path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{where}: {CONFIG_KEY!r} has no model config")
    kwargs = ckpt.get(MODEL_KWARGS_KEY) or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: {MODEL_KWARGS_KEY!r} is not a mapping")
    model_cfg = _without_pretrained(cfg["model"])
    try:
        model = instantiate_trusted(model_cfg, where, "model", _convert_="all", **kwargs)
    except InstantiationException as err:  # a trusted class rejected the stored arguments
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{where}: model config does not build ({first})") from None
    if not isinstance(model, L.LightningModule):
        raise CheckpointError(f"{where}: model config builds {type(model).__name__}, not a model")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as err:
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{where}: weights do not fit the model ({first})") from None
    return model.eval(), cfg
