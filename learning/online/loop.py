"""The online training loop every online algorithm runs through (PPO, SAC; Dreamer next).

    python -m learning.train --config-name=train_ppo env_id=HalfCheetah-v5

`learning.train.run` hands a config with an `online:` section to `run_online`. Who does what:
- the learner: the algorithm module (`cfg.model`, an `OnlineAlgorithm`) and its optimizers, set
  up by Lightning Fabric (devices, precision, DDP: gradients all-reduced across ranks);
- the player: the same module's weights, unwrapped, acting under `torch.inference_mode` on this
  rank's vector env (seeds `seed + 1000 * rank + i`); the env steps here, never in a
  LightningModule's `training_step`;
- the algorithm: `act`, `observe` (statistics, storage), `ready`, `update` (its maths);
- this loop: envs, evaluation every `online.eval_every` env steps with deterministic actions on a
  separate env (fixed seeds `online.eval_seed + i`), TensorBoard scalars, a Rich progress bar,
  checkpoints (`<run_dir>/checkpoints/last.ckpt`, plain tensors and containers, loadable with
  `weights_only=True` and by `learning.checkpoint.load_model`, so `learning.export` reads them)
  and resume from `ckpt_path=`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.utils import get_object, instantiate
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY, CheckpointError, torch_load
from learning.data.spec import model_dims
from learning.errors import ConfigError
from learning.online.algorithm import OnlineAlgorithm, Transition

log = logging.getLogger(__name__)

ONLINE_KEY = "roboloop_online"  # {"algorithm", "env_steps", "iteration", "torch_rng"}


def make_env(env_id: str, num_envs: int, camera: Any = None) -> gym.vector.VectorEnv:
    """The one place the loop builds envs: `sim.make_vec` (`num_envs` copies of
    `sim.make(env_id, camera=camera)`, dict observations, stepped as one batch); done envs
    reset in the same step, the observation reached in `info["final_obs"]` (truncation
    bootstrapping)."""
    from sim.envs import task_spec
    from sim.vector import make_vec

    try:
        task_spec(env_id)
    except ValueError as err:
        raise ConfigError(f"env_id={env_id}: {err}") from None
    return make_vec(env_id, num_envs, camera=camera)


def _to_torch(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A copy: a vector env may write its next observations into the same arrays."""
    return {k: torch.tensor(v, device=device) for k, v in obs.items()}


def _next_obs(obs: dict[str, np.ndarray], info: dict[str, Any], done: np.ndarray) -> dict:
    """Each env's real next observation: the final one for envs that just reset (sim.make_vec's
    dense `final_obs`, every row the observation that step reached)."""
    return info["final_obs"] if done.any() else obs


def evaluate(
    algo: OnlineAlgorithm,
    env_id: str,
    episodes: int,
    seed: int,
    device: torch.device,
    camera: Any = None,
) -> dict[str, float]:
    """Mean return and length of `episodes` episodes with deterministic actions, episode i on
    seed `seed + i` (the same seeds at every evaluation and in every run)."""
    env = make_env(env_id, episodes, camera)
    with contextlib.ExitStack() as stack:
        stack.callback(env.close)
        stack.enter_context(algo.acting_context())
        obs, _ = env.reset(seed=[seed + i for i in range(episodes)])
        returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            with torch.inference_mode():
                actions, _ = algo.act(_to_torch(obs, device), deterministic=True)
            obs, rewards, term, trunc, _ = env.step(actions.cpu().numpy())
            returns += rewards * running
            lengths += running
            running &= ~(term | trunc)
    return {"eval/return": float(returns.mean()), "eval/length": float(lengths.mean())}


class _Progress:
    """A Rich bar over env steps (off: a no-op), showing the last episode return and SPS."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]online"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps {task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("online", total=total, completed=start, info="")
            self.bar.start()

    def update(self, steps: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=steps, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _resume_state(path: str, algorithm: str) -> dict[str, Any]:
    """The checkpoint at `path` if it is an online checkpoint of `algorithm`; else one line."""
    ckpt = torch_load(path)
    online = ckpt.get(ONLINE_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(online, dict):
        raise CheckpointError(f"{path}: not an online (learning.online) checkpoint")
    if online.get("algorithm") != algorithm:
        raise CheckpointError(
            f"{path}: a {online.get('algorithm')!r} checkpoint; this run trains {algorithm!r}"
        )
    return ckpt


def _save(path: Path, ckpt: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # never a half-written last.ckpt


def storage_path(ckpt: Path, rank: int) -> Path:
    """Where rank `rank`'s storage (SAC's replay buffer) is kept beside checkpoint `ckpt`:
    a file of its own, since a 1M-row buffer would make every checkpoint hundreds of MB."""
    return ckpt.with_name(f"{ckpt.stem}.storage.rank{rank}.pt")


def _restore_storage(algo: OnlineAlgorithm, storage: Any, path: Path) -> None:
    """Resume with the saved replay buffer; without its file, say so and start it empty."""
    if algo.storage_state(storage) is None:
        return
    if not path.is_file():
        log.warning("resume: %s is missing: the replay buffer starts empty", path)
        return
    try:
        algo.load_storage_state(storage, torch_load(str(path)))
    except (KeyError, RuntimeError, ValueError) as err:
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: does not fit this run's storage ({first})") from None
    log.info("resume: %d transitions restored from %s", len(storage), path)


def run_online(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train `cfg.model` (an OnlineAlgorithm) on `cfg.env_id` as configured; returns
    {"run_dir", "best_ckpt", "last_ckpt", "metrics"} like `learning.train.run`."""
    on = cfg.online
    algo_cls = get_object(cfg.model._target_)
    if not (isinstance(algo_cls, type) and issubclass(algo_cls, OnlineAlgorithm)):
        raise ConfigError(f"model._target_={cfg.model._target_} is not an OnlineAlgorithm")
    if str(on.precision) not in algo_cls.precisions:  # never a precision silently not applied
        raise ConfigError(
            f"online.precision={on.precision}: {algo_cls.algorithm} runs in "
            f"{', '.join(algo_cls.precisions)}"
        )
    fabric = Fabric(
        accelerator=on.accelerator,
        devices=on.devices,
        num_nodes=on.num_nodes,
        strategy=on.strategy,
        precision=on.precision,
        loggers=TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version=""),
    )
    fabric.launch()
    rank, device = fabric.global_rank, fabric.device
    fabric.seed_everything(int(cfg.seed) + rank)

    num_envs = int(on.num_envs)
    env = make_env(str(cfg.env_id), num_envs, on.get("camera"))
    try:
        return _train(cfg, run_dir, fabric, algo_cls, env, rank, device)
    finally:
        env.close()


def _train(
    cfg: DictConfig,
    run_dir: Path,
    fabric: Fabric,
    algo_cls: type[OnlineAlgorithm],
    env: gym.vector.VectorEnv,
    rank: int,
    device: torch.device,
) -> dict[str, Any]:
    from sim.spec import env_spec

    on, env_id = cfg.online, str(cfg.env_id)
    algo_cls.check_spaces(env.single_observation_space, env.single_action_space, env_id)
    spec = env_spec(env, env_id)
    dims = model_dims(spec.obs_specs, spec.action_spec, spec.env_args)
    resume = _resume_state(str(cfg.ckpt_path), algo_cls.algorithm) if cfg.ckpt_path else None
    algo: OnlineAlgorithm = instantiate(cfg.model, _convert_="all", **dims)
    optimizers = algo.configure_optimizers()
    if resume is not None:
        try:
            algo.load_state_dict(resume["state_dict"])
            for opt, state in zip(optimizers, resume["optimizer_states"], strict=True):
                opt.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as err:
            first = (str(err).splitlines() or [""])[0]
            raise CheckpointError(f"{cfg.ckpt_path}: does not fit this model ({first})") from None
    learner, *optimizers = fabric.setup(algo, *optimizers)
    for name in algo.forward_methods:
        learner.mark_forward_method(name)
    player = algo.to(device)  # the same parameters, outside the strategy's wrapper

    storage = player.make_storage(num_envs=env.num_envs, device=device, rank=rank)
    if resume is not None:
        _restore_storage(player, storage, storage_path(Path(cfg.ckpt_path), rank))
    world = fabric.world_size
    # steps_per_iteration is per rank: N data-parallel ranks collect N times the env steps
    # for the same number of updates (a batch N times larger).
    total = int(cfg.training.num_iterations) * int(cfg.training.steps_per_iteration) * world
    env_steps, iteration = 0, 0
    if resume is not None:
        env_steps = int(resume[ONLINE_KEY]["env_steps"])
        iteration = int(resume[ONLINE_KEY]["iteration"])
        torch.set_rng_state(resume[ONLINE_KEY]["torch_rng"])
    seeds = [int(cfg.seed) + 1000 * rank + 7919 * iteration + i for i in range(env.num_envs)]
    obs, _ = env.reset(seed=seeds)
    obs_t = _to_torch(obs, device)
    ep_return, ep_length = np.zeros(env.num_envs), np.zeros(env.num_envs, dtype=np.int64)
    finished: list[tuple[float, int]] = []
    eval_every, next_eval = int(on.eval_every), 0
    if eval_every:
        next_eval = (env_steps // eval_every + 1) * eval_every
    # Scalars cost one host sync: every update (0) or once per log_every env steps (SAC
    # updates every step, where logging each one cost ~15% of the step time).
    log_every = int(on.log_every)
    next_log = env_steps
    metrics: dict[str, float] = {}
    last = run_dir / "checkpoints" / "last.ckpt"
    progress = _Progress(total, env_steps, bool(on.progress_bar) and fabric.is_global_zero)
    start_time, start_steps = time.perf_counter(), env_steps
    updated_at = env_steps

    def run_evaluation() -> dict[str, float]:
        episodes, seed = int(on.eval_episodes), int(on.eval_seed)
        return evaluate(player, env_id, episodes, seed, device, on.get("camera"))

    def checkpoint() -> None:
        state = player.storage_state(storage)  # each rank its own (replay buffer)
        if state is not None:
            _save(storage_path(last, rank), state)
        if fabric.is_global_zero:
            _save(
                last,
                {
                    CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True),
                    MODEL_KWARGS_KEY: dims,
                    "state_dict": player.state_dict(),
                    "optimizer_states": [o.state_dict() for o in optimizers],
                    ONLINE_KEY: {
                        "algorithm": algo_cls.algorithm,
                        "env_steps": env_steps,
                        "iteration": iteration,
                        "torch_rng": torch.get_rng_state(),
                    },
                },
            )
        fabric.barrier()

    try:
        while env_steps < total:
            with torch.inference_mode():
                actions, extras = player.act(obs_t)
            next_obs, rewards, term, trunc, info = env.step(actions.cpu().numpy())
            done = term | trunc
            real_next = _next_obs(next_obs, info, done)
            next_t = _to_torch(next_obs, device)
            with torch.inference_mode():
                player.observe(
                    storage,
                    Transition(
                        obs=obs_t,
                        actions=actions,
                        extras=extras,
                        rewards=torch.as_tensor(rewards, dtype=torch.float32, device=device),
                        terminated=torch.as_tensor(term, device=device),
                        truncated=torch.as_tensor(trunc, device=device),
                        next_obs=next_t if real_next is next_obs else _to_torch(real_next, device),
                    ),
                )
            obs_t = next_t
            env_steps += env.num_envs * world
            ep_return += rewards
            ep_length += 1
            for i in np.flatnonzero(done):
                finished.append((float(ep_return[i]), int(ep_length[i])))
                ep_return[i], ep_length[i] = 0.0, 0

            if player.ready(storage, env_steps):
                # progress at the previous update (PPO: 0 for the first, (N-1)/N for the last)
                scalars = player.update(fabric, learner, optimizers, storage, updated_at / total)
                updated_at = env_steps
                iteration += 1
                if env_steps >= next_log:
                    next_log = env_steps + log_every
                    # One host sync per logged update, here, never inside an update.
                    names = list(scalars)
                    values = torch.stack([scalars[k].float().cpu() for k in names]).tolist()
                    metrics = dict(zip(names, values, strict=True))
                    elapsed = time.perf_counter() - start_time
                    metrics["time/sps"] = (env_steps - start_steps) / max(elapsed, 1e-9)
                    if finished:
                        returns, lengths = zip(*finished, strict=True)
                        metrics["rollout/episode_return"] = float(np.mean(returns))
                        metrics["rollout/episode_length"] = float(np.mean(lengths))
                        finished.clear()
                    fabric.log_dict(metrics, step=env_steps)
                    shown = metrics.get("rollout/episode_return", math.nan)
                    progress.update(env_steps, f"return {shown:.1f} sps {metrics['time/sps']:.0f}")
                if on.checkpoint_every and iteration % int(on.checkpoint_every) == 0:
                    checkpoint()
            if eval_every and env_steps >= next_eval:
                next_eval += eval_every
                if fabric.is_global_zero:
                    result = run_evaluation()
                    fabric.log_dict(result, step=env_steps)
                    metrics.update(result)
        progress.update(env_steps, "done")
    finally:
        progress.close()
    if fabric.is_global_zero and int(on.eval_episodes):
        result = run_evaluation()
        fabric.log_dict(result, step=env_steps)
        metrics.update(result)
    metrics["time/sps"] = (env_steps - start_steps) / max(time.perf_counter() - start_time, 1e-9)
    checkpoint()
    for logger in fabric.loggers:
        logger.finalize("success")
    result = {
        "run_dir": str(run_dir),
        "best_ckpt": None,
        "last_ckpt": str(last),
        "metrics": metrics,
        "env_steps": env_steps,
    }
    log.info("online run finished: %s", {k: v for k, v in result.items() if k != "metrics"})
    return result
