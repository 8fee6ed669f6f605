"""Online RL against Stable-Baselines3, side by side: same envs, hyperparameters, step budgets
and evaluation seeds; medians over seeds.

    python -m bench rl_vs_sb3 [--quick]
    python -m bench.rl_vs_sb3 [--quick] [--cases ppo_halfcheetah sac_pendulum] [--seeds 0 1 2]

Needs the bench extra (stable-baselines3==2.9.2). Each training run is a fresh process (torch
threads, denormal flushing and compile caches must not leak from one side into the other) and
ends with a deterministic evaluation on `sim.make(env_id)` with reset seeds EVAL_SEED.. for both
sides (SB3 trains on `gym.make(env_id)`, the same env without the dict wrapper).

Speed: env-steps/s (PPO) and gradient steps/s (SAC) are counted over the whole training call
(`learn` / `learning.train.run`: collection, updates, logging), evaluation excluded. Both sides
run on one torch thread (roboloop: its config's `torch_threads`; SB3: `--sb3-threads`, 1 by
default, since 2 made SB3 20-70x slower on this 2-core machine whenever anything else ran;
`--sb3-threads 2` is the setting of the issue's orientation numbers, measured on an idle one).
Budgets: full ~1.5 h on 2 idle cores (SAC dominates); `--quick` (1 seed, 1024 PPO / 400 SAC
steps, 1 evaluation episode) ~1-3 min: smoke-level numbers, no verdicts.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import importlib.util
import multiprocessing
import statistics
import time
from typing import Any

import numpy as np
import torch

from bench.report import report
from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter

EVAL_SEED = 10_000  # evaluation episodes reset with seeds EVAL_SEED, EVAL_SEED + 1, ...
SEEDS = (0, 1, 2)

# Shared hyperparameters in one vocabulary, mapped onto each side below. They are SB3's
# defaults (the orientation numbers were measured with them).
PPO_HYPER: dict[str, Any] = {
    "num_envs": 1,
    "n_steps": 2048,  # per env per rollout
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "hidden": [64, 64],
    # Not SB3's defaults, but how PPO runs on MuJoCo (RL Zoo, CleanRL) and roboloop's
    # train_ppo defaults; SB3 gets them through VecNormalize and a linear schedule.
    "normalize_obs": True,
    "normalize_reward": True,
    "anneal_lr": True,
}
SAC_HYPER: dict[str, Any] = {
    "num_envs": 1,
    "learning_rate": 3e-4,
    "buffer_size": 1_000_000,
    "learning_starts": 100,
    "batch_size": 256,
    "tau": 0.005,
    "gamma": 0.99,
    "train_freq": 1,
    "gradient_steps": 1,
    "hidden": [256, 256],
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    algorithm: str  # "ppo" | "sac"
    env_id: str
    steps: int
    quick_steps: int
    hyper: dict[str, Any] = dataclasses.field(hash=False)
    target: str  # the target, checked in the table ("info": no verdict)
    # roboloop's own settings that are not learning hyperparameters (how the rollout is
    # stepped, the update's precision, compilation), shown in the table's `ours` column.
    ours: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)


# --quick: tiny budgets (PPO rollouts of 512 steps, all envs together, so 1024 steps make 2
# updates), 1 seed.
QUICK_HYPER = {"ppo": {"n_steps": 512}, "sac": {}}
QUICK_OURS = {"compile": False}  # compiling would take longer than the quick run


# PPO: SB3 steps its default 1 env for the 2048-step rollout; roboloop its default 8 batched
# envs x 256 steps (the same rollout, minibatches and epochs). The `_8envs` rows give SB3 the
# same 8 envs (DummyVecEnv), for the like-for-like ratio of everything but the stepping.
PPO_OURS = {"num_envs": 8, "compile": True}
PPO_8ENVS = PPO_HYPER | {"num_envs": 8, "n_steps": 256}
# SAC: bf16 autocast of the critics' hidden layers (actor and the critics' outer layers fp32),
# for this CPU's avx512_bf16; fp32 is ~1.15x SB3 (docs/online.md). The critic's half of each
# update on a second thread (train_sac's default): the table's SB3 column states its threads.
SAC_OURS = {"precision": "bf16-mixed", "update_threads": 2}
CASES = [
    Case(
        "ppo_halfcheetah",
        "ppo",
        "HalfCheetah-v5",
        100_000,
        1024,
        PPO_HYPER,
        "speed2x+return",
        PPO_OURS,
    ),
    Case(
        "ppo_halfcheetah_8envs",
        "ppo",
        "HalfCheetah-v5",
        100_000,
        1024,
        PPO_8ENVS,
        "info",
        PPO_OURS,
    ),
    Case("ppo_hopper", "ppo", "Hopper-v5", 100_000, 1024, PPO_HYPER, "speed2x+return", PPO_OURS),
    Case("ppo_hopper_8envs", "ppo", "Hopper-v5", 100_000, 1024, PPO_8ENVS, "info", PPO_OURS),
    Case(
        "sac_halfcheetah",
        "sac",
        "HalfCheetah-v5",
        50_000,
        400,
        SAC_HYPER,
        "speed2x+return",
        SAC_OURS,
    ),
    Case("sac_pendulum", "sac", "Pendulum-v1", 20_000, 400, SAC_HYPER, "return>=-200"),
]
# roboloop-only setting -> config key
OURS_KEYS = {
    "num_envs": "online.num_envs",
    "compile": "model.compile",
    "precision": "online.precision",
    "update_threads": "model.update_threads",
}


# ---- one training run per process ----------------------------------------------------------
class SB3Actor:
    """A trained SB3 model (and its VecNormalize statistics) as a workspace Policy."""

    def __init__(self, model: Any, vec_normalize: Any = None) -> None:
        self.model, self.vec_normalize = model, vec_normalize

    def reset(self) -> None:
        pass

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        x = obs["state"]
        if self.vec_normalize is not None:
            x = self.vec_normalize.normalize_obs(x)
        return self.model.predict(x, deterministic=True)[0]


class TorchActor:
    """A roboloop online algorithm's deterministic actor as a workspace Policy."""

    def __init__(self, algo: Any) -> None:
        self.algo = algo

    def reset(self) -> None:
        pass

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
        with torch.inference_mode():
            return self.algo.act(batch, deterministic=True)[0][0].numpy()


def make_sb3(case: Case, seed: int) -> tuple[Any, Any]:
    """(SB3 model with the shared hyperparameters, its VecNormalize or None)."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    h = case.hyper
    env = make_vec_env(case.env_id, n_envs=h["num_envs"], seed=seed)
    vec_normalize = None
    if h.get("normalize_obs") or h.get("normalize_reward"):
        env = vec_normalize = VecNormalize(
            env, norm_obs=h["normalize_obs"], norm_reward=h["normalize_reward"], gamma=h["gamma"]
        )
    lr = h["learning_rate"]
    schedule = (lambda remaining: lr * remaining) if h.get("anneal_lr") else lr
    shared = {"seed": seed, "device": "cpu", "verbose": 0, "learning_rate": schedule}
    shared |= {"gamma": h["gamma"], "batch_size": h["batch_size"]}
    if case.algorithm == "ppo":
        keys = ("n_steps", "n_epochs", "gae_lambda", "clip_range", "ent_coef", "vf_coef")
        model = PPO(
            "MlpPolicy",
            env,
            max_grad_norm=h["max_grad_norm"],
            policy_kwargs={"net_arch": {"pi": h["hidden"], "vf": h["hidden"]}},
            **{k: h[k] for k in keys},
            **shared,
        )
    else:
        keys = ("buffer_size", "learning_starts", "tau", "train_freq", "gradient_steps")
        model = SAC(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": h["hidden"]},
            **{k: h[k] for k in keys},
            **shared,
        )
    return model, vec_normalize


def train_sb3(case: Case, seed: int, steps: int) -> tuple[dict[str, float], SB3Actor]:
    """({"wall_s", "env_steps", "grad_steps"} of the training call, deterministic policy)."""
    h = case.hyper
    model, vec_normalize = make_sb3(case, seed)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    if case.algorithm == "ppo":  # minibatch steps: epochs x minibatches per rollout
        rollout = h["n_steps"] * h["num_envs"]
        grad_steps = model._n_updates * -(-rollout // h["batch_size"])
    else:
        grad_steps = model._n_updates
    if vec_normalize is not None:
        vec_normalize.training = False  # evaluation reads the statistics, never updates them
    counts = {"wall_s": wall, "env_steps": model.num_timesteps, "grad_steps": grad_steps}
    return counts, SB3Actor(model, vec_normalize)


# Shared hyperparameter -> roboloop config key (train_ppo / train_sac).
ROBOLOOP_KEYS = {
    "ppo": {
        "num_envs": "online.num_envs",
        "batch_size": "model.minibatch_size",
        "n_epochs": "model.update_epochs",
        "learning_rate": "policy.learning_rate",
        "gamma": "policy.gamma",
        "gae_lambda": "model.gae_lambda",
        "clip_range": "policy.ppo_clip",
        "ent_coef": "model.ent_coef",
        "vf_coef": "model.vf_coef",
        "max_grad_norm": "model.max_grad_norm",
        "normalize_obs": "model.normalize_obs",
        "normalize_reward": "model.normalize_reward",
        "anneal_lr": "model.anneal_lr",
    },
    "sac": {
        "num_envs": "online.num_envs",
        "learning_rate": "policy.learning_rate",
        "buffer_size": "model.buffer_size",
        "learning_starts": "model.learning_starts",
        "batch_size": "model.batch_size",
        "tau": "model.tau",
        "gamma": "policy.gamma",
        "gradient_steps": "model.gradient_steps",
    },
}


def roboloop_overrides(case: Case, seed: int, steps: int, out: str) -> list[str]:
    """The `python -m learning.train` overrides that run `case` with the shared values."""
    h, keys = case.hyper, ROBOLOOP_KEYS[case.algorithm]
    if len(set(h["hidden"])) != 1 or len(h["hidden"]) != 2:
        raise ValueError(f"roboloop's MLPs have 2 equal hidden layers, not {h['hidden']}")
    overrides = [f"{keys[k]}={v}" for k, v in h.items() if k in keys]
    overrides += [f"{OURS_KEYS[k]}={v}" for k, v in case.ours.items()]
    overrides += [f"env_id={case.env_id}", f"seed={seed}", f"output_root={out}"]
    overrides += [f"policy.hidden_dim={h['hidden'][0]}", "online.progress_bar=false"]
    overrides += ["online.eval_every=0", "online.eval_episodes=0"]  # evaluated here, untimed
    if case.algorithm == "ppo":
        rollout = h["n_steps"] * h["num_envs"]  # as SB3: whole rollouts until >= steps
        overrides += [f"training.steps_per_iteration={rollout}"]
        overrides += [f"training.num_iterations={-(-steps // rollout)}"]
    else:
        if h["train_freq"] != 1:
            raise ValueError("roboloop's SAC updates after every (vector) env step: train_freq 1")
        overrides += [f"training.steps_per_iteration={steps}", "training.num_iterations=1"]
    return overrides


def train_roboloop(case: Case, seed: int, steps: int) -> tuple[dict[str, float], Any]:
    """Our side: `learning.train.run` with `train_<algorithm>` (learning.online)."""
    import tempfile

    from learning.checkpoint import load_model, torch_load
    from learning.online.loop import ONLINE_KEY
    from learning.train import compose_config
    from learning.train import run as train_run

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(f"train_{case.algorithm}", roboloop_overrides(case, seed, steps, out))
        start = time.perf_counter()
        result = train_run(cfg)
        wall = time.perf_counter() - start
        algo, _ = load_model(result["last_ckpt"])
        updates = torch_load(result["last_ckpt"])[ONLINE_KEY]["iteration"]  # update calls
    h, env_steps = case.hyper, int(result["env_steps"])
    if case.algorithm == "ppo":  # minibatch steps: epochs x minibatches per rollout
        rollout = h["n_steps"] * h["num_envs"]
        grad_steps = updates * h["n_epochs"] * -(-rollout // h["batch_size"])
    else:
        grad_steps = updates * h["gradient_steps"]
    return {"wall_s": wall, "env_steps": env_steps, "grad_steps": grad_steps}, TorchActor(algo)


SIDES = {"sb3": train_sb3, "roboloop": train_roboloop}


def one_run(
    side: str, case: Case, seed: int, steps: int, eval_episodes: int, sb3_threads: int
) -> dict[str, Any]:
    """Train, then evaluate deterministically; runs in its own process."""
    from sim.evaluate import evaluate_policy

    if side == "sb3":
        torch.set_num_threads(sb3_threads)  # roboloop sets its own (train_*.yaml torch_threads)

    counts, policy = SIDES[side](case, seed, steps)
    result = evaluate_policy(case.env_id, policy, eval_episodes, EVAL_SEED)
    return {
        **counts,
        "env_steps_per_s": counts["env_steps"] / counts["wall_s"],
        "grad_steps_per_s": counts["grad_steps"] / counts["wall_s"],
        "eval_return": result.mean_return,
    }


def _run_isolated(*args: Any) -> dict[str, Any]:
    """one_run in a fresh spawned process; {"error": line} when it fails."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(one_run, *args).result()
        except Exception as err:  # one failed side must not hide the other's numbers
            return {"error": f"{type(err).__name__}: {err}"}


# ---- table ---------------------------------------------------------------------------------
def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if len(values) == len(runs) and values else None


def _verdict(case: Case, sb3: list[dict], ours: list[dict], speed_key: str) -> str:
    ours_ret = [r["eval_return"] for r in ours if "eval_return" in r]
    if len(ours_ret) < len(ours) or not ours:
        return "n/a"
    if case.target == "return>=-200":
        return "pass" if all(r >= -200 for r in ours_ret) else "fail"
    ratio = _ratio(_median(ours, speed_key), _median(sb3, speed_key))
    sb3_ret = _median(sb3, "eval_return")
    if ratio is None or sb3_ret is None or case.target == "info":
        return "n/a"
    return "pass" if ratio >= 2.0 and statistics.median(ours_ret) >= sb3_ret else "fail"


def _returns(runs: list[dict[str, Any]]) -> list[float | None]:
    return [round(r["eval_return"], 1) if "eval_return" in r else None for r in runs]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run(
    quick: bool = False,
    cases: list[str] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    sb3_threads: int = 1,
) -> list[dict]:
    if importlib.util.find_spec("stable_baselines3") is None:
        raise RuntimeError(
            "needs the bench extra: .venv/bin/pip install -c constraints.txt -e '.[bench]'"
        )
    seeds = seeds[:1] if quick and seeds == SEEDS else seeds
    eval_episodes = 1 if quick else 10
    rows = []
    for case in CASES:
        if cases and case.name not in cases:
            continue
        if quick:
            n_steps = QUICK_HYPER[case.algorithm].get("n_steps", 0) // case.hyper["num_envs"]
            quick_hyper = {"n_steps": n_steps} if n_steps else {}
            case = dataclasses.replace(
                case,
                steps=case.quick_steps,
                hyper=case.hyper | quick_hyper,
                ours={k: v for k, v in (case.ours | QUICK_OURS).items() if k in case.ours},
            )
        steps = case.steps
        runs = {
            side: [_run_isolated(side, case, s, steps, eval_episodes, sb3_threads) for s in seeds]
            for side in SIDES
        }
        speed_key = "env_steps_per_s" if case.algorithm == "ppo" else "grad_steps_per_s"
        sb3, ours = runs["sb3"], runs["roboloop"]
        rows.append(
            {
                "case": case.name,
                "env": case.env_id,
                "steps": steps,
                "seeds": len(seeds),
                "speed": speed_key,
                "ours": " ".join(f"{k}={v}" for k, v in case.ours.items()) or "config defaults",
                "sb3_speed": _median(sb3, speed_key),
                "ours_speed": _median(ours, speed_key),
                "speed_ratio": _ratio(_median(ours, speed_key), _median(sb3, speed_key)),
                "sb3_return": _median(sb3, "eval_return"),
                "ours_return": _median(ours, "eval_return"),
                "target": case.target,
                "sb3_returns": _returns(sb3),
                "ours_returns": _returns(ours),
                "verdict": "(quick)" if quick else _verdict(case, sb3, ours, speed_key),
                "runs": sb3 + ours,
            }
        )
    errors = sorted({r["error"] for row in rows for r in row.pop("runs") if "error" in r})
    note = (
        f"medians over {len(seeds)} seed(s); return = mean of {eval_episodes} deterministic "
        f"episodes (reset seeds {EVAL_SEED}..); speed ratio = ours / SB3; SB3 with "
        f"{sb3_threads} torch thread(s)"
    ) + "".join(f"\nerror: {e}" for e in errors)
    report("rl_vs_sb3", rows, note=note)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.rl_vs_sb3",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed")
    parser.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="subset")
    parser.add_argument("--seeds", nargs="+", type=SEED_ARG, default=list(SEEDS), help="run seeds")
    parser.add_argument("--sb3-threads", type=POSITIVE_INT, default=1, help="SB3's torch threads")
    args = parser.parse_args()
    run(args.quick, args.cases, tuple(args.seeds), args.sb3_threads)
