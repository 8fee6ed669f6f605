"""Checkpoints written before contract v2 still load through the one loader (learning/checkpoint
.py): they export and resume.

The code that wrote them is gone, so an old checkpoint is a fresh one with the old spellings
written back literally (configs/model/flow_bc.yaml before issue 9: `image_channels`,
`image_feature_dim`; obs specs without `feature_type`), not derived from the upgrade table.
Non-default encoder sizes make a dropped key fail: the rebuilt encoder would not fit the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from test_learning_data import write_toy_dataset

from learning.checkpoint import (
    CONFIG_KEY,
    MODEL_KWARGS_KEY,
    CheckpointError,
    load_model,
    upgrade_checkpoint,
)
from learning.export import export_checkpoint, parity
from learning.train import compose_config, run

ENCODER = {"channels": [8, 8], "feature_dim": 24}  # not the defaults ([16, 32, 32], 64)


def _cfg(data: Path, run_dir: Path, max_epochs: int, extra: list[str] = ()) -> Any:
    return compose_config(
        "train_fbc",
        [
            f"dataset={data}",
            f"run_dir={run_dir}",
            f"max_epochs={max_epochs}",
            "batch_size=32",
            "model.network.hidden_dims=[32,32]",
            f"model.encoder.image_encoder.channels={ENCODER['channels']}",
            f"model.encoder.image_encoder.feature_dim={ENCODER['feature_dim']}",
            "~trainer.callbacks.progress_bar",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def fresh_and_old(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset, fresh checkpoint, the same checkpoint as the code before issue 9 wrote it)."""
    tmp = tmp_path_factory.mktemp("old_ckpt")
    data = write_toy_dataset(tmp / "toy.hdf5", episodes=6, image=True)
    fresh = Path(run(_cfg(data, tmp / "run", 1))["last_ckpt"])
    ckpt = torch.load(fresh, map_location="cpu", weights_only=True)
    encoder = ckpt[CONFIG_KEY]["model"]["encoder"]
    del encoder["image_encoder"]
    encoder["image_channels"], encoder["image_feature_dim"] = ENCODER.values()
    for spec in ckpt[MODEL_KWARGS_KEY]["obs_specs"].values():
        del spec["feature_type"]
    torch.save(ckpt, tmp / "old.ckpt")
    return data, fresh, tmp / "old.ckpt"


def test_old_checkpoint_rebuilds_and_exports(fresh_and_old, tmp_path: Path) -> None:
    _, fresh, old = fresh_and_old
    model, cfg = load_model(old)
    reference, fresh_cfg = load_model(fresh)
    assert cfg["model"]["encoder"] == fresh_cfg["model"]["encoder"] | {
        "image_encoder": ENCODER  # the registry's default name ("conv") applies
    }
    assert model.export_metadata()["observations"] == reference.export_metadata()["observations"]
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    meta = export_checkpoint(old, tmp_path / "old.onnx")
    assert meta["observations"]["image"]["feature_type"] == "image"
    assert meta["observations"]["state"]["feature_type"] == "low_dim"
    assert parity(model, tmp_path / "old.onnx") <= 1e-4


def test_old_checkpoint_resumes(fresh_and_old, tmp_path: Path) -> None:
    data, _, old = fresh_and_old
    result = run(_cfg(data, tmp_path / "resumed", 2, [f"ckpt_path={old}"]))
    resumed = torch.load(result["last_ckpt"], map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1  # one more epoch after the old checkpoint's first
    load_model(result["last_ckpt"])


def test_old_data_split_keys_reach_todays_datamodules() -> None:
    # configs/data/goal_mask_data.yaml and q_function_data.yaml before issue 9.
    goal = {"_target_": "learning.generative.data.GoalMaskDataModule", "data_dir": "d"}
    goal |= {"val_fraction": 0.2, "seed": 7}
    q = {"_target_": "learning.namo.data.QFunctionDataModule", "data_dir": "d", "split_seed": 5}
    q |= {"train_split": 0.7, "val_split": 0.2, "test_split": 0.1}
    for data, want in ((goal, (0.2, 7)), (q, (0.2, 5))):
        ckpt = {CONFIG_KEY: {"model": {}, "data": data}, "state_dict": {}}
        dm = instantiate(upgrade_checkpoint(ckpt, "old.ckpt")[CONFIG_KEY]["data"])
        val = dm.val_fraction if hasattr(dm, "val_fraction") else dm.fractions["val"]
        assert (val, dm.split_seed) == want
    assert dm.fractions["test"] == 0.1


def test_old_and_new_spelling_together_is_one_line() -> None:
    cfg = {"model": {"encoder": {"image_channels": [8], "image_encoder": {"channels": [4]}}}}
    with pytest.raises(CheckpointError, match=r"^x.ckpt: config has both model.encoder.image_"):
        upgrade_checkpoint({CONFIG_KEY: cfg}, "x.ckpt")


def test_last_ckpt_is_the_last_epoch_even_when_the_monitored_metric_stops_improving(
    tmp_path: Path,
) -> None:
    """mode=max on a falling val_loss: only epoch 0 is ever the best, yet last.ckpt must hold
    the final epoch (Lightning's own save_last rewrote it only on an improvement)."""
    data = write_toy_dataset(tmp_path / "toy.hdf5", episodes=6, image=True)
    flip = ["trainer.callbacks.model_checkpoint.mode=max"]
    result = run(_cfg(data, tmp_path / "run", 3, flip))
    last = torch.load(result["last_ckpt"], map_location="cpu", weights_only=True)
    best = torch.load(result["best_ckpt"], map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] > best["global_step"]
    assert best["epoch"] < 2
