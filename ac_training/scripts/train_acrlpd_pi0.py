"""Seed 003's training command, a thin layer over the workspace's Hydra entry:

    python ac_training/scripts/train_acrlpd_pi0.py --data_dir data/cube.hdf5 --config aloha \
        --horizon_length 20 --bc_alpha 0.001 --best_of_n_samples 32 \
        --experiment_name aloha_long_horizon
    python ac_training/scripts/train_acrlpd_pi0.py --data_dir data/cube.hdf5 --config libero \
        --resume outputs/libero/<ts>/checkpoints/last.ckpt
    python ac_training/scripts/train_acrlpd_pi0.py --data_dir data/cube.hdf5 \
        --sweep horizon_length=5,10,15 bc_alpha=0.001,0.01,0.1      # Hydra multirun

runs (and prints first; --dry_run prints only)

    python -m learning.train --config-name=train_acrlpd preset=<config> policy=<policy>
        dataset=<data_dir> env_id=<env> <flag>=<value> ... [overrides] [--multirun <sweep>]

Every flag is a root key of configs/train_acrlpd.yaml, so anything the flags do not cover is a
trailing `key=value` override. --env defaults to the task the dataset was recorded on (its
env_args); --data_dir is the dataset file, or a directory holding exactly one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from episode_dataset.ranges import HelpFormatter

PRESETS = ("none", "droid", "aloha", "libero")
POLICIES = ("pi0", "mlp", "chiunet", "chitransformer")
# flag -> type, each the root key of the same name (None: not given, the config's value)
KEYS = {
    "horizon_length": int,
    "bc_alpha": float,
    "best_of_n_samples": int,
    "batch_size": int,
    "num_critics": int,
    "offline_steps": int,
    "online_steps": int,
    "eval_frequency": int,
    "eval_episodes": int,
    "gradient_accumulation_steps": int,
    "max_memory_gb": float,
    "seed": int,
}


def dataset_file(data_dir: Path) -> Path:
    """The dataset at `data_dir`: the file itself, or the one .hdf5/.h5 in the directory."""
    if data_dir.is_file():
        return data_dir
    if not data_dir.is_dir():
        raise SystemExit(f"train_acrlpd_pi0.py: --data_dir {data_dir}: no such file or directory")
    files = sorted(p for p in data_dir.iterdir() if p.suffix in (".hdf5", ".h5"))
    if len(files) != 1:
        raise SystemExit(
            f"train_acrlpd_pi0.py: --data_dir {data_dir}: holds {len(files)} .hdf5/.h5 files, "
            "name one"
        )
    return files[0]


def recorded_env(path: Path) -> str | None:
    """The task a workspace dataset was recorded on (data.attrs env_args.env_name), if any."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            env_args = f["data"].attrs.get("env_args") if "data" in f else None
    except OSError:
        return None
    return json.loads(env_args).get("env_name") if env_args else None


def hydra_command(args: argparse.Namespace) -> list[str]:
    """The `python -m learning.train` command line the flags stand for."""
    cmd = [sys.executable, "-m", "learning.train", "--config-name=train_acrlpd"]
    if args.sweep:  # before every override: Hydra's parser takes them as one run of positionals
        cmd.append("--multirun")
    cmd += [f"preset={args.config}", f"policy={args.policy}"]
    env = args.env
    if args.data_dir is not None:
        data = dataset_file(args.data_dir)
        cmd.append(f"dataset={data.resolve()}")
        env = env or recorded_env(data)
    if env is None:
        raise SystemExit("train_acrlpd_pi0.py: --env is needed (the dataset names no task)")
    cmd.append(f"env_id={env}")
    cmd += [f"{key}={getattr(args, key)}" for key in KEYS if getattr(args, key) is not None]
    for key in ("mixed_precision", "freeze_backbone"):
        if getattr(args, key) is not None:
            cmd.append(f"{key}={str(getattr(args, key)).lower()}")
    if args.experiment_name:
        cmd.append(f"name={args.experiment_name}")
    if args.resume:
        cmd.append(f"ckpt_path={Path(args.resume).resolve()}")
    return cmd + list(args.overrides) + list(args.sweep or ())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python ac_training/scripts/train_acrlpd_pi0.py",
        description="Seed 003's ACRLPD (Q-chunking) training: offline on a dataset, then online "
        "on the task, through `python -m learning.train --config-name=train_acrlpd`.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data_dir", type=Path, help="episode dataset file (or its directory)")
    parser.add_argument("--config", choices=PRESETS, default="none", help="platform preset")
    parser.add_argument("--policy", choices=POLICIES, default="pi0", help="flow policy backbone")
    parser.add_argument("--env", help="sim task (default: the dataset's)")
    for key, kind in KEYS.items():
        parser.add_argument(f"--{key}", type=kind, help="root key (default: the config's)")
    for key in ("mixed_precision", "freeze_backbone"):
        parser.add_argument(
            f"--{key}", action=argparse.BooleanOptionalAction, help="default: the config's"
        )
    parser.add_argument("--experiment_name", help="run name: outputs/<name>/<timestamp>")
    parser.add_argument("--resume", help="checkpoint to continue (checkpoints/last.ckpt)")
    parser.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", help="Hydra multirun sweep")
    parser.add_argument("--dry_run", action="store_true", help="print the command only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.utd_ratio=2")
    args = parser.parse_intermixed_args(argv)  # overrides may sit between the flags
    cmd = hydra_command(args)
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(cmd).returncode  # outputs/ in the caller's directory


if __name__ == "__main__":
    sys.exit(main())
