"""NAMO planners per difficulty level: MCTS (budget 100), random and learned Q, side by side.

    python -m bench.namo_planner [--quick] [--q-model q.onnx] [--seeds N] [--levels ...] \
        [--q-proposals K]

Per level (``sim.namo.scene.LEVELS``), every planner gets the same held-out scenes (seeds from
100000, ``sim.namo.evaluate_planners``): success, moves per solve, seconds per decision (all
decisions of all episodes), of which network, and MCTS's seconds per decision over each
planner's (the speed ratio; the issue's target for learned Q: >= 50x at >= 0.9 of MCTS's
success on medium and hard). Everything runs in this one process on one thread (onnxruntime
intra-op threads = 1, like MCTS), scene by scene with every planner in turn, so the ratio is
measured side by side under the same load.

The learned Q model: ``--q-model`` or ``$ROBOLOOP_NAMO_Q_MODEL`` (.onnx; its file name goes in
the ``weights`` column). Without one, an untrained network of the default architecture
(configs/model/q_function_net.yaml at 56 px) is exported and timed: its seconds are
meaningful, its success is not (``weights`` says so). ``--q-proposals`` sets how many proposals
per object the learned-Q planner samples and scores (default: MCTS's root branching, 4).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset.ranges import POSITIVE_INT, HelpFormatter
from roboloop_runtime import ModelLoadError
from sim.namo.scene import LEVELS

NAME = "namo_planner"
FIRST_SEED = 100_000
MCTS_BUDGET = 100
MCTS_PROPOSALS = 4  # proposals per object MCTS branches on (its default), the learned-Q default
MAX_MOVES = 5
UNTRAINED_SIZE = 56
Q_MODEL_ENV = "ROBOLOOP_NAMO_Q_MODEL"
# Unrounded in the aggregate, rounded in rows.
_SECONDS = ("s_per_decision", "network_s", "setup_s")


def untrained_q_model(path: Path, size: int = UNTRAINED_SIZE) -> Path:
    """Export an untrained QFunctionNet of the training config's architecture at ``size`` px."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from learning.export import export_model

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        cfg = compose("train_q_function", overrides=["data_dir=unused", f"image_size={size}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all", input_shape=[size, size]).eval()
    export_model(model, path, mask_size=(size, size))
    return path


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, moves and plan return per solve, per-decision seconds over every decision."""
    solved = [r for r in rows if r["success"]]
    decisions = sum(r["decisions"] for r in rows)
    seconds = sum(r["seconds_per_decision"] * r["decisions"] for r in rows)
    network = sum(r["network_seconds_per_decision"] * r["decisions"] for r in rows)
    return {
        "episodes": len(rows),
        "trivial": sum(r["trivial"] for r in rows),
        "success": round(len(solved) / len(rows), 3),
        "moves_per_solve": round(float(np.mean([r["moves"] for r in solved])), 2)
        if solved
        else None,
        "return_per_solve": round(float(np.mean([r["plan_return"] for r in solved])), 3)
        if solved
        else None,
        "decisions": decisions,
        "s_per_decision": seconds / decisions if decisions else None,
        "network_s": network / decisions if decisions else None,
        "setup_s": float(np.mean([r["setup_seconds"] for r in rows])),
    }


def _with_setup(agg: dict[str, Any]) -> float:
    """Seconds per decision with the per-scene setup spread over the scene's decisions."""
    return agg["s_per_decision"] + agg["setup_s"] * agg["episodes"] / agg["decisions"]


class _Timed:
    """A planner that records the wall time of each of its decisions (for medians: a busy
    moment on a shared machine moves a mean, not a median)."""

    def __init__(self, planner: Any):
        self.planner, self.name, self.seconds = planner, planner.name, []

    @property
    def last_network_seconds(self) -> float:
        return self.planner.last_network_seconds

    def reset(self, model: Any, seed: int) -> None:
        self.planner.reset(model, seed)

    def choose(self, state: Any) -> Any:
        start = time.perf_counter()
        proposal = self.planner.choose(state)
        self.seconds.append(time.perf_counter() - start)
        return proposal


def measure(
    q_model: str | None,
    seeds: list[int],
    levels: list[str],
    q_proposals: int = MCTS_PROPOSALS,
) -> list[dict[str, Any]]:
    import learning.namo.planner  # noqa: F401  (registers learned_q)
    from sim.namo.evaluate_planners import evaluate_planners
    from sim.namo.planners import make_planner

    weights = Path(q_model).name if q_model else "untrained (success not meaningful)"
    with tempfile.TemporaryDirectory() as tmp:
        path = q_model or str(untrained_q_model(Path(tmp) / "q_untrained.onnx"))
        planners = {
            "mcts": make_planner("mcts", budget=MCTS_BUDGET),
            "random": make_planner("random"),
            "learned_q": make_planner(
                "learned_q",
                model_path=path,
                threads=1,
                device="cpu",
                proposals_per_object=q_proposals,
            ),
        }
        size = planners["learned_q"].mask_size
        rows = []
        for level in levels:
            # Scene by scene, every planner in turn: load changes on a shared machine hit all
            # planners alike instead of whichever ran during a busy minute.
            episodes: dict[str, list[dict[str, Any]]] = {name: [] for name in planners}
            timed = {name: _Timed(planner) for name, planner in planners.items()}
            for seed in seeds:
                for name, planner in timed.items():
                    episodes[name] += evaluate_planners([planner], [seed], MAX_MOVES, level=level)
            by_planner = {name: _aggregate(eps) for name, eps in episodes.items()}
            medians = {
                n: float(np.median(t.seconds)) if t.seconds else None for n, t in timed.items()
            }
            mcts = by_planner["mcts"]
            for name, agg in by_planner.items():
                spd, median = agg["s_per_decision"], medians[name]
                rows.append(
                    {
                        "level": level,
                        "planner": name,
                        **{k: v for k, v in agg.items() if k not in _SECONDS},
                        "s_per_decision": round(spd, 4) if spd else None,
                        "network_s": round(agg["network_s"], 4) if name == "learned_q" else None,
                        "median_s": round(median, 4) if median else None,
                        "setup_s": round(agg["setup_s"], 4),
                        "mcts_speed_ratio": round(mcts["s_per_decision"] / spd, 1)
                        if spd and mcts["s_per_decision"]
                        else None,
                        "median_ratio": round(medians["mcts"] / median, 1)
                        if median and medians["mcts"]
                        else None,
                        "ratio_with_setup": round(_with_setup(mcts) / _with_setup(agg), 1)
                        if spd and mcts["s_per_decision"]
                        else None,
                        "success_vs_mcts": round(agg["success"] / mcts["success"], 2)
                        if mcts["success"]
                        else None,
                        "weights": weights if name == "learned_q" else "",
                        "mask_px": size if name == "learned_q" else None,
                        "proposals_per_object": q_proposals
                        if name == "learned_q"
                        else MCTS_PROPOSALS,
                    }
                )
            print(f"{level}: done", flush=True)
    return rows


def run(
    quick: bool = False,
    q_model: str | None = None,
    seeds: int | None = None,
    levels: list[str] | None = None,
    q_proposals: int = MCTS_PROPOSALS,
) -> list[dict[str, Any]]:
    """Measure, print the table and write bench/results/namo_planner.json; returns rows."""
    from bench.report import report

    q_model = q_model or os.environ.get(Q_MODEL_ENV) or None
    count = seeds or (4 if quick else 20)
    chosen = levels or list(LEVELS)
    rows = measure(q_model, list(range(FIRST_SEED, FIRST_SEED + count)), chosen, q_proposals)
    report(
        NAME,
        rows,
        note=(
            f"{count} held-out scenes per level (seeds {FIRST_SEED}+), max {MAX_MOVES} moves, "
            f"MCTS budget {MCTS_BUDGET}, one thread; mcts_speed_ratio = MCTS s/decision over "
            "the planner's (means; median_ratio: of the median decisions); setup_s = a "
            "planner's per-scene work when given the scene (learned Q: the masks' walls-only "
            "graph and goal field), timed apart from its decisions; ratio_with_setup counts it in"
        ),
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.namo_planner",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="4 scenes per level instead of 20")
    parser.add_argument(
        "--q-model", default=None, help=f"Q-function .onnx (default: ${Q_MODEL_ENV}, untrained)"
    )
    parser.add_argument("--seeds", type=POSITIVE_INT, default=None, help="scenes per level")
    parser.add_argument(
        "--levels", nargs="+", choices=sorted(LEVELS), default=None, help="levels (default: all)"
    )
    parser.add_argument(
        "--q-proposals",
        type=POSITIVE_INT,
        default=MCTS_PROPOSALS,
        help="proposals per object the learned-Q planner scores (MCTS branches on "
        f"{MCTS_PROPOSALS} at its root)",
    )
    args = parser.parse_args()
    if args.q_model and not Path(args.q_model).is_file():
        parser.error(f"--q-model {args.q_model}: no such file")
    try:
        run(args.quick, args.q_model, args.seeds, args.levels, args.q_proposals)
    except ModelLoadError as err:  # a file that is not a readable Q-function
        parser.exit(1, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
