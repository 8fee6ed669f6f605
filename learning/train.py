"""Training entry: `python -m learning.train --config-name=NAME key=value ...`.

Pure orchestration (every algorithm runs through it): compose -> seed -> instantiate
`cfg.data` (LightningDataModule) and `cfg.model` (LightningModule; its network is a `_target_`
injected into it) -> callbacks from `cfg.trainer`, the tracker from `cfg.logger`
(learning/trackers.py) -> fit(ckpt_path=cfg.ckpt_path) -> test when the datamodule has a test
split.

Every run adds two callbacks: `RecordConfig` (config and model kwargs in each checkpoint) and
`FiniteGuard` (stop at the first non-finite loss). A bad input file (dataset, resume checkpoint)
or a non-finite loss ends `python -m learning.train` with one line and exit status 1.

The model's dimensions (obs specs, action dim, control rate, bounds: learning/data/spec.py) are
explicit arguments with two sources, merged by `model_kwargs`:
  `cfg.model_dims`           values written in the config, or a `_target_` that derives them
                             (e.g. `learning.data.spec.env_model_dims` for an env without data)
  `datamodule.model_kwargs()` (optional hook) data-derived arguments: shapes and statistics
A key both give must agree. A second optional hook, `has_test_split -> bool`, runs
`trainer.test` after fitting.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import signal
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from episode_dataset import DatasetError
from learning.checkpoint import CheckpointError, RecordConfig, torch_load
from learning.config_rules import check_config
from learning.errors import ConfigError
from learning.finite import FiniteGuard, NonFiniteError
from learning.trackers import tracked
from sim.namo.episodes import EpisodeFileError
from sim.namo.mask_files import MaskFileError

log = logging.getLogger(__name__)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Runtime choices in the trainer configs: `${cuda_or:16-mixed,32-true}`, `${gpu_devices:0}`;
# `${if:...}` below.
OmegaConf.register_new_resolver(
    "cuda_or",
    lambda on_cuda, on_cpu: on_cuda if torch.cuda.is_available() else on_cpu,
    replace=True,
)
OmegaConf.register_new_resolver(
    "gpu_devices",
    lambda gpu_id: [int(gpu_id)] if torch.cuda.is_available() else 1,
    replace=True,
)


def _if(condition: Any, then: Any, otherwise: Any) -> Any:
    """`${if:${model.use_sequences},${sequence_length},null}`: a key that follows a bool flag."""
    if not isinstance(condition, bool):  # a string "false" would be true
        raise TypeError(f"${{if:...}} needs true or false, got {condition!r}")
    return then if condition else otherwise


OmegaConf.register_new_resolver("if", _if, replace=True)


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m learning.train --config-name=NAME *overrides` would run."""
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra.compose(config_name=name, overrides=list(overrides))


def _prepare_run_dir(cfg: DictConfig) -> Path:
    """Fix the run dir once (Hydra's when launched by @hydra.main) and save the config there."""
    if HydraConfig.initialized():
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    else:
        default = f"outputs/{cfg.name}/{datetime.now():%Y-%m-%d_%H-%M-%S-%f}"
        run_dir = Path(str(cfg.get("run_dir") or default))
        base, n = run_dir, 0
        while (run_dir / ".hydra").exists():  # two runs within one second: keep both
            n += 1
            run_dir = base.with_name(f"{base.name}_{n}")
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    if not (run_dir / ".hydra" / "config.yaml").exists():  # @hydra.main already wrote it
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


def model_kwargs(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The model's data-derived constructor arguments: `cfg.model_dims` and the datamodule's
    `model_kwargs()` together (see the module docstring)."""
    from_data = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
    dims = cfg.get("model_dims")
    explicit = dict(instantiate(dims, _convert_="all")) if dims else {}
    clash = sorted(k for k in explicit.keys() & from_data.keys() if explicit[k] != from_data[k])
    if clash:
        raise ConfigError(
            f"model_dims.{clash[0]} = {explicit[clash[0]]!r} disagrees with the data's "
            f"{from_data[clash[0]]!r}"
        )
    return {**from_data, **explicit}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured; returns {"run_dir", "best_ckpt", "last_ckpt", "metrics"}."""
    check_config(cfg)  # absurd numbers: one line naming the key, before any work
    cfg = copy.deepcopy(cfg)  # run dir and resolution must not leak into the caller's cfg
    run_dir = _prepare_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        # Small models gain nothing from intra-op threads, and on a busy 2-core machine two
        # spinning threads made FBC training ~30x slower than one.
        torch.set_num_threads(int(cfg.torch_threads))
    # Denormal weights and Adam moments (they appear as both shrink) made CPU updates ~10x
    # slower (an FQL update 500 -> 60 ms); GPUs flush them anyway.
    torch.set_flush_denormal(True)
    if cfg.get("online") is not None:  # an env instead of a dataset: the online loop
        from learning.online.loop import run_online

        return run_online(cfg, run_dir)

    if cfg.get("ckpt_path") and cfg.ckpt_path not in ("last", "best", "hpc", "registry"):
        torch_load(cfg.ckpt_path)  # refuse a missing or hostile resume file before any work
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    kwargs = model_kwargs(cfg, datamodule)
    model: L.LightningModule = instantiate(cfg.model, _convert_="all", **kwargs)

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks = [instantiate(c) for c in (trainer_cfg.pop("callbacks", None) or {}).values()]
    callbacks.append(RecordConfig(OmegaConf.to_container(cfg, resolve=True), kwargs))
    callbacks.append(FiniteGuard())
    with tracked(cfg, run_dir, path="trainer") as logger:
        trainer: L.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=logger or False)
        # Resume reads the checkpoint as plain data too (docs/security.md).
        with _stopped_by_signal(trainer, run_dir), _out_of_space(run_dir):
            trainer.fit(
                model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True
            )
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") or None
        if getattr(datamodule, "has_test_split", False):
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    last = run_dir / "checkpoints" / "last.ckpt"
    result = {
        "run_dir": str(run_dir),
        "best_ckpt": best,
        "last_ckpt": str(last) if last.exists() else None,
        "metrics": metrics,
    }
    log.info("run finished: %s", result)
    return result


@contextlib.contextmanager
def _stopped_by_signal(trainer: L.Trainer, run_dir: Path) -> Iterator[None]:
    """Lightning ends a fit stopped by Ctrl-C with exit 1 and one stopped by SIGTERM (`docker
    stop`, a scheduler) with exit 0, as if it had finished. End them as the signals do, as the
    online loop does: KeyboardInterrupt (learning.train: exit 130), exit 143; and say which
    checkpoint to go on from (last.ckpt: the last finished epoch)."""
    sigint = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as err:
        if isinstance(err, SIGTERMException):
            name = "SIGTERM"
        elif trainer.interrupted:
            name = "SIGINT"
            signal.signal(signal.SIGINT, sigint)  # Lightning leaves Ctrl-C ignored
        else:
            raise
        last = run_dir / "checkpoints" / "last.ckpt"
        log.warning(
            "stopped by %s in epoch %d: %s",
            name,
            trainer.current_epoch,
            f"go on from the last finished epoch with ckpt_path={last}"
            if last.exists()
            else "no epoch had finished, nothing saved",
        )
        if name == "SIGINT":
            raise KeyboardInterrupt from None
        raise SystemExit(128 + signal.SIGTERM) from None


@contextlib.contextmanager
def _out_of_space(run_dir: Path) -> Iterator[None]:
    """A full disk or a file-size limit while the run writes (checkpoints, logs) is one line
    (OSError's own names no file); what was written before stays (checkpoints are written to
    a temporary name, then moved)."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise CheckpointError(
            f"{run_dir}: writing the run failed ({err.strerror}); what it wrote before is kept"
        ) from None


# Errors whose message is the whole story (a file, a key, a value): one line, exit 1.
ONE_LINE_ERRORS = (
    CheckpointError,
    ConfigError,
    DatasetError,
    NonFiniteError,
    MaskFileError,  # NAMO mask samples (train_q_function, the goal generators)
    EpisodeFileError,  # NAMO MCTS episodes
)


@hydra.main(config_path=str(CONFIG_DIR), config_name="train_fbc", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except InstantiationException as err:
        # A model/network/encoder refusing its arguments inside Hydra's instantiate: Hydra wraps
        # the one-line ConfigError/ValueError in a multi-line message; give the line itself.
        if not isinstance(err.__cause__, ValueError):
            raise
        raise SystemExit(f"learning.train: {err.__cause__}") from None
    except ONE_LINE_ERRORS as err:  # 1 line, exit 1
        raise SystemExit(f"learning.train: {err}") from None
    except KeyboardInterrupt:  # Ctrl-C: an online run has written last.ckpt and said where
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
