"""Experiment trackers (learning/trackers.py): tiny real training runs with `logger=wandb`
(offline) and `logger=mlflow` (local file store), through the Lightning Trainer and the Fabric
online loop; the values in the trackers' own files are the ones the run reports. Nothing
touches the network.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from test_learning_data import write_toy_dataset

from learning.errors import ConfigError
from learning.train import compose_config, run

FBC_TINY = [
    "model.network.hidden_dims=[32,32]",
    "batch_size=32",
    "max_epochs=2",
    "~trainer.callbacks.progress_bar",
]
SAC_TINY = [
    "env_id=Pendulum-v1",
    "training.num_iterations=1",
    "training.steps_per_iteration=120",
    "policy.hidden_dim=32",
    "model.batch_size=32",
    "model.learning_starts=100",
    "online.log_every=10",
    "online.eval_episodes=1",
    "online.progress_bar=false",
]


def wandb_records(path: Path) -> list:
    """The protobuf `Record`s of an offline run's .wandb file: a LevelDB-style log (7-byte file
    header, 32 KiB blocks of records: crc32c, length, type, payload), the file `wandb sync`
    uploads. A record still being appended (its payload past the file's end) ends the list."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # read while wandb's service is still writing it
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir: Path, wait_s: float = 30.0) -> dict[str, list[float]]:
    """Every logged value per key of the finished offline run. wandb's service process writes
    the file: `wandb.finish()` can return before its last records land (seen once in CI, under
    load), so this reads until the run's closing `exit` record is there."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        records = wandb_records(path)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds:
            break
        assert time.monotonic() < deadline, f"{path}: no exit record {wait_s} s after finish"
        time.sleep(0.2)
    history: dict[str, list[float]] = {}
    for record, kind in zip(records, kinds, strict=True):
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return history


def mlflow_history(run_dir: Path) -> dict[str, list[float]]:
    """Every logged value per key from the file store: metrics/<key> holds `time value step`."""
    (run,) = [p.parent for p in run_dir.glob("mlruns/*/*/metrics")]
    return {
        str(f.relative_to(run / "metrics")): [float(line.split()[1]) for line in f.open()]
        for f in (run / "metrics").rglob("*")
        if f.is_file()
    }


HISTORY = {"wandb": wandb_history, "mlflow": mlflow_history}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy.hdf5", episodes=6)


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_trainer_writes_the_run_metrics_to_the_tracker(
    tracker: str, toy: Path, tmp_path: Path
) -> None:
    result = run(
        compose_config(
            "train_fbc",
            [f"dataset={toy}", f"run_dir={tmp_path}/run", f"logger={tracker}", *FBC_TINY],
        )
    )
    run_dir = Path(result["run_dir"])
    history = HISTORY[tracker](run_dir)
    assert len(history["val_loss"]) == 2  # one per epoch
    assert history["val_loss"][-1] == pytest.approx(result["metrics"]["val_loss"], rel=1e-6)
    assert history["train_loss"] and all(v > 0 for v in history["train_loss"])
    assert not (run_dir / "tensorboard").exists()  # the choice replaces the default


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_online_loop_writes_its_scalars_to_the_tracker(tracker: str, tmp_path: Path) -> None:
    result = run(
        compose_config(
            "train_sac",
            [f"output_root={tmp_path}", f"run_dir={tmp_path}/run", f"logger={tracker}", *SAC_TINY],
        )
    )
    history = HISTORY[tracker](Path(result["run_dir"]))
    # Updates from env step 100 on, logged every 10 steps: 100, 110, 120.
    assert len(history["loss/critic"]) == 3
    assert history["eval/return"] == [pytest.approx(result["metrics"]["eval/return"])]
    assert history["time/online_s"] == [pytest.approx(result["metrics"]["time/online_s"])]


def test_missing_tracker_package_is_one_line_naming_the_extra(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # how Python marks a module not importable
    cfg = compose_config("train_fbc", [f"dataset={toy}", f"run_dir={tmp_path}", "logger=mlflow"])
    with pytest.raises(ConfigError, match=r"^logger=mlflow needs the mlflow package: pip "):
        run(cfg)
    cfg = compose_config("train_fbc", [f"dataset={toy}", "logger.tracker=neptune"])
    with pytest.raises(ConfigError, match=r"logger.tracker='neptune': unknown, choose one of"):
        run(cfg)
