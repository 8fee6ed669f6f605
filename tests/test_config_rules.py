"""Absurd numbers are one line before any work: in a training config, naming the key
(learning/config_rules.py; every number the shipped configs hold has a rule they pass), and on
the command lines, as argparse's usage error (episode_dataset/ranges.py)."""

from __future__ import annotations

import argparse
import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from episode_dataset.ranges import POSITIVE_FLOAT, SEED, arg, count, number, one_line
from learning.config_rules import RULES, UNCHECKED, check, check_config, numbers
from learning.errors import ConfigError
from learning.train import CONFIG_DIR, compose_config, run

REPO = Path(__file__).resolve().parents[1]


def shipped_configs() -> dict[str, DictConfig]:
    """Every train_* config as shipped, and every config-group option composed into the first
    train_* config that takes it."""
    names = sorted(p.stem for p in CONFIG_DIR.glob("train_*.yaml"))
    configs = {name: compose_config(name) for name in names}
    options = sorted(
        f"{d.name}={o.stem}" for d in CONFIG_DIR.iterdir() if d.is_dir() for o in d.glob("*.yaml")
    )
    for option in options:
        for name in names:
            try:
                configs[f"{name} {option}"] = compose_config(name, [option])
                break
            except Exception:  # noqa: BLE001 - this train config has no such group
                continue
        else:
            raise AssertionError(f"no train_* config composes with {option}")
    return configs


def test_every_shipped_number_has_a_rule_and_passes() -> None:
    configs = shipped_configs()
    assert len(configs) > 50  # 13 train configs and their group options
    unruled = set()
    for where, cfg in configs.items():
        check_config(cfg)  # raises on a shipped default outside its rule
        for path, leaf, value in numbers(cfg):
            values = value if isinstance(value, list) else [value]
            is_number = any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            if is_number and leaf not in RULES and leaf not in UNCHECKED:
                unruled.add(f"{path} ({where})")
    assert not unruled, f"numbers without a rule in learning/config_rules.py: {sorted(unruled)}"


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("train_ppo", "online.num_envs=0", "online.num_envs=0: must be an integer >= 1"),
        ("train_ppo", "policy.gamma=1.5", "policy.gamma=1.5: must be a number in [0, 1]"),
        (
            "train_ppo",
            "policy.learning_rate=nan",
            "policy.learning_rate=nan: must be a number > 0",
        ),
        ("train_ppo", "training.num_iterations=-1", "training.num_iterations=-1: must be an"),
        ("train_sac", "model.tau=2", "model.tau=2: must be a number in (0, 1]"),
        ("train_sac", "seed=-1", "seed=-1: must be an integer in [0, 4294967295]"),
        ("train_sac", "model.batch_size=64.5", "model.batch_size=64.5: must be an integer >= 1"),
        ("train_fbc", "batch_size=0", "batch_size=0: must be an integer >= 1"),
        ("train_fbc", "max_epochs=-2", "max_epochs=-2: must be an integer >= 1 (or -1)"),
        ("train_fbc", "torch_threads=0", "torch_threads=0: must be an integer >= 1 (or null)"),
        ("train_fbc", "base_lr=abc", "base_lr='abc': must be a number > 0"),
    ],
)
def test_absurd_values_stop_before_any_work(
    config: str, override: str, message: str, tmp_path: Path
) -> None:
    cfg = compose_config(config, [override, f"output_root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # no run dir: refused before any work


def test_command_line_prints_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "learning.train", "--config-name=train_sac",
            "env_id=Pendulum-v1", "model.learning_starts=-1", f"output_root={tmp_path}",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "learning.train: model.learning_starts=-1: must be an integer >= 0"
    )


def test_range_rules() -> None:
    positive_count, fraction = count(1), number(0, 1, high_open=True)
    assert positive_count.accepts(3) and not positive_count.accepts(0)
    assert not positive_count.accepts(True)  # a YAML bool is no count
    assert not positive_count.accepts(3.0)  # nor a float, even a whole one
    assert not positive_count.accepts(None)
    assert count(1, nullable=True).accepts(None)
    assert count(1, also=(-1,)).accepts(-1) and not count(1, also=(-1,)).accepts(-2)
    assert fraction.accepts(0) and fraction.accepts(0.5) and not fraction.accepts(1.0)
    assert not number(0).accepts(math.inf) and not number().accepts(math.nan)
    assert str(number(0, 1, low_open=True)) == "a number in (0, 1]"
    # lists: every element; interpolations are checked where they point
    check("hidden_dims", [256, 256])
    with pytest.raises(ConfigError, match=r"model.hidden_dims=\[256, 0\]: must be an integer"):
        check("hidden_dims", [256, 0], "model.hidden_dims")
    assert list(numbers({"a": {"lr": "${base_lr}", "dims": ["${x}", 3]}})) == [
        ("a.dims", "dims", [3])
    ]
    # a full key's rule wins over its leaf's: data.discount may be null, discount not
    check("discount", None, "data.discount")
    with pytest.raises(ConfigError, match="discount=None: must be a number in"):
        check("discount", None, "discount")


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (
            "sim.collect",
            ["--env", "Reacher-v5", "--episodes", "0", "--out", "{tmp}/d.hdf5"],
            "argument --episodes: must be an integer >= 1, got '0'",
        ),
        (
            "sim.collect",
            ["--env", "Reacher-v5", "--camera", "-64", "--out", "{tmp}/d.hdf5"],
            "argument --camera: must be an integer >= 1, got '-64'",
        ),
        (
            "sim.namo.parallel_data_collection",
            ["--output-dir", "{tmp}/out", "--start-idx", "5", "--end-idx", "2"],
            "--end-idx 2 must be > --start-idx 5",
        ),
        (
            "sim.namo.mask_generation",
            ["batch", "--input-dir", "{tmp}", "--output-dir", "{tmp}/out", "--workers", "0"],
            "argument --workers: must be an integer >= 1, got '0'",
        ),
        (
            "learning.namo.evaluate_planners",
            ["--num-seeds", "-2", "--out", "{tmp}/e.json"],
            "argument --num-seeds: must be an integer >= 1, got '-2'",
        ),
        (
            "episode_dataset.cli",
            [
                "import-bag",
                "{tmp}/b",
                "--topics-config",
                "t.yaml",
                "--out",
                "{tmp}/d.hdf5",
                "--gap-s",
                "nan",
            ],
            "argument --gap-s: must be a number > 0, got 'nan'",
        ),  # fmt: skip
        (
            "training.train",
            ["--mode", "all", "--episodes", "x"],
            "argument --episodes: must be an integer >= 1, got 'x'",
        ),
    ],
)
def test_command_lines_refuse_absurd_numbers(
    module: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """argparse's one-line usage error (exit 2) before any work: no file is written."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")
    assert not any(tmp_path.iterdir())


def test_argument_types() -> None:
    seeds = arg(SEED)
    assert seeds("7") == 7
    for bad in ("-1", "4294967296", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer in \[0, "):
            seeds(bad)
    assert POSITIVE_FLOAT("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="must be a number > 0, got 'inf'"):
        POSITIVE_FLOAT("inf")
    assert one_line(ValueError("a\n  b\n")) == "a b"
