"""Collect MCTS episodes in parallel: one process per core, one scene per episode index.

    python -m sim.namo.parallel_data_collection --output-dir DIR --start-idx 0 --end-idx 100 \
        --mcts-budget 100 [--level easy|medium|hard] [--max-depth 3] [--max-moves 5] \
        [--proposals-per-object 4] [--workers N]

Episode e uses scene ``generate_scene(e, level=LEVEL)`` and writes ``DIR/episode_<e>.json``
(``sim.namo.episodes``). Keep evaluation seeds outside [start, end). Episodes already in DIR
from the same settings are kept, so the same command goes on after a Ctrl-C or a crash; a file
there from other settings is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter, one_line
from sim.namo.episodes import (
    EpisodeFileError,
    add_episode_arguments,
    read_episode,
    solve_episode,
    write_episode,
)
from sim.namo.mcts import MCTSConfig
from sim.namo.parallel import imap_progress, usable_cores
from sim.namo.scene import LEVELS
from sim.namo.transition import ModelConfig

Row = tuple[int, bool, int, float]  # episode, solved, moves, seconds


def _run_one(episode: int, output_dir: str, config: MCTSConfig, max_moves: int, level: str) -> Row:
    start = time.perf_counter()
    ep = solve_episode(episode, config, max_moves, level=level)
    write_episode(ep, output_dir)
    return episode, ep["solved"], ep["moves"], time.perf_counter() - start


def _difference(key: str, have: Any, want: Any) -> str:
    """`key.field 100, this run 50` for the first field of a config that differs."""
    if isinstance(have, dict) and isinstance(want, dict):
        for field in sorted(set(have) | set(want)):
            if have.get(field) != want.get(field):
                return _difference(f"{key}.{field}", have.get(field), want.get(field))
    return f"{key} {have}, this run {want}"


def collected(
    output_dir: str | Path, episodes: range, config: MCTSConfig, max_moves: int, level: str
) -> dict[int, Row]:
    """The episodes of `episodes` already in `output_dir` from these settings (files are
    written whole, so each one is a finished episode); a file from other settings, or one that
    does not read, is an EpisodeFileError line: mixing them would mix two datasets."""
    wanted = {
        "level": level,
        "mcts_config": asdict(config),
        "model_config": asdict(ModelConfig()),
        "max_moves": max_moves,
    }
    wanted = json.loads(json.dumps(wanted))  # as a file holds them (tuples are lists there)
    rows = {}
    for e in episodes:
        path = Path(output_dir) / f"episode_{e}.json"
        if not path.exists():
            continue
        episode = read_episode(path)
        for key, value in wanted.items():
            have = episode.get(key, "easy" if key == "level" else "not recorded")
            if have != value:
                raise EpisodeFileError(
                    f"{path}: collected with other settings ({_difference(key, have, value)}): "
                    "collect into another --output-dir"
                )
        seconds = sum(float(d.get("seconds", 0.0)) for d in episode["decisions"])
        rows[e] = (e, bool(episode["solved"]), int(episode["moves"]), seconds)
    return rows


def collect(
    output_dir: str | Path,
    start_idx: int,
    end_idx: int,
    config: MCTSConfig,
    max_moves: int = 5,
    workers: int | None = None,
    progress: bool = True,
    level: str = "easy",
) -> list[Row]:
    """Episodes start_idx..end_idx-1 -> (episode, solved, moves, seconds) rows, in index order;
    those already in `output_dir` (`collected`) are read, not solved again."""
    if end_idx <= start_idx:
        raise ValueError(f"--end-idx {end_idx} must be > --start-idx {start_idx}")
    if level not in LEVELS:
        raise ValueError(f"--level {level!r}: unknown, choose from {sorted(LEVELS)}")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    episodes = range(start_idx, end_idx)
    done = collected(output_dir, episodes, config, max_moves, level)
    if done and progress:
        print(f"{len(done)} of {len(episodes)} episodes already in {output_dir}: going on")
    job = partial(
        _run_one, output_dir=str(output_dir), config=config, max_moves=max_moves, level=level
    )
    todo = [e for e in episodes if e not in done]
    rows = list(imap_progress(job, todo, workers, f"MCTS episodes ({level})", progress))
    return sorted([*done.values(), *rows])


def summary_line(
    rows: list[Row],
    level: str,
    output_dir: str,
    seconds: float,
    workers: int,
) -> str:
    """One line: episodes, decisions, solved fraction, wall seconds."""
    solved = sum(r[1] for r in rows)
    decisions = sum(r[2] for r in rows)
    return (
        f"{len(rows)} {level} episodes -> {output_dir}: {decisions} decisions, "
        f"solved {solved}/{len(rows)} ({solved / max(1, len(rows)):.2f}), "
        f"{seconds:.1f} s on {workers} workers"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m sim.namo.parallel_data_collection",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--start-idx", type=SEED_ARG, default=0, help="first episode index")
    ap.add_argument("--end-idx", type=POSITIVE_INT, required=True)
    add_episode_arguments(ap)
    ap.add_argument(
        "--proposals-per-object", type=POSITIVE_INT, default=4, help="goal proposals each"
    )
    ap.add_argument(
        "--seed", type=SEED_ARG, default=0, help="MCTS randomness (scenes: episode index)"
    )
    ap.add_argument(
        "--workers", type=POSITIVE_INT, default=None, help="default: every usable core"
    )
    args = ap.parse_args(argv)
    if args.end_idx <= args.start_idx:
        ap.error(f"--end-idx {args.end_idx} must be > --start-idx {args.start_idx}")
    config = MCTSConfig(
        budget=args.mcts_budget,
        max_depth=args.max_depth,
        proposals_per_object=args.proposals_per_object,
        seed=args.seed,
    )
    start = time.perf_counter()
    workers = min(args.workers or usable_cores(), max(1, args.end_idx - args.start_idx))
    try:
        rows = collect(
            args.output_dir,
            args.start_idx,
            args.end_idx,
            config,
            args.max_moves,
            workers,
            level=args.level,
        )
    except (OSError, EpisodeFileError) as err:  # a folder not writable, other settings' files
        ap.exit(1, f"{ap.prog}: error: {one_line(err)}\n")
    except KeyboardInterrupt:
        done = sum(
            (Path(args.output_dir) / f"episode_{e}.json").exists()
            for e in range(args.start_idx, args.end_idx)
        )
        ap.exit(
            130,
            f"{ap.prog}: interrupted: {done} of {args.end_idx - args.start_idx} episodes are in "
            f"{args.output_dir}; the same command goes on from there\n",
        )
    print(summary_line(rows, args.level, args.output_dir, time.perf_counter() - start, workers))


if __name__ == "__main__":
    main()
