"""Sim-layer rollout speed vs raw `mujoco.mj_step` on the same model (one process, side by side).

    python -m bench.sim_rollout [--quick]

Rows per task, in env steps/s (one env step = frame_skip physics steps): raw mj_step, plain
`gym.make`, `sim.make`, Gymnasium `SyncVectorEnv` over `sim.make`, `sim.make_vec` (what the
online loop uses), and `mujoco.rollout` with 2 threads as a physics-only reference (it cannot
carry the solver warmstart between calls, so it does not reproduce the env). The cost of a
MuJoCo step depends on the state (contacts), so every row runs the SAME trajectories: N envs
seeded 0..N-1, the same (steps, N, action) array; the raw row is a plain loop of
`ctrl = a; mj_step(nstep=frame_skip)` over those N MjData. Rounds take every row in turn;
rates are medians over rounds, ratios the medians of each round's back-to-back ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout

import sim
from bench.report import report
from episode_dataset.ranges import HelpFormatter

NUM_ENVS = 16


def _raw(env_id: str, actions: np.ndarray) -> float:
    envs = sim.make_vec(env_id, actions.shape[1])
    envs.reset(seed=0)
    bases = [env.unwrapped for env in envs.envs]
    start = time.perf_counter()
    for i, base in enumerate(bases):
        model, data, nstep = base.model, base.data, base.frame_skip
        for action in actions[:, i]:
            data.ctrl[:] = action
            mujoco.mj_step(model, data, nstep=nstep)
    return actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)


def _single(make: Callable[[], gym.Env], actions: np.ndarray) -> float:
    """Env i of the batch as its own env, one after the other (seed i, actions[:, i])."""
    env = make()
    start = time.perf_counter()
    for i in range(actions.shape[1]):
        env.reset(seed=i)
        for action in actions[:, i]:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
    return actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)


def _vector(envs: gym.vector.VectorEnv, actions: np.ndarray) -> float:
    envs.reset(seed=0)
    start = time.perf_counter()
    for batch in actions:
        envs.step(batch)
    rate = actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)
    envs.close()
    return rate


def _rollout(env_id: str, actions: np.ndarray) -> float:
    envs = sim.make_vec(env_id, actions.shape[1])
    envs.reset(seed=0)
    bases = [env.unwrapped for env in envs.envs]
    model, frame_skip = bases[0].model, bases[0].frame_skip
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.empty((len(bases), mujoco.mj_stateSize(model, spec)))
    for row, base in zip(state, bases, strict=True):
        mujoco.mj_getState(model, base.data, row, spec)
    out = np.empty((len(bases), frame_skip, state.shape[1]))
    sensordata = np.empty((len(bases), frame_skip, model.nsensordata))
    controls = np.repeat(actions.astype(np.float64)[:, :, None], frame_skip, axis=2)
    models, datas = [model] * len(bases), [mujoco.MjData(model) for _ in range(2)]
    with rollout.Rollout(nthread=2) as runner:
        start = time.perf_counter()
        for control in controls:
            runner.rollout(
                models, datas, state, control, nstep=frame_skip,
                state=out, sensordata=sensordata, skip_checks=True,
            )  # fmt: skip
            state[:] = out[:, -1]
        return actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)


def _task_rows(env_id: str, num_steps: int, rounds: int) -> list[dict]:
    space = sim.make(env_id).action_space
    rng = np.random.default_rng(0)
    n = NUM_ENVS
    actions = rng.uniform(space.low, space.high, (num_steps, n, *space.shape)).astype(np.float32)
    camera_actions = actions[: max(num_steps // 10, 5), :4]

    def sync(camera: int | None = None, num_envs: int = n) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([lambda: sim.make(env_id, camera=camera)] * num_envs)

    methods: dict[str, tuple[int, Callable[[], float]]] = {
        "mj_step (raw)": (n, lambda: _raw(env_id, actions)),
        "gym.make": (1, lambda: _single(lambda: gym.make(env_id), actions)),
        "sim.make": (1, lambda: _single(lambda: sim.make(env_id), actions)),
        "SyncVectorEnv(sim.make)": (n, lambda: _vector(sync(), actions)),
        "sim.make_vec": (n, lambda: _vector(sim.make_vec(env_id, n), actions)),
        "mujoco.rollout 2 threads (physics only)": (n, lambda: _rollout(env_id, actions)),
        "SyncVectorEnv(sim.make) camera=64": (4, lambda: _vector(sync(64, 4), camera_actions)),
        "sim.make_vec camera=64": (
            4,
            lambda: _vector(sim.make_vec(env_id, 4, camera=64), camera_actions),
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (_, measure) in methods.items():
            rates[name].append(measure())
    raw, plain = np.array(rates["mj_step (raw)"]), np.array(rates["gym.make"])
    return [
        {
            "env": env_id,
            "method": name,
            "num_envs": num_envs,
            "env_steps_per_s": float(np.median(rates[name])),
            # ratios within a round (measured back to back), then the median over rounds
            "ratio_vs_raw": float(np.median(np.array(rates[name]) / raw)),
            "ratio_vs_gym_make": float(np.median(np.array(rates[name]) / plain)),
        }
        for name, (num_envs, _) in methods.items()
    ]


def run(quick: bool = False) -> list[dict]:
    num_steps, rounds = (100, 1) if quick else (400, 7)
    rows = [
        row
        for env_id in ("Reacher-v5", "HalfCheetah-v5", "Hopper-v5")
        for row in _task_rows(env_id, num_steps, rounds)
    ]
    report(
        "sim_rollout",
        rows,
        note=f"env steps/s over the same {NUM_ENVS} x {num_steps}-step trajectories (x frame_skip "
        "physics steps); ratio_vs_raw = rate / plain mj_step loop; Hopper envs reset when they "
        f"fall (the raw loop does not); medians of {rounds} round(s)",
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_rollout",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
