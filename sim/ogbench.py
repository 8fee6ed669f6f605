"""OGBench manipulation tasks (cube, scene, puzzle) as workspace tasks, and their datasets.

    python -m sim.ogbench --env cube-single-singletask-task1-v0 --kind noisy --episodes 100 \
        --seed 0 --out data/cube_single_noisy.hdf5 [--episode-steps 1000] [--camera 64]

Every `<env>-singletask-task<k>-v0` of OGBench's manipulation suites is a workspace task
(`sim.make("cube-single-singletask-task1-v0")`): `{"state": float32}` is OGBench's state
observation, `info["is_success"]` its task success, the episode ends at the goal and after
OGBench's step limit, and `camera=` renders its `front_pixels` camera through the workspace
camera wrapper. Each task also has a sparse variant, `<task>-sparse-v0` (e.g.
`scene-singletask-task2-sparse-v0`): reward -1 on every step until the task is solved, 0 when it
is (Q-chunking's `sparse` setting: `(reward != 0) * -1`). `ogbench` (MIT) is imported only when
such a task is built.

Datasets are generated here, no download: OGBench's own scripted oracles act in its
data-collection mode, where each oracle chases a random target and a new target is drawn when it
is done, for `--episode-steps` steps per episode (OGBench: 1000). `play` uses the plan oracles
(temporally correlated noise 0.1, smoothing 0.5), `noisy` the Markov oracles with i.i.d.
Gaussian action noise 0.2: OGBench's two dataset kinds. Rewards are labelled for the one task
named by --env with OGBench's `relabel_dataset` (reward = solved subtasks − subtasks, 0 when the
task is solved); the file's env_args name that task, so evaluation builds it. OGBench also
stops bootstrapping at solved states (its `masks`); the workspace format ends episodes only at
their last step, so here a solved state is only a reward of 0, unless `--split-at-success`
ends the episode there (terminated, as the task's env ends at the goal) and starts a new one at
the next unsolved step. Episode i is seeded with seed + i (env and oracle), so a generation is
reproducible.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from episode_dataset import EpisodeWriter
from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter

# OGBench manipulation suite -> its episode step limit in the single-task envs.
SUITES = {"cube-single": 200, "cube-double": 500, "scene": 750, "puzzle-3x3": 500}
TASKS_PER_SUITE = 5
KINDS = ("play", "noisy")
CAMERA = "front_pixels"  # the camera OGBench's visual tasks render


def _import_ogbench() -> Any:
    try:
        import ogbench  # noqa: F401  (registers OGBench's Gymnasium ids)
    except ImportError as error:
        raise ImportError(
            f"OGBench tasks need ogbench ({error}): pip install ogbench==1.2.2 dm-control==1.0.50"
        ) from None
    return ogbench


class OGBenchEnv(gym.Env):
    """One OGBench manipulation env, unwrapped, with what the workspace wrappers read:
    `model`/`data` (camera), `dt` (control rate) and the last step's `success`."""

    metadata = {"render_modes": []}

    def __init__(self, ogbench_id: str, sparse: bool = False, **kwargs: Any) -> None:
        _import_ogbench()
        self.sparse = sparse
        self.env = gym.make(ogbench_id, **kwargs).unwrapped
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.dt = float(self.env._control_timestep)
        self.success = False

    @property
    def model(self) -> Any:
        return self.env._model

    @property
    def data(self) -> Any:
        return self.env._data

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)  # Gymnasium's contract; OGBench seeds its own generator
        # OGBench's resets take a few settling steps from `action_space.sample()`, a generator
        # nothing seeds: seed it from ours, or two envs reset with one seed start apart.
        self.env.action_space.seed(int(self.np_random.integers(2**31)))
        ob, info = self.env.reset(seed=seed, options=options)
        self.success = False
        return ob, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        ob, reward, terminated, truncated, info = self.env.step(action)
        self.success = bool(info.get("success", False))
        return (
            ob,
            sparse_reward(reward) if self.sparse else float(reward),
            terminated,
            truncated,
            info,
        )


def sparse_reward(reward: Any) -> Any:
    """Q-chunking's sparse reward: -1 until the task is solved (OGBench's reward 0), then 0."""
    if np.ndim(reward):
        return np.where(np.asarray(reward) != 0.0, -1.0, 0.0)
    return -1.0 if reward != 0.0 else 0.0


SPARSE = "-sparse-v0"  # suffix of the sparse variant of a task id


def _dense_id(env_id: str) -> str:
    """The OGBench task id of a workspace task id (its sparse variant maps to the same)."""
    return env_id[: -len(SPARSE)] + "-v0" if env_id.endswith(SPARSE) else env_id


def _suite_of(env_id: str) -> str:
    for suite in SUITES:
        if env_id.startswith(suite + "-singletask"):
            return suite
    raise ValueError(f"{env_id!r} is not an OGBench single-task manipulation env ({TASK_IDS[0]})")


TASK_IDS = [
    f"{suite}-singletask-task{k}-v0" for suite in SUITES for k in range(1, TASKS_PER_SUITE + 1)
]
SPARSE_TASK_IDS = [env_id[: -len("-v0")] + SPARSE for env_id in TASK_IDS]


def register() -> None:
    """Register every single-task env as a workspace task (idempotent; ogbench not imported)."""
    from sim.envs import TaskSpec, register_task

    for env_id in TASK_IDS + SPARSE_TASK_IDS:
        register_task(
            env_id,
            TaskSpec(
                "",
                factory=partial(OGBenchEnv, _dense_id(env_id), sparse=env_id.endswith(SPARSE)),
                camera={"fixed": CAMERA},
                success=lambda env: env.success,
                max_episode_steps=SUITES[_suite_of(env_id)],
            ),
        )


# ---- dataset generation ------------------------------------------------------------------
def _oracles(env: gym.Env, kind: str) -> dict[str, Any]:
    """OGBench's oracle per target type ('cube', 'button', 'drawer', 'window')."""
    if kind == "play":
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        kw = {"env": env, "noise": 0.1, "noise_smoothing": 0.5}
        classes = (CubePlanOracle, ButtonPlanOracle, DrawerPlanOracle, WindowPlanOracle)
    else:
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

        kw = {"env": env, "min_norm": 0.4}
        classes = (CubeMarkovOracle, ButtonMarkovOracle, DrawerMarkovOracle, WindowMarkovOracle)
    names = ("cube", "button", "drawer", "window")
    return {name: cls(**kw) for name, cls in zip(names, classes, strict=True)}


NOISY_ACTION_STD = 0.2


def generate(
    env_id: str,
    kind: str,
    episodes: int,
    seed: int,
    out: str | Path,
    episode_steps: int = 1000,
    camera: int | None = None,
    progress: bool = True,
    split_at_success: bool = False,
) -> list[str]:
    """Write `episodes` oracle episodes of `episode_steps` steps to `out`, rewards labelled for
    `env_id` (sparse for a sparse variant); returns the episode names (appended if `out`
    exists). `split_at_success`: each run ends, terminated, at its first solved step (module
    docstring)."""
    import sim
    from sim.spec import env_spec
    from sim.wrappers import CameraObservation, DictObservation

    suite = _suite_of(env_id)
    if kind not in KINDS:
        raise ValueError(f"dataset kind {kind!r} is not one of {KINDS}")
    if episodes < 1 or episode_steps < 2:
        raise ValueError(
            f"need episodes >= 1 and episode_steps >= 2, got {episodes}, {episode_steps}"
        )
    from ogbench.relabel_utils import relabel_dataset

    task_env = sim.make(env_id, camera=camera)  # the spec and the reward labels come from it
    spec = env_spec(task_env, env_id, camera)
    task_base = task_env.unwrapped.env  # OGBench's env in task mode: its target is the task's
    base = OGBenchEnv(f"{suite}-v0", mode="data_collection", terminate_at_goal=False)
    env: gym.Env = DictObservation(base)
    if camera:
        env = CameraObservation(env, width=camera, height=camera, camera={"fixed": CAMERA})
    oracles = _oracles(base.env, kind)
    writer = EpisodeWriter(
        out, obs_specs=spec.obs_specs, action_spec=spec.action_spec, env_args=spec.env_args
    )
    names: list[str] = []
    try:
        for i in tqdm(range(episodes), desc=f"{kind} {env_id}", disable=not progress):
            np.random.seed(seed + i)  # OGBench's oracles draw from numpy's global generator
            rng = np.random.default_rng(seed + i)
            obs, info = env.reset(seed=seed + i)
            oracle = oracles[info["privileged/target_task"]]
            oracle.reset(obs["state"], info)
            steps: dict[str, list] = {"obs": [], "actions": [], "qpos": [], "button_states": []}
            for _ in range(episode_steps):
                action = np.asarray(oracle.select_action(obs["state"], info), np.float64)
                if kind == "noisy":
                    action = action + rng.normal(0.0, NOISY_ACTION_STD, action.shape)
                action = np.clip(action, -1.0, 1.0).astype(np.float32)
                steps["obs"].append(obs)
                steps["actions"].append(action)
                steps["qpos"].append(info["qpos"])
                steps["button_states"].append(info.get("button_states", np.zeros(0)))
                obs, _, _, _, info = env.step(action)
                if oracle.done:  # OGBench's collection: a new target once this one is reached
                    target_ob, target_info = base.env.set_new_target()
                    oracle = oracles[target_info["privileged/target_task"]]
                    oracle.reset(target_ob, target_info)
            labels = {k: np.asarray(steps[k]) for k in ("qpos", "button_states")}
            relabel_dataset(_dense_id(env_id), task_base, labels)
            solved = labels["rewards"] == 0.0
            rewards = (
                sparse_reward(labels["rewards"]) if env_id.endswith(SPARSE) else labels["rewards"]
            )
            obs = {k: np.stack([o[k] for o in steps["obs"]]) for k in spec.obs_specs}
            actions = np.stack(steps["actions"])
            for start, stop, terminated in _runs(solved, split_at_success):
                dones = np.zeros(stop - start, bool)
                dones[-1] = True
                names.append(
                    writer.write_episode(
                        obs={k: v[start:stop] for k, v in obs.items()},
                        actions=actions[start:stop],
                        rewards=np.asarray(rewards[start:stop], np.float32),
                        dones=dones,
                        metadata={
                            "seed": seed + i,
                            "terminated": terminated,
                            "kind": kind,
                            "first_step": start,
                        },
                    )
                )
    finally:
        writer.close()
        env.close()
        task_env.close()
    return names


def _runs(solved: np.ndarray, split: bool) -> list[tuple[int, int, bool]]:
    """(start, stop, terminated) of the episodes one collection run becomes: the whole run, or
    (split) stretches that each end at their first solved step; solved steps right after it
    start nothing (each would be a one-step episode of an already solved task)."""
    n = len(solved)
    if not split:
        return [(0, n, False)]
    runs, start = [], 0
    while start < n:
        if solved[start]:
            start += 1
            continue
        hits = np.flatnonzero(solved[start:])
        stop = start + int(hits[0]) + 1 if hits.size else n
        runs.append((start, stop, bool(hits.size)))
        start = stop
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sim.ogbench",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--env", required=True, help=f"single-task env, e.g. {TASK_IDS[0]}")
    parser.add_argument("--kind", choices=KINDS, default="noisy", help="oracle dataset kind")
    parser.add_argument("--episodes", type=POSITIVE_INT, default=10, help="episodes to generate")
    parser.add_argument(
        "--episode-steps", type=POSITIVE_INT, default=1000, help="steps per episode"
    )
    parser.add_argument("--seed", type=SEED_ARG, default=0, help="first episode seed")
    parser.add_argument("--out", required=True, help="dataset file (.hdf5); appended if it exists")
    parser.add_argument(
        "--camera", type=POSITIVE_INT, default=None, help="add an rgb image of this size"
    )
    parser.add_argument(
        "--split-at-success",
        action="store_true",
        help="end an episode (terminated) at each first solved step, as the task's env does",
    )
    args = parser.parse_args(argv)
    # not at the top: sim.envs imports this module
    from sim.collect import episode_count, interrupted

    before = 0
    try:
        before = episode_count(args.out)
        names = generate(
            args.env,
            args.kind,
            args.episodes,
            args.seed,
            args.out,
            args.episode_steps,
            args.camera,
            split_at_success=args.split_at_success,
        )
    except (ValueError, ImportError, OSError) as err:
        parser.exit(2, f"sim.ogbench: error: {err}\n")
    except KeyboardInterrupt:  # each episode is committed whole as it ends
        line = interrupted("sim.ogbench", args.out, args.seed, args.episodes, before)
        parser.exit(130, line + "\n")
    from episode_dataset import EpisodeReader

    reader = EpisodeReader(args.out)
    rewards = np.concatenate([reader.read_rewards(n) for n in names])
    summary = {
        "out": str(args.out),
        "episodes": len(names),
        "steps": int(rewards.size),
        "solved_fraction": float(np.mean(rewards == 0.0)),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
