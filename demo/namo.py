"""The NAMO family (`python -m demo.family namo [--quick]`): MCTS data -> Q-function and DiT goal
generator -> ONNX -> the learned planner served over ROS -> a planner table.

Stages: MCTS solves `episodes` generated scenes of `level` (`sim.namo.parallel_data_collection`),
their decisions become mask files (`sim.namo.mask_generation`), the Q-function
(`train_q_function`) and the flow-matching DiT goal generator (`train_fb_flow_matching`) train on
them and are exported; then `q_scorer`, `goal_generator` and `namo_planner` run as three node
processes and plan held-out scenes sent on `/namo_planner/plan`. The table sets the served
planner beside MCTS (budget 100) and random proposals run in-process on the same scenes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.loop import REPO, DiagnosticsMonitor, stage

FIRST_EVAL_SEED = 100000  # held out: training scenes are seeds 0..episodes-1
PLANNER_PARAMS = REPO / "ros2_ws/src/roboloop_namo/config/namo_planner.yaml"


# A CPU-sized DiT sampled by 5 Euler steps: the export unrolls the sampler, and at the config's
# 20 steps exporting took 11 minutes here.
GENERATOR_SAMPLER = (
    "network=dit_tiny",
    "model.sampler.method=euler",
    "sampling_steps=5",
    "num_workers=0",
)


@dataclass(frozen=True)
class NamoBudget:
    level: str
    episodes: int  # MCTS-solved training scenes
    mcts_budget: int  # simulations per decision when labelling
    mask_size: int  # mask files and the Q-function's input side
    q_overrides: tuple[str, ...]
    generator_overrides: tuple[str, ...]
    eval_scenes: int
    max_moves: int


BUDGETS = {
    "full": NamoBudget(
        level="medium",
        episodes=300,
        mcts_budget=100,
        mask_size=32,
        # whole states per batch and a per-state rank loss beside MSE (docs/q_function.md)
        q_overrides=(
            "max_epochs=15",
            "batch_size=64",
            "num_workers=0",
            "model.rank_weight=1.0",
            "data.group_by_state=true",
        ),
        generator_overrides=("max_epochs=15", *GENERATOR_SAMPLER),
        eval_scenes=20,
        max_moves=5,
    ),
    "quick": NamoBudget(
        level="medium",
        episodes=6,
        mcts_budget=30,
        mask_size=32,
        q_overrides=("max_epochs=1", "batch_size=16", "num_workers=0"),
        generator_overrides=("max_epochs=1", *GENERATOR_SAMPLER),
        eval_scenes=2,
        max_moves=3,
    ),
}


class PlannerClient(DiagnosticsMonitor):
    """Sends scene seeds to namo_planner and collects its decisions (on the monitor's node and
    spin thread); its /diagnostics status comes from the monitor."""

    STATUS = "namo_planner: planner"

    def __init__(self) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Int64, String

        super().__init__()
        self.decisions: list[dict[str, Any]] = []
        self._plan = self._node.create_publisher(Int64, "/namo_planner/plan", 10)
        self._int64 = Int64
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._node.create_subscription(
            String,
            "/namo_planner/decision",
            lambda msg: self.decisions.append(json.loads(msg.data)),
            reliable,
        )

    def episodes_done(self) -> int:
        """Scenes finished, solved or not, or failed (a node that never answered: the planner
        counts it under failed_episodes and its last_error says why)."""
        status = self.find(self.STATUS)
        return int(status.get("episodes", "0")) + int(status.get("failed_episodes", "0"))

    def decisions_in(self) -> bool:
        """Every decision the planner counts on /diagnostics has arrived here."""
        return self.find(self.STATUS).get("decisions") == str(len(self.decisions))

    def ready(self) -> bool:
        return self._plan.get_subscription_count() > 0 and bool(self.find(self.STATUS))

    def plan(self, seed: int) -> None:
        self._plan.publish(self._int64(data=seed))


def serve_planner(
    q_model: Path, generator: Path, budget: NamoBudget, seeds: list[int], log_dir: Path
) -> list[dict[str, Any]]:
    """Plan `seeds` through the three node processes; the decisions, in order."""
    from roboloop_bringup.processes import start_node, wait_until

    procs = [
        start_node(
            "q_scorer",
            params={"model_path": str(q_model), "device": "cpu"},
            log_path=log_dir / "q_scorer.log",
        ),
        start_node(
            "goal_generator",
            params={"model_path": str(generator), "device": "cpu"},
            log_path=log_dir / "goal_generator.log",
        ),
        start_node(
            "namo_planner",
            params_file=PLANNER_PARAMS,
            params={
                "level": budget.level,
                "scene_seed": -1,
                "max_moves": budget.max_moves,
                "q_mask_size": budget.mask_size,
                "diagnostics_period_s": 0.2,
            },
            log_path=log_dir / "namo_planner.log",
        ),
    ]
    client = PlannerClient()
    try:
        wait_until(client.ready, 90, "namo_planner and its diagnostics", procs)
        for i, seed in enumerate(seeds):
            client.plan(seed)
            done = lambda i=i: client.episodes_done() > i  # noqa: E731
            wait_until(done, 60 * budget.max_moves, f"scene {seed}", procs)
        wait_until(client.decisions_in, 10, "the last decision messages", procs)
        status = client.find(client.STATUS)
        if status.get("failed_episodes"):  # counted as unsolved in the table
            print(
                f"namo_planner: {status['failed_episodes']} scene(s) failed; last error: "
                f"{status.get('last_error')}"
            )
        return list(client.decisions)
    finally:
        client.close()
        for p in procs:
            p.stop()


def served_row(decisions: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The served planner's row, as `sim.namo.evaluate_planners.summarize` writes rows (the
    chain levels have no scene solved at the start: a scene without decisions failed)."""
    import numpy as np

    by_seed: dict[int, list[dict[str, Any]]] = {s: [] for s in seeds}
    for d in decisions:
        by_seed[int(d["scene_seed"])].append(d)
    solved = [len(ds) for ds in by_seed.values() if ds and ds[-1]["goal_reached"]]
    timed = [ds for ds in by_seed.values() if ds]
    return {
        "planner": "dit_q over ROS",
        "episodes": len(seeds),
        "trivial": 0,
        "success_rate": len(solved) / len(seeds),
        "moves_per_solve": float(np.mean(solved)) if solved else None,
        "seconds_per_decision": (
            float(np.mean([np.mean([d["decision_s"] for d in ds]) for ds in timed]))
            if timed
            else None
        ),
        "network_seconds_per_decision": (
            float(np.mean([np.mean([d["network_s"] for d in ds]) for ds in timed]))
            if timed
            else None
        ),
    }


def run_namo(quick: bool, out: Path, console: Any) -> dict[str, Any]:
    """The whole family; returns the summary written to summary.json."""
    from learning.export import main as export_cli
    from learning.train import compose_config, run
    from sim.namo.evaluate_planners import evaluate_planners, print_table, summarize
    from sim.namo.mask_generation import batch
    from sim.namo.mcts import MCTSConfig
    from sim.namo.parallel_data_collection import collect
    from sim.namo.planners import make_planner

    budget = BUDGETS["quick" if quick else "full"]
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    stage(f"MCTS solves {budget.episodes} {budget.level} scenes (budget {budget.mcts_budget})")
    t0 = time.perf_counter()
    collect(
        out / "episodes",
        0,
        budget.episodes,
        MCTSConfig(budget=budget.mcts_budget),
        max_moves=budget.max_moves,
        level=budget.level,
    )
    files = batch(out / "episodes", out / "masks", size=budget.mask_size)
    seconds["data"] = time.perf_counter() - t0
    console.print(f"{files} mask files ({budget.mask_size} px)")

    graphs: dict[str, Path] = {}
    for key, config, overrides in (
        ("q", "train_q_function", [f"data_dir={out / 'masks'}", *budget.q_overrides]),
        (
            "generator",
            "train_fb_flow_matching",
            [f"data.data_dir={out / 'masks'}", *budget.generator_overrides],
        ),
    ):
        overrides = [
            *overrides,
            f"image_size={budget.mask_size}",
            f"output_root={out / 'outputs'}",
        ]
        stage(f"train {config}")
        console.print(
            f"python -m learning.train --config-name={config} " + " ".join(overrides), markup=False
        )
        t0 = time.perf_counter()
        result = run(compose_config(config, overrides))
        seconds[f"train {key}"] = time.perf_counter() - t0
        graphs[key] = out / f"{key}.onnx"
        t0 = time.perf_counter()
        export_cli(
            ["--ckpt", str(result["best_ckpt"] or result["last_ckpt"]), "--out", str(graphs[key])]
        )
        seconds[f"export {key}"] = time.perf_counter() - t0

    seeds = list(range(FIRST_EVAL_SEED, FIRST_EVAL_SEED + budget.eval_scenes))
    stage(f"serve: namo_planner + goal_generator + q_scorer plan {len(seeds)} held-out scenes")
    t0 = time.perf_counter()
    decisions = serve_planner(graphs["q"], graphs["generator"], budget, seeds, out / "logs")
    seconds["serve"] = time.perf_counter() - t0

    stage("MCTS (budget 100) and random proposals in-process on the same scenes")
    rows = evaluate_planners(
        {"mcts": make_planner("mcts", budget=100), "random": make_planner("random")},
        seeds,
        max_moves=budget.max_moves,
        level=budget.level,
    )
    table = [*summarize(rows), served_row(decisions, seeds)]
    seconds["total"] = time.perf_counter() - started
    console.print(
        f"{budget.level} scenes, {len(seeds)} held out (seeds {FIRST_EVAL_SEED}+i), "
        f"at most {budget.max_moves} moves"
    )
    print_table(table)
    console.print(
        f"time: {' / '.join(seconds)} (s): " + " / ".join(f"{s:.0f}" for s in seconds.values())
    )
    return {
        "family": "namo",
        "level": budget.level,
        "planners": table,
        "seconds": seconds,
        "decisions": decisions,
        "files": [str(p) for p in graphs.values()],
    }
