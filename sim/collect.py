"""Vectorized episode collection into the dataset format.

    python -m sim.collect --env Reacher-v5 --policy expert --episodes 50 --seed 0 \
        --out data/reacher_expert.hdf5 [--num-envs 4] [--camera 64]

--policy is `expert`, `random`, or a path to an exported `.onnx` policy. Episode i is reset
with seed `seed + i`, recorded in its metadata, so a collection is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import sim
from episode_dataset import EpisodeWriter
from episode_dataset.ranges import (
    POSITIVE_INT,
    SEED,
    SEED_ARG,
    HelpFormatter,
    checked,
    count,
    one_line,
)
from sim.evaluate import named_policy
from sim.spec import env_spec

PolicyFactory = Callable[[int], Any]  # env index -> policy with reset()/select_action(obs)


def policy_factory(name: Any, env: gym.Env, env_id: str, seed: int) -> PolicyFactory:
    """Resolve --policy into one policy instance per sub-env (chunked policies keep queues);
    a policy object (reset() / select_action(obs)) is used as it is, in one env."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        if not all(callable(getattr(name, m, None)) for m in ("reset", "select_action")):
            raise ValueError(
                f"a policy object needs reset() and select_action(obs), got {type(name).__name__}"
            )
        if env.num_envs != 1:
            raise ValueError(f"a policy object acts in one env at a time, not {env.num_envs}")
        return lambda i: name
    space = env.single_action_space
    # each sub-env its own stream: random's generators 1000 apart, as before
    return lambda i: named_policy(
        name, env_id, space, seed + (1000 if name == "random" else 1) * i
    )


def collect(
    env_id: str,
    policy: Any,
    episodes: int,
    seed: int,
    out: str | Path,
    num_envs: int = 1,
    camera: int | None = None,
    asynchronous: bool = False,
    progress: bool = True,
) -> list[str]:
    """Collect `episodes` episodes and append them to `out`; returns the episode names.
    `policy`: "expert", "random", a `.onnx` path, or a policy object (see policy_factory).
    A count, seed or camera size out of range is a ValueError before any env or file."""
    episodes = checked("episodes", episodes, count(1))
    seed = checked("seed", seed, SEED)
    num_envs = checked("num_envs", num_envs, count(1))
    camera = checked("camera", camera, count(1, nullable=True))
    fns = [lambda: sim.make(env_id, camera=camera) for _ in range(num_envs)]
    vector_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    envs = vector_cls(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    make_policy = policy_factory(policy, envs, env_id, seed)
    policies = [make_policy(i) for i in range(num_envs)]
    spec = env_spec(envs, env_id, camera)
    writer = EpisodeWriter(
        out, obs_specs=spec.obs_specs, action_spec=spec.action_spec, env_args=spec.env_args
    )
    names: list[str] = []
    episode_of = [-1] * num_envs  # episode index running in each sub-env (-1: idle)
    buffers: list[dict[str, list]] = [{} for _ in range(num_envs)]
    next_episode = 0
    bar = tqdm(total=episodes, desc=f"collect {env_id} ({policy})", disable=not progress)

    def start(mask: np.ndarray, obs: dict | None) -> dict:
        nonlocal next_episode
        seeds = [None] * num_envs
        for i in np.flatnonzero(mask):
            if next_episode < episodes:
                episode_of[i], seeds[i] = next_episode, seed + next_episode
                next_episode += 1
                policies[i].reset()
                buffers[i] = {"obs": [], "actions": [], "rewards": [], "dones": []}
            else:
                episode_of[i] = -1
        fresh, _ = envs.reset(seed=seeds, options={"reset_mask": mask})
        if obs is None:
            return fresh
        return {k: np.where(_expand(mask, v), fresh[k], v) for k, v in obs.items()}

    try:
        obs = start(np.ones(num_envs, bool), None)
        while any(e >= 0 for e in episode_of):
            actions = np.stack(
                [
                    np.asarray(p.select_action({k: v[i] for k, v in obs.items()}), np.float32)
                    if episode_of[i] >= 0
                    else envs.single_action_space.sample() * 0
                    for i, p in enumerate(policies)
                ]
            )
            next_obs, rewards, terminated, truncated, _ = envs.step(actions)
            finished = np.zeros(num_envs, bool)
            for i in range(num_envs):
                if episode_of[i] < 0:
                    continue
                buf = buffers[i]
                buf["obs"].append({k: v[i] for k, v in obs.items()})
                buf["actions"].append(actions[i])
                buf["rewards"].append(float(rewards[i]))
                buf["dones"].append(bool(terminated[i] or truncated[i]))
                if terminated[i] or truncated[i]:
                    names.append(_write(writer, buf, seed + episode_of[i], bool(terminated[i])))
                    finished[i] = True
                    bar.update(1)
            obs = start(finished, next_obs) if finished.any() else next_obs
    finally:
        bar.close()
        writer.close()
        envs.close()
    return names


def _expand(mask: np.ndarray, value: np.ndarray) -> np.ndarray:
    return mask.reshape((-1,) + (1,) * (value.ndim - 1))


def _write(writer: EpisodeWriter, buf: dict[str, list], seed: int, terminated: bool) -> str:
    keys = buf["obs"][0].keys()
    return writer.write_episode(
        obs={k: np.stack([o[k] for o in buf["obs"]]) for k in keys},
        actions=np.stack(buf["actions"]),
        rewards=np.asarray(buf["rewards"], np.float32),
        dones=np.asarray(buf["dones"], bool),
        metadata={"seed": seed, "terminated": terminated},
    )


def episode_count(path: str) -> int:
    """Episodes in the dataset at `path` (0 when there is none yet)."""
    from episode_dataset import EpisodeReader

    return len(EpisodeReader(path).episodes) if Path(path).exists() else 0


def interrupted(prog: str, out: str, seed: int, asked: int, before: int) -> str:
    """What a stopped collection wrote (the episodes after the first `before` of `out`), and
    the options that go on without repeating a seed (a rerun of the same command would append
    its first seeds again)."""
    from episode_dataset import EpisodeReader

    seeds: list[int] = []
    if Path(out).exists():
        with EpisodeReader(out) as reader:
            seeds = [reader.episode_metadata(n)["seed"] for n in reader.episodes[before:]]
    used = sorted(set(seeds))
    done = f"{prog}: interrupted: {len(seeds)} episodes written to {out}"
    if used == list(range(seed, seed + len(used))):
        span = f" (seeds {seed}..{seed + len(used) - 1} of the {asked} asked)" if used else ""
        rest = f"--seed {seed + len(used)} --episodes {asked - len(used)}"
        return f"{done}{span}, each whole; to go on: {rest}"
    return f"{done}, each whole, seeds {used}: go on with seeds not among them"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sim.collect",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--env", required=True, help="task id, e.g. Reacher-v5")
    parser.add_argument("--policy", default="expert", help="expert | random | PATH.onnx")
    parser.add_argument("--episodes", type=POSITIVE_INT, default=10, help="episodes to record")
    parser.add_argument("--seed", type=SEED_ARG, default=0, help="first episode seed")
    parser.add_argument("--out", required=True, help="dataset file (.hdf5); appended if it exists")
    parser.add_argument("--num-envs", type=POSITIVE_INT, default=1, help="vectorized envs")
    parser.add_argument(
        "--camera", type=POSITIVE_INT, default=None, help="add an rgb image of this size"
    )
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="AsyncVectorEnv (subprocesses); slower than sync on 2 cores",
    )
    args = parser.parse_args(argv)
    before = 0
    try:
        before = episode_count(args.out)
        names = collect(
            args.env,
            args.policy,
            args.episodes,
            args.seed,
            args.out,
            args.num_envs,
            args.camera,
            args.asynchronous,
        )
    except (ValueError, RuntimeError, OSError) as err:  # unknown task, bad model or dataset
        parser.exit(2, f"sim.collect: error: {one_line(err)}\n")
    except KeyboardInterrupt:  # each episode is committed whole as it ends
        line = interrupted("sim.collect", args.out, args.seed, args.episodes, before)
        parser.exit(130, line + "\n")
    from episode_dataset import EpisodeReader

    reader = EpisodeReader(args.out)
    returns = [reader.episode_return(n) for n in names]
    print(
        json.dumps(
            {
                "out": str(args.out),
                "episodes": len(names),
                "mean_return": float(np.mean(returns)) if returns else None,
            }
        )
    )


if __name__ == "__main__":
    main()
