"""Compare NAMO planners on held-out scenes: success rate, moves per solve, the plan's return,
time per decision.

    rows = evaluate_planners([make_planner("mcts"), ...], seeds, max_moves=5)
    print_table(summarize(rows))

The command line (with the learned planners) is ``python -m learning.namo.evaluate_planners``.

Scenes are ``generate_scene(seed, level=level)`` (``sim.namo.scene.LEVELS``); training data uses
seeds = episode indices from 0, so the default evaluation seeds start at 100000 (disjoint).
Every planner sees the same scenes and is reset with the scene's seed; the reset (a planner's
per-scene work) is timed apart from the decisions (``setup_seconds``). An episode steps until
the goal is reachable (success), the planner returns no proposal, or ``max_moves`` moves were
made. Scenes whose start already reaches the goal count as solved with 0 moves and are flagged
``trivial``. The plan's return is what MCTS maximises (``sim.namo.mcts``): 1 minus the step
costs and the final drive to the goal for a solved scene (0 otherwise), so two planners that
solve a scene in as many moves still differ by how far they carry the objects and drive.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from sim.namo.parallel import progress_steps
from sim.namo.planners import Planner
from sim.namo.scene import generate_scene
from sim.namo.transition import TransitionModel

DEFAULT_FIRST_SEED = 100_000


def run_episode(
    planner: Planner, seed: int, max_moves: int = 5, level: str = "easy"
) -> dict[str, Any]:
    """One scene with one planner -> row (planner, seed, success, moves, decision seconds)."""
    model = TransitionModel(generate_scene(seed, level=level))
    start = time.perf_counter()
    planner.reset(model, seed)
    setup = time.perf_counter() - start
    state = model.initial_state()
    trivial = model.goal_reached(state)
    seconds, network = [], []
    moves, cost = 0, 0.0
    while not model.goal_reached(state) and moves < max_moves:
        start = time.perf_counter()
        proposal = planner.choose(state)
        seconds.append(time.perf_counter() - start)
        network.append(planner.last_network_seconds)
        if proposal is None:
            break
        result = model.step(state, proposal)
        state, cost = result.state, cost + result.cost
        moves += 1
    success = bool(model.goal_reached(state))
    return {
        "planner": planner.name,
        "level": level,
        "seed": seed,
        "success": success,
        "moves": moves,
        "plan_return": max(0.0, 1.0 - cost - model.final_cost(state)) if success else 0.0,
        "trivial": trivial,
        "decisions": len(seconds),
        "setup_seconds": setup,
        "seconds_per_decision": float(np.mean(seconds)) if seconds else 0.0,
        "network_seconds_per_decision": float(np.mean(network)) if network else 0.0,
    }


def evaluate_planners(
    planners: dict[str, Planner] | list[Planner],
    seeds: list[int],
    max_moves: int = 5,
    progress: bool = False,
    level: str = "easy",
) -> list[dict[str, Any]]:
    """Per (planner, seed) rows; the same scenes (of ``level``) for every planner."""
    items = list(planners.values()) if isinstance(planners, dict) else list(planners)
    rows = []
    with progress_steps(f"planner episodes ({level})", len(items) * len(seeds), progress) as step:
        for planner in items:
            for seed in seeds:
                rows.append(run_episode(planner, seed, max_moves, level))
                step()
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per planner: success rate, mean moves and plan return over solved scenes (trivial ones
    count 0 moves), mean seconds per decision over episodes with at least one decision."""
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
                "return_per_solve": float(np.mean([r["plan_return"] for r in solved]))
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
                "setup_seconds_per_scene": float(np.mean([r["setup_seconds"] for r in mine])),
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
