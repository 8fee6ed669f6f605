"""Sim-layer rollout speed vs raw `mujoco.mj_step` on the same model (one process, side by side).

    python -m bench.sim_rollout [--quick]

Rows per task, in env steps/s (one env step = frame_skip physics steps): raw mj_step on one
MjData, plain `gym.make`, `sim.make`, Gymnasium `SyncVectorEnv` over `sim.make`, `sim.make_vec`
(what the online loop uses), and `mujoco.rollout` with 2 threads as a physics-only reference
(it cannot carry the solver warmstart between calls, so it does not reproduce the env). Every
row is the best of a few rounds, taken in turn, so a busy machine hurts all rows alike.
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

NUM_ENVS = 16


def _timed(step: Callable[[int], int], seconds: float) -> float:
    """Env steps/s of calling step(k) (which returns how many env steps it took) for `seconds`."""
    steps, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += step(k)
        k += 1
    return steps / (time.perf_counter() - start)


def _actions(space: gym.spaces.Box, shape: tuple[int, ...]) -> np.ndarray:
    """A pool of 64 random action batches, drawn before timing."""
    rng = np.random.default_rng(0)
    return rng.uniform(space.low, space.high, (64, *shape)).astype(np.float32)


def _raw(model: mujoco.MjModel, frame_skip: int, seconds: float) -> float:
    data = mujoco.MjData(model)

    def step(_: int) -> int:
        for _ in range(100):
            mujoco.mj_step(model, data, nstep=frame_skip)
        return 100

    return _timed(step, seconds)


def _single(env: gym.Env, seconds: float) -> float:
    env.reset(seed=0)
    pool = _actions(env.action_space, env.action_space.shape)

    def step(k: int) -> int:
        _, _, terminated, truncated, _ = env.step(pool[k % 64])
        if terminated or truncated:
            env.reset()
        return 1

    return _timed(step, seconds)


def _vector(envs: gym.vector.VectorEnv, seconds: float) -> float:
    envs.reset(seed=0)
    pool = _actions(envs.single_action_space, envs.action_space.shape)

    def step(k: int) -> int:
        envs.step(pool[k % 64])
        return envs.num_envs

    rate = _timed(step, seconds)
    envs.close()
    return rate


def _rollout(model: mujoco.MjModel, frame_skip: int, num_envs: int, seconds: float) -> float:
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    data = mujoco.MjData(model)
    state = np.empty((num_envs, mujoco.mj_stateSize(model, spec)))
    mujoco.mj_getState(model, data, state[0], spec)
    state[:] = state[0]
    out = np.empty((num_envs, frame_skip, state.shape[1]))
    sensordata = np.empty((num_envs, frame_skip, model.nsensordata))
    space = gym.spaces.Box(model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1])
    pool = np.repeat(_actions(space, (num_envs, 1, model.nu)), frame_skip, axis=2)
    models, datas = [model] * num_envs, [mujoco.MjData(model) for _ in range(2)]
    with rollout.Rollout(nthread=2) as runner:

        def step(k: int) -> int:
            runner.rollout(
                models, datas, state, pool[k % 64].astype(np.float64), nstep=frame_skip,
                state=out, sensordata=sensordata, skip_checks=True,
            )  # fmt: skip
            state[:] = out[:, -1]
            return num_envs

        return _timed(step, seconds)


def _task_rows(env_id: str, seconds: float, rounds: int) -> list[dict]:
    base = sim.make(env_id).unwrapped
    model, frame_skip, n = base.model, base.frame_skip, NUM_ENVS
    methods: dict[str, tuple[int, Callable[[], gym.Env | gym.vector.VectorEnv | float]]] = {
        "mj_step (raw)": (1, lambda: _raw(model, frame_skip, seconds)),
        "gym.make": (1, lambda: gym.make(env_id)),
        "sim.make": (1, lambda: sim.make(env_id)),
        "SyncVectorEnv(sim.make)": (
            n,
            lambda: gym.vector.SyncVectorEnv([lambda: sim.make(env_id)] * n),
        ),
        "sim.make_vec": (n, lambda: sim.make_vec(env_id, n)),
        "mujoco.rollout 2 threads (physics only)": (
            n,
            lambda: _rollout(model, frame_skip, n, seconds),
        ),
        "SyncVectorEnv(sim.make) camera=64": (
            4,
            lambda: gym.vector.SyncVectorEnv([lambda: sim.make(env_id, camera=64)] * 4),
        ),
        "sim.make_vec camera=64": (4, lambda: sim.make_vec(env_id, 4, camera=64)),
    }
    best = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for name, (_, build) in methods.items():
            built = build()
            if isinstance(built, gym.vector.VectorEnv):
                rate = _vector(built, seconds)
            elif isinstance(built, gym.Env):
                rate = _single(built, seconds)
            else:
                rate = built
            best[name] = max(best[name], rate)
    raw, plain = best["mj_step (raw)"], best["gym.make"]
    return [
        {
            "env": env_id,
            "method": name,
            "num_envs": num_envs,
            "env_steps_per_s": best[name],
            "ratio_vs_raw": best[name] / raw,
            "ratio_vs_gym_make": best[name] / plain,
        }
        for name, (num_envs, _) in methods.items()
    ]


def run(quick: bool = False) -> list[dict]:
    seconds, rounds = (0.4, 1) if quick else (2.0, 3)
    rows = [
        row
        for env_id in ("Reacher-v5", "HalfCheetah-v5")
        for row in _task_rows(env_id, seconds, rounds)
    ]
    report(
        "sim_rollout",
        rows,
        note="env steps/s (x frame_skip physics steps); ratio_vs_raw = rate / raw mj_step rate "
        f"(1 MjData, 1 thread); best of {rounds} round(s)",
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_rollout",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
