"""Seed 002's command line, a thin layer over the workspace's configs.

    python training/train.py --mode policy --algorithm ppo --env HalfCheetah-v5
    python training/train.py --mode policy --algorithm sac --env Pendulum-v1 --config my.yaml
    python training/train.py --mode policy --algorithm ppo --env Hopper-v5 online.num_envs=8

`--config FILE` is a YAML in the seed's `configs/default_config.yaml` layout: its `policy:` and
`training:` keys (hidden_dim, ppo_clip, gamma, learning_rate, num_iterations,
steps_per_iteration) are the same keys in `configs/train_<algorithm>.yaml`, so they are passed
on as overrides; trailing `key=value` arguments are Hydra overrides too. The run is
`python -m learning.train --config-name=train_<algorithm>` (learning.online.api.train_policy).
The world-model, Dreamer and supervised modes are not built yet: asking for one is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

MODES = ("policy",)  # world_model, dreamer, supervised and all: issue 11
ALGORITHMS = ("ppo", "sac")
SEED_SECTIONS = ("policy", "training")  # default_config.yaml sections the policy mode reads


def config_overrides(path: Path) -> list[str]:
    """`section.key=value` overrides from the seed-layout YAML at `path` (policy, training)."""
    try:
        config: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"training/train.py: --config {path}: {err}") from None
    if not isinstance(config, dict):
        raise SystemExit(f"training/train.py: --config {path}: not a mapping of sections")
    overrides = []
    for section in SEED_SECTIONS:
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"training/train.py: --config {path}: {section!r} is not a mapping")
        overrides += [f"{section}.{key}={value}" for key, value in values.items()]
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python training/train.py",
        description="Seed 002's training entry: --mode policy trains PPO or SAC on a sim task.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        default="policy",
        help=f"what to train: {', '.join(MODES)} (world_model, dreamer, supervised, all: "
        "not built yet)",
    )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ppo", help="policy learner")
    parser.add_argument("--env", required=True, help="registered sim task, e.g. HalfCheetah-v5")
    parser.add_argument("--config", type=Path, help="YAML in seed 002's default_config layout")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. online.num_envs=8")
    args = parser.parse_args(argv)
    if args.mode not in MODES:
        parser.error(f"--mode {args.mode}: not built yet (this workspace trains: {MODES})")

    from learning.errors import ConfigError
    from learning.online.api import train_policy

    overrides = (config_overrides(args.config) if args.config else []) + args.overrides
    try:
        result = train_policy(args.env, algorithm=args.algorithm, overrides=overrides)
    except ConfigError as err:
        print(f"training/train.py: {err}", file=sys.stderr)
        return 1
    print(f"run dir {result['run_dir']}\ncheckpoint {result['last_ckpt']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
