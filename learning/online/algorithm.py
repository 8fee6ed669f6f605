"""The interface every online algorithm (PPO, SAC, later Dreamer) gives the shared loop.

An algorithm is a LightningModule that holds the maths and names its networks; the loop
(`learning.online.loop`) owns envs, collection, storage, evaluation, logging and checkpoints:

    algo_cls.check_spaces(obs_space, action_space, env_id)        # refuse unhandled envs first
    learner = fabric.setup(algo, *algo.configure_optimizers())   # Fabric-wrapped: DDP, devices
    storage = algo.make_storage(num_envs, device)                  # RolloutStorage | ReplayBuffer
    loop:  with torch.inference_mode():                            # the player: same weights
               actions, extras = algo.act(obs)                     # raw obs in, env actions out
           step envs -> Transition(obs, actions, extras, rewards, terminated, truncated, next_obs)
           algo.observe(storage, transition)                       # stats + store (bookkeeping)
           if algo.ready(storage, env_steps):
               scalars = algo.update(fabric, learner, optimizers, storage, progress)
    offline then online (optional hooks): algo_cls.check_config(cfg) first; with a `dataset`,
    algo.load_offline(storage, dataset); `online.offline_steps` x algo.gradient_step(...)
    before the env phase (Q-chunking)
    export: algo.export_graph() / export_metadata()                # the deterministic `actor`

Observations reach `act`/`observe` raw, as the env's dict of tensors {key: (B, *shape)} (a
low_dim-only algorithm concatenates its keys in sorted order); normalization lives inside the
algorithm as buffers, so it travels in `state_dict` and is baked into the exported actor.
`update` returns tensors (no `.item()`: the loop syncs once when it logs). Gradients reach DDP
only through methods the loop marks as forward methods (`forward_methods`): call them on
`learner`, not on `self`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import lightning as L
import torch
from lightning.fabric import Fabric

from learning.errors import ConfigError


class AlgorithmError(ConfigError):
    """An env whose spaces the algorithm cannot handle (one line; learning.train prints it)."""


@dataclass
class Transition:
    """One vector-env step, tensors with a leading env axis (B)."""

    obs: dict[str, torch.Tensor]  # {key: (B, *shape)} raw observation acted on
    actions: torch.Tensor  # (B, A) as sent to the env
    extras: dict[str, torch.Tensor]  # what `act` returned beside the actions (log-prob, value)
    rewards: torch.Tensor  # (B,)
    terminated: torch.Tensor  # (B,) bool: a true end, no bootstrap
    truncated: torch.Tensor  # (B,) bool: time limit, bootstrap from next_obs
    next_obs: dict[str, torch.Tensor]  # the step's real next observation (final obs at a reset)


class OnlineAlgorithm(L.LightningModule, abc.ABC):
    """Hooks the shared loop calls (module docstring); export is shared (an algorithm with
    normalization overrides `observation_stats`). Constructor kwargs: the hyperparameters plus
    the env dimensions `obs_specs`, `action_dim`, `control_rate_hz`, `action_bounds`
    (learning.data.spec.model_dims), so `learning.checkpoint.load_model` rebuilds it."""

    algorithm: ClassVar[str]  # "ppo", "sac": checkpoints carry it; resume refuses another
    forward_methods: ClassVar[tuple[str, ...]] = ()  # gradient-carrying methods (DDP-synced)
    # Fabric precisions the losses really run in: on one device Fabric leaves a method bare,
    # so an algorithm lists bf16-mixed only when its update enters `fabric.autocast` itself.
    precisions: ClassVar[tuple[str, ...]] = ("32-true",)

    @classmethod
    @abc.abstractmethod
    def check_spaces(
        cls, observation_space: gym.spaces.Dict, action_space: gym.Space, env_id: str
    ) -> None:
        """AlgorithmError (one line naming env_id) for spaces the algorithm cannot handle;
        called by the loop before anything is built (single-env spaces)."""

    @abc.abstractmethod
    def make_storage(self, num_envs: int, device: torch.device, rank: int = 0) -> Any:
        """A fresh RolloutStorage (on-policy) or ReplayBuffer (off-policy) for data-parallel
        rank `rank` (a sampling seed of its own, as its envs have)."""

    @abc.abstractmethod
    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Actions in env units (B, A) for raw obs {key: (B, *shape)}, and extras for
        storage. Called by the player under `torch.inference_mode` (evaluation:
        deterministic=True)."""

    @contextlib.contextmanager
    def acting_context(self) -> Iterator[None]:
        """Acting state of its own for another set of envs (the evaluation's): a recurrent
        player (Dreamer's latents) keeps the collection's state aside meanwhile."""
        yield

    @abc.abstractmethod
    def observe(self, storage: Any, step: Transition) -> None:
        """Collect-step bookkeeping: update running statistics, add the step to storage."""

    @abc.abstractmethod
    def ready(self, storage: Any, env_steps: int) -> bool:
        """Whether to call `update` now (PPO: the rollout is full)."""

    @abc.abstractmethod
    def update(
        self,
        fabric: Fabric,
        learner: torch.nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: Any,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        """Gradient steps on `storage` (an on-policy algorithm then clears it); `progress`
        in [0, 1] of the run (LR annealing).
        Returns scalar tensors for TensorBoard (the loop syncs them when it logs)."""

    # ---- optional hooks (defaults: an online-only algorithm; Q-chunking overrides them)
    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """ConfigError (one line) for a run config this algorithm cannot train; called by the
        loop before anything is built (e.g. Q-chunking's ACRLPDConfig.validate())."""

    def load_offline(self, storage: Any, path: str) -> dict[str, Any]:
        """Fill `storage` from the episode dataset at `path` (root key `dataset`) before
        training; returns what it loaded ({"episodes", "steps", ...}) for the log."""
        raise ConfigError(f"dataset={path}: {self.algorithm} does not learn from a dataset")

    def gradient_step(
        self,
        fabric: Fabric,
        learner: torch.nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: Any,
    ) -> dict[str, torch.Tensor]:
        """ONE gradient step on `storage` without env steps (`online.offline_steps` of them
        run before the env phase); scalar tensors like `update`. The loop refuses
        offline_steps for an algorithm that keeps this default."""
        raise NotImplementedError(f"{self.algorithm} has no offline phase")

    def storage_state(self, storage: Any) -> dict[str, Any] | None:
        """What of `storage` a checkpoint keeps (plain tensors and ints), or None: an
        on-policy rollout is empty whenever the loop checkpoints (right after an update)."""
        return None

    def load_storage_state(self, storage: Any, state: dict[str, Any]) -> None:
        """Restore `storage_state` into a fresh `make_storage` (on resume)."""
        raise NotImplementedError(f"{self.algorithm} keeps no storage in its checkpoints")

    # ---- export: the deterministic actor (contract v2 `actor`), the same for every algorithm
    def observation_stats(self) -> dict[str, dict[str, Any]]:
        """Normalization stats `act` applies, per key (e.g. {"mode": "mean_std", "mean",
        "std"}): recorded in the metadata; the graph bakes them in through `act`."""
        return {}

    def export_metadata(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "model_type": "actor",
            "observations": {k: dict(hp.obs_specs[k]) for k in sorted(hp.obs_specs)},
            "obs_steps": 1,
            "action_dim": hp.action_dim,
            "horizon": 1,
            "n_action_steps": 1,
            "control_rate_hz": hp.control_rate_hz,
            **({"action_bounds": dict(hp.action_bounds)} if hp.action_bounds else {}),
            "normalization": {"baked": True, "stats": self.observation_stats()},
        }

    def export_graph(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[str]]:
        """obs.<key> (B, 1, *shape) -> actions (B, 1, A): `act(deterministic=True)`."""
        specs = self.hparams.obs_specs
        example = {
            f"obs.{k}": torch.zeros(
                2, 1, *specs[k]["shape"], dtype=getattr(torch, specs[k]["dtype"])
            )
            for k in sorted(specs)
        }
        return _ActorGraph(self), example, ["actions"]


class _ActorGraph(torch.nn.Module):
    """forward(*obs.<key> (B, 1, *shape), sorted keys) -> actions (B, 1, A): what
    `act(obs, deterministic=True)` gives, normalization and action clipping included."""

    def __init__(self, algo: OnlineAlgorithm) -> None:
        super().__init__()
        self.algo = algo
        self.keys = sorted(algo.hparams.obs_specs)

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        actions, _ = self.algo.act(
            {k: o[:, -1] for k, o in zip(self.keys, obs, strict=True)}, deterministic=True
        )
        return actions.unsqueeze(1)
