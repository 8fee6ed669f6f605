"""Model files carry data, not code: hostile checkpoints are refused in one line, nothing runs.

The two attacks of issue 8 on real files: a checkpoint whose pickle has a `__reduce__` that runs
a shell command, and a checkpoint whose stored config says `model._target_: builtins.open`
(args: a path, "w"). Each is loaded through the real CLI (`python -m learning.export`) and
in-process (`TorchPolicy.from_checkpoint` and the other loaders); the marker file must not
appear and the victim file must keep its bytes.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_learning_data import write_toy_dataset

from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY, CheckpointError, load_model
from learning.torch_policy import TorchPolicy
from learning.train import compose_config, run

REPO = Path(__file__).resolve().parents[1]
VICTIM_TEXT = "precious data\n"


def train_tiny_fbc(tmp: Path) -> Path:
    """A real `learning.train` checkpoint (one epoch of FBC on a toy dataset)."""
    data = write_toy_dataset(tmp / "toy.hdf5", episodes=6)
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={data}",
            f"output_root={tmp}",
            "max_epochs=1",
            "batch_size=32",
            "model.network.hidden_dims=[32,32]",
            "~trainer.callbacks.progress_bar",
        ],
    )
    return Path(run(cfg)["last_ckpt"])


class RunsShell:
    """Pickles as `os.system(command)`: unpickling it runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_fbc(tmp_path_factory.mktemp("trust"))


def plain(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


@pytest.fixture
def pickle_attack(good_ckpt: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(hostile checkpoint, marker file its pickle would create)."""
    marker = tmp_path / "pwned"
    data = plain(good_ckpt)
    data["callbacks"] = {"x": RunsShell(f"touch {marker}")}
    path = tmp_path / "pickle_attack.ckpt"
    torch.save(data, path)
    return path, marker


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def config_attack(good_ckpt: Path, path: Path, model_cfg: dict, model_kwargs: dict) -> Path:
    """A real checkpoint with the stored model config (and data-derived kwargs) replaced."""
    data = plain(good_ckpt)
    data[CONFIG_KEY]["model"] = model_cfg
    data[MODEL_KWARGS_KEY] = model_kwargs
    torch.save(data, path)
    return path


@pytest.fixture
def open_attack(good_ckpt: Path, tmp_path: Path, victim: Path) -> Path:
    target = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    return config_attack(good_ckpt, tmp_path / "open_attack.ckpt", target, {})


def export_cli(ckpt: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "learning.export", "--ckpt", str(ckpt), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_good_checkpoint_is_plain_data(good_ckpt: Path) -> None:
    data = plain(good_ckpt)  # weights_only=True: tensors and builtin containers only
    assert data[CONFIG_KEY]["model"]["_target_"] == "learning.algorithms.flow_bc.FlowBC"
    model, _ = load_model(good_ckpt)
    for name, tensor in data["state_dict"].items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


def test_pickle_payload_does_not_run_in_export_cli(pickle_attack: tuple, tmp_path: Path) -> None:
    ckpt, marker = pickle_attack
    proc = export_cli(ckpt, tmp_path / "x.onnx")
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert str(ckpt) in line and "posix.system" in line and "refused" in line, line
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


def test_pickle_payload_does_not_run_in_torch_policy(pickle_attack: tuple) -> None:
    ckpt, marker = pickle_attack
    with pytest.raises(CheckpointError) as err:
        TorchPolicy.from_checkpoint(ckpt)
    assert str(ckpt) in str(err.value) and "posix.system" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("learning.export", []),
        ("learning.export", ["--sampler", "steps=2"]),  # a goal generator's option
        ("learning.export", ["--mask-size", "8", "8"]),  # a Q-function's option
        ("learning.namo.evaluate", []),
    ],
)
def test_pickle_payload_does_not_run_in_any_ckpt_cli(
    pickle_attack: tuple, tmp_path: Path, module: str, extra: list[str]
) -> None:
    ckpt, marker = pickle_attack
    out = "--data-dir" if module.endswith("evaluate") else "--out"
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--ckpt", str(ckpt), out, f"{tmp_path}/x", *extra])
    text = str(exit_.value.code)
    assert str(ckpt) in text and "posix.system" in text and "\n" not in text, text
    assert not marker.exists()


def test_open_target_does_not_truncate_in_export_cli(
    open_attack: Path, victim: Path, tmp_path: Path
) -> None:
    proc = export_cli(open_attack, tmp_path / "x.onnx")
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert str(open_attack) in line and "'builtins.open'" in line, line
    assert victim.read_text() == VICTIM_TEXT


def test_open_target_does_not_truncate_in_torch_policy(open_attack: Path, victim: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        TorchPolicy.from_checkpoint(open_attack)
    assert str(open_attack) in str(err.value) and "'builtins.open'" in str(err.value)
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize(
    ("case", "refused"),
    [
        # A prefix check alone passes this: learning.export imports subprocess.
        ("attribute_walk", "'learning.export.subprocess.run'"),
        # Data-derived kwargs are merged into the config: a target hidden there counts too.
        ("target_in_model_kwargs", "'builtins.open'"),
        ("nested_target", "'builtins.open'"),
        ("interpolation", "interpolation"),
    ],
)
def test_targets_outside_the_workspace_are_refused(
    good_ckpt: Path, tmp_path: Path, victim: Path, case: str, refused: str
) -> None:
    marker = tmp_path / "ran"
    cfg = plain(good_ckpt)[CONFIG_KEY]["model"]
    kwargs = plain(good_ckpt)[MODEL_KWARGS_KEY]
    opener = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    if case == "attribute_walk":
        cfg = {"_target_": "learning.export.subprocess.run", "_args_": [["touch", str(marker)]]}
        kwargs = {}
    elif case == "target_in_model_kwargs":
        kwargs = {**kwargs, "control_rate_hz": opener}
    elif case == "nested_target":
        cfg = {**cfg, "encoder": {**cfg["encoder"], "image_encoder": {"feature_dim": opener}}}
    else:
        kwargs = {**kwargs, "control_rate_hz": "${oc.env:HOME}"}
    path = config_attack(good_ckpt, tmp_path / f"{case}.ckpt", cfg, kwargs)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(path) in str(err.value) and refused in str(err.value), err.value
    assert "\n" not in str(err.value)
    assert not marker.exists() and victim.read_text() == VICTIM_TEXT


def test_pickle_payload_does_not_run_on_resume(pickle_attack: tuple, tmp_path: Path) -> None:
    ckpt, marker = pickle_attack
    data = write_toy_dataset(tmp_path / "toy.hdf5", episodes=4)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "learning.train",
            f"dataset={data}",
            f"run_dir={tmp_path / 'run'}",
            f"ckpt_path={ckpt}",
            "~trainer.callbacks.progress_bar",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("learning.train: ") and str(ckpt) in line and "posix.system" in line
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("loader", ["goal_mask", "q_function"])
def test_npz_with_a_pickled_array_is_refused(tmp_path: Path, loader: str) -> None:
    """Mask files (.npz) are arrays only: an object array (a pickle) is refused, never run."""
    from learning.namo.data import MaskFileError, load_item
    from sim.namo.mask_files import MaskFileError as GoalMaskError
    from sim.namo.mask_files import load_sample

    marker = tmp_path / "pwned"
    source = sorted((REPO / "tests/data/namo_tiny").glob("*.npz"))[0]
    with np.load(source) as npz:
        arrays = dict(npz)
    arrays["target_object"] = np.array([RunsShell(f"touch {marker}")], dtype=object)
    path = tmp_path / source.name
    np.savez(path, **arrays)
    load, error = (
        (load_sample, GoalMaskError) if loader == "goal_mask" else (load_item, MaskFileError)
    )
    with pytest.raises(error) as err:
        load(path)
    text = str(err.value)
    assert str(path) in text and "'target_object'" in text and "\n" not in text, text
    assert not marker.exists()


@pytest.mark.parametrize(
    ("config", "data_key", "fill"),
    [
        ("train_q_function", "data_dir", "truncated"),
        ("train_fb_flow_matching", "data.data_dir", "truncated"),
        ("train_fb_flow_matching", "data.data_dir", "empty"),
    ],
)
def test_bad_namo_data_is_one_line(tmp_path: Path, config: str, data_key: str, fill: str) -> None:
    """A damaged mask file or an empty data folder: learning.train says so in one line."""
    data = tmp_path / "masks"
    data.mkdir()
    if fill == "truncated":
        for source in sorted((REPO / "tests/data/namo_tiny").glob("*.npz"))[:4]:
            (data / source.name).write_bytes(source.read_bytes()[:200])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "learning.train",
            f"--config-name={config}",
            f"{data_key}={data}",
            f"run_dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("learning.train: ") and str(data) in line, line
