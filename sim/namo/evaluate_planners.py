"""Compare NAMO planners on held-out scenes: success rate, moves per solve, time per decision.

    python -m sim.namo.evaluate_planners --planners mcts random learned_q dit_q \
        --seeds 100000 100001 ... | --num-seeds 20 [--first-seed 100000] [--max-moves 5] \
        [--mcts-budget 100] [--q-model q.onnx] [--generator g.onnx] [--out results.json]

Scenes are ``generate_scene(seed)``; training data uses seeds = episode indices from 0, so the
default evaluation seeds start at 100000 (disjoint). Every planner sees the same scenes and is
reset with the scene's seed. An episode steps until the goal is reachable (success), the planner
returns no proposal, or ``max_moves`` moves were made. Scenes whose start already reaches the
goal count as solved with 0 moves and are flagged ``trivial``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sim.namo.planners import Planner, make_planner
from sim.namo.scene import generate_scene
from sim.namo.transition import TransitionModel

DEFAULT_FIRST_SEED = 100_000


def run_episode(planner: Planner, seed: int, max_moves: int = 5) -> dict[str, Any]:
    """One scene with one planner -> row (planner, seed, success, moves, decision seconds)."""
    model = TransitionModel(generate_scene(seed))
    planner.reset(model, seed)
    state = model.initial_state()
    trivial = model.goal_reached(state)
    seconds, network = [], []
    moves = 0
    while not model.goal_reached(state) and moves < max_moves:
        start = time.perf_counter()
        proposal = planner.choose(state)
        seconds.append(time.perf_counter() - start)
        network.append(planner.last_network_seconds)
        if proposal is None:
            break
        state = model.step(state, proposal).state
        moves += 1
    return {
        "planner": planner.name,
        "seed": seed,
        "success": bool(model.goal_reached(state)),
        "moves": moves,
        "trivial": trivial,
        "decisions": len(seconds),
        "seconds_per_decision": float(np.mean(seconds)) if seconds else 0.0,
        "network_seconds_per_decision": float(np.mean(network)) if network else 0.0,
    }


def evaluate_planners(
    planners: dict[str, Planner] | list[Planner],
    seeds: list[int],
    max_moves: int = 5,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per (planner, seed) rows; the same scenes for every planner."""
    items = list(planners.values()) if isinstance(planners, dict) else list(planners)
    rows = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("planner episodes", total=len(items) * len(seeds))
        for planner in items:
            for seed in seeds:
                rows.append(run_episode(planner, seed, max_moves))
                bar.advance(task)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per planner: success rate, mean moves over solved scenes (trivial ones count 0), mean
    seconds per decision over episodes with at least one decision."""
    out = []
    for name in dict.fromkeys(r["planner"] for r in rows):
        mine = [r for r in rows if r["planner"] == name]
        solved = [r for r in mine if r["success"]]
        timed = [r for r in mine if r["decisions"]]
        out.append(
            {
                "planner": name,
                "episodes": len(mine),
                "trivial": sum(r["trivial"] for r in mine),
                "success_rate": len(solved) / len(mine),
                "moves_per_solve": float(np.mean([r["moves"] for r in solved]))
                if solved
                else None,
                "seconds_per_decision": (
                    float(np.mean([r["seconds_per_decision"] for r in timed])) if timed else None
                ),
                "network_seconds_per_decision": (
                    float(np.mean([r["network_seconds_per_decision"] for r in timed]))
                    if timed
                    else None
                ),
            }
        )
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    table = Table(title="NAMO planners (held-out scenes)")
    for col in summary[0]:
        table.add_column(col)
    for row in summary:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    # Wide enough for every column name even when stdout is a pipe (80 columns by default).
    Console(width=max(140, Console().width)).print(table)


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
    ap = argparse.ArgumentParser(prog="python -m sim.namo.evaluate_planners")
    ap.add_argument("--planners", nargs="+", default=["mcts", "random"])
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--num-seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=DEFAULT_FIRST_SEED)
    ap.add_argument("--max-moves", type=int, default=5)
    ap.add_argument("--mcts-budget", type=int, default=100)
    ap.add_argument("--max-depth", type=int, default=3)
    ap.add_argument(
        "--proposals-per-object",
        type=int,
        default=None,
        help="candidates per reachable object for every planner (default: each planner's own)",
    )
    ap.add_argument("--q-model", default=None, help="Q-function .onnx/.ckpt (learned_q, dit_q)")
    ap.add_argument("--generator", default=None, help="goal_generator .onnx (dit_q)")
    ap.add_argument("--out", default=None, help="JSON file for rows + summary")
    args = ap.parse_args(argv)
    seeds = args.seeds or list(range(args.first_seed, args.first_seed + args.num_seeds))
    planners = [make_planner(n, **_planner_kwargs(n, args)) for n in args.planners]
    rows = evaluate_planners(planners, seeds, args.max_moves, progress=True)
    summary = summarize(rows)
    print_table(summary)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "seeds": seeds,
            "max_moves": args.max_moves,
            "planners": {n: _describe(n, args) for n in args.planners},
            "summary": summary,
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
