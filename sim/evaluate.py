"""Roll a policy out in a task and score it against random and expert on the same seeds.

    python -m sim.evaluate --env Reacher-v5 --policy policy.onnx [--episodes 10] [--seed 10000]
        [--baselines] [--video ep0.mp4] [--camera N]

prints one JSON line: mean/std return, success rate and steps over the episodes (episode i on
seed + i), with --baselines the random return on the same seeds (and, where the task has a
scripted expert, the expert's and the normalized score), with --video the file of episode 0.
An image policy gets the camera its metadata names.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import sim
from episode_dataset.ranges import POSITIVE_INT, SEED_ARG, HelpFormatter, one_line
from roboloop_runtime.policy import Policy
from sim.envs import task_spec
from sim.experts import make_expert_policy
from sim.video import VIDEO_SIZE, EpisodeVideo, why_not_filmable

__all__ = [
    "EvalResult",
    "RandomPolicy",
    "evaluate_policy",
    "make_expert_policy",
    "named_policy",
    "normalized_score",
    "random_policy",
]


@dataclass
class EvalResult:
    returns: list[float]
    successes: list[bool]
    steps: list[int]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "success_rate": self.success_rate,
        }


class RandomPolicy:
    """The random baseline: uniform actions in [low, high] (arrays of the action shape), seeded
    (independent of the env's RNG). Sim evaluation, collection and the sim bridge use this one."""

    def __init__(self, low: Any, high: Any, seed: int = 0) -> None:
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if self.low.ndim != 1 or self.low.shape != self.high.shape:
            raise ValueError(
                f"RandomPolicy needs 1-D low/high of the action shape, got {self.low.shape} "
                f"and {self.high.shape}"
            )
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Stateless apart from the generator, which keeps running across episodes."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def random_policy(env: Any, seed: int = 0) -> RandomPolicy:
    """RandomPolicy over `env.action_space`."""
    return RandomPolicy(env.action_space.low, env.action_space.high, seed)


def named_policy(name: str, env_id: str, action_space: Any, seed: int) -> Policy:
    """`expert` (the task's scripted expert), `random` (uniform in `action_space`, seeded) or
    a `.onnx` file (roboloop_runtime's OnnxPolicy: any exported policy, actor or chunk
    model); anything else is a one-line ValueError."""
    if name == "expert":
        return make_expert_policy(env_id)
    if name == "random":
        return RandomPolicy(action_space.low, action_space.high, seed)
    if name.endswith(".onnx"):
        from roboloop_runtime import OnnxPolicy  # onnxruntime, imported only when used

        if not Path(name).is_file():
            raise ValueError(f"--policy {name}: no such ONNX file")
        return OnnxPolicy(name, seed=seed)
    raise ValueError(f"--policy must be expert, random or a .onnx file, got {name!r}")


def evaluate_policy(
    env_id: str,
    policy: Policy,
    episodes: int,
    seed: int,
    camera: int | tuple[int, int] | None = None,
    video: tuple[Path, int] | None = None,
) -> EvalResult:
    """Run `episodes` episodes with reset seeds seed, seed+1, ...; success = last step's flag.
    `video=(path, size)` films episode 0: its reset and every step, at the control rate."""
    env = sim.make(env_id, camera=camera)
    result = EvalResult([], [], [])
    try:
        for i in range(episodes):
            filming = video is not None and i == 0
            with (
                EpisodeVideo(video[0], env, env_id, video[1]) if filming else nullcontext()
            ) as film:
                obs, info = env.reset(seed=seed + i)
                policy.reset()
                if film is not None:
                    film.frame()
                total, steps, done = 0.0, 0, False
                while not done:
                    action = np.asarray(policy.select_action(obs), dtype=np.float32)
                    obs, reward, terminated, truncated, info = env.step(action)
                    total, steps, done = total + reward, steps + 1, terminated or truncated
                    if film is not None:
                        film.frame()
            result.returns.append(total)
            result.steps.append(steps)
            result.successes.append(bool(info.get("is_success", False)))
    finally:
        env.close()
    return result


def normalized_score(policy_return: float, random_return: float, expert_return: float) -> float:
    """(policy - random) / (expert - random): 0 = random, 1 = expert (returns may be negative)."""
    span = expert_return - random_return
    if abs(span) < 1e-9:
        raise ValueError("expert and random returns are equal: normalized score is undefined")
    return (policy_return - random_return) / span


def _even_size(text: str) -> int:
    size = POSITIVE_INT(text)
    if size % 2:  # H.264's yuv420p halves the colour planes
        raise argparse.ArgumentTypeError(f"must be even, got {size}")
    return int(size)


def _policy_camera(policy: Policy) -> tuple[int, int] | None:
    """(width, height) of the image an exported policy reads, None for a state policy."""
    observations = getattr(getattr(policy, "metadata", None), "observations", None) or {}
    images = [spec.shape for spec in observations.values() if spec.feature_type == "image"]
    return (int(images[0][1]), int(images[0][0])) if images else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sim.evaluate",
        description="Roll a policy (an exported .onnx, expert or random) out in a sim task.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--env", required=True, help="task id, e.g. Reacher-v5")
    parser.add_argument("--policy", required=True, help="PATH.onnx | expert | random")
    parser.add_argument("--episodes", type=POSITIVE_INT, default=10, help="episodes to run")
    parser.add_argument("--seed", type=SEED_ARG, default=10000, help="episode i on seed + i")
    parser.add_argument(
        "--camera", type=POSITIVE_INT, default=None, help="default: the policy's image size"
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="random (and the scripted expert where the task has one) on the same seeds, and "
        "the normalized score",
    )
    parser.add_argument("--video", default=None, help="film episode 0 to this .mp4 file")
    parser.add_argument("--video-size", type=_even_size, default=VIDEO_SIZE, help="pixels a side")
    args = parser.parse_args(argv)
    try:
        task_spec(args.env)
        if args.video is not None and (why := why_not_filmable(args.env)):
            raise ValueError(f"--video: {why}")
        env = sim.make(args.env)
        space = env.action_space
        env.close()
        policy = named_policy(args.policy, args.env, space, args.seed)
        camera = args.camera or _policy_camera(policy)
        video = (Path(args.video), args.video_size) if args.video else None
        result = evaluate_policy(args.env, policy, args.episodes, args.seed, camera, video)
        out: dict[str, Any] = {
            "env": args.env,
            "policy": args.policy,
            "episodes": args.episodes,
            "seed": args.seed,
            "mean_return": result.mean_return,
            "std_return": result.std_return,
            "success_rate": result.success_rate,
            "mean_steps": float(np.mean(result.steps)),
        }
        if args.baselines:  # the expert where the task has one, and then the score
            names = ("random", "expert") if task_spec(args.env).has_expert else ("random",)
            for name in names:
                baseline = named_policy(name, args.env, space, 0)
                out[f"{name}_return"] = evaluate_policy(
                    args.env, baseline, args.episodes, args.seed
                ).mean_return
            if "expert_return" in out:
                out["normalized_score"] = normalized_score(
                    result.mean_return, out["random_return"], out["expert_return"]
                )
        if video is not None:
            out["video"] = str(video[0])
    except (ValueError, RuntimeError, OSError) as err:  # a bad task, model, input or file
        parser.exit(2, f"sim.evaluate: error: {one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, "sim.evaluate: interrupted\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
