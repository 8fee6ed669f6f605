"""Seed 002's command line (`python training/train.py --mode policy --algorithm ppo|sac`) runs
the workspace's online configs; its `--config` file's `policy:`/`training:` keys reach the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from learning.checkpoint import CONFIG_KEY
from learning.online.loop import ONLINE_KEY

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_policy_mode_trains_with_the_seed_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "my_config.yaml"
    config.write_text(
        "world_model: {state_dim: 256}\n"  # another mode's section: not read by --mode policy
        "policy: {hidden_dim: 24, ppo_clip: 0.1, gamma: 0.9, learning_rate: 0.001}\n"
        "training: {num_iterations: 2, steps_per_iteration: 128}\n"
    )
    tiny = ["model.minibatch_size=64", "model.update_epochs=1", "online.eval_episodes=1"]
    done = _run(
        "--mode", "policy", "--algorithm", "ppo", "--env", "Pendulum-v1", "--config",
        str(config), f"output_root={tmp_path}", "online.progress_bar=false", *tiny, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt_line = next(line for line in done.stdout.splitlines() if line.startswith("checkpoint "))
    ckpt = torch.load(ckpt_line.removeprefix("checkpoint "), weights_only=True)
    assert ckpt["state_dict"]["actor_mean.0.weight"].shape == (24, 3)  # policy.hidden_dim
    model = ckpt[CONFIG_KEY]["model"]  # the run's resolved config, as the checkpoint keeps it
    assert (model["learning_rate"], model["gamma"], model["clip_coef"]) == (0.001, 0.9, 0.1)
    assert ckpt[ONLINE_KEY]["env_steps"] == 256  # training.num_iterations x steps_per_iteration


def test_dataset_modes_train_from_an_episode_dataset(tmp_path: Path) -> None:
    """--mode world_model reads the config's world_model: section; --mode supervised is BC."""
    from training.data_collection import create_synthetic_dataset, save_trajectories

    dataset = save_trajectories(
        create_synthetic_dataset(num_episodes=6, observation_dim=4, action_dim=2),
        tmp_path / "synthetic.hdf5",
    )
    config = tmp_path / "my_config.yaml"
    config.write_text(
        "world_model: {hidden_dim: 24, batch_size: 4, sequence_length: 10}\n"
        "policy: {hidden_dim: 999}\n"  # the policy mode's section: not read here
    )
    quiet = [f"output_root={tmp_path}", "max_epochs=1", "~trainer.callbacks.progress_bar"]
    done = _run(
        "--mode", "world_model", "--dataset", str(dataset), "--config", str(config),
        "world_model=tiny", *quiet, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(_checkpoint(done.stdout), weights_only=True)
    assert ckpt[CONFIG_KEY]["model"]["hidden_dim"] == 24  # world_model.hidden_dim
    assert ckpt[CONFIG_KEY]["data"]["sequence_length"] == 10

    done = _run("--mode", "supervised", "--dataset", str(dataset), *quiet, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(_checkpoint(done.stdout), weights_only=True)
    assert ckpt[CONFIG_KEY]["name"] == "bc"


def _checkpoint(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("checkpoint "))[11:]


def test_mode_all_runs_the_chain_with_per_mode_overrides(tmp_path: Path) -> None:
    """collect -> world_model + supervised on the dataset -> policy + dreamer in the env; each
    `MODE:key=value` override reaches its own run only."""
    quiet = ["~trainer.callbacks.progress_bar", "max_epochs=1"]
    online = ["online.eval_episodes=1", "online.progress_bar=false", "training.num_iterations=1"]
    per_mode = {
        "world_model": ["world_model=tiny", "world_model.batch_size=4", *quiet],
        "supervised": quiet,
        "policy": [*online, "training.steps_per_iteration=128", "model.minibatch_size=64"],
        "dreamer": [
            *online, "world_model=tiny", "training.steps_per_iteration=150",
            "dreamer.learning_starts=100", "world_model.batch_size=4",
            "world_model.sequence_length=8", "dreamer.imagine_horizon=3",
        ],
    }  # fmt: skip
    overrides = [f"{mode}:{o}" for mode, items in per_mode.items() for o in items]
    done = _run(
        "--mode", "all", "--env", "Pendulum-v1", "--episodes", "3", f"output_root={tmp_path}",
        *overrides, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "collect: 3 expert episodes" in done.stdout
    names = {}
    for mode in per_mode:
        line = next(x for x in done.stdout.splitlines() if x.startswith(f"{mode}: checkpoint "))
        ckpt = torch.load(line.split("checkpoint ", 1)[1], weights_only=True)
        names[mode] = ckpt[CONFIG_KEY]["name"]
    assert names == {"world_model": "world_model", "supervised": "bc", "policy": "ppo",
                     "dreamer": "dreamer"}  # fmt: skip


def test_modes_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, expected in (
        (
            ["--mode", "dreamer", "--env", "Pendulum-v1", "policy:training.num_iterations=1"],
            "is for --mode policy, not --mode dreamer",
        ),
        (["--mode", "all"], "--mode all needs --env"),
        (["--mode", "all", "--env", "NoSuchTask-v0"], "unknown task 'NoSuchTask-v0'"),
        (["--mode", "policy"], "--mode policy needs --env"),
        (["--mode", "world_model"], "--mode world_model needs --dataset"),
        (["--mode", "nope", "--env", "Pendulum-v1"], "--mode nope: unknown"),
        (["--env", "NoSuchTask-v0", "online.progress_bar=false"], "NoSuchTask-v0"),
    ):
        done = _run(*args, cwd=tmp_path)
        assert done.returncode != 0
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
