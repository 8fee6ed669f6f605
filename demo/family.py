"""One command per model family: data -> train -> ONNX -> served over ROS -> results table.

    python -m demo.family {fbc,fql,qc,ppo,sac,dreamer,namo} [--quick] [--out DIR]
        [--eval-episodes N]

Every family but NAMO runs on Reacher-v5 (the demo's task) so that their tables compare:
- fbc, fql, qc   offline: the sim bridge's scripted expert is recorded over ROS in sim time
                 (`make demo`'s recording), then flow BC (`train_fbc`), flow Q-learning
                 (`train_fql`) or Q-chunking (`train_acrlpd`, offline phase only; exported as the
                 best-of-N graph)
- ppo, sac       online on the sim layer's vectorized envs (`train_ppo`, `train_sac`)
- dreamer        online (`train_dreamer` from state); served by the world-model node, which
                 filters the latent from the bridge's topics and acts with the Dreamer actor
Served: loop.launch.py (sim bridge, policy node, recorder) or, for dreamer, sim.launch.py +
world_model.launch.py + record.launch.py; the recorded rollouts are scored against the expert and
random policies on the same seeds, as `make demo` does (`make demo` itself is the fbc recipe at
the full budget). `--quick` shrinks every budget to a smoke run (the pipeline, not the score).
- namo           its own pipeline (demo/namo.py): MCTS data -> Q-function + DiT generator ->
                 the learned planner over ROS (q_scorer, goal_generator, namo_planner) beside
                 MCTS and random proposals on held-out scenes
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.loop import (
    EVAL_SEED,
    REPO,
    SERVE_TRIGGER,
    TRAIN_OVERRIDES,
    DiagnosticsMonitor,
    _ros_environment,
    ends_seen,
    exit_with,
    record_expert,
    run_nodes_until,
    score_rollouts,
    stage,
)
from demo.namo import run_namo
from episode_dataset.ranges import POSITIVE_INT, HelpFormatter

ENV_ID = "Reacher-v5"


@dataclass(frozen=True)
class Budget:
    full: list[str]
    quick: list[str]


@dataclass(frozen=True)
class Family:
    """A recipe: where its data comes from, how it trains, how its graphs are served."""

    config: str
    summary: str
    budget: Budget
    overrides: Callable[[Path | None], list[str]] = lambda dataset: []
    expert_episodes: int = 0  # > 0: record this many expert episodes over ROS first
    serve: str = "policy"  # policy (policy node) | world_model (Dreamer actor in the node)
    policy_params: dict[str, Any] = field(default_factory=dict)


def _offline(dataset: Path | None) -> list[str]:
    return [f"dataset={dataset}", *TRAIN_OVERRIDES]


FAMILIES: dict[str, Family] = {
    "fbc": Family(
        "train_fbc",
        "flow-matching BC on recorded expert episodes",
        Budget(["max_epochs=450"], ["max_epochs=3"]),
        _offline,
        expert_episodes=80,
        policy_params={"noise_scale": 0.0},
    ),
    "fql": Family(
        "train_fql",
        "flow Q-learning (one-step policy distilled against a critic) on the same episodes",
        Budget(["max_epochs=300"], ["max_epochs=2"]),
        lambda dataset: [
            f"dataset={dataset}",
            "data.obs_keys=[state]",
            "data.val_fraction=0.0",
            "trainer.callbacks.model_checkpoint.save_top_k=0",
        ],  # fmt: skip
        expert_episodes=80,
    ),
    "qc": Family(
        "train_acrlpd",
        "Q-chunking: best-of-N flow chunks under a critic ensemble, offline phase",
        Budget(
            # CPU-sized: the paper's 4x512 nets and 10 critics take seconds per step here
            [
                "offline_steps=3000",
                "eval_frequency=3000",
                "batch_size=128",
                "num_critics=4",
                "best_of_n_samples=16",
                "actor_hidden_dims=[256,256,256]",
                "model.critic_hidden_dims=[256,256]",
            ],
            [
                "offline_steps=50",
                "eval_frequency=50",
                "batch_size=32",
                "num_critics=2",
                "best_of_n_samples=4",
                "actor_hidden_dims=[32,32]",
                "model.critic_hidden_dims=[32,32]",
            ],
        ),  # fmt: skip
        # No entropy bonus: QC's best-of-N actor is a plain BC flow; with bc_alpha 0.01 the
        # adaptive-temperature term outweighed BC offline and the flow spread (-56 served)
        lambda dataset: [
            f"env_id={ENV_ID}",
            f"dataset={dataset}",
            "online_steps=0",
            "use_adaptive_temperature=false",
            "eval_episodes=5",
            "online.progress_bar=false",
        ],  # fmt: skip
        expert_episodes=80,
    ),
    "ppo": Family(
        "train_ppo",
        "PPO on the vectorized sim (8 envs), deterministic actor served",
        Budget(["training.num_iterations=100"], ["training.num_iterations=1"]),
        lambda dataset: [f"env_id={ENV_ID}", "online.progress_bar=false"],
    ),
    "sac": Family(
        "train_sac",
        "SAC, deterministic actor served",
        Budget(
            ["training.num_iterations=20"],
            ["training.num_iterations=1", "training.steps_per_iteration=300"],
        ),
        lambda dataset: [f"env_id={ENV_ID}", "online.progress_bar=false"],
    ),
    "dreamer": Family(
        "train_dreamer",
        "Dreamer from state: world model + actor in imagination, served by the world-model node",
        Budget(
            ["training.num_iterations=10"],
            [
                "training.num_iterations=1",
                "training.steps_per_iteration=600",
                "dreamer.learning_starts=500",
                "world_model=tiny",
            ],
        ),  # fmt: skip
        lambda dataset: [f"env_id={ENV_ID}", "online.progress_bar=false", "online.eval_every=0"],
        serve="world_model",
    ),
}


# Families with a pipeline of their own: (quick, out, console) -> summary.
OWN_PIPELINES: dict[str, Callable[[bool, Path, Any], dict[str, Any]]] = {"namo": run_namo}


def export_graphs(family: Family, ckpt: Path, out: Path) -> dict[str, Path]:
    """The ONNX graphs the serving nodes load (with the export's parity check)."""
    from learning.export import main as export_cli

    if family.serve == "world_model":
        graphs = {step: out / f"{step}.onnx" for step in ("filter", "imagine", "actor")}
        for step, path in graphs.items():
            export_cli(["--ckpt", str(ckpt), "--out", str(path), "--step", step])
        return graphs
    path = out / "policy.onnx"
    export_cli(["--ckpt", str(ckpt), "--out", str(path)])
    return {"policy": path}


def serve(
    family: Family, graphs: dict[str, Path], rollouts: Path, episodes: int, out: Path
) -> dict[str, str]:
    """Run the served graphs against the sim bridge until `episodes` are recorded; returns the
    serving node's last diagnostics."""
    if family.serve == "world_model":
        launches = [
            ("sim.launch.py", {"action_source": "topic", "seed": str(EVAL_SEED)}),
            (
                "world_model.launch.py",
                {
                    "model_path": str(graphs["filter"]),
                    "imagine_path": str(graphs["imagine"]),
                    "actor_path": str(graphs["actor"]),
                },
            ),
            ("record.launch.py", {"output_path": str(rollouts)}),
        ]
        status = "world_model"
    else:
        launches = [
            (
                "loop.launch.py",
                {
                    "model_path": str(graphs["policy"]),
                    "output_path": str(rollouts),
                    "seed": str(EVAL_SEED),
                    "trigger": SERVE_TRIGGER,
                },
            )
        ]
        status = "policy"
    monitor = DiagnosticsMonitor()
    try:
        run_nodes_until(
            launches,
            rollouts,
            episodes,
            out / "logs" / "serve",
            timeout_s=60 + 10 * episodes,
            label="served episodes",
            node_params={"policy_node": family.policy_params},
            settled=ends_seen(monitor, status, episodes),
        )
        return monitor.find(status)
    finally:
        monitor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.family",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("family", choices=sorted([*FAMILIES, *OWN_PIPELINES]))
    parser.add_argument("--quick", action="store_true", help="smoke budgets (seconds, not scores)")
    parser.add_argument("--eval-episodes", type=POSITIVE_INT, default=10, help="served episodes")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    _ros_environment()

    from rich.console import Console

    from learning.train import compose_config, run

    started = time.perf_counter()
    out = args.out or REPO / "demo_output" / f"{args.family}_{time.strftime('%Y%m%d_%H%M%S')}"
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    if args.family in OWN_PIPELINES:
        summary = OWN_PIPELINES[args.family](args.quick, out, console)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return 0
    family = FAMILIES[args.family]
    console.print(f"roboloop {args.family}: {family.summary} -> {out}")
    seconds: dict[str, float] = {}

    dataset = None
    if family.expert_episodes:
        episodes = 6 if args.quick else family.expert_episodes
        dataset = out / "expert.hdf5"
        stage(f"record {episodes} expert episodes over ROS (sim_bridge + recorder)")
        seconds["record"] = record_expert(dataset, episodes, out / "logs" / "record")

    stage(f"train ({family.config})")
    budget = family.budget.quick if args.quick else family.budget.full
    overrides = [*family.overrides(dataset), *budget, f"output_root={out / 'outputs'}"]
    command = f"python -m learning.train --config-name={family.config} " + " ".join(overrides)
    console.print(command, markup=False)  # `[state]` is an override, not a style
    t0 = time.perf_counter()
    result = run(compose_config(family.config, overrides))
    seconds["train"] = time.perf_counter() - t0
    ckpt = Path(result["best_ckpt"] or result["last_ckpt"])

    stage("export ONNX")
    graphs = export_graphs(family, ckpt, out)

    stage(f"serve over ROS for {args.eval_episodes} episodes")
    rollouts = out / "rollouts.hdf5"
    t0 = time.perf_counter()
    diag = serve(family, graphs, rollouts, args.eval_episodes, out)
    seconds["serve"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    in_process = None
    if family.serve == "policy":  # the same graph without ROS, on the same seeds
        from roboloop_runtime import OnnxPolicy
        from sim.evaluate import evaluate_policy

        policy = OnnxPolicy(str(graphs["policy"]), seed=0, **family.policy_params)
        in_process = evaluate_policy(ENV_ID, policy, args.eval_episodes, EVAL_SEED).mean_return
    summary = report(args.family, rollouts, args.eval_episodes, diag, seconds, console, in_process)
    summary["files"] = [str(p) for p in (dataset, ckpt, *graphs.values(), rollouts) if p]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


def report(
    name: str,
    rollouts: Path,
    episodes: int,
    diag: dict[str, str],
    seconds: dict[str, float],
    console: Any,
    in_process: float | None = None,
) -> dict[str, Any]:
    """The demo's results table for the served rollouts: return against expert and random on
    the same seeds, success, latency from the serving node's diagnostics, recorder counts."""
    import numpy as np
    from rich.table import Table

    from episode_dataset import EpisodeReader

    reader = EpisodeReader(rollouts)
    names = reader.episodes[:episodes]
    scored = score_rollouts(reader, names, ENV_ID)
    returns, expert, random = scored.returns, scored.expert, scored.random
    served, score, success, n = scored.mean_return, scored.score, scored.success, len(names)
    dropped, stale, invalid = scored.dropped, scored.stale, scored.invalid
    # policy node: observation to published action; world-model node: one filter+actor step
    latency = "obs_to_action_latency" if "obs_to_action_latency_p50_ms" in diag else "step_latency"
    rows = [
        ("expert / random return", f"{expert.mean_return:.2f} / {random.mean_return:.2f}"),
        ("served return (over ROS)", f"{served:.2f} ± {np.std(returns):.2f}"),
        ("same graph in-process", "n/a" if in_process is None else f"{in_process:.2f}"),
        ("normalized score", f"{score:.3f}"),
        ("success rate", f"{success:.2f}  (expert {expert.success_rate:.2f})"),
        (
            "obs->action latency p50 / p99 (ms)",
            f"{diag.get(f'{latency}_p50_ms', '?')} / {diag.get(f'{latency}_p99_ms', '?')}",
        ),
        ("execution provider", diag.get("execution_provider", "?")),
        ("recorder dropped / stale / invalid steps", f"{dropped} / {stale} / {invalid}"),
        (f"time: {' / '.join(seconds)} (s)", " / ".join(f"{s:.0f}" for s in seconds.values())),
    ]  # fmt: skip
    table = Table(title=f"roboloop {name}: {ENV_ID}, {n} episodes (seeds {EVAL_SEED}+i)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return {
        "family": name,
        "env": ENV_ID,
        "expert_return": expert.mean_return,
        "random_return": random.mean_return,
        "served_return": served,
        "served_returns": returns,
        "in_process_return": in_process,
        "normalized_score": score,
        "success_rate": success,
        "diagnostics": diag,
        "dropped": dropped,
        "stale": stale,
        "invalid": invalid,
        "invalid_reasons": scored.invalid_reasons,
        "seconds": seconds,
    }


if __name__ == "__main__":
    exit_with(main, "demo.family")
