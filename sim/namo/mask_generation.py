"""Render MCTS episodes into Q-function / goal-generator training masks.

    python -m sim.namo.mask_generation batch --input-dir EPISODES --output-dir OUT \
        [--image-size 224] [--workers N]

For every ``episode_<e>.json`` under ``--input-dir`` (recursive), every decision g and every
root proposal p, writes ``OUT/episode_<e>_goal_<g>_proposal_<p>.npz`` (np.savez_compressed)
with ``sim.namo.masks.sample_arrays``: the seed-000 keys (11 state channels, target_object,
target_goal, goal_q_value, object_id, goal_coordinates) and the seed-001 keys (robot_image,
goal_image, movable_objects_image, static_objects_image, target_object, target_goal).
Extra keys: ``visits`` (MCTS visits of the proposal), ``chosen`` (1 if MCTS executed it).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np

from episode_dataset import whole_or_absent
from episode_dataset.ranges import POSITIVE_INT, HelpFormatter, arg, one_line
from sim.namo.episodes import EpisodeFileError, decision_items, episode_model, read_episode
from sim.namo.masks import DEFAULT_SIZE, MASK_SIZE, sample_arrays
from sim.namo.parallel import imap_progress


def episode_files(input_dir: str | Path) -> list[Path]:
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: --input-dir is not a directory")
    files = sorted(root.rglob("episode_*.json"))
    if not files:
        raise FileNotFoundError(f"{root}: no episode_*.json files")
    return files


def render_episode(path: str | Path, output_dir: str | Path, size: int = DEFAULT_SIZE) -> int:
    """Write every (decision, proposal) mask file of one episode; returns the number written."""
    episode = read_episode(path)
    model = episode_model(episode)
    e = int(episode["episode"])
    out = Path(output_dir)
    written = 0
    for g, decision in enumerate(episode["decisions"]):
        state, proposals, q_values = decision_items(decision)
        visits = decision.get("visits", [1] * len(proposals))
        for p, (proposal, q) in enumerate(zip(proposals, q_values, strict=True)):
            arrays = sample_arrays(model, state, proposal, q, size)
            arrays["visits"] = np.int64(visits[p])
            arrays["chosen"] = np.int64(p == decision.get("chosen", -1))
            path = out / f"episode_{e}_goal_{g}_proposal_{p}.npz"
            # a file object: numpy appends no ".npz"; a stopped worker leaves no half file
            with whole_or_absent(path) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
            written += 1
    return written


def batch(
    input_dir: str | Path,
    output_dir: str | Path,
    size: int = DEFAULT_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> int:
    """Render all episodes under input_dir; returns the number of mask files written."""
    files = episode_files(input_dir)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    job = partial(render_episode, output_dir=str(output_dir), size=size)
    return sum(imap_progress(job, files, workers, "episodes -> masks", progress))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m sim.namo.mask_generation",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "batch",
        help="render every episode under --input-dir",
        description="Render every episode under --input-dir into mask files.",
        formatter_class=HelpFormatter,
    )
    b.add_argument("--input-dir", required=True)
    b.add_argument("--output-dir", required=True)
    b.add_argument(
        "--image-size", type=arg(MASK_SIZE), default=DEFAULT_SIZE, help="mask side in pixels"
    )
    b.add_argument("--workers", type=POSITIVE_INT, default=None, help="default: all cores")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        n = batch(args.input_dir, args.output_dir, args.image_size, args.workers)
    except (OSError, EpisodeFileError) as err:  # no --input-dir, an unwritable --output-dir,
        # an episode file that cannot be read (the masks of the episodes before it are kept)
        ap.exit(1, f"{ap.prog}: error: {one_line(err)}\n")
    except KeyboardInterrupt:
        ap.exit(
            130,
            f"{ap.prog}: interrupted: the mask files in {args.output_dir} are whole, not all "
            "there; the same command renders every episode again\n",
        )
    print(f"{n} mask files -> {args.output_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
