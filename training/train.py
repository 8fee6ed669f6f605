"""Seed 002's command line, a thin layer over the workspace's configs.

    python training/train.py --mode policy --algorithm ppo --env HalfCheetah-v5
    python training/train.py --mode policy --algorithm sac --env Pendulum-v1 --config my.yaml
    python training/train.py --mode world_model --dataset data/reacher_camera.hdf5 --config my.yaml
    python training/train.py --mode supervised --dataset data/reacher_expert.hdf5 \
        model.use_sequences=true
    python training/train.py --mode dreamer --env InvertedPendulum-v5 online.camera=64
    python training/train.py --mode all --env Reacher-v5 --episodes 20 world_model:max_epochs=5

Each mode is one `python -m learning.train --config-name=...` run (MODES); `all` is the chain:
collect `--episodes` episodes of `--env` (its scripted expert where it has one, else uniform
random actions) into a dataset, then world_model and supervised on it, then policy and dreamer
on the env.

`--config FILE` is a YAML in the seed's `configs/default_config.yaml` layout: the sections a mode
reads (`policy:` and `training:` for policy, `world_model:` for world_model, `dreamer:` too for
dreamer) hold the same keys as the workspace config the mode runs, so they are passed on as
overrides. The seed's file carries keys for every algorithm: a key the run's config lacks but
another mode's config has (`policy.ppo_clip` with `--algorithm sac`) is skipped with one line
naming it; a key no mode's config has (a misspelling) is a one-line error.

Trailing `key=value` arguments are Hydra overrides; `MODE:key=value` ones are for that mode
only. In `--mode all` a plain override goes to each stage whose config has its key
(`online.num_envs=8` to policy and dreamer), and one that no stage has is an error. Every stage's
config is composed and checked (learning/config_rules.py) before any work, and bad input ends
the command with one line and exit status 1, as `python -m learning.train` does.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from episode_dataset.ranges import POSITIVE_INT, HelpFormatter, one_line

PROG = "training/train.py"


@dataclass(frozen=True)
class Mode:
    config: str  # the configs/<config>.yaml it runs; "{algorithm}": --algorithm's
    sections: tuple[str, ...]  # the seed default_config.yaml sections passed on as overrides
    needs: str  # "env" (the online loop in a sim task) or "dataset" (episodes to learn from)
    help: str


MODES = {
    "policy": Mode("train_{algorithm}", ("policy", "training"), "env", "PPO/SAC in --env"),
    "world_model": Mode(
        "train_world_model", ("world_model",), "dataset", "an RSSM world model on --dataset"
    ),
    "supervised": Mode("train_bc", (), "dataset", "behaviour cloning on --dataset"),
    "dreamer": Mode(
        "train_dreamer", ("world_model", "dreamer", "training"), "env", "Dreamer in --env"
    ),
}
CHAIN = ("world_model", "supervised", "policy", "dreamer")  # --mode all, after the collection
ALGORITHMS = ("ppo", "sac")
# Every config this command runs: a --config key none of them has is a misspelling.
ALL_CONFIGS = tuple(
    dict.fromkeys(m.config.format(algorithm=a) for m in MODES.values() for a in ALGORITHMS)
)


@dataclass(frozen=True)
class Stage:
    """One `learning.train` run of the command: its mode, config and overrides."""

    mode: str
    config: str
    overrides: tuple[str, ...]
    label: str  # "" for a single mode, "MODE: " in --mode all


def hydra_value(value: Any) -> str:
    """`value` (parsed YAML) written in Hydra's override grammar: null stays null, a string
    stays a string (quoted), lists and mappings element by element."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    # Quoted: a backslash is an escape only before a quote or at the end (Hydra's grammar).
    text = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), str(value))
    return f"'{text}'"


def hydra_line(err: Exception) -> str:
    """A Hydra error on one line, naming the override it could not parse."""
    from hydra.errors import OverrideParseException

    if isinstance(err, OverrideParseException):
        return f"override {err.override}: {one_line(err)}"
    return one_line(err)


def _for_mode(item: str) -> str | None:
    """The mode a `MODE:key=value` override names (None: a plain override)."""
    prefix, sep, _ = item.partition(":")
    return prefix if sep and prefix in MODES and "=" not in prefix else None


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    """The sections of the seed-layout YAML at `path` (ConfigError: one line naming it)."""
    from learning.errors import ConfigError

    try:
        config: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: {one_line(err)}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"--config {path}: not a mapping of sections")
    for section, values in config.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"--config {path}: {section!r} is not a mapping")
    return {section: values or {} for section, values in config.items()}


@cache
def base_config(name: str) -> dict[str, Any]:
    """configs/<name>.yaml as composed with no overrides, unresolved (its keys)."""
    from omegaconf import OmegaConf

    from learning.train import compose_config

    return OmegaConf.to_container(compose_config(name), resolve=False)


def has_key(config: dict[str, Any], dotted: str) -> bool:
    """Whether `config` (base_config's) has the dotted key, a `???` value included."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_overrides(
    config: dict[str, dict[str, Any]], path: Path, sections: tuple[str, ...], name: str
) -> tuple[list[str], list[str]]:
    """(`section.key=value` overrides for configs/<name>.yaml, keys skipped) from the seed-layout
    `config` read from `path`: a key another config of this command has is skipped; a key none
    has is a ConfigError."""
    from learning.errors import ConfigError

    overrides, skipped = [], []
    for section in sections:
        for key, value in config.get(section, {}).items():
            dotted = f"{section}.{key}"
            if has_key(base_config(name), dotted):
                overrides.append(f"{dotted}={hydra_value(value)}")
            elif any(has_key(base_config(other), dotted) for other in ALL_CONFIGS):
                skipped.append(dotted)
            else:
                raise ConfigError(
                    f"--config {path}: {dotted} is not a key of any config this command runs "
                    f"(configs/{{{','.join(ALL_CONFIGS)}}}.yaml)"
                )
    return overrides, skipped


def _applies(item: str, name: str) -> bool:
    """Whether the plain override `item` is for configs/<name>.yaml: it has the key (or group),
    or the override adds one (`+key=value`) or sets Hydra's own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    (override,) = OverridesParser.create().parse_overrides([item])
    key = override.key_or_group
    if override.type in (OverrideType.ADD, OverrideType.FORCE_ADD) or key.startswith("hydra"):
        return True
    return has_key(base_config(name), key)


def plan(args: argparse.Namespace) -> list[Stage]:
    """The runs of the command, each config composed with its overrides and checked (key names,
    learning/config_rules.py's ranges) before any of them starts: ConfigError otherwise."""
    from learning.errors import ConfigError

    chain = list(CHAIN) if args.mode == "all" else [args.mode]
    config = read_config(args.config) if args.config else {}
    stages, notes = [], []
    routed: set[str] = set()
    for mode in chain:
        name = MODES[mode].config.format(algorithm=args.algorithm)
        label = f"{mode}: " if args.mode == "all" else ""
        overrides, skipped = config_overrides(config, args.config, MODES[mode].sections, name)
        if skipped:
            notes.append(
                f"{PROG}: {label}--config {args.config}: skipped {', '.join(skipped)}: not in "
                f"configs/{name}.yaml"
            )
        for item in args.overrides:
            if _for_mode(item) == mode:
                overrides.append(item.partition(":")[2])
            elif _for_mode(item) is None and (args.mode != "all" or _applies(item, name)):
                overrides.append(item)
                routed.add(item)
        stages.append(Stage(mode, name, tuple(overrides), label))
    plain = [item for item in args.overrides if _for_mode(item) is None]
    unused = [item for item in plain if item not in routed]
    if unused:
        configs = ", ".join(f"configs/{s.config}.yaml" for s in stages)
        raise ConfigError(
            f"override {unused[0]}: no stage of --mode all has its key ({configs}); a new key "
            f"is +{unused[0]}, a key of one stage MODE:{unused[0]}"
        )
    for stage in stages:
        _check(args, stage)
    for note in notes:  # once the command will run: an error stays the only line
        print(note, file=sys.stderr)
    return stages


def _needs(args: argparse.Namespace, mode: str) -> list[str]:
    """The override naming the stage's env or dataset (none yet for --mode all's dataset)."""
    if MODES[mode].needs == "env":
        return [f"env_id={hydra_value(args.env)}"]
    return [f"dataset={hydra_value(str(args.dataset))}"] if args.dataset else []


def _check(args: argparse.Namespace, stage: Stage) -> None:
    """Compose the stage's config and check its numbers: a ConfigError naming the stage."""
    from hydra.errors import HydraException

    from learning.config_rules import check_config
    from learning.errors import ConfigError
    from learning.train import compose_config

    where = f"{stage.label}configs/{stage.config}.yaml: "
    try:
        check_config(compose_config(stage.config, [*_needs(args, stage.mode), *stage.overrides]))
    except HydraException as err:
        raise ConfigError(f"{where}{hydra_line(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def _collect(args: argparse.Namespace) -> Path:
    """--mode all's first step: `--episodes` episodes of `--env` in a dataset file."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from learning.errors import ConfigError
    from sim.collect import collect
    from sim.envs import task_spec

    plain = OverridesParser.create().parse_overrides(
        [item for item in args.overrides if _for_mode(item) is None]
    )
    root = next((o.value() for o in reversed(plain) if o.key_or_group == "output_root"), None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(root or "outputs") / "datasets" / f"{args.env}_{stamp}.hdf5"
    try:
        expert = task_spec(args.env).has_expert
    except ValueError as err:
        raise ConfigError(f"--env {args.env}: {err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    collect(args.env, "expert" if expert else "random", args.episodes, 0, out, progress=False)
    print(f"collect: {args.episodes} {'expert' if expert else 'random'} episodes -> {out}")
    return out


def _train(args: argparse.Namespace, stage: Stage) -> None:
    from learning.train import compose_config, run

    if MODES[stage.mode].needs == "env":
        from learning.online.api import train_policy

        algorithm = stage.config.removeprefix("train_")
        result = train_policy(args.env, algorithm=algorithm, overrides=list(stage.overrides))
    else:
        result = run(compose_config(stage.config, [*_needs(args, stage.mode), *stage.overrides]))
    label = stage.label
    print(f"{label}run dir {result['run_dir']}\n{label}checkpoint {result['last_ckpt']}")


def main(argv: list[str] | None = None) -> int:
    modes = "; ".join(f"{name}: {mode.help}" for name, mode in MODES.items())
    parser = argparse.ArgumentParser(
        prog=f"python {PROG}",
        description=f"Seed 002's training entry. Modes: {modes}; all: collect --episodes "
        "episodes of --env, then world_model and supervised on them, then policy and dreamer "
        "in --env.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--mode", default="policy", help=f"what to train: {', '.join(MODES)} or all (the chain)"
    )
    parser.add_argument(
        "--algorithm", choices=ALGORITHMS, default="ppo", help="policy (and all): the learner"
    )
    parser.add_argument(
        "--env", help="policy, dreamer and all: a registered sim task, e.g. HalfCheetah-v5"
    )
    parser.add_argument("--dataset", help="world_model / supervised: an episode dataset file")
    parser.add_argument(
        "--episodes", type=POSITIVE_INT, default=20, help="all: episodes to collect"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML in seed 002's default_config layout (keys of other algorithms are skipped)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, e.g. online.num_envs=8; MODE:key=value for one mode (in all, a "
        "plain one goes to each stage whose config has the key)",
    )
    args = parser.parse_args(argv)
    if args.mode != "all" and args.mode not in MODES:
        known = ", ".join([*MODES, "all"])
        parser.error(f"--mode {args.mode}: unknown (this workspace trains: {known})")
    for item in args.overrides:
        prefix = _for_mode(item)
        if prefix is not None and args.mode not in (prefix, "all"):
            parser.error(f"override {item!r} is for --mode {prefix}, not --mode {args.mode}")
    needs = "env" if args.mode == "all" else MODES[args.mode].needs
    if getattr(args, needs) is None:
        parser.error(f"--mode {args.mode} needs --{needs}")

    from hydra.errors import HydraException, InstantiationException

    from learning.train import ONE_LINE_ERRORS

    try:
        stages = plan(args)
        if args.mode == "all":
            args.dataset = _collect(args)
        for stage in stages:
            _train(args, stage)
    except InstantiationException as err:
        # As learning.train's main: a ValueError raised inside Hydra's instantiate is the line.
        if not isinstance(err.__cause__, ValueError):
            raise
        print(f"{PROG}: {one_line(err.__cause__)}", file=sys.stderr)
        return 1
    except HydraException as err:  # an override --mode all could not parse
        print(f"{PROG}: {hydra_line(err)}", file=sys.stderr)
        return 1
    except ONE_LINE_ERRORS as err:
        print(f"{PROG}: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
