"""Collect MCTS episodes in parallel: one process per core, one scene per episode index.

    python -m sim.namo.parallel_data_collection --output-dir DIR --start-idx 0 --end-idx 100 \
        --mcts-budget 100 [--level easy|medium|hard] [--max-depth 3] [--max-moves 5] \
        [--proposals-per-object 4] [--workers N]

Episode e uses scene ``generate_scene(e, level=LEVEL)`` and writes ``DIR/episode_<e>.json``
(``sim.namo.episodes``). Keep evaluation seeds outside [start, end).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter, one_line
from sim.namo.episodes import add_episode_arguments, solve_episode, write_episode
from sim.namo.mcts import MCTSConfig
from sim.namo.parallel import imap_progress, usable_cores
from sim.namo.scene import LEVELS


def _run_one(
    episode: int, output_dir: str, config: MCTSConfig, max_moves: int, level: str
) -> tuple[int, bool, int, float]:
    start = time.perf_counter()
    ep = solve_episode(episode, config, max_moves, level=level)
    write_episode(ep, output_dir)
    return episode, ep["solved"], ep["moves"], time.perf_counter() - start


def collect(
    output_dir: str | Path,
    start_idx: int,
    end_idx: int,
    config: MCTSConfig,
    max_moves: int = 5,
    workers: int | None = None,
    progress: bool = True,
    level: str = "easy",
) -> list[tuple[int, bool, int, float]]:
    """Episodes start_idx..end_idx-1 -> (episode, solved, moves, seconds) rows, in index order."""
    if end_idx <= start_idx:
        raise ValueError(f"--end-idx {end_idx} must be > --start-idx {start_idx}")
    if level not in LEVELS:
        raise ValueError(f"--level {level!r}: unknown, choose from {sorted(LEVELS)}")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    job = partial(
        _run_one, output_dir=str(output_dir), config=config, max_moves=max_moves, level=level
    )
    episodes = range(start_idx, end_idx)
    rows = list(imap_progress(job, episodes, workers, f"MCTS episodes ({level})", progress))
    return sorted(rows)


def summary_line(
    rows: list[tuple[int, bool, int, float]],
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
    except OSError as err:  # the output folder cannot be made or written
        ap.exit(1, f"{ap.prog}: error: {one_line(err)}\n")
    print(summary_line(rows, args.level, args.output_dir, time.perf_counter() - start, workers))


if __name__ == "__main__":
    main()
