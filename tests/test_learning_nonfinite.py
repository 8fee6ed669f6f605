"""Training refuses non-finite data and losses; export refuses non-finite outputs (issue 8).

Before: one NaN in a dataset trained to exit 0 with `val_lossnan.ckpt`, and the export parity
check printed 0.00e+00 for a NaN policy because `max(0.0, nan)` is 0.0.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from test_learning_data import write_toy_dataset
from test_learning_trust import train_tiny_fbc

from episode_dataset import DatasetError
from learning import export
from learning.checkpoint import load_model
from learning.data.episode_datamodule import EpisodeDataModule

REPO = Path(__file__).resolve().parents[1]


def poke(path: Path, ep: str, name: str, step: int, value: float) -> Path:
    """Overwrite one value of a committed dataset (shard of a linked file) in place."""
    with h5py.File(path, "r") as index:
        link = index["data"].get(ep, getlink=True)
        shard = path.parent / link.filename
    with h5py.File(shard, "r+") as f:
        ds = f[link.path][name]
        row = ds[step]
        row.flat[0] = value
        ds[step] = row
    return path


def train_cli(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "learning.train",
            f"run_dir={tmp / 'run'}",
            "batch_size=32",
            "model.network.hidden_dims=[32,32]",
            "~trainer.callbacks.progress_bar",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def last_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_one_nan_in_the_dataset_stops_training_before_it_starts(tmp_path: Path) -> None:
    data = poke(
        write_toy_dataset(tmp_path / "toy.hdf5", episodes=6), "demo_3", "obs/state", 5, np.nan
    )
    proc = train_cli(tmp_path, f"dataset={data}", "max_epochs=2")
    assert proc.returncode != 0
    assert last_line(proc) == f"learning.train: {data}: demo_3/obs/state: NaN/Inf at step 5"
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(("name", "key"), [("actions", "actions"), ("obs/state", "obs/state")])
def test_datamodule_names_file_episode_and_key(tmp_path: Path, name: str, key: str) -> None:
    data = poke(write_toy_dataset(tmp_path / "toy.hdf5", episodes=4), "demo_2", name, 7, np.inf)
    dm = EpisodeDataModule(str(data), obs_steps=2, horizon=4)
    with pytest.raises(DatasetError, match=f"^{data}: demo_2/{key}: NaN/Inf at step 7$"):
        dm.setup("fit")


def test_a_non_finite_loss_stops_training_at_its_step(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy.hdf5", episodes=6)
    # lr 1e30: the first update throws the weights to ~1e30, the next loss overflows.
    proc = train_cli(tmp_path, f"dataset={data}", "max_epochs=3", "base_lr=1e30")
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith("learning.train: ") and "non-finite" in line and "step " in line, line
    ckpts = list((tmp_path / "run").rglob("*.ckpt"))
    assert not [p for p in ckpts if "nan" in p.name or "inf" in p.name], ckpts
    for ckpt in ckpts:  # whatever was saved before the step is a good checkpoint
        weights = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in weights.values()), ckpt


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("nonfinite")
    ckpt = train_tiny_fbc(tmp)
    model, cfg = load_model(ckpt)
    onnx_path = tmp / "good.onnx"
    export.export_model(model, onnx_path, cfg)
    return {"ckpt": ckpt, "onnx": onnx_path, "tmp": tmp}


def nan_weights(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        next(model.network.parameters()).view(-1)[0] = math.nan
    return model


def test_export_cli_refuses_a_nan_checkpoint(good: dict, tmp_path: Path) -> None:
    data = torch.load(good["ckpt"], map_location="cpu", weights_only=True)
    name = next(k for k in data["state_dict"] if k.startswith("network."))
    data["state_dict"][name].view(-1)[0] = math.nan
    ckpt, out = tmp_path / "nan.ckpt", tmp_path / "nan.onnx"
    torch.save(data, ckpt)
    proc = subprocess.run(
        [sys.executable, "-m", "learning.export", "--ckpt", str(ckpt), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    line = last_line(proc)
    assert str(out) in line and "'actions'" in line and "not finite" in line, line
    assert not out.exists()


def test_parity_fails_when_torch_gives_nan(good: dict) -> None:
    model = nan_weights(load_model(good["ckpt"])[0])
    with pytest.raises(export.ExportError, match="'actions'.*not finite.*torch"):
        export.parity(model, good["onnx"])


def test_parity_fails_when_onnxruntime_gives_nan(good: dict, tmp_path: Path) -> None:
    proto = onnx.load(str(good["onnx"]))
    init = next(
        i
        for i in proto.graph.initializer
        if numpy_helper.to_array(i).dtype.kind == "f" and numpy_helper.to_array(i).size > 1
    )
    values = numpy_helper.to_array(init).copy()
    values.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    model, _ = load_model(good["ckpt"])
    with pytest.raises(export.ExportError, match="'actions'.*not finite.*onnxruntime"):
        export.parity(model, broken)


def test_no_checkpoint_is_written_with_non_finite_weights(tmp_path: Path) -> None:
    import lightning as L
    from hydra.utils import instantiate

    from learning.finite import FiniteGuard, NonFiniteError
    from learning.train import compose_config

    data = write_toy_dataset(tmp_path / "toy.hdf5", episodes=4)
    cfg = compose_config("train_fbc", [f"dataset={data}", "model.network.hidden_dims=[32,32]"])
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[FiniteGuard()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    nan_weights(model)
    with pytest.raises(NonFiniteError, match=r"weight network\..* is not finite at step \d+"):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert (tmp_path / "good.ckpt").is_file() and not (tmp_path / "nan.ckpt").exists()
