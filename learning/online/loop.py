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
  separate env (fixed seeds `online.eval_seed + i`), scalars to the `logger` tracker
  (TensorBoard by default: learning/trackers.py), a Rich progress bar,
  checkpoints (`<run_dir>/checkpoints/last.ckpt`, plain tensors and containers, loadable with
  `weights_only=True` and by `learning.checkpoint.load_model`, so `learning.export` reads them)
  and resume from `ckpt_path=`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.utils import get_object, instantiate
from lightning.fabric import Fabric
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.distributed import ReduceOp

from episode_dataset import whole_or_absent
from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY, CheckpointError, torch_load
from learning.data.spec import model_dims
from learning.errors import ConfigError
from learning.online.algorithm import OnlineAlgorithm, Transition
from learning.trackers import tracked
from sim.video import VIDEO_SIZE, EpisodeVideo, why_not_filmable

log = logging.getLogger(__name__)

ONLINE_KEY = "roboloop_online"  # {"algorithm", "env_steps", "iteration", "torch_rng"}


def make_env(env_id: str, num_envs: int, camera: Any = None) -> gym.vector.VectorEnv:
    """The one place the loop builds envs: `sim.make_vec` (`num_envs` copies of
    `sim.make(env_id, camera=camera)`, dict observations, stepped as one batch); done envs
    reset in the same step, the observation reached in `info["final_obs"]` (truncation
    bootstrapping)."""
    from sim.dmc import TaskUnavailableError
    from sim.envs import task_spec
    from sim.vector import make_vec

    try:
        task_spec(env_id)
    except ValueError as err:
        raise ConfigError(f"env_id={env_id}: {err}") from None
    try:
        return make_vec(env_id, num_envs, camera=camera)
    except (ImportError, TaskUnavailableError) as err:  # a DMC task without its dm_control
        raise ConfigError(f"env_id={env_id}: {err}") from None


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
    video: tuple[Path, int] | None = None,
) -> dict[str, float]:
    """Mean return and length of `episodes` episodes with deterministic actions, episode i on
    seed `seed + i` (the same seeds at every evaluation and in every run); `eval/success` too
    where the task reports success (`info["is_success"]`): the rate of episodes whose last step
    succeeded (as sim.evaluate counts it). `video=(path, size)` films episode 0 to `path`."""
    env = make_env(env_id, episodes, camera)
    success: np.ndarray | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(env.close)
        stack.enter_context(algo.acting_context())
        obs, _ = env.reset(seed=[seed + i for i in range(episodes)])
        film = None
        if video is not None:
            film = stack.enter_context(EpisodeVideo(video[0], env.envs[0], env_id, video[1]))
            film.frame()
        returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            with torch.inference_mode():
                actions, _ = algo.act(_to_torch(obs, device), deterministic=True)
            obs, rewards, term, trunc, info = env.step(actions.cpu().numpy())
            returns += rewards * running
            lengths += running
            ending = running & (term | trunc)
            if film is not None and running[0] and not ending[0]:  # an ended env is reset
                film.frame()
            if "is_success" in info:
                success = np.zeros(episodes, dtype=bool) if success is None else success
                success[ending] = np.asarray(info["is_success"], dtype=bool)[ending]
            running &= ~ending
    result = {"eval/return": float(returns.mean()), "eval/length": float(lengths.mean())}
    if success is not None:
        result["eval/success"] = float(success.mean())
    return result


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


def _check_video(on: DictConfig, env_id: str) -> None:
    """`online.capture_video` / `video_size`, one line before any work."""
    capture = on.get("capture_video", False)
    if not isinstance(capture, bool):
        raise ConfigError(f"online.capture_video={capture}: must be true or false")
    if not capture:
        return
    if not int(on.eval_episodes):
        raise ConfigError("online.capture_video=true films evaluations: online.eval_episodes is 0")
    size = int(on.get("video_size", VIDEO_SIZE))
    if size % 2:  # H.264's yuv420p halves the colour planes
        raise ConfigError(f"online.video_size={size}: must be even")
    try:
        why_not = why_not_filmable(env_id)
    except ValueError:  # an unknown env_id: make_env says so
        return
    if why_not:
        raise ConfigError(f"online.capture_video=true: {why_not}")


class _StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM during a run: stop where a checkpoint is whole (the next env
    or gradient step; an algorithm without stored transitions, PPO, after its next update),
    write last.ckpt, then end as the signal would (KeyboardInterrupt, exit 143). Dying inside
    an update instead lost everything since the last periodic checkpoint (Dreamer's is hours
    of CPU apart here). A second signal acts at once, as before. Data-parallel ranks agree
    every CHECK_EVERY loop steps (the same steps on every rank, one all-reduce), so that all
    stop at the same step whichever of them got the signal (a scheduler may signal rank 0
    only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    CHECK_EVERY = 10

    def __init__(self, fabric: Fabric) -> None:
        self.signum: int | None = None  # this process's signal
        self.agreed: int | None = None  # the signal every rank stops for
        self._fabric = fabric
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # where handlers can be set
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:  # ignored (nohup, a background job): stays
                    self._previous[sig] = previous
                    signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _request(self, signum: int, frame: object) -> None:
        self.signum = signum
        self._restore()
        log.warning(
            "%s: stopping at the next whole step to write last.ckpt (again to stop at once)",
            signal.Signals(signum).name,
        )

    def requested(self, step: int) -> bool:
        """Whether the run stops, asked at loop step `step` (counted alike on every rank)."""
        if self.agreed is None:
            if self._fabric.world_size == 1:
                self.agreed = self.signum
            elif step % self.CHECK_EVERY == 0:
                mine = torch.tensor(float(self.signum or 0))
                agreed = int(self._fabric.all_reduce(mine, reduce_op=ReduceOp.MAX).item())
                self.agreed = agreed or None
        return self.agreed is not None

    def end(self) -> None:
        """End the run as the signal does by default, after the checkpoint."""
        if self.agreed == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + int(self.agreed or 0))


def _save(path: Path, ckpt: dict[str, Any]) -> None:
    """Write `path` whole or not at all: a full disk or a file-size limit is one line, and the
    checkpoint written before stays as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a file object: a failed write surfaces as its OSError
        with whole_or_absent(path) as tmp, open(tmp, "wb") as f:
            torch.save(ckpt, f)
    except (OSError, RuntimeError) as failed:
        # torch's zip writer reports a failed write as a RuntimeError raised from it
        err = failed if isinstance(failed, OSError) else failed.__context__
        if not isinstance(err, OSError):
            raise
        kept = "the previous one is kept" if path.exists() else "none was written before"
        raise CheckpointError(f"{path}: cannot write it ({err.strerror or err}); {kept}") from None


# The global step a storage file was written at, so that a resume can tell it from the
# checkpoint's (they are two files, written one after the other). Files without it load as before.
STORAGE_STEP_KEY = "roboloop_global_step"


def storage_path(ckpt: Path, rank: int) -> Path:
    """Where rank `rank`'s storage (SAC's replay buffer) is kept beside checkpoint `ckpt`:
    a file of its own, since a 1M-row buffer would make every checkpoint hundreds of MB."""
    return ckpt.with_name(f"{ckpt.stem}.storage.rank{rank}.pt")


def _first_problem(err: BaseException) -> str:
    """The first line of `err` that names a problem: torch's load_state_dict leads with a
    heading ("Error(s) in loading state_dict for PPO:") and lists the mismatches below it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else type(err).__name__


def _restore_storage(algo: OnlineAlgorithm, storage: Any, path: Path, step: int) -> bool:
    """Resume with the replay buffer saved with the checkpoint of global step `step` (True);
    without its file, or with one written at another step, say so and start it empty (False)."""
    if algo.storage_state(storage) is None:
        return False
    if not path.is_file():
        log.warning("resume: %s is missing: the replay buffer starts empty", path)
        return False
    state = torch_load(str(path))
    written_at = state.pop(STORAGE_STEP_KEY, step) if isinstance(state, dict) else step
    if written_at != step:  # e.g. killed between the buffer's write and the checkpoint's
        log.warning(
            "resume: %s was written at step %s, the checkpoint at step %d: the replay buffer "
            "starts empty",
            path,
            written_at,
            step,
        )
        return False
    try:
        algo.load_storage_state(storage, state)
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: does not fit this run's storage ({_first_problem(err)})"
        ) from None
    log.info("resume: %d transitions restored from %s", len(storage), path)
    return True


class _EarlyStopping:
    """The monitored evaluation metric (`online.early_stopping`: monitor, mode max|min,
    patience, min_delta; no monitor: off): its best value (best.ckpt is written at each new
    one) and the evaluations since, which end the env phase at `patience` (0: never)."""

    def __init__(self, spec: Any, state: dict[str, Any]) -> None:
        spec = spec or {}
        self.monitor = spec.get("monitor")
        self.mode = str(spec.get("mode", "max"))
        self.patience, self.min_delta = (
            int(spec.get("patience", 0)),
            float(spec.get("min_delta", 0)),
        )
        if self.mode not in ("max", "min") or self.patience < 0:
            raise ConfigError(
                f"online.early_stopping: mode={self.mode} (max|min), patience={self.patience} "
                "(>= 0)"
            )
        self.best: float | None = state.get("best")
        self.bad = int(state.get("bad_evals", 0))

    def improved(self, result: dict[str, float]) -> bool:
        """Take in an evaluation; True when the monitored metric reached a new best."""
        if self.monitor is None:
            return False
        if self.monitor not in result:
            raise ConfigError(
                f"online.early_stopping.monitor={self.monitor}: the evaluation reports "
                f"{sorted(result)}"
            )
        value, best = float(result[self.monitor]), self.best
        sign = 1.0 if self.mode == "max" else -1.0
        if best is None or sign * (value - best) > self.min_delta:
            self.best, self.bad = value, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience


def run_online(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train `cfg.model` (an OnlineAlgorithm) on `cfg.env_id` as configured; returns
    {"run_dir", "best_ckpt", "last_ckpt", "metrics"} like `learning.train.run`."""
    on = cfg.online
    algo_cls = get_object(cfg.model._target_)
    if not (isinstance(algo_cls, type) and issubclass(algo_cls, OnlineAlgorithm)):
        raise ConfigError(f"model._target_={cfg.model._target_} is not an OnlineAlgorithm")
    algo_cls.check_config(cfg)  # the algorithm's own rules, before anything is built
    if str(on.precision) not in algo_cls.precisions:  # never a precision silently not applied
        raise ConfigError(
            f"online.precision={on.precision}: {algo_cls.algorithm} runs in "
            f"{', '.join(algo_cls.precisions)}"
        )
    offline_steps = int(on.get("offline_steps") or 0)
    if offline_steps:
        if algo_cls.gradient_step is OnlineAlgorithm.gradient_step:
            raise ConfigError(
                f"online.offline_steps={offline_steps}: {algo_cls.algorithm} has no offline phase"
            )
        if not cfg.get("dataset"):
            raise ConfigError(f"online.offline_steps={offline_steps} needs dataset=<episode file>")
    if cfg.get("dataset") and not Path(str(cfg.dataset)).is_file():
        raise ConfigError(f"dataset={cfg.dataset}: no such file")
    stopping = on.get("early_stopping") or {}
    monitor = stopping.get("monitor")
    if monitor is not None and int(stopping.get("patience", 0)) and not int(on.eval_episodes):
        raise ConfigError(
            f"online.early_stopping.patience={stopping.patience} needs evaluations: "
            "online.eval_episodes is 0"
        )
    _check_video(on, str(cfg.env_id))
    if monitor == "eval/success":
        from sim.envs import task_spec

        try:
            reports = task_spec(str(cfg.env_id)).success is not None
        except ValueError:  # an unknown env_id: make_env says so
            reports = True
        if not reports:
            raise ConfigError(
                f"online.early_stopping.monitor=eval/success: {cfg.env_id} reports no "
                "success (monitor eval/return instead)"
            )
    with tracked(cfg, run_dir, path="fabric") as logger:
        fabric = Fabric(
            accelerator=on.accelerator,
            devices=on.devices,
            num_nodes=on.num_nodes,
            strategy=on.strategy,
            precision=on.precision,
            loggers=logger,
        )
        fabric.launch()
        rank, device = fabric.global_rank, fabric.device
        fabric.seed_everything(int(cfg.seed) + rank)

        num_envs = int(on.num_envs)
        env = make_env(str(cfg.env_id), num_envs, on.get("camera"))
        try:
            with _StopRequest(fabric) as stop:
                return _train(cfg, run_dir, fabric, algo_cls, env, rank, device, stop)
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
    stop: _StopRequest,
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
            raise CheckpointError(
                f"{cfg.ckpt_path}: does not fit this model ({_first_problem(err)})"
            ) from None
    learner, *optimizers = fabric.setup(algo, *optimizers)
    for name in algo.forward_methods:
        learner.mark_forward_method(name)
    player = algo.to(device)  # the same parameters, outside the strategy's wrapper

    storage = player.make_storage(num_envs=env.num_envs, device=device, rank=rank)
    restored = False
    if resume is not None:
        at = resume[ONLINE_KEY]
        restored = _restore_storage(
            player,
            storage,
            storage_path(Path(cfg.ckpt_path), rank),
            int(at.get("offline_steps", 0)) + int(at["env_steps"]),
        )
    if cfg.get("dataset") and not restored:  # a resumed storage holds its dataset already
        info = player.load_offline(storage, str(cfg.dataset))
        log.info("dataset %s: %s", cfg.dataset, info)
    world = fabric.world_size
    # steps_per_iteration is per rank: N data-parallel ranks collect N times the env steps
    # for the same number of updates (a batch N times larger).
    total = int(cfg.training.num_iterations) * int(cfg.training.steps_per_iteration) * world
    # One global step for logging, evaluation and the progress bar: the offline gradient steps,
    # then offline_steps + env steps.
    offline_total = int(on.get("offline_steps") or 0)
    env_steps, iteration, offline_done = 0, 0, 0
    saved: dict[str, Any] = {}
    if resume is not None:
        saved = resume[ONLINE_KEY]
        env_steps, iteration = int(saved["env_steps"]), int(saved["iteration"])
        offline_done = int(saved.get("offline_steps", 0))
        torch.set_rng_state(saved["torch_rng"])
        if env_steps >= total and offline_done >= offline_total:
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path}: the run already took {env_steps} env steps and "
                f"{offline_done} offline steps, all this config asks ({total} = "
                "training.num_iterations x training.steps_per_iteration x ranks, and "
                f"online.offline_steps={offline_total}): raise them to train on"
            )
    stopping = _EarlyStopping(on.get("early_stopping"), saved)
    seeds = [int(cfg.seed) + 1000 * rank + 7919 * iteration + i for i in range(env.num_envs)]
    obs, _ = env.reset(seed=seeds)
    obs_t = _to_torch(obs, device)
    ep_return, ep_length = np.zeros(env.num_envs), np.zeros(env.num_envs, dtype=np.int64)
    finished: list[tuple[float, int]] = []

    def global_step() -> int:
        return offline_done + env_steps

    # eval_episodes 0: no evaluation at all (eval_every is then moot)
    eval_every = int(on.eval_every) if int(on.eval_episodes) else 0
    next_eval = 0
    checkpoint_every = int(on.checkpoint_every or 0)  # read once, not at every step
    if eval_every:
        next_eval = (global_step() // eval_every + 1) * eval_every
    # Scalars cost one host sync: every update (0) or once per log_every global steps (SAC
    # updates every step, where logging each one cost ~15% of the step time).
    log_every = int(on.log_every)
    next_log = global_step()
    metrics: dict[str, float] = {}
    last = run_dir / "checkpoints" / "last.ckpt"
    best = run_dir / "checkpoints" / "best.ckpt"
    progress = _Progress(
        offline_total + total, global_step(), bool(on.progress_bar) and fabric.is_global_zero
    )
    start_time, start_steps = time.perf_counter(), env_steps
    updated_at = env_steps
    evaluated_at = -1
    phase_time = {"offline": 0.0, "online": 0.0}

    def state(path: Path) -> None:
        _save(
            path,
            {
                CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True),
                MODEL_KWARGS_KEY: dims,
                "state_dict": player.state_dict(),
                "optimizer_states": [o.state_dict() for o in optimizers],
                ONLINE_KEY: {
                    "algorithm": algo_cls.algorithm,
                    "env_steps": env_steps,
                    "iteration": iteration,
                    "offline_steps": offline_done,
                    "phase": "offline" if offline_done < offline_total else "online",
                    "best": stopping.best,
                    "bad_evals": stopping.bad,
                    "torch_rng": torch.get_rng_state(),
                },
            },
        )

    def checkpoint() -> None:
        storage_state = player.storage_state(storage)  # each rank its own (replay buffer)
        if storage_state is not None:
            _save(storage_path(last, rank), {**storage_state, STORAGE_STEP_KEY: global_step()})
        if fabric.is_global_zero:
            state(last)
        fabric.barrier()

    def log_scalars(scalars: dict[str, torch.Tensor], steps_done: int, began: float) -> None:
        nonlocal metrics, next_log
        next_log = global_step() + log_every
        # One host sync per logged update, here, never inside an update.
        names = list(scalars)
        values = torch.stack([scalars[k].float().cpu() for k in names]).tolist()
        metrics = dict(zip(names, values, strict=True))
        metrics["time/sps"] = steps_done / max(time.perf_counter() - began, 1e-9)
        if finished:
            returns, lengths = zip(*finished, strict=True)
            metrics["rollout/episode_return"] = float(np.mean(returns))
            metrics["rollout/episode_length"] = float(np.mean(lengths))
            finished.clear()
        fabric.log_dict(metrics, step=global_step())
        shown = metrics.get("rollout/episode_return", math.nan)
        progress.update(global_step(), f"return {shown:.1f} sps {metrics['time/sps']:.0f}")

    filming = bool(on.get("capture_video"))

    def run_evaluation() -> bool:
        """Evaluate (rank 0), keep best.ckpt; whether early stopping ends the env phase."""
        nonlocal evaluated_at, filming
        evaluated_at = global_step()
        end_phase = False
        if fabric.is_global_zero:
            episodes, seed = int(on.eval_episodes), int(on.eval_seed)
            video = None
            if filming:
                name = f"eval_step_{global_step():08d}.mp4"
                video = (run_dir / "videos" / name, int(on.get("video_size", VIDEO_SIZE)))
            try:
                result = evaluate(player, env_id, episodes, seed, device, on.get("camera"), video)
            except OSError as err:  # a full disk: the run goes on, its checkpoints matter more
                if video is None:
                    raise
                log.error(
                    "evaluation video %s: cannot write it (%s); no more videos in this run",
                    video[0],
                    err.strerror or err,
                )
                filming, video = False, None
                result = evaluate(player, env_id, episodes, seed, device, on.get("camera"))
            if video is not None:
                log.info("evaluation video: %s", video[0])
            fabric.log_dict(result, step=global_step())
            metrics.update(result)
            if stopping.improved(result):
                state(best)
            end_phase = stopping.stop
        return bool(fabric.broadcast(end_phase, src=0))

    stopped = False
    try:
        # Offline phase: gradient steps on the dataset-filled storage, no env step.
        began, began_steps = time.perf_counter(), offline_done
        while offline_done < offline_total and not stop.requested(offline_done):
            scalars = player.gradient_step(fabric, learner, optimizers, storage)
            offline_done += 1
            if global_step() >= next_log:
                log_scalars(scalars, offline_done - began_steps, began)
            if checkpoint_every and offline_done % checkpoint_every == 0:
                checkpoint()
            if eval_every and global_step() >= next_eval:
                next_eval += eval_every
                run_evaluation()  # offline evaluations keep best.ckpt; they never stop the run
            if offline_done == offline_total:
                phase_time["offline"] = time.perf_counter() - began
                if int(on.eval_episodes) and evaluated_at != global_step():
                    run_evaluation()  # the phase boundary: what offline training reached
                stopping.bad = 0  # patience counts the env phase's evaluations
                checkpoint()
        start_time = began = time.perf_counter()  # env steps/s count the env phase alone
        # Without stored transitions (PPO) a checkpoint is whole right after an update only.
        keeps_storage = algo_cls.storage_state is not OnlineAlgorithm.storage_state
        loop_steps = 0  # env steps of this run, alike on every rank
        while env_steps < total and not stopped:
            if stop.requested(loop_steps) and (keeps_storage or updated_at == env_steps):
                break
            loop_steps += 1
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
                if global_step() >= next_log:
                    log_scalars(scalars, env_steps - start_steps, start_time)
                if checkpoint_every and iteration % checkpoint_every == 0:
                    checkpoint()
            if eval_every and global_step() >= next_eval:
                next_eval += eval_every
                stopped = run_evaluation()
        phase_time["online"] = time.perf_counter() - began
        progress.update(global_step(), "stopped" if stop.agreed else "done")
    finally:
        progress.close()
    if stop.agreed:
        checkpoint()
        for logger in fabric.loggers:
            logger.finalize("failed")  # what Lightning's Trainer writes on a Ctrl-C
        log.warning(
            "stopped by %s at env step %d (%d offline steps): %s written; go on with ckpt_path=%s",
            signal.Signals(stop.agreed).name,
            env_steps,
            offline_done,
            last,
            last,
        )
        stop.end()
    if int(on.eval_episodes) and evaluated_at != global_step():
        run_evaluation()
    metrics["time/sps"] = (env_steps - start_steps) / max(time.perf_counter() - start_time, 1e-9)
    phases = {f"time/{phase}_s": seconds for phase, seconds in phase_time.items()}
    metrics.update(phases)
    fabric.log_dict(phases, step=global_step())  # in TensorBoard too: bench.qchunking reads it
    checkpoint()
    for logger in fabric.loggers:
        logger.finalize("success")
    result = {
        "run_dir": str(run_dir),
        "best_ckpt": str(best) if best.exists() else None,
        "last_ckpt": str(last),
        "metrics": metrics,
        "env_steps": env_steps,
        "offline_steps": offline_done,
        "global_step": global_step(),
        "stopped_early": stopped,
    }
    log.info("online run finished: %s", {k: v for k, v in result.items() if k != "metrics"})
    return result
