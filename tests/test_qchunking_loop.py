"""Q-chunking offline then online on the shared loop (learning/online/loop.py): a tiny ACRLPD run
on Reacher-v5 from a scripted-expert dataset (phases, global steps, evaluation with success at
the phase boundary, best.ckpt, checkpoints), resume in either phase, early stopping, the
presets and the seed's command line, a Hydra multirun sweep, and one-line refusals."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from learning.algorithms.qchunking_config import (
    ACRLPDConfig,
    get_aloha_config,
    get_config,
    get_droid_config,
    get_libero_config,
)
from learning.checkpoint import CONFIG_KEY
from learning.errors import ConfigError
from learning.online.loop import ONLINE_KEY, storage_path
from learning.train import compose_config, run
from sim.collect import collect

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "ac_training" / "scripts" / "train_acrlpd_pi0.py"
TINY = [
    "env_id=Reacher-v5",
    "batch_size=16",
    "best_of_n_samples=4",
    "num_critics=2",
    "flow_steps=2",
    "actor_hidden_dims=[32,32]",
    "model.critic_hidden_dims=[32,32]",
    "model.entropy_batch=8",
    "model.entropy_samples=2",
    "model.start_training=0",
    "model.buffer_size=2000",
    "eval_episodes=2",
    "online.log_every=50",
    "online.progress_bar=false",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qc_data") / "reacher.hdf5"
    collect("Reacher-v5", "expert", 4, 0, path, progress=False)  # 4 x 50 steps
    return path


def train(tmp: Path, dataset: Path, *overrides: str) -> dict:
    args = [f"output_root={tmp}", f"dataset={dataset}", *TINY, *overrides]
    return run(compose_config("train_acrlpd", args))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> dict:
    tmp = tmp_path_factory.mktemp("qc_run")
    steps = ["offline_steps=30", "online_steps=500", "eval_frequency=200"]
    return train(tmp, dataset, *steps, f"run_dir={tmp}/a")


def scalar_steps(run_dir: str) -> dict[str, list[int]]:
    events = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_offline_then_online_smoke_run(first_run: dict) -> None:
    assert (first_run["offline_steps"], first_run["env_steps"]) == (30, 500)
    assert first_run["global_step"] == 530 and not first_run["stopped_early"]
    steps = scalar_steps(first_run["run_dir"])
    # offline gradient steps log from global step 1; the env phase from 30 + its first update
    assert steps["loss/critic"][0] == 1 and steps["loss/critic"][-1] > 30
    # the phase boundary (30), every 200 global steps, and the end
    assert steps["eval/success"] == [30, 200, 400, 530] == steps["eval/return"]
    metrics = first_run["metrics"]
    assert 0.0 <= metrics["eval/success"] <= 1.0 and metrics["time/offline_s"] > 0
    ckpt = torch.load(first_run["last_ckpt"], weights_only=True)
    online = ckpt[ONLINE_KEY]
    assert (online["offline_steps"], online["env_steps"], online["phase"]) == (30, 500, "online")
    best = torch.load(first_run["best_ckpt"], weights_only=True)
    assert best[ONLINE_KEY]["best"] == max(online["best"], best[ONLINE_KEY]["best"])
    storage = torch.load(storage_path(Path(first_run["last_ckpt"]), 0), weights_only=True)
    assert int(storage["offline"]["counts"][0]) == 200  # the dataset travels with the run


def test_resume_continues_in_the_phase_it_stopped(
    first_run: dict, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # env phase: 500 -> 700 env steps; no offline step again, the dataset not reloaded
    with caplog.at_level(logging.INFO):
        more = train(
            tmp_path, dataset, "offline_steps=30", "online_steps=700", "eval_frequency=0",
            f"ckpt_path={first_run['last_ckpt']}",
        )  # fmt: skip
    assert (more["offline_steps"], more["env_steps"], more["global_step"]) == (30, 700, 730)
    assert "resume: 700 transitions restored" in caplog.text  # 200 offline + 500 env steps
    assert "offline: 4 episodes" not in caplog.text
    # offline phase: stop after 10 of 25 offline steps, resume runs the other 15, then online
    half = train(tmp_path, dataset, "offline_steps=10", "online_steps=0", "eval_frequency=0")
    assert (half["offline_steps"], half["env_steps"]) == (10, 0)
    rest = train(
        tmp_path, dataset, "offline_steps=25", "online_steps=50", "eval_frequency=0",
        f"ckpt_path={half['last_ckpt']}",
    )  # fmt: skip
    assert (rest["offline_steps"], rest["env_steps"], rest["global_step"]) == (25, 50, 75)
    steps = scalar_steps(rest["run_dir"])
    assert min(steps["loss/critic"]) == 11  # picks up at global step 11, not 1


def test_early_stopping_ends_the_env_phase(dataset: Path, tmp_path: Path) -> None:
    # no evaluation can beat the boundary one by 1e9: the first online one stops the run
    result = train(
        tmp_path, dataset, "offline_steps=5", "online_steps=400", "eval_frequency=50",
        "online.early_stopping.monitor=eval/return", "online.early_stopping.patience=1",
        "online.early_stopping.min_delta=1e9",
    )  # fmt: skip
    assert result["stopped_early"] and result["env_steps"] == 45  # global step 50
    assert Path(result["best_ckpt"]).is_file()
    assert scalar_steps(result["run_dir"])["eval/return"] == [5, 50]


def test_presets_and_validate_read_the_config_files(dataset: Path) -> None:
    aloha = compose_config("train_acrlpd", ["env_id=Reacher-v5", "preset=aloha"])
    assert get_aloha_config() == ACRLPDConfig.from_config(aloha).replace(env_id=None)
    assert (
        aloha.model.horizon_length
        == get_aloha_config().horizon_length
        != get_config().horizon_length
    )
    assert aloha.model.freeze_backbone and aloha.online.precision == "bf16-mixed"
    libero = get_libero_config()
    assert (libero.mixed_precision, get_droid_config().mixed_precision) == (False, True)
    # a command-line key beats the preset
    over = compose_config("train_acrlpd", ["env_id=x", "preset=droid", "horizon_length=7"])
    assert over.model.horizon_length == 7 and over.batch_size == get_droid_config().batch_size
    good = get_config(overrides=[f"dataset={dataset}"])
    assert good.validate() is good
    for change, message in [
        ({"horizon_length": 0}, "horizon_length=0: must be an integer >= 1"),
        ({"discount": 1.5}, "discount=1.5: must be a number in [0, 1]"),
        ({"bc_alpha": -0.1}, "bc_alpha=-0.1: must be a number >= 0"),
        ({"best_of_n_samples": 2.5}, "best_of_n_samples=2.5: must be an integer >= 1"),
        ({"dataset": None}, "offline_steps=1000000 needs dataset="),
        ({"dataset": "/nowhere.hdf5"}, "dataset=/nowhere.hdf5: no such file"),
        ({"offline_steps": 0, "online_steps": 0}, "nothing to train"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            good.replace(**change).validate()
    with pytest.raises(ConfigError, match="preset 'franka': one of none, droid, aloha, libero"):
        get_config("franka")


def test_bad_input_is_one_line(dataset: Path, tmp_path: Path) -> None:
    for overrides, message in [
        (["offline_steps=5"], "offline_steps=5 needs dataset="),  # before anything is built
        (["horizon_length=0", f"dataset={dataset}"], "horizon_length=0: must be an integer >= 1"),
        (["dataset=/nowhere.hdf5"], "dataset=/nowhere.hdf5: no such file"),
        (["env_id=Pendulum-v1", f"dataset={dataset}"], "Pendulum-v1 reports no success"),
    ]:
        args = [f"output_root={tmp_path}", *TINY, "online_steps=10", *overrides]
        with pytest.raises(ConfigError, match=message) as err:
            run(compose_config("train_acrlpd", args))
        assert "\n" not in str(err.value)
    # through the seed's command line and learning.train: one line, exit status 1 / 2
    bad = subprocess.run(
        [sys.executable, str(CLI), "--env", "Reacher-v5", "--config", "franka"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert (
        bad.returncode == 2 and "invalid choice: 'franka'" in bad.stderr.strip().splitlines()[-1]
    )
    missing = subprocess.run(
        [sys.executable, str(CLI), "--env", "Reacher-v5", "--policy", "mlp",
         "offline_steps=5", f"output_root={tmp_path}"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        "learning.train: offline_steps=5 needs dataset=<episode file> (or offline_steps=0)"
    )


def test_seed_cli_sweeps_through_hydra_multirun(dataset: Path, tmp_path: Path) -> None:
    """`--sweep horizon_length=2,3` runs both jobs (a tiny budget each) in Hydra's sweep dir."""
    tiny = [t for t in TINY if not t.startswith("env_id")]
    cmd = [
        sys.executable, str(CLI), "--data_dir", str(dataset), "--config", "libero",
        "--policy", "mlp", "--offline_steps", "3", "--online_steps", "10",
        "--eval_frequency", "0", "--experiment_name", "sweep", *tiny,
        f"hydra.sweep.dir={tmp_path}/sweep", "--sweep", "horizon_length=2,3",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"dataset={dataset}" in done.stdout.splitlines()[0]  # the command, printed first
    for job, horizon in (("0", 2), ("1", 3)):
        ckpt = torch.load(
            tmp_path / "sweep" / job / "checkpoints" / "last.ckpt", weights_only=True
        )
        assert ckpt[ONLINE_KEY]["env_steps"] == 10 and ckpt[ONLINE_KEY]["offline_steps"] == 3
        config = ckpt[CONFIG_KEY]
        assert (config["horizon_length"], config["model"]["horizon_length"]) == (horizon, horizon)
        assert config["name"] == "sweep" and config["bc_alpha"] == get_libero_config().bc_alpha
