"""Compare NAMO planners on held-out scenes, learned planners included (the command line).

    python -m learning.namo.evaluate_planners --planners mcts random learned_q dit_q \
        --seeds 100000 100001 ... | --num-seeds 20 [--first-seed 100000] [--level easy] \
        [--max-moves 5] \
        [--mcts-budget 100] [--q-model q.onnx] [--generator g.onnx] [--out results.json]

The harness (scenes, episodes, summary, table) is ``sim.namo.evaluate_planners``; this module
lives in ``learning`` because importing the learned planners registers ``learned_q`` and
``dit_q`` in the sim's planner registry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import learning.generative.planner  # noqa: F401  (registers dit_q)
import learning.namo.planner  # noqa: F401  (registers learned_q)
from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter, one_line
from roboloop_runtime import ModelLoadError
from sim.namo.episodes import add_episode_arguments
from sim.namo.evaluate_planners import (
    DEFAULT_FIRST_SEED,
    evaluate_planners,
    print_table,
    summarize,
)
from sim.namo.planners import PLANNERS, make_planner

# What a model file that cannot be a planner's raises when the planner loads it: missing,
# corrupt or not a Q-function / goal generator (ModelLoadError), an unreadable or foreign
# checkpoint (learning.checkpoint.CheckpointError, a ValueError), an unknown file type
# (ValueError), an unresolvable mask builder (ImportError), an unreadable file (OSError).
MODEL_ERRORS = (ModelLoadError, ValueError, ImportError, OSError)


def _planner_kwargs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    # Every planner draws or generates `proposals_per_object` candidates per reachable object
    # (MCTS at its root); unset, each keeps its own default (4; dit_q samples 8 masks).
    kwargs: dict[str, Any] = {}
    if args.proposals_per_object is not None:
        kwargs["proposals_per_object"] = args.proposals_per_object
    if name == "mcts":
        kwargs |= {"budget": args.mcts_budget, "max_depth": args.max_depth}
    elif name == "learned_q":
        kwargs["model_path"] = _need(args.q_model, "--q-model", name)
    elif name == "dit_q":
        kwargs["generator_path"] = _need(args.generator, "--generator", name)
        kwargs["q_model_path"] = _need(args.q_model, "--q-model", name)
    return kwargs


def _describe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The settings a planner ran with, for the JSON record."""
    return {k: v for k, v in _planner_kwargs(name, args).items() if not k.endswith("path")}


def _need(value: str | None, flag: str, name: str) -> str:
    if not value:
        raise SystemExit(f"planner {name!r} needs {flag}")
    return value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m learning.namo.evaluate_planners",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument(
        "--planners",
        nargs="+",
        choices=sorted(PLANNERS),
        default=["mcts", "random"],
        metavar="NAME",
        help=f"registry names: {', '.join(sorted(PLANNERS))}",
    )
    ap.add_argument("--seeds", nargs="*", type=SEED_ARG, help="scene seeds (default: --num-seeds)")
    ap.add_argument(
        "--num-seeds", type=POSITIVE_INT, default=20, help="scenes from --first-seed on"
    )
    ap.add_argument(
        "--first-seed", type=SEED_ARG, default=DEFAULT_FIRST_SEED, help="held-out seeds"
    )
    add_episode_arguments(ap)
    ap.add_argument(
        "--proposals-per-object",
        type=POSITIVE_INT,
        default=None,
        help="candidates per reachable object for every planner (default: each planner's own)",
    )
    ap.add_argument("--q-model", default=None, help="Q-function .onnx/.ckpt (learned_q, dit_q)")
    ap.add_argument("--generator", default=None, help="goal_generator .onnx (dit_q)")
    ap.add_argument("--out", default=None, help="JSON file for rows + summary")
    args = ap.parse_args(argv)
    seeds = args.seeds or list(range(args.first_seed, args.first_seed + args.num_seeds))
    # Everything that can be refused is refused before the first scene is played.
    out = Path(args.out) if args.out else None
    try:
        if out is not None:
            if out.is_dir():
                raise IsADirectoryError(f"{out}: --out is a directory, not a JSON file")
            out.parent.mkdir(parents=True, exist_ok=True)
        planners = [make_planner(n, **_planner_kwargs(n, args)) for n in args.planners]
    except MODEL_ERRORS as err:
        ap.exit(1, f"{ap.prog}: error: {one_line(err)}\n")
    rows = evaluate_planners(planners, seeds, args.max_moves, progress=True, level=args.level)
    summary = summarize(rows)
    print_table(summary)
    if out is not None:
        payload = {
            "seeds": seeds,
            "level": args.level,
            "max_moves": args.max_moves,
            "planners": {n: _describe(n, args) for n in args.planners},
            "summary": summary,
            "rows": rows,
        }
        try:
            out.write_text(json.dumps(payload, indent=2))
        except OSError as err:  # the table above is the run's result either way
            ap.exit(1, f"{ap.prog}: error: {one_line(err)}\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
