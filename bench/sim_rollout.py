"""Sim-layer rollout speed vs raw `mujoco.mj_step` on the same model (one process, side by side).

    python -m bench.sim_rollout [--quick]

Rows: env steps/s through `sim.make` (single env, and SyncVectorEnv), the physics steps/s that
implies (x frame_skip), raw mj_step/s on the same MjModel, and their ratio (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import mujoco
import numpy as np

import sim
from bench.report import report


def _raw_steps_per_s(model: mujoco.MjModel, seconds: float) -> float:
    data = mujoco.MjData(model)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            mujoco.mj_step(model, data)
        steps += 500
    return steps / (time.perf_counter() - start)


def _env_steps_per_s(env_id: str, camera: int | None, num_envs: int, seconds: float) -> float:
    envs = gym.vector.SyncVectorEnv([lambda: sim.make(env_id, camera=camera)] * num_envs)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    low, high = envs.action_space.low, envs.action_space.high
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.uniform(low, high).astype(np.float32))
        steps += num_envs
    rate = steps / (time.perf_counter() - start)
    envs.close()
    return rate


def run(quick: bool = False) -> list[dict]:
    seconds = 0.5 if quick else 3.0
    rows = []
    for env_id in ("Reacher-v5", "HalfCheetah-v5"):
        probe = sim.make(env_id)
        model, frame_skip = probe.unwrapped.model, probe.unwrapped.frame_skip
        raw = _raw_steps_per_s(model, seconds)
        for camera in (None, 64):
            for num_envs in (1, 4):
                env_rate = _env_steps_per_s(env_id, camera, num_envs, seconds)
                rows.append(
                    {
                        "env": env_id,
                        "camera": camera or "-",
                        "num_envs": num_envs,
                        "env_steps_per_s": env_rate,
                        "physics_steps_per_s": env_rate * frame_skip,
                        "raw_mj_step_per_s": raw,
                        "ratio_vs_raw": env_rate * frame_skip / raw,
                    }
                )
    report("sim_rollout", rows, note="ratio = physics steps/s through sim.make / raw mj_step/s")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_rollout",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
