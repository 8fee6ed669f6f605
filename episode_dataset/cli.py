"""`python -m episode_dataset {info,validate,pack,robomimic,show,lerobot-export,lerobot-import,
import-bag}` (console script `episode-dataset`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from episode_dataset._files import shard_dir_for
from episode_dataset.bag_import import BagImportError, import_bag
from episode_dataset.lerobot import VIDEO_CODECS, export_lerobot, import_lerobot
from episode_dataset.pack import pack
from episode_dataset.ranges import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, HelpFormatter
from episode_dataset.reader import EpisodeReader, h5_errors
from episode_dataset.recording.topics import RecorderConfigError
from episode_dataset.robomimic import H5DatasetReader, describe, export_robomimic, parse_cameras
from episode_dataset.schema import ACTIONS, OBS, DatasetError, KeySpec
from episode_dataset.show import plot_info, show_episode
from episode_dataset.validate import validate_file


def _short(dtype: np.dtype | str) -> str:
    d = np.dtype(dtype)
    return {"f": "f", "u": "u", "i": "i", "b": "bool"}[d.kind] + (
        "" if d.kind == "b" else str(8 * d.itemsize)
    )


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def info(path: Path, max_episodes: int, console: Console) -> None:
    with EpisodeReader(path) as r:
        console.print(f"[bold]{path}[/bold]")
        console.print(f"layout:   {_layout(path, r)}")
        console.print(f"env_args: {json.dumps(r.env_args)}")
        console.print(f"episodes: {len(r)}   steps: {r.total_steps}")
        filters = ", ".join(f"{n} ({len(r.filter(n))})" for n in r.filters) or "-"
        console.print(f"filters:  {filters}")

        keys = Table(title="keys")
        for col in ("key", "type", "shape", "dtype", "units", "encoding", "source topic"):
            keys.add_column(col)
        specs: dict[str, KeySpec] = {f"{OBS}/{k}": s for k, s in r.obs_specs.items()}
        specs[ACTIONS] = r.action_spec
        for name, s in specs.items():
            keys.add_row(
                name, s.feature_type, _shape(s.shape), s.dtype, s.units or "-", s.encoding or "-",
                s.source_topic or "-",
            )  # fmt: skip
        console.print(keys)

        eps = Table(title="episodes")
        for col, justify in (("episode", "left"), ("steps", "right"), ("return", "right")):
            eps.add_column(col, justify=justify)
        eps.add_column("arrays (dtype[T, ...])")
        eps.add_column("meta")
        shown = r.episodes[:max_episodes]
        for ep in shown:
            names = {k: f"{OBS}/{k}" for k in r.obs_specs} | {"act": ACTIONS}
            arrays = []
            for label, name in names.items():
                ds = r.dataset(ep, name)  # a missing or damaged key is one DatasetError line
                with h5_errors(f"{path}: {ep}/{name}"):
                    arrays.append(f"{label}:{_short(ds.dtype)}[{', '.join(map(str, ds.shape))}]")
            eps.add_row(
                ep,
                str(r.num_steps(ep)),
                f"{r.episode_return(ep):.3f}",
                " ".join(arrays),
                _brief(r.episode_metadata(ep)),
            )
        console.print(eps)
        if len(r) > len(shown):
            console.print(f"... {len(r) - len(shown)} more episodes (--max-episodes)")


def _layout(path: Path, r: EpisodeReader) -> str:
    """Linked (index + shards) or packed. An index without episodes has no links to tell: it
    is a linked dataset when the writer's shard directory is beside it (episodes can be
    appended), else a packed file (pack's output)."""
    shards = shard_dir_for(path)
    if len(r):
        return "packed (self-contained)" if r.packed else f"linked ({shards.name}/)"
    if shards.is_dir():
        return f"linked ({shards.name}/), no episodes yet"
    return "packed (self-contained), no episodes"


def _brief(meta: dict, limit: int = 60) -> str:
    """Top-level scalar metadata only (nested counters stay in the file), shortened."""
    text = json.dumps({k: v for k, v in meta.items() if not isinstance(v, (dict, list))})
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_info(args: argparse.Namespace) -> None:
    info(args.file, args.max_episodes, Console(width=160))
    if args.plot is not None:
        print(plot_info(args.file, args.plot))


def _run_robomimic(args: argparse.Namespace) -> None:
    state = None if args.state_keys is None else args.state_keys.split(",")
    print(
        export_robomimic(
            args.src,
            args.dst,
            cameras=parse_cameras(args.camera),
            state_keys=state,
            compression=args.compression,
            overwrite=args.overwrite,
        )
    )
    with H5DatasetReader(args.dst) as reader:
        print(describe(reader))


def _run_pack(args: argparse.Namespace) -> None:
    summary = pack(args.src, args.dst, compression=args.compression, overwrite=args.overwrite)
    print(f"packed {args.src} -> {args.dst}: {summary}")


def _run_lerobot_export(args: argparse.Namespace) -> None:
    print(
        export_lerobot(
            args.src,
            args.out_dir,
            fps=args.fps,
            task=args.task,
            codec=args.codec,
            robot_type=args.robot_type,
            overwrite=args.overwrite,
        )
    )


def _run_import_bag(args: argparse.Namespace) -> None:
    report = import_bag(
        args.bag, args.topics_config, args.out, services=args.services, gap_s=args.gap_s
    )
    print(report.summary())


def _args_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument(
        "--max-episodes", type=NON_NEGATIVE_INT, default=50, help="episodes listed at most"
    )
    p.add_argument(
        "--plot", type=Path, default=None, help="also draw per-episode returns and lengths (.png)"
    )


def _args_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument(
        "--structure-only",
        action="store_true",
        help="skip reading the arrays (checksums, NaN/Inf)",
    )


def _args_pack(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--compression", choices=["gzip", "lzf"], default=None)
    p.add_argument("--overwrite", action="store_true")


def _args_robomimic(p: argparse.ArgumentParser) -> None:
    _args_pack(p)
    p.add_argument(
        "--camera",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="rename a camera, e.g. front=base_0_rgb (repeat per camera)",
    )
    p.add_argument(
        "--state-keys",
        default=None,
        help="comma-separated low-dim keys concatenated into state, in order (default: all)",
    )


def _args_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("--episode", type=int, required=True, help="episode number, 0-based")
    p.add_argument("--out", type=Path, required=True, help="F.png or F.mp4")


def _args_lerobot_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--fps", type=POSITIVE_INT, default=None, help="default: env_args control_rate_hz"
    )
    p.add_argument("--task", default=None, help="task string (default: env_args task/env_name)")
    p.add_argument(
        "--codec",
        choices=sorted(VIDEO_CODECS),
        default="h264",
        help="camera video codec (lossless: bit-exact frames, larger files)",
    )
    p.add_argument("--robot-type", default=None)
    p.add_argument("--overwrite", action="store_true")


def _args_lerobot_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--overwrite", action="store_true")


def _args_import_bag(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", type=Path, help="bag directory (metadata.yaml + .mcap or .db3)")
    p.add_argument(
        "--topics-config", type=Path, required=True, help="the recorder node's parameter file"
    )
    p.add_argument("--out", type=Path, required=True, help="dataset (created or appended to)")
    p.add_argument(
        "--services",
        default=None,
        help="recorder node name whose recorded start/stop_episode calls start and end episodes",
    )
    p.add_argument(
        "--gap-s",
        type=POSITIVE_FLOAT,
        default=None,
        help="a pause longer than this ends the episode",
    )


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {
    "info": Command("print header, key specs and per-episode summary", _args_info, _run_info),
    "validate": Command(
        "check structure and values; exit 1 on the first problem",
        _args_validate,
        lambda a: print(validate_file(a.file, check_data=not a.structure_only)),
    ),
    "pack": Command("write one self-contained file (no external links)", _args_pack, _run_pack),
    "robomimic": Command(
        "export to a robomimic-style HDF5 (cameras renamed, low-dim keys -> state)",
        _args_robomimic,
        _run_robomimic,
    ),
    "show": Command(
        "draw one episode: cameras and signals against time (.png strip or .mp4)",
        _args_show,
        lambda a: print(show_episode(a.file, a.episode, a.out)),
    ),
    "lerobot-export": Command(
        "write a LeRobotDataset v3.0 directory (parquet + mp4 + meta)",
        _args_lerobot_export,
        _run_lerobot_export,
    ),
    "lerobot-import": Command(
        "read a LeRobotDataset v3.x directory into an episode dataset",
        _args_lerobot_import,
        lambda a: print(import_lerobot(a.root, a.out, overwrite=a.overwrite)),
    ),
    "import-bag": Command(
        "import a rosbag2 (MCAP or sqlite3) as the recorder would have recorded it: its topics, "
        "alignment and validation (docs/bring_your_own_data.md)",
        _args_import_bag,
        _run_import_bag,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="episode-dataset",
        description="Inspect, validate and pack episode dataset files (HDF5).",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            formatter_class=HelpFormatter,
        )
        command.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.cmd].run(args)
    except (DatasetError, BagImportError, RecorderConfigError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0
