"""Experiment trackers: one registry for both training paths, chosen with the Hydra group `logger`.

    python -m learning.train --config-name=train_bc dataset=D.hdf5              # TensorBoard
    python -m learning.train --config-name=train_bc dataset=D.hdf5 logger=wandb
    python -m learning.train --config-name=train_sac env_id=Pendulum-v1 logger=mlflow
    ... ~logger                                                                 # none

configs/logger/<name>.yaml holds `tracker: <registry key>` and that tracker's options. Every
tracker writes under the run dir and nothing leaves the machine: TensorBoard event files in
`<run_dir>/tensorboard`, W&B in offline mode (`<run_dir>/wandb/offline-run-*`, uploaded later,
if ever, with `wandb sync`), MLflow into a local file store (`<run_dir>/mlruns`). The Lightning
Trainer (learning/train.py) and the Fabric online loop (learning/online/loop.py) take the same
choice; `tracked(..., path=)` says which of the two is asking. wandb and mlflow are the
optional `trackers` extra; choosing one that is not installed is a one-line ConfigError.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from learning.errors import ConfigError

EXTRA = "trackers"

# (run_dir, run_name, options from the yaml) -> logger
Factory = Callable[[Path, str, dict[str, Any]], Logger]


@dataclass(frozen=True)
class Tracker:
    trainer: Factory  # a lightning.pytorch logger for the Trainer
    fabric: Factory  # a logger Fabric.log_dict writes to (pytorch loggers are Fabric loggers)
    package: str | None = None  # must be importable, else a ConfigError naming the extra
    close: Callable[[Logger], None] | None = None  # at the end of the run, after finalize


def _tensorboard_trainer(run_dir: Path, run_name: str, opts: dict[str, Any]) -> Logger:
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(
        save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False, **opts
    )


def _tensorboard_fabric(run_dir: Path, run_name: str, opts: dict[str, Any]) -> Logger:
    from lightning.fabric.loggers import TensorBoardLogger

    return TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version="", **opts)


def _wandb(run_dir: Path, run_name: str, opts: dict[str, Any]) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    # Offline whatever the environment says: runs are synced by hand, never from training.
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    return WandbLogger(save_dir=str(run_dir), name=run_name, offline=True, **opts)


def _wandb_close(logger: Logger) -> None:
    # Lightning leaves the wandb run open (process-global): finish it, so the offline files
    # are complete now and a second training in this process starts a run of its own.
    import wandb

    wandb.finish()


def _mlflow(run_dir: Path, run_name: str, opts: dict[str, Any]) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger

    # MLflow 3 keeps the file store in maintenance mode behind this switch; it is the only
    # local store the skinny package can write (sqlite needs the full mlflow's SQLAlchemy).
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{(run_dir / 'mlruns').resolve()}"
    return MLFlowLogger(tracking_uri=uri, run_name=run_name, **opts)


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker(_tensorboard_trainer, _tensorboard_fabric),
    "wandb": Tracker(_wandb, _wandb, package="wandb", close=_wandb_close),
    "mlflow": Tracker(_mlflow, _mlflow, package="mlflow"),
}


@contextmanager
def tracked(
    cfg: DictConfig, run_dir: Path, *, path: Literal["trainer", "fabric"]
) -> Iterator[Logger | None]:
    """The logger of the run config's `logger` group (None when the group was removed), for the
    length of one training run."""
    group = cfg.get("logger")
    if group is None:
        yield None
        return
    if not isinstance(group, DictConfig):
        raise ConfigError(f"logger={group!r}: not a tracker config (configs/logger/*.yaml)")
    opts = dict(OmegaConf.to_container(group, resolve=True))  # type: ignore[arg-type]
    name = opts.pop("tracker", None)
    tracker = TRACKERS.get(str(name))
    if tracker is None:
        raise ConfigError(f"logger.tracker={name!r}: unknown, choose one of {sorted(TRACKERS)}")
    if tracker.package and importlib.util.find_spec(tracker.package) is None:
        raise ConfigError(
            f"logger={name} needs the {tracker.package} package: pip install -e '.[{EXTRA}]'"
        )
    logger = getattr(tracker, path)(run_dir, f"{cfg.name}-{run_dir.name}", opts)
    try:
        yield logger
    finally:
        if tracker.close is not None:
            tracker.close(logger)
