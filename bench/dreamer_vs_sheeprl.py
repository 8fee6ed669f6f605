"""Dreamer against SheepRL's Dreamer V3, side by side: same DMC pixel task, sizes, batch,
sequence length, replay ratio and step budget; env steps/s and gradient steps/s.

    bash bench/sheeprl_venv.sh                      # once: .venvs/sheeprl (sheeprl 0.8.4)
    python -m bench dreamer_vs_sheeprl [--quick]
    python -m bench.dreamer_vs_sheeprl [--quick] [--cases cartpole_swingup_xs] [--venv DIR]

Both sides run in the bench venv (sheeprl, dm-control 1.0.50 on mujoco 3.17.0 and this
workspace: the workspace venv's mujoco 4.0.0 cannot load dm_control, docs/dmc.md), each in its
own process with 1 torch thread, on DeepMind Control cartpole_swingup from 64x64 pixels only
(the `rgb` / `image` key), action repeat 2, 1 env, fabric on CPU. An env step is one agent step
(2 DMC control steps). SheepRL steps its own `DMCWrapper`, we step `sim.make("dmc_...")`.

Sizes: our world-model preset (configs/world_model/<size>.yaml) mapped onto SheepRL's keys
(SIZE_KEYS): xs and s are exactly SheepRL's dreamer_v3_XS / _S. Not matched (each side's own
DreamerV3 reading): SheepRL's reward and critic heads are 255-bin two-hot, ours symlog
regression; its actor/critic MLPs have `mlp_layers` layers, ours 2; its KL is DreamerV3's
(dyn 0.5, rep 0.1), ours DreamerV2's balance 0.8.

Speed, both sides the same way: wall = the training call (SheepRL's `run_algorithm`, our
`learning.train.run`), construction and env creation included, evaluation off; train_s = time
inside the gradient-step loops (SheepRL's `Time/train_time` timer; ours `Dreamer.update`,
timed by a wrapper, which also samples the replay batches: SheepRL samples before its timer);
the rest of the wall is acting (random actions until learning_starts, then the player).
env_steps_per_s = env steps / (wall - train_s), grad_steps_per_s = gradient steps / train_s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from episode_dataset.ranges import HelpFormatter

NAME = "dreamer_vs_sheeprl"
REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venvs" / "sheeprl"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    domain: str
    task: str
    size: str  # our world-model preset
    total_steps: int  # env (agent) steps
    learning_starts: int  # env steps of uniform random actions before the first update
    replay_ratio: float = 0.5  # gradient steps per env step (DreamerV3 on DMC; both defaults)
    batch_size: int = 16
    sequence_length: int = 64
    action_repeat: int = 2
    seed: int = 0

    @property
    def grad_steps(self) -> int:
        return int(self.replay_ratio * (self.total_steps - self.learning_starts))


CASES = [
    Case("cartpole_swingup_tiny", "cartpole", "swingup", "tiny", 1280, 1024),
    Case("cartpole_swingup_xs", "cartpole", "swingup", "xs", 1088, 1024),
]
QUICK = {"total_steps": 96, "learning_starts": 64, "batch_size": 4, "sequence_length": 16}

# our preset key -> SheepRL algo keys it sets
SIZE_KEYS = {
    "state_dim": ["algo.world_model.recurrent_model.recurrent_state_size"],
    "hidden_dim": [
        "algo.dense_units",
        "algo.world_model.transition_model.hidden_size",
        "algo.world_model.representation_model.hidden_size",
    ],
    "stoch": ["algo.world_model.stochastic_size"],
    "classes": ["algo.world_model.discrete_size"],
    "cnn_depth": ["algo.world_model.encoder.cnn_channels_multiplier"],
    "mlp_layers": ["algo.mlp_layers"],
}


def preset(size: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / "world_model" / f"{size}.yaml").read_text())


def sheeprl_overrides(case: Case, log_root: str) -> list[str]:
    """SheepRL's `exp=dreamer_v3` overrides for `case` (its CLI syntax)."""
    sizes = preset(case.size)
    out = [
        "exp=dreamer_v3",
        "env=dmc",
        f"env.id={case.domain}_{case.task}",
        f"env.wrapper.domain_name={case.domain}",
        f"env.wrapper.task_name={case.task}",
        "env.wrapper.from_pixels=True",
        "env.wrapper.from_vectors=False",
        "env.screen_size=64",
        f"env.action_repeat={case.action_repeat}",
        "env.num_envs=1",
        "env.sync_env=True",
        "env.capture_video=False",
        "algo=dreamer_v3_XS",  # then every size key below
        "algo.cnn_keys.encoder=[rgb]",
        "algo.mlp_keys.encoder=[]",
        f"algo.total_steps={case.total_steps}",
        f"algo.learning_starts={case.learning_starts}",
        f"algo.replay_ratio={case.replay_ratio}",
        f"algo.per_rank_batch_size={case.batch_size}",
        f"algo.per_rank_sequence_length={case.sequence_length}",
        "algo.run_test=False",
        f"buffer.size={case.total_steps}",
        "buffer.memmap=False",
        "buffer.checkpoint=False",
        "checkpoint.every=0",
        "checkpoint.save_last=False",
        f"metric.log_every={case.total_steps}",  # one log: the timers of the whole run
        "model_manager.disabled=True",
        "fabric.accelerator=cpu",
        "num_threads=1",
        f"seed={case.seed}",
        f"log_root={log_root}",
    ]
    out += [f"{key}={sizes[ours]}" for ours, keys in SIZE_KEYS.items() for key in keys]
    return out


def roboloop_overrides(case: Case, out: str) -> list[str]:
    """Our `train_dreamer` overrides for `case`."""
    return [
        f"env_id=dmc_{case.domain}_{case.task}",
        f"world_model={case.size}",
        f"world_model.batch_size={case.batch_size}",
        f"world_model.sequence_length={case.sequence_length}",
        f"dreamer.replay_ratio={case.replay_ratio}",
        f"dreamer.learning_starts={case.learning_starts}",
        "dreamer.obs_keys=[image]",
        f"model.buffer_size={case.total_steps}",
        "training.num_iterations=1",
        f"training.steps_per_iteration={case.total_steps}",
        "online.num_envs=1",
        "online.camera=64",  # the DMC benchmark camera at 64x64
        "online.accelerator=cpu",
        "online.devices=1",
        "online.eval_every=0",
        "online.eval_episodes=0",
        "online.progress_bar=false",
        f"online.log_every={case.total_steps}",
        "torch_threads=1",
        f"seed={case.seed}",
        f"output_root={out}",
    ]


# ---- the two sides, each in a bench-venv process ------------------------------------------
def _scalars(log_dir: Path) -> dict[str, float]:
    """Last value of every scalar in the TensorBoard event files under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, float] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values[tag] = acc.Scalars(tag)[-1].value
    return values


def sheeprl_side(case: Case) -> dict[str, float]:
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from sheeprl.cli import check_configs, run_algorithm
    from sheeprl.utils.utils import dotdict

    # SheepRL's `num_threads` only sets OMP_NUM_THREADS, after torch has read it: torch would
    # run on every core (2 here, shared), so the thread count is set as our side sets it.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_sheeprl_") as logs:
        with initialize_config_module("sheeprl.configs", version_base="1.3"):
            cfg = compose("config", overrides=sheeprl_overrides(case, logs))
        cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        check_configs(cfg)
        start = time.perf_counter()
        run_algorithm(cfg)
        wall = time.perf_counter() - start
        scalars = _scalars(Path(logs))
    # Its timers count env steps x action_repeat (frames) and gradient steps of all ranks.
    grad_steps = round(scalars["Params/replay_ratio"] * case.total_steps)
    train_s = grad_steps / scalars["Time/sps_train"]
    return {
        "wall_s": wall,
        "train_s": train_s,
        "env_steps": case.total_steps,
        "grad_steps": grad_steps,
    }


def roboloop_side(case: Case) -> dict[str, float]:
    from learning.algorithms.dreamer import Dreamer
    from learning.train import compose_config, run

    timed = {"train_s": 0.0, "grad_steps": 0}
    update = Dreamer.update

    def timed_update(self: Dreamer, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = update(self, *args, **kwargs)
        timed["train_s"] += time.perf_counter() - start
        timed["grad_steps"] += int(out["train/gradient_steps"])
        return out

    Dreamer.update = timed_update  # this process only: the bench's timer around each update
    with tempfile.TemporaryDirectory(prefix="bench_dreamer_") as out:
        cfg = compose_config("train_dreamer", roboloop_overrides(case, out))
        start = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "env_steps": int(result["env_steps"]), **timed}


SIDES = {"sheeprl": sheeprl_side, "roboloop": roboloop_side}


def _in_venv(python: Path, side: str, case: Case) -> dict[str, Any]:
    """One side in a fresh bench-venv process; {"error": line} when it fails."""
    cmd = [str(python), "-m", "bench.dreamer_vs_sheeprl", "--worker", side]
    cmd += ["--case", json.dumps(dataclasses.asdict(case))]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        return {"error": f"{side}: {lines[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rates(counts: dict[str, Any]) -> dict[str, float | None]:
    """env steps/s over the acting time (wall - train), gradient steps/s over train_s."""
    if "error" in counts:
        return {"env_steps_per_s": None, "grad_steps_per_s": None, "wall_s": None}
    acting = counts["wall_s"] - counts["train_s"]
    return {
        "env_steps_per_s": counts["env_steps"] / acting,
        "grad_steps_per_s": counts["grad_steps"] / counts["train_s"],
        "wall_s": counts["wall_s"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run(quick: bool = False, cases: list[str] | None = None, venv: Path = VENV) -> list[dict]:
    from bench.report import report

    python = Path(venv) / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"needs the SheepRL bench venv {venv}: bash bench/sheeprl_venv.sh")
    rows, errors = [], []
    for case in CASES:
        if cases and case.name not in cases:
            continue
        if quick:
            case = dataclasses.replace(case, name=f"{case.name}_quick", **QUICK)
        counts = {side: _in_venv(python, side, case) for side in SIDES}
        errors += [c["error"] for c in counts.values() if "error" in c]
        sheep, ours = rates(counts["sheeprl"]), rates(counts["roboloop"])
        rows.append(
            {
                "case": case.name,
                "task": f"dmc_{case.domain}_{case.task}",
                "size": case.size,
                "batch x seq": f"{case.batch_size} x {case.sequence_length}",
                "replay_ratio": case.replay_ratio,
                "env_steps": case.total_steps,
                "learning_starts": case.learning_starts,
                "grad_steps": counts["roboloop"].get("grad_steps"),
                "sheeprl_env_steps_per_s": sheep["env_steps_per_s"],
                "ours_env_steps_per_s": ours["env_steps_per_s"],
                "env_ratio": _ratio(ours["env_steps_per_s"], sheep["env_steps_per_s"]),
                "sheeprl_grad_steps_per_s": sheep["grad_steps_per_s"],
                "ours_grad_steps_per_s": ours["grad_steps_per_s"],
                "grad_ratio": _ratio(ours["grad_steps_per_s"], sheep["grad_steps_per_s"]),
                "sheeprl_wall_s": sheep["wall_s"],
                "ours_wall_s": ours["wall_s"],
            }
        )
    note = (
        "sheeprl 0.8.4 dreamer_v3 vs roboloop Dreamer, both in the bench venv, 1 torch thread, "
        "CPU; 64x64 pixels only, action repeat 2, 1 env; env steps/s over the acting time, "
        "gradient steps/s over the update time; ratio = ours / SheepRL"
    ) + "".join(f"\nerror: {e}" for e in errors)
    report(NAME, rows, note=note)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dreamer_vs_sheeprl",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets and batches")
    parser.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="subset")
    parser.add_argument("--venv", type=Path, default=VENV, help="the SheepRL bench venv")
    parser.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(SIDES[args.worker](Case(**json.loads(args.case)))))
        return
    try:
        run(args.quick, args.cases, args.venv)
    except RuntimeError as err:  # the bench venv is missing: what to run, in one line
        parser.exit(1, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
