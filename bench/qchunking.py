"""Q-chunking against its baselines: offline then online on sparse OGBench scene, 3 seeds.

    python -m bench.qchunking [--quick] [--agents BC FQL QC-FQL QC] [--seeds 0 1 2]
        [--offline-steps N] [--online-steps N] [--dataset FILE] [--episodes N]
        [--overrides KEY=VALUE ...] [--runs-dir DIR]

Task: OGBench scene-singletask-task2 with Q-chunking's sparse reward (`sim.ogbench`'s
`scene-singletask-task2-sparse-v0`: -1 on every step until the task is solved, 0 when it is;
the dataset's rewards are labelled the same). Data: OGBench `play` data generated locally by
`sim.ogbench` (its plan oracles), each run ending, terminated, at its first solved step as the
env ends there; made once at --dataset when the file is absent, then shared by every run.

Each (agent, seed) is its own `python -m learning.train --config-name=train_acrlpd` process:
`offline_steps` gradient steps on the dataset, then `online_steps` env steps, evaluated at the
phase boundary and at the end (success rate over the loop's evaluation episodes, read from the
run's TensorBoard scalars `eval/success`). Agents (all the one ACRLPD module, learning/
algorithms/qchunking.py):

  BC      the chunked flow policy alone: ACRLPD with best_of_n_samples 1
  FQL     QC-FQL without chunking: horizon_length 1
  QC-FQL  the distilled one-step policy over chunks of 5, 2 critics
  QC      ACRLPD, best-of-N over chunks of 5 (the config's N and critics)

Reported per agent: success after the offline phase and at the end (mean ± std over seeds),
wall-clock per phase, and the exported policy's latency (one chunk for one observation,
onnxruntime 1 thread, p50; the best_of_n graph for BC/QC, the one-step actor for FQL/QC-FQL).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episode_dataset.ranges import NON_NEGATIVE_INT, POSITIVE_INT, SEED_ARG, HelpFormatter

NAME = "qchunking"
ENV_ID = "scene-singletask-task2-sparse-v0"
DATASET = Path(__file__).resolve().parent / "results/data/scene_task2_sparse_play.hdf5"
ANCHORS = (  # issue 13's, from the Q-chunking paper's curves
    "Anchors (success %, offline -> online, at 100k + 100k steps; JAX, 4x512 nets): "
    "QC 97 -> 100, QC-FQL 61 -> 99, FQL 22 -> 71, BC ~1."
)


@dataclass(frozen=True)
class Agent:
    overrides: tuple[str, ...]


AGENTS = {
    "BC": Agent(("model=acrlpd", "best_of_n_samples=1")),
    "FQL": Agent(("model=qc_fql", "horizon_length=1")),
    "QC-FQL": Agent(("model=qc_fql", "horizon_length=5")),  # 2 critics: configs/model/qc_fql
    "QC": Agent(("model=acrlpd", "horizon_length=5")),
}
SUCCESS = "eval/success"
PHASE_TIMES = ("time/offline_s", "time/online_s")  # the loop's phase wall-clock


def make_dataset(path: Path, episodes: int, progress: bool = True) -> Path:
    """The shared `play` dataset at `path` (generated when absent, used as it is when present:
    the episode writer commits episode by episode, so an interrupted generation is readable)."""
    if path.exists():
        return path
    from sim.ogbench import generate

    path.parent.mkdir(parents=True, exist_ok=True)
    generate(ENV_ID, "play", episodes, 0, path, progress=progress, split_at_success=True)
    return path


def train_command(
    agent: Agent,
    seed: int,
    dataset: Path,
    offline_steps: int,
    online_steps: int,
    run_dir: Path,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The `learning.train` command of one (agent, seed) run."""
    # Evaluate at the phase boundary (and at the end, as every run does).
    every = offline_steps or online_steps
    return [
        sys.executable,
        "-m",
        "learning.train",
        "--config-name=train_acrlpd",
        f"dataset={dataset}",
        f"env_id={ENV_ID}",
        f"offline_steps={offline_steps}",
        f"online_steps={online_steps}",
        f"eval_frequency={every}",
        f"seed={seed}",
        f"run_dir={run_dir}",
        "online.progress_bar=false",
        *extra,
        *agent.overrides,  # last: what makes the agent (BC's N = 1) beats a shared override
    ]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[float, int, float]]]:
    """TensorBoard scalars of a run: tag -> [(wall_time, step, value)] in logged order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[float, int, float]]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(
                (e.wall_time, e.step, e.value) for e in acc.Scalars(tag)
            )
    return scalars


def phase_results(
    scalars: dict[str, list[tuple[float, int, float]]], offline_steps: int
) -> dict[str, float]:
    """Success at the phase boundary (the evaluation at global step offline_steps) and at the
    end, and the loop's seconds per phase (evaluations inside a phase included)."""
    evals = sorted(scalars.get(SUCCESS, []), key=lambda e: (e[1], e[0]))
    missing = [tag for tag in (SUCCESS, *PHASE_TIMES) if not scalars.get(tag)]
    if missing:
        raise RuntimeError(
            f"the run logged no {missing[0]} in TensorBoard ({SUCCESS} needs a task with success)"
        )
    boundary = [e for e in evals if e[1] == offline_steps]
    if offline_steps and not boundary:
        steps = sorted({e[1] for e in evals})
        raise RuntimeError(f"no {SUCCESS} at the phase boundary {offline_steps}: at {steps}")
    offline_s, online_s = (scalars[tag][-1][2] for tag in PHASE_TIMES)
    return {
        "success_offline": boundary[-1][2] if offline_steps else float("nan"),
        "success_final": evals[-1][2],
        "offline_s": offline_s,
        "online_s": online_s,
    }


def export_latency(ckpt: Path, out: Path) -> dict[str, Any]:
    """Export the run's last checkpoint and time its graph on one scene observation."""
    import sim
    from bench.flow_family import latency_ms
    from learning.export import export_checkpoint
    from roboloop_runtime import OnnxPolicy

    export_checkpoint(ckpt, out)
    policy = OnnxPolicy(out, device="cpu", threads=1)
    env = sim.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    env.close()
    meta = policy.metadata
    return {
        "model_type": meta.model_type,
        "horizon": meta.horizon,
        "num_samples": meta.num_samples or 1,
        "latency_ms": latency_ms(policy, obs),
    }


def run_one(
    name: str,
    seed: int,
    dataset: Path,
    offline_steps: int,
    online_steps: int,
    out: Path,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    run_dir = out / f"{name}_{seed}"
    cmd = train_command(AGENTS[name], seed, dataset, offline_steps, online_steps, run_dir, extra)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{name} seed {seed} failed ({' '.join(cmd[3:])}): {tail}")
    result = phase_results(read_scalars(run_dir), offline_steps)
    return result | export_latency(run_dir / "checkpoints" / "last.ckpt", run_dir / "p.onnx")


def summarize(agent: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_std(key: str) -> tuple[float, float]:
        values = [r[key] for r in runs]
        return round(statistics.mean(values), 3), round(statistics.pstdev(values), 3)

    offline, offline_std = mean_std("success_offline")
    final, final_std = mean_std("success_final")
    return {
        "agent": agent,
        "seeds": len(runs),
        "success_offline": offline,
        "success_offline_std": offline_std,
        "success_final": final,
        "success_final_std": final_std,
        "offline_s_per_seed": round(statistics.mean(r["offline_s"] for r in runs), 1),
        "online_s_per_seed": round(statistics.mean(r["online_s"] for r in runs), 1),
        "model_type": runs[0]["model_type"],
        "horizon": runs[0]["horizon"],
        "num_samples": runs[0]["num_samples"],
        "latency_ms": round(statistics.median(r["latency_ms"] for r in runs), 3),
    }


FULL = {"offline_steps": 100_000, "online_steps": 100_000, "episodes": 500}
QUICK = {"offline_steps": 20, "online_steps": 20, "episodes": 2}
QUICK_OVERRIDES = (  # smoke sizes: tiny nets and batches, one evaluation episode
    "batch_size=8",
    "eval_episodes=1",
    "model.critic_hidden_dims=[32,32]",
    "actor_hidden_dims=[32,32]",
    "model.start_training=4",  # online updates within the smoke budget
)


def run(
    quick: bool = False,
    agents: list[str] | None = None,
    seeds: list[int] | None = None,
    offline_steps: int | None = None,
    online_steps: int | None = None,
    dataset: Path | None = None,
    episodes: int | None = None,
    extra: tuple[str, ...] = (),
    runs_dir: Path | None = None,
) -> list[dict[str, Any]]:
    from bench.report import report

    budget = QUICK if quick else FULL
    seeds = seeds or ([0] if quick else [0, 1, 2])
    offline = budget["offline_steps"] if offline_steps is None else offline_steps
    online = budget["online_steps"] if online_steps is None else online_steps
    extra = (*QUICK_OVERRIDES, *extra) if quick else extra
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_qchunking_") as tmp:
        out = Path(tmp) if runs_dir is None else runs_dir / time.strftime("%Y-%m-%d_%H-%M-%S")
        if dataset is None:
            dataset = out / "scene_play.hdf5" if quick else DATASET
        dataset = make_dataset(Path(dataset), episodes or budget["episodes"], not quick)
        for name in agents or list(AGENTS):
            runs = [run_one(name, s, dataset, offline, online, out, extra) for s in seeds]
            rows.append(summarize(name, runs) | {"offline_steps": offline, "online_steps": online})
            print(json.dumps(rows[-1]), flush=True)
    note = (
        f"{ENV_ID}, {dataset.name}; success (mean ± std over seeds {seeds}) after "
        f"{offline} offline gradient steps and after {online} more env steps; phase "
        "wall-clock per seed; latency: one chunk for one observation, onnxruntime 1 thread, "
        f"p50. {ANCHORS}"
    )
    if extra:
        note += f" Overrides of every run: {' '.join(extra)}."
    report(NAME, rows, note)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.qchunking",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke-level budget, one seed")
    parser.add_argument("--agents", nargs="+", choices=list(AGENTS), default=None)
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=SEED_ARG,
        default=None,
        help="training seeds (None: 0 1 2, --quick 0)",
    )
    parser.add_argument(
        "--offline-steps",
        type=NON_NEGATIVE_INT,
        default=None,
        help="gradient steps on the dataset (None: 100000, --quick 20)",
    )
    parser.add_argument(
        "--online-steps",
        type=NON_NEGATIVE_INT,
        default=None,
        help="env steps after them (None: 100000, --quick 20)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help=f"play dataset, made when absent (None: {DATASET})",
    )
    parser.add_argument(
        "--episodes",
        type=POSITIVE_INT,
        default=None,
        help="episodes to generate (None: 500, --quick 2)",
    )
    parser.add_argument(
        "--overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="learning.train overrides for every run, e.g. CPU sizes: "
        "model.critic_hidden_dims=[256,256] best_of_n_samples=8 (named in the caption)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="keep each run's directory (checkpoints, TensorBoard) in DIR/<date>/<agent>_<seed> "
        "(default: a temporary directory, removed at the end)",
    )
    args = parser.parse_args(argv)
    run(
        args.quick,
        args.agents,
        args.seeds,
        args.offline_steps,
        args.online_steps,
        args.dataset,
        args.episodes,
        tuple(args.overrides),
        args.runs_dir,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
