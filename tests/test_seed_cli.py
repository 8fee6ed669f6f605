"""Seed 002's command line (`python training/train.py --mode policy --algorithm ppo|sac`) runs
the workspace's online configs; its `--config` file's `policy:`/`training:` keys reach the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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


# In-process runs (main(argv)): the command's one-line error handling, with torch imported once.


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from training.train import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    """The command's own stderr lines (Lightning's "Seed set to" notes left out): just one."""
    lines = [line for line in err.splitlines() if not line.startswith("Seed set to")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_config_keys_of_other_algorithms_are_skipped_and_misspellings_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A seed file holds keys for every algorithm: `policy.ppo_clip` (PPO's) is skipped by
    SAC with one line; `policy.hiden_dim`, no config's key, is a one-line error."""
    config = tmp_path / "my.yaml"
    config.write_text("policy: {hidden_dim: 8, ppo_clip: 0.1}\n")
    tiny = ["training.num_iterations=1", "training.steps_per_iteration=64",
            "model.learning_starts=32", "model.batch_size=16", "online.eval_episodes=1",
            "online.progress_bar=false", f"output_root={tmp_path}"]  # fmt: skip
    code, out, err = _main(
        capsys, "--mode", "policy", "--algorithm", "sac", "--env", "Pendulum-v1",
        "--config", str(config), *tiny,
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert f"--config {config}: skipped policy.ppo_clip: not in configs/train_sac.yaml" in err
    ckpt = torch.load(_checkpoint(out), weights_only=True)
    assert ckpt[CONFIG_KEY]["policy"]["hidden_dim"] == 8  # the key that applies did apply

    config.write_text("policy: {hiden_dim: 8}\n")
    code, _, err = _main(capsys, "--env", "Pendulum-v1", "--config", str(config), *tiny)
    assert code == 1
    assert "policy.hiden_dim is not a key of any config" in _error_line(err)


def test_config_null_is_null_and_world_model_keys_are_skipped_by_dreamer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """YAML null reaches Hydra as null (not the string 'None'); `world_model.action_dim`
    (train_world_model's key) is skipped by --mode dreamer, which has no such key."""
    config = tmp_path / "my.yaml"
    config.write_text(
        "world_model: {action_dim: null, batch_size: 4, sequence_length: 8, latent: gaussian}\n"
        "dreamer: {imagine_horizon: 3, learning_starts: 100}\n"
        "training: {num_iterations: 1, steps_per_iteration: 120}\n"
    )
    dataset = tmp_path / "synthetic.hdf5"
    from training.data_collection import create_synthetic_dataset, save_trajectories

    save_trajectories(create_synthetic_dataset(4, observation_dim=3, action_dim=1), dataset)
    common = ["--config", str(config), "world_model=tiny", f"output_root={tmp_path}"]
    code, out, err = _main(
        capsys, "--mode", "world_model", "--dataset", str(dataset), *common, "max_epochs=1",
        "~trainer.callbacks.progress_bar",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    ckpt = torch.load(_checkpoint(out), weights_only=True)
    assert ckpt[CONFIG_KEY]["world_model"]["action_dim"] is None
    assert ckpt[CONFIG_KEY]["world_model"]["latent"] == "gaussian"  # a string stays one

    code, out, err = _main(
        capsys, "--mode", "dreamer", "--env", "Pendulum-v1", *common,
        "online.eval_episodes=1", "online.progress_bar=false",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "skipped world_model.action_dim: not in configs/train_dreamer.yaml" in err
    assert torch.load(_checkpoint(out), weights_only=True)[ONLINE_KEY]["env_steps"] == 120


def test_bad_input_in_process_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing dataset, an unknown override key (one mode, or no stage of --mode all), a
    bad number in one stage of --mode all: one line, exit 1, and --mode all collects nothing."""
    out_root = f"output_root={tmp_path}"
    for args, expected in (
        (
            ["--mode", "supervised", "--dataset", str(tmp_path / "nonexist.hdf5")],
            "nonexist.hdf5: file not found",
        ),
        (
            ["--env", "Pendulum-v1", "policy.foo=1"],
            "configs/train_ppo.yaml: Could not override 'policy.foo'",
        ),
        (
            ["--mode", "all", "--env", "Pendulum-v1", "policy.foo=1"],
            "override policy.foo=1: no stage of --mode all has its key",
        ),
        (
            ["--mode", "all", "--env", "Pendulum-v1", "online.num_envs=0"],
            "policy: configs/train_ppo.yaml: online.num_envs=0: must be an integer >= 1",
        ),
        (["--env", "Pendulum-v1", "policy.hidden_dim=[oops"], "policy.hidden_dim=[oops"),
    ):
        code, _, err = _main(capsys, *args, out_root)
        assert code == 1, args
        assert expected in _error_line(err), err
    assert not (tmp_path / "datasets").exists()  # --mode all refused before collecting


def test_mode_all_routes_plain_overrides_to_the_stages_that_have_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --help example `--mode all --env Reacher-v5 online.num_envs=8`: online.* reaches
    policy and dreamer, max_epochs world_model and supervised, world_model=tiny both."""
    code, out, err = _main(
        capsys, "--mode", "all", "--env", "Reacher-v5", "--episodes", "2",
        f"output_root={tmp_path}", "online.num_envs=8", "world_model=tiny", "max_epochs=1",
        "~trainer.callbacks.progress_bar", "online.progress_bar=false", "online.eval_episodes=1",
        "training.num_iterations=1", "world_model.batch_size=4", "world_model.sequence_length=8",
        "policy:training.steps_per_iteration=128", "policy:model.minibatch_size=64",
        "dreamer:training.steps_per_iteration=160", "dreamer.learning_starts=100",
        "dreamer.imagine_horizon=3",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    configs = {}
    for line in out.splitlines():
        mode, sep, path = line.partition(": checkpoint ")
        if sep:
            configs[mode] = torch.load(path, weights_only=True)[CONFIG_KEY]
    assert configs["policy"]["online"]["num_envs"] == configs["dreamer"]["online"]["num_envs"] == 8
    assert configs["world_model"]["max_epochs"] == configs["supervised"]["max_epochs"] == 1
    assert configs["world_model"]["model"]["deter_dim"] == 32  # world_model=tiny
    assert configs["dreamer"]["model"]["deter_dim"] == 32


def test_help_describes_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import MODES, main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for mode in [*MODES, "all"]:
        assert f"{mode}:" in text, mode
    assert "policy, dreamer and all: a registered sim task" in text
