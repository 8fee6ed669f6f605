"""Seed 002's command line, a thin layer over the workspace's configs.

    python training/train.py --mode policy --algorithm ppo --env HalfCheetah-v5
    python training/train.py --mode policy --algorithm sac --env Pendulum-v1 --config my.yaml
    python training/train.py --mode world_model --dataset data/reacher_camera.hdf5 --config my.yaml
    python training/train.py --mode supervised --dataset data/reacher_expert.hdf5 \
        model.use_sequences=true
    python training/train.py --mode dreamer --env InvertedPendulum-v5 online.camera=64
    python training/train.py --mode all --env Reacher-v5 --episodes 20 world_model:max_epochs=5

`--config FILE` is a YAML in the seed's `configs/default_config.yaml` layout: the sections a mode
reads (`policy:` and `training:` for policy, `world_model:` for world_model, `dreamer:` too for
dreamer) hold the same keys as the workspace config the mode runs, so they are passed on as
overrides; trailing `key=value` arguments are Hydra overrides too, `MODE:key=value` ones for that
mode only. Each mode is one `python -m learning.train --config-name=...` run (MODES); `all` is
the chain: collect `--episodes` episodes of `--env` (its scripted expert where it has one, else
uniform random actions) into a dataset, then world_model and supervised on it, then policy and
dreamer on the env.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from episode_dataset.ranges import POSITIVE_INT, HelpFormatter


def _online(algorithm: str | None) -> Callable[[argparse.Namespace, list[str]], dict[str, Any]]:
    """An online config: `algorithm`, or the one `--algorithm` names (policy mode)."""

    def train(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
        from learning.online.api import train_policy

        return train_policy(args.env, algorithm=algorithm or args.algorithm, overrides=overrides)

    return train


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
    "policy": Mode(_online(None), ("policy", "training"), "env"),  # train_<algorithm>.yaml
    "world_model": Mode(_on_dataset("train_world_model"), ("world_model",), "dataset"),
    "supervised": Mode(_on_dataset("train_bc"), (), "dataset"),
    "dreamer": Mode(_online("dreamer"), ("world_model", "dreamer", "training"), "env"),
}
CHAIN = ("world_model", "supervised", "policy", "dreamer")  # --mode all, after the collection
ALGORITHMS = ("ppo", "sac")


def mode_overrides(overrides: list[str], mode: str) -> list[str]:
    """The overrides for `mode`: plain ones and `mode:key=value` ones (prefix dropped)."""
    picked = []
    for item in overrides:
        prefix, sep, rest = item.partition(":")
        if sep and prefix in MODES and "=" not in prefix:
            if prefix == mode:
                picked.append(rest)
        else:
            picked.append(item)
    return picked


def _collect(args: argparse.Namespace, overrides: list[str]) -> Path:
    """--mode all's first step: `--episodes` episodes of `--env` in a dataset file."""
    from sim.collect import collect
    from sim.envs import task_spec

    root = next((o.split("=", 1)[1] for o in overrides if o.startswith("output_root=")), None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(root or "outputs") / "datasets" / f"{args.env}_{stamp}.hdf5"
    out.parent.mkdir(parents=True, exist_ok=True)
    from learning.errors import ConfigError

    try:
        expert = task_spec(args.env).has_expert
    except ValueError as err:
        raise ConfigError(f"--env {args.env}: {err}") from None
    collect(args.env, "expert" if expert else "random", args.episodes, 0, out, progress=False)
    print(f"collect: {args.episodes} {'expert' if expert else 'random'} episodes -> {out}")
    return out


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
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--mode", default="policy", help=f"what to train: {', '.join(MODES)} or all (the chain)"
    )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ppo", help="policy learner")
    parser.add_argument("--env", help="policy mode: a registered sim task, e.g. HalfCheetah-v5")
    parser.add_argument("--dataset", help="world_model / supervised: an episode dataset file")
    parser.add_argument(
        "--episodes", type=POSITIVE_INT, default=20, help="all: episodes to collect"
    )
    parser.add_argument("--config", type=Path, help="YAML in seed 002's default_config layout")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. online.num_envs=8")
    args = parser.parse_args(argv)
    if args.mode != "all" and args.mode not in MODES:
        known = ", ".join([*MODES, "all"])
        parser.error(f"--mode {args.mode}: unknown (this workspace trains: {known})")
    for item in args.overrides:
        prefix = item.partition(":")[0]
        if prefix in MODES and args.mode not in (prefix, "all"):
            parser.error(f"override {item!r} is for --mode {prefix}, not --mode {args.mode}")
    needs = "env" if args.mode == "all" else MODES[args.mode].needs
    if getattr(args, needs) is None:
        parser.error(f"--mode {args.mode} needs --{needs}")

    from learning.errors import ConfigError

    try:
        if args.mode != "all":
            _train(args, args.mode, args.overrides)
            return 0
        args.dataset = _collect(args, args.overrides)
        for mode in CHAIN:
            _train(args, mode, args.overrides, label=f"{mode}: ")
    except ConfigError as err:
        print(f"training/train.py: {err}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace, mode: str, overrides: list[str], label: str = "") -> None:
    sections = MODES[mode].sections
    from_file = config_overrides(args.config, sections) if args.config else []
    result = MODES[mode].train(args, from_file + mode_overrides(overrides, mode))
    print(f"{label}run dir {result['run_dir']}\n{label}checkpoint {result['last_ckpt']}")


if __name__ == "__main__":
    sys.exit(main())
