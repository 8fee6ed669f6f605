"""How far MCTS labels agree with themselves, and labels pooled over several searches.

    python -m learning.namo.label_noise --episodes DIR [--mcts-budget B] [--seed S] \
        [--repeats R] [--write-dir OUT] [--fresh] [--workers N]
    python -m learning.namo.label_noise --episodes DIR --compare OTHER

For every decision of every ``episode_<e>.json`` under DIR, MCTS searches the stored state
again R times with the stored root proposals fixed (``MCTS.search(state, proposals)``), other
random streams (``--seed`` + r) and ``--mcts-budget`` simulations (default: the episode's own).
Printed (JSON): the per-state ranking metrics (``learning.namo.metrics``) of the first re-search
against the stored Q-values, i.e. how well one MCTS run predicts another: the noise ceiling of
single-search labels. With ``--write-dir`` every episode is written again with each root
proposal's Q pooled over all R + 1 searches (sum of returns / sum of visits; ``visits`` summed,
``label_searches`` = R + 1), for ``sim.namo.mask_generation`` to render less noisy labels;
``--fresh`` pools the R re-searches only (R searches, the stored one left out), so that two runs
with other ``--seed`` give independent pooled labels. ``--compare OTHER`` searches nothing: it
scores the labels of OTHER (episodes of the same decisions, e.g. the other pool) against DIR's,
i.e. how well pooled labels agree with themselves. Episodes are searched on every core with
progress on stderr; with ``--write-dir`` each is written as it finishes (with the settings and
each decision's first re-search), so a Ctrl-C (one line, exit 130) keeps the ones searched by
then, and the same command run again searches only the rest (a folder written with other
settings is refused in one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter
from learning.namo.metrics import group_ids, ranking_metrics
from sim.namo.episodes import (
    EpisodeFileError,
    decision_items,
    episode_model,
    read_episode,
    write_episode,
)
from sim.namo.mcts import MCTS, MCTSConfig
from sim.namo.parallel import imap_progress

Row = tuple[int, int, float, float]  # episode, decision, stored Q, first re-search's Q


def research_episode(
    path: Path, budget: int | None, seed: int, repeats: int = 1, fresh: bool = False
) -> tuple[list[Row], dict[str, Any]]:
    """Rows of one episode file and the episode with Q pooled over the stored + R searches
    (fresh: over the R searches only)."""
    episode = read_episode(path)
    model = episode_model(episode)
    config = MCTSConfig(**episode.get("mcts_config", {}))
    e = int(episode["episode"])
    rows: list[Row] = []
    decisions = []
    searches = [
        MCTS(model, replace(config, seed=seed + r, budget=budget or config.budget))
        for r in range(repeats)
    ]
    for r, search in enumerate(searches):
        search.reset((seed + r) * 1_000_003 + e)
    for g, decision in enumerate(episode["decisions"]):
        state, proposals, stored = decision_items(decision)
        visits = np.asarray(decision.get("visits", [1] * len(stored)), np.float64)
        if fresh:
            visits = np.zeros_like(visits)
        returns = np.asarray(stored, np.float64) * visits
        for r, search in enumerate(searches):
            again = search.search(state, proposals)
            if r == 0:
                first = [float(a) for a in again.q_values]
                rows += [(e, g, q, a) for q, a in zip(stored, first, strict=True)]
            visits += again.visits
            returns += again.q_values.astype(np.float64) * again.visits
        pooled = np.divide(returns, visits, out=np.zeros_like(returns), where=visits > 0)
        decisions.append(
            {
                **decision,
                "q_values": pooled.tolist(),
                "visits": visits.astype(int).tolist(),
                "first_research_q": first,  # what a rerun of the same command reads back
            }
        )
    settings = _settings(budget, seed, repeats, fresh)
    return rows, {
        **episode,
        "decisions": decisions,
        "label_searches": repeats + (not fresh),
        "label_noise": settings,
    }


def _settings(budget: int | None, seed: int, repeats: int, fresh: bool) -> dict[str, Any]:
    return {"mcts_budget": budget, "seed": seed, "repeats": repeats, "fresh": fresh}


def searched_before(
    path: Path, write_dir: Path, settings: dict[str, Any]
) -> tuple[list[Row], dict[str, Any]] | None:
    """The rows of episode file `path` from its copy in `write_dir` written by a run of these
    settings (a stopped run's), or None if there is none; a copy from other settings is an
    EpisodeFileError line: pooling them would mix two label sets."""
    written = write_dir / path.name
    if not written.exists():
        return None
    episode, stored = read_episode(written), read_episode(path)
    have = episode.get("label_noise")
    if have != settings:
        differs = "not written by label_noise"
        if isinstance(have, dict):
            key = next(k for k in settings if have.get(k) != settings[k])
            differs = f"{key} {have.get(key)}, this run {settings[key]}"
        raise EpisodeFileError(
            f"{written}: searched with other settings ({differs}): write into another --write-dir"
        )
    e = int(stored["episode"])
    rows: list[Row] = []
    if len(episode["decisions"]) != len(stored["decisions"]):
        raise EpisodeFileError(f"{written}: other decisions than {path}")
    pairs = zip(stored["decisions"], episode["decisions"], strict=True)  # lengths checked
    for g, (mine, searched) in enumerate(pairs):
        first = searched.get("first_research_q")
        if searched.get("proposals") != mine.get("proposals") or not (
            isinstance(first, list) and len(first) == len(mine["q_values"])
        ):
            raise EpisodeFileError(f"{written} decision {g}: other moves than {path}")
        rows += [(e, g, float(q), float(a)) for q, a in zip(mine["q_values"], first, strict=True)]
    return rows, episode


def label_noise(
    episodes_dir: str | Path,
    budget: int | None = None,
    seed: int = 1,
    repeats: int = 1,
    write_dir: str | Path | None = None,
    workers: int | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    files = episode_files(episodes_dir)
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: needs at least one re-search")
    job = partial(research_episode, budget=budget, seed=seed, repeats=repeats, fresh=fresh)
    chunks = []
    todo = files
    if write_dir is not None and Path(write_dir).resolve() == Path(episodes_dir).resolve():
        raise ValueError(f"--write-dir {write_dir} is --episodes: write into another folder")
    if write_dir is not None:  # a rerun of a stopped command goes on where it stopped
        settings = json.loads(json.dumps(_settings(budget, seed, repeats, fresh)))
        done = {p: searched_before(p, Path(write_dir), settings) for p in files}
        chunks = [(int(ep["episode"]), rows) for rows, ep in filter(None, done.values())]
        todo = [p for p in files if done[p] is None]
        if chunks:
            print(
                f"{len(chunks)} of {len(files)} episodes already searched in {write_dir}: "
                "going on",
                file=sys.stderr,
            )
    # progress on stderr: stdout carries the JSON line
    for chunk, episode in imap_progress(job, todo, workers, "episodes", progress, sys.stderr):
        if write_dir is not None:  # as each one ends: a stopped run keeps what it searched
            write_episode(episode, write_dir)
        chunks.append((int(episode["episode"]), chunk))
    chunks.sort(key=lambda c: c[0])  # file order, whatever order the workers finished in
    rows = np.array([r for _, chunk in chunks for r in chunk], dtype=np.float64)
    out = ranking_metrics(rows[:, 3], rows[:, 2], group_ids(rows[:, 0], rows[:, 1]))
    out.update({"episodes": len(files), "samples": len(rows), "budget": budget, "seed": seed})
    return out


def episode_files(episodes_dir: str | Path) -> list[Path]:
    files = sorted(Path(episodes_dir).glob("episode_*.json"))
    if not files:
        raise EpisodeFileError(f"{episodes_dir}: no episode_*.json files")
    return files


def compare_labels(episodes_dir: str | Path, other_dir: str | Path) -> dict[str, float]:
    """Ranking metrics of OTHER's Q against DIR's on the same decisions (no search)."""
    rows: list[Row] = []
    files = episode_files(episodes_dir)
    for path in files:
        episode, other = read_episode(path), read_episode(Path(other_dir) / path.name)
        e = int(episode["episode"])
        if len(other["decisions"]) != len(episode["decisions"]):
            raise EpisodeFileError(f"{path.name}: other decisions in {other_dir}")
        pairs = zip(episode["decisions"], other["decisions"], strict=True)
        for g, (mine, theirs) in enumerate(pairs):
            if (theirs["state"], theirs["proposals"]) != (mine["state"], mine["proposals"]):
                raise EpisodeFileError(f"{path.name} decision {g}: other moves in {other_dir}")
            pairs_q = zip(mine["q_values"], theirs["q_values"], strict=True)
            rows += [(e, g, float(a), float(b)) for a, b in pairs_q]
    table = np.array(rows, dtype=np.float64)
    out = ranking_metrics(table[:, 3], table[:, 2], group_ids(table[:, 0], table[:, 1]))
    out.update({"episodes": len(files), "samples": len(rows)})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learning.namo.label_noise",
        description="Rank agreement of a second MCTS search (same root moves) with the labels.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--episodes", required=True, help="folder of episode_<e>.json files")
    parser.add_argument(
        "--mcts-budget", type=POSITIVE_INT, default=None, help="default: the episode's"
    )
    parser.add_argument("--seed", type=SEED_ARG, default=1, help="first re-search's random stream")
    parser.add_argument("--repeats", type=POSITIVE_INT, default=1, help="re-searches per decision")
    parser.add_argument("--write-dir", default=None, help="write episodes with pooled Q here")
    parser.add_argument(
        "--fresh", action="store_true", help="pool the re-searches only, not the stored Q"
    )
    parser.add_argument(
        "--compare", default=None, help="score this folder's Q against --episodes' (no search)"
    )
    parser.add_argument("--workers", type=POSITIVE_INT, default=None, help="default: all cores")
    args = parser.parse_args(argv)
    try:
        if args.compare:
            out = compare_labels(args.episodes, args.compare)
        else:
            out = label_noise(
                args.episodes,
                args.mcts_budget,
                args.seed,
                args.repeats,
                args.write_dir,
                args.workers,
                args.fresh,
            )
    except (EpisodeFileError, ValueError, OSError) as err:
        sys.exit(f"learning.namo.label_noise: {err}")
    except KeyboardInterrupt:
        kept = (
            f"; the episodes searched so far are in {args.write_dir}, and the same command goes "
            "on from there"
            if args.write_dir
            else ""
        )
        print(f"learning.namo.label_noise: interrupted{kept}", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
