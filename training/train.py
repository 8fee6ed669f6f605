"""Seed 002's command line, a thin layer over the workspace's configs.

    python training/train.py --mode policy --algorithm ppo --env HalfCheetah-v5
    python training/train.py --mode policy --algorithm sac --env Pendulum-v1 --config my.yaml
    python training/train.py --mode world_model --dataset data/reacher_camera.hdf5 --config my.yaml
    python training/train.py --mode supervised --dataset data/reacher_expert.hdf5 \
        model.use_sequences=true

`--config FILE` is a YAML in the seed's `configs/default_config.yaml` layout: the sections a mode
reads (`policy:` and `training:` for policy, `world_model:` for world_model) hold the same keys as
the workspace config the mode runs, so they are passed on as overrides; trailing `key=value`
arguments are Hydra overrides too. Each mode is one `python -m learning.train --config-name=...`
run (MODES). The Dreamer mode and `all` (the chain) are not built yet: asking for one is an
error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def _policy(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from learning.online.api import train_policy

    return train_policy(args.env, algorithm=args.algorithm, overrides=overrides)


def _on_dataset(config: str) -> Callable[[argparse.Namespace, list[str]], dict[str, Any]]:
    def train(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
        from learning.train import compose_config, run

        return run(compose_config(config, [f"dataset={args.dataset}", *overrides]))

    return train


@dataclass(frozen=True)
class Mode:
    train: Callable[[argparse.Namespace, list[str]], dict[str, Any]]
    sections: tuple[str, ...]  # the seed default_config.yaml sections passed on as overrides
    needs: str  # "env" (a sim task to learn in) or "dataset" (episodes to learn from)


MODES = {
    "policy": Mode(_policy, ("policy", "training"), "env"),  # configs/train_<algorithm>.yaml
    "world_model": Mode(_on_dataset("train_world_model"), ("world_model",), "dataset"),
    "supervised": Mode(_on_dataset("train_bc"), (), "dataset"),
}
NOT_BUILT = ("dreamer", "all")
ALGORITHMS = ("ppo", "sac")


def config_overrides(path: Path, sections: tuple[str, ...]) -> list[str]:
    """`section.key=value` overrides from the seed-layout YAML at `path`, for `sections`."""
    try:
        config: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"training/train.py: --config {path}: {err}") from None
    if not isinstance(config, dict):
        raise SystemExit(f"training/train.py: --config {path}: not a mapping of sections")
    overrides = []
    for section in sections:
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"training/train.py: --config {path}: {section!r} is not a mapping")
        overrides += [f"{section}.{key}={value}" for key, value in values.items()]
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python training/train.py",
        description="Seed 002's training entry: policy (PPO/SAC on a sim task), world_model "
        "(RSSM) or supervised (behaviour cloning) on an episode dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        default="policy",
        help=f"what to train: {', '.join(MODES)} ({', '.join(NOT_BUILT)}: not built yet)",
    )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ppo", help="policy learner")
    parser.add_argument("--env", help="policy mode: a registered sim task, e.g. HalfCheetah-v5")
    parser.add_argument("--dataset", help="world_model / supervised: an episode dataset file")
    parser.add_argument("--config", type=Path, help="YAML in seed 002's default_config layout")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. online.num_envs=8")
    args = parser.parse_args(argv)
    mode = MODES.get(args.mode)
    if mode is None:
        built = "not built yet" if args.mode in NOT_BUILT else "unknown"
        parser.error(f"--mode {args.mode}: {built} (this workspace trains: {', '.join(MODES)})")
    if getattr(args, mode.needs) is None:
        parser.error(f"--mode {args.mode} needs --{mode.needs}")

    from learning.errors import ConfigError

    overrides = config_overrides(args.config, mode.sections) if args.config else []
    try:
        result = mode.train(args, overrides + args.overrides)
    except ConfigError as err:
        print(f"training/train.py: {err}", file=sys.stderr)
        return 1
    print(f"run dir {result['run_dir']}\ncheckpoint {result['last_ckpt']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
