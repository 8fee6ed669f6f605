"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications",
arXiv:1812.05905), in one module, the paper's equations beside the lines (as CleanRL does).

    critic      J_Q(θ_j) = E[ ½ (Q_θj(s,a) − y)² ],
                y = r + γ (1 − d) ( min_j Q_θ̄j(s', a') − α log π(a'|s') ),  a' ~ π(·|s')  (eq. 5-6;
                twin min from TD3; d = terminated only: a time-limit cut still bootstraps)
    actor       J_π(φ) = E[ α log π(ã|s) − min_j Q_θj(s, ã) ],  ã = tanh(μ + σ ε), ε ~ N(0, I)
                                                                                    (eq. 7-13)
    log-prob    log π(a|s) = log N(u; μ, σ) − Σ_i log(1 − tanh²(u_i)) − Σ_i log(scale_i)
                                                                        (appendix C, eq. 21)
    temperature J(α) = E[ −α ( log π(a|s) + H̄ ) ],  H̄ = −|A|                         (eq. 18)
    targets     θ̄ ← τ θ + (1 − τ) θ̄                                            (polyak, tau)

Each loss reaches only its own parameters (the actor's Q goes through detached critic weights),
so an update is three separate steps on one batch, except that the actor sees the critic from
before this step's critic update (SB3/CleanRL: after it). On one CPU process the critic's half
(target, critic loss, backward, step, polyak) runs on a second thread while the actor's half
runs on the caller's (`update_threads=2`, the default: 1.3-1.6x updates/s on 2 cores, the same
parameters to the bit); under DDP, on a GPU or compiled, it is one forward (`losses`) and one
backward of the three losses' sum, so DDP uses and averages every parameter, log α included.

Speed (docs/online.md; LEARNING_FACTS): the twin critics are ONE stacked module (weights
(2, in, out), one batched matmul per layer, not two forward passes); Adam is fused (or foreach);
an update never calls `.item()` or otherwise waits on the device: it returns its scalars as
tensors and the loop reads them when it logs. `compile=True` wraps the losses in torch.compile;
`online.precision=bf16-mixed` runs the critics' hidden layers in bf16; the actor and the
critics' input and output layers stay fp32 (docs/online.md: what each part's precision costs).

Observations are dicts of low-dimensional keys (flattened, concatenated in sorted key order);
actions are a bounded Box, squashed by tanh and scaled to its bounds. The exported actor is the
deterministic mean action, scale · tanh(μ(s)) + bias (contract v2 `actor`, horizon 1).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn

from learning.errors import ConfigError
from learning.online.algorithm import AlgorithmError, OnlineAlgorithm, Transition
from learning.online.replay import ReplayBuffer

log = logging.getLogger(__name__)

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # CleanRL's range for the actor's log σ


# ---- the maths, as functions of tensors (unit-tested against torch.distributions) ----------
def squashed_gaussian(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tanh(u) in (-1, 1), log π(a|s)) for u = μ + σ ε, a = scale · tanh(u) + bias (eq. 21)."""
    u = mean + log_std.exp() * noise
    gaussian = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u)): exact and stable for large |u|.
    squash = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), gaussian - squash - scale.log().sum()


def td_target(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q: torch.Tensor,
    next_log_prob: torch.Tensor,
    alpha: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """y = r + γ (1 − d) (min_j Q_θ̄j(s', a') − α log π(a'|s')); next_q: (K, B) target heads."""
    soft_value = next_q.min(0).values - alpha * next_log_prob
    return rewards + gamma * (1.0 - terminated) * soft_value


def temperature_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """J(α) = E[−α (log π + H̄)] (eq. 18), written on log α as SB3/CleanRL do."""
    return -(log_alpha.exp() * (log_prob.detach() + target_entropy)).mean()


@torch.no_grad()
def polyak_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], tau: float):
    """θ̄ ← τ θ + (1 − τ) θ̄ for every tensor at once (one foreach kernel)."""
    torch._foreach_lerp_(list(target), list(online), tau)


# ---- networks ---------------------------------------------------------------------------
class EnsembleLinear(nn.Module):
    """K independent Linear layers as one batched matmul: (K, B, in) -> (K, B, out)."""

    def __init__(self, k: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        self.weight = nn.Parameter(torch.empty(k, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """frozen: through detached weights (gradients reach `x` only)."""
        weight, bias = self.weight, self.bias
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        if weight.shape[-1] == 1:
            # one output (a critic's Q): a product and a sum. bmm with a single output column
            # takes a slow path on CPU (~140 us against ~20 us at 2x256x256, backward likewise)
            return (x * weight.transpose(1, 2)).sum(-1, keepdim=True) + bias
        return torch.baddbmm(bias, x, weight)


def full_precision(
    layer: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any
) -> torch.Tensor:
    """`layer(x, *args)` in float32 even under autocast (bf16-mixed): the critics' input and
    output layers stay exact enough to rank one state's actions; the hidden layers take bf16."""
    if not torch.is_autocast_enabled(x.device.type):  # (export and fp32 runs: the plain call)
        return layer(x, *args)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float(), *args)


def _relu_mlp(dims: Sequence[int], linear: Any) -> nn.Sequential:
    """linear(dims[0], dims[1]) -> ReLU -> ... -> linear(dims[-2], dims[-1]) (no final ReLU)."""
    layers: list[nn.Module] = []
    for i, o in zip(dims[:-1], dims[1:], strict=False):
        layers += [linear(i, o), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class TwinQ(nn.Module):
    """K critics Q_j(s, a) in one stacked module: (B, obs), (B, A) -> (K, B)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int], k: int = 2):
        super().__init__()
        dims = [obs_dim + action_dim, *hidden, 1]
        self.net = _relu_mlp(dims, lambda i, o: EnsembleLinear(k, i, o))
        self.k = k

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, frozen: bool = False
    ) -> torch.Tensor:
        """frozen: through detached weights, so a loss on the output moves only the inputs (the
        actor's Q); cheaper than `torch.func.functional_call` with detached parameters."""
        x = torch.cat([obs, actions], -1).expand(self.k, obs.shape[0], -1)
        first, *hidden, last = self.net[::2]  # the EnsembleLinear layers, ReLU between them
        # input and output layers in fp32 under bf16-mixed: the inputs' small differences
        # (one state's candidate actions) survive into the hidden layers, which take bf16
        h = F.relu(full_precision(first, x, frozen))
        for layer in hidden:
            h = F.relu(layer(h, frozen))
        return full_precision(last, h, frozen).squeeze(-1)


class SquashedGaussianActor(nn.Module):
    """π_φ(a|s): an MLP trunk, heads μ and log σ; a = scale · tanh(μ + σ ε) + bias."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        low: Sequence[float],
        high: Sequence[float],
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*_relu_mlp([obs_dim, *hidden], nn.Linear), nn.ReLU())
        self.mean = nn.Linear(hidden[-1], action_dim)
        self.log_std = nn.Linear(hidden[-1], action_dim)
        low_t = torch.tensor(low, dtype=torch.float32)
        high_t = torch.tensor(high, dtype=torch.float32)
        self.register_buffer("scale", (high_t - low_t) / 2)
        self.register_buffer("bias", (high_t + low_t) / 2)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ) with log σ squashed into [LOG_STD_MIN, LOG_STD_MAX]. Always fp32, also
        under bf16-mixed: a bf16 actor cost HalfCheetah's return (docs/online.md)."""
        with torch.autocast(obs.device.type, enabled=False):
            h = self.trunk(obs.float())
            log_std = torch.tanh(self.log_std(h))
            log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
            return self.mean(h), log_std

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action in env units, log π(a|s)) for the given ε."""
        mean, log_std = self.distribution(obs)
        squashed, log_prob = squashed_gaussian(mean, log_std, noise, self.scale)
        return squashed * self.scale + self.bias, log_prob

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The action `forward` draws for ε = noise, without log π (acting needs none)."""
        mean, log_std = self.distribution(obs)
        return torch.tanh(mean + log_std.exp() * noise) * self.scale + self.bias

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action scale · tanh(μ(s)) + bias (evaluation and export)."""
        return torch.tanh(self.distribution(obs)[0]) * self.scale + self.bias


# ---- the algorithm ----------------------------------------------------------------------
class SAC(OnlineAlgorithm):
    """SAC on the shared online loop (learning.online.algorithm.OnlineAlgorithm).

    Defaults are Stable-Baselines3's (so the bench compares like with like): 256x256 ReLU nets,
    batch 256, lr 3e-4 for actor, critics and temperature, γ 0.99, τ 0.005, α₀ 1, one gradient
    step per env step after `learning_starts` uniform-random steps.
    """

    algorithm = "sac"
    precisions = ("32-true", "bf16-mixed")  # update runs the losses under fabric.autocast
    forward_methods = ("losses",)

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
        hidden_dims: Sequence[int] = (256, 256),
        learning_rate: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        buffer_max_bytes: int | None = 2 * 1024**3,
        learning_starts: int = 100,
        gradient_steps: int = 1,
        init_alpha: float = 1.0,
        target_entropy: float | None = None,
        fused_adam: bool = True,
        compile: bool = False,
        update_threads: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        images = sorted(k for k, s in obs_specs.items() if s.get("feature_type") == "image")
        if images:
            raise AlgorithmError(f"SAC takes low-dim observations only; {images[0]!r} is an image")
        if not action_bounds:
            raise AlgorithmError("SAC needs action_bounds (a bounded Box action space)")
        if update_threads not in (1, 2):
            raise AlgorithmError(f"SAC: update_threads is 1 or 2, got {update_threads}")
        self.save_hyperparameters()
        self.obs_keys = sorted(obs_specs)
        obs_dim = sum(math.prod(obs_specs[k]["shape"]) for k in self.obs_keys)
        low, high = action_bounds["low"], action_bounds["high"]
        self.actor = SquashedGaussianActor(obs_dim, action_dim, hidden_dims, low, high)
        self.critic = TwinQ(obs_dim, action_dim, hidden_dims)
        self.critic_target = TwinQ(obs_dim, action_dim, hidden_dims).requires_grad_(False)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha)))
        # H̄ = −|A| (the paper's heuristic, appendix D)
        self.target_entropy = -float(action_dim) if target_entropy is None else target_entropy
        # measured in docs/online.md: slower here, so off by default
        self._losses = torch.compile(self._all_losses) if compile else self._all_losses
        self._warming_up = learning_starts > 0  # the player acts uniformly at random until then
        self._critic_thread: ThreadPoolExecutor | None = None  # set by the first update
        self._threads_decided = False

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """The replay buffer must hold a batch and the rows learning waits for: a smaller one
        would sample one batch from a few rows, or never start learning."""
        m = cfg.model
        needed = max(int(m.batch_size), int(m.learning_starts))
        if int(m.buffer_size) < needed:
            raise ConfigError(
                f"model.buffer_size={m.buffer_size} is below model.batch_size={m.batch_size} "
                f"or model.learning_starts={m.learning_starts}: it must hold {needed} rows"
            )

    @classmethod
    def check_spaces(
        cls, observation_space: gym.spaces.Dict, action_space: gym.Space, env_id: str
    ) -> None:
        """SAC squashes a Gaussian into a box: the actions must be a bounded 1-D Box."""
        if not isinstance(action_space, gym.spaces.Box):
            raise AlgorithmError(
                f"{env_id}: SAC needs continuous (Box) actions, this env's are {action_space}"
            )
        if len(action_space.shape) != 1 or not action_space.is_bounded("both"):
            raise AlgorithmError(
                f"{env_id}: SAC needs a bounded 1-D Box action space, got {action_space}"
            )

    # -- observations ------------------------------------------------------------------
    def flat_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{key: (B, *shape)} -> (B, obs_dim) float32, keys in sorted order."""
        return torch.cat([obs[k].flatten(1).float() for k in self.obs_keys], -1)

    # -- the player ---------------------------------------------------------------------
    def make_storage(self, num_envs: int, device: torch.device, rank: int = 0) -> ReplayBuffer:
        hp = self.hparams
        # float32 rows: the networks read float32, so float64 observations would only double
        # the buffer's memory
        specs = {k: {**s, "dtype": "float32"} for k, s in hp.obs_specs.items()}
        seed = hp.seed + 1000 * rank  # each data-parallel rank samples its own rows
        buffer = ReplayBuffer(
            specs, hp.action_dim, hp.buffer_size, hp.buffer_max_bytes, seed, device
        )
        log.info(buffer.describe())
        return buffer

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.flat_obs(obs)
        if deterministic:
            return self.actor.deterministic(x), {}
        if self._warming_up:  # uniform over the action box until learning starts (SB3's)
            u = torch.rand(x.shape[0], self.hparams.action_dim, device=x.device) * 2 - 1
            return u * self.actor.scale + self.actor.bias, {}
        noise = torch.randn(x.shape[0], self.hparams.action_dim, device=x.device)
        return self.actor.sample(x, noise), {}

    def observe(self, storage: ReplayBuffer, step: Transition) -> None:
        storage.add(
            step.obs, step.actions, step.rewards, step.next_obs, step.terminated, step.truncated
        )
        self._warming_up = len(storage) < self.hparams.learning_starts

    def storage_state(self, storage: ReplayBuffer) -> dict[str, Any]:
        return storage.state_dict()  # the filled rows: a resumed run goes on sampling them

    def load_storage_state(self, storage: ReplayBuffer, state: dict[str, Any]) -> None:
        storage.load_state_dict(state)
        self._warming_up = len(storage) < self.hparams.learning_starts

    def ready(self, storage: ReplayBuffer, env_steps: int) -> bool:
        hp = self.hparams
        return len(storage) >= max(hp.learning_starts, 1)

    # -- the learner --------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Critic, actor, temperature: three Adams (fused kernels; foreach where unsupported)."""
        lr = self.hparams.learning_rate
        impl = {"fused": True} if self.hparams.fused_adam else {"foreach": True}
        return [
            torch.optim.Adam(self.critic.parameters(), lr=lr, **impl),
            torch.optim.Adam(self.actor.parameters(), lr=lr, **impl),
            torch.optim.Adam([self.log_alpha], lr=lr, **impl),
        ]

    def soft_target(
        self,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        next_noise: torch.Tensor,
    ) -> torch.Tensor:
        """y = r + γ (1 − d) (min_j Q_θ̄j(s', a') − α log π(a'|s')), a' ~ π(·|s'): no gradient."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor(next_obs, next_noise)
            next_q = self.critic_target(next_obs, next_actions)
            alpha = self.log_alpha.exp()
            return td_target(rewards, terminated, next_q, next_log_prob, alpha, self.hparams.gamma)

    def critic_loss(
        self, obs: torch.Tensor, actions: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(J_Q = Σ_j ½ E[(Q_θj(s,a) − y)²], Q (2, B)): both heads in one pass."""
        q = self.critic(obs, actions)
        return 0.5 * (q - y).pow(2).mean(1).sum(), q

    def actor_losses(
        self,
        obs: torch.Tensor,
        noise: torch.Tensor,
        critic: Callable[..., torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(J_π, J(α), log π(ã|s)). J_π = E[α log π(ã|s) − min_j Q_θj(s, ã)], ã = f_φ(ε; s)
        reparameterized, with Q through detached critic weights: it moves φ only, and its
        backward skips the critic's weight gradients (a sixth of the update's matmuls).
        J(α) = E[−α (log π(ã|s) + H̄)] moves log α only. critic: a copy of `self.critic`'s
        weights to read instead (the two-thread step's snapshot)."""
        pi_actions, log_prob = self.actor(obs, noise)
        q_pi = (critic or self.critic)(obs, pi_actions, frozen=True).min(0).values
        actor_loss = (self.log_alpha.detach().exp() * log_prob - q_pi).mean()
        alpha_loss = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        return actor_loss, alpha_loss, log_prob

    def _all_losses(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        noise: torch.Tensor,
        next_noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        y = self.soft_target(rewards, next_obs, terminated, next_noise)
        critic_loss, q = self.critic_loss(obs, actions, y)
        actor_loss, alpha_loss, log_prob = self.actor_losses(obs, noise)
        return _scalars(critic_loss, q, actor_loss, alpha_loss, log_prob)

    def losses(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three losses of one batch; each reaches only its own parameters (critic, actor,
        log α), so one backward of their sum is the three separate steps, and DDP sees every
        parameter used in one forward (no find_unused_parameters) and averages log α too."""
        return self._losses(*args)

    def update(
        self,
        fabric: Fabric,
        learner: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: ReplayBuffer,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        hp = self.hparams
        critic_thread = self._second_thread(fabric)
        for _ in range(hp.gradient_steps):
            idx = storage.sample_indices(hp.batch_size)
            obs = self.flat_obs(storage.gather(idx, "obs")["obs"])
            noise, next_noise = torch.randn(2, hp.batch_size, hp.action_dim, device=obs.device)

            def critic_inputs(idx=idx, obs=obs) -> tuple[torch.Tensor, ...]:
                """(obs, actions, rewards, next_obs, terminated): the rest of the batch."""
                rest = storage.gather(idx, "actions", "rewards", "next_obs", "terminated")
                next_obs = self.flat_obs(rest["next_obs"])
                return obs, rest["actions"], rest["rewards"], next_obs, rest["terminated"]

            if critic_thread is None:
                inputs = (*critic_inputs(), noise, next_noise)
                out = self._joint_step(fabric, learner, optimizers, *inputs)
            else:  # the critic's thread gathers its part of the batch
                out = self._two_thread_step(
                    fabric, optimizers, critic_inputs, obs, noise, next_noise
                )
        scalars = {k: v.detach() for k, v in out.items()}
        scalars["temperature"] = self.log_alpha.detach().exp()
        return scalars

    def _joint_step(self, fabric, learner, optimizers, *inputs) -> dict[str, torch.Tensor]:
        """One forward of the three losses through the strategy's module, one backward of
        their sum (what DDP needs: every parameter used, all gradients averaged)."""
        # fabric.autocast: Fabric applies `precision` (bf16-mixed) to a marked method only
        # when a strategy wraps the module (DDP); on one device the method runs bare.
        with fabric.autocast():
            out = learner.losses(*inputs)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        fabric.backward(out["loss/critic"] + out["loss/actor"] + out["loss/temperature"])
        for opt in optimizers:
            opt.step()
        # θ̄ ← τ θ + (1 − τ) θ̄
        polyak_update(
            list(self.critic_target.parameters()), list(self.critic.parameters()), self.hparams.tau
        )
        return out

    def _two_thread_step(
        self, fabric, optimizers, critic_inputs, obs, noise, next_noise
    ) -> dict[str, torch.Tensor]:
        """The same step as `_joint_step`, the critic's half on the second thread. Order kept:
        the actor reads a copy of the critic's weights, taken on that thread before the critic
        steps (so the critic need not wait for the actor's backward); the actor and α step
        only after the target has read them. Torch releases the GIL inside its ops."""
        critic_opt, actor_opt, alpha_opt = optimizers
        copied, target_read_actor = threading.Event(), threading.Event()
        snapshot = self._critic_snapshot

        def copied_critic(*args: Any, **kwargs: Any) -> torch.Tensor:
            copied.wait()
            return snapshot(*args, **kwargs)

        def critic_half() -> tuple[torch.Tensor, torch.Tensor]:
            try:
                torch._foreach_copy_(list(snapshot.parameters()), list(self.critic.parameters()))
                copied.set()
                with fabric.autocast():  # autocast is per thread
                    obs, actions, rewards, next_obs, terminated = critic_inputs()
                    y = self.soft_target(rewards, next_obs, terminated, next_noise)
                    target_read_actor.set()
                    loss, q = self.critic_loss(obs, actions, y)
                critic_opt.zero_grad(set_to_none=True)
                fabric.backward(loss)
                critic_opt.step()
                # θ̄ ← τ θ + (1 − τ) θ̄
                polyak_update(
                    list(self.critic_target.parameters()),
                    list(self.critic.parameters()),
                    self.hparams.tau,
                )
                return loss, q
            finally:  # also on an error, so that the caller's waits end
                copied.set()
                target_read_actor.set()

        critic = self._critic_thread.submit(critic_half)
        with fabric.autocast():
            actor_loss, alpha_loss, log_prob = self.actor_losses(obs, noise, copied_critic)
        actor_opt.zero_grad(set_to_none=True)
        alpha_opt.zero_grad(set_to_none=True)
        fabric.backward(actor_loss + alpha_loss)
        target_read_actor.wait()
        actor_opt.step()
        alpha_opt.step()
        critic_loss, q = critic.result()  # waits; raises the critic half's error here
        return _scalars(critic_loss, q, actor_loss, alpha_loss, log_prob)

    def _second_thread(self, fabric: Fabric) -> ThreadPoolExecutor | None:
        """The thread that runs the critic's half of each update, or None (one thread: asked
        for, or the run is data-parallel, on a GPU or compiled; said once in the log)."""
        if not self._threads_decided:
            self._threads_decided = True
            why_not = [
                reason
                for applies, reason in (
                    (fabric.world_size > 1, f"{fabric.world_size} data-parallel ranks"),
                    (fabric.device.type != "cpu", f"device {fabric.device.type}"),
                    (bool(self.hparams.compile), "compile=true"),
                )
                if applies
            ]
            if self.hparams.update_threads == 2 and why_not:
                log.info(
                    "SAC: updates on one thread (%s; two need one uncompiled CPU process)",
                    ", ".join(why_not),
                )
            elif self.hparams.update_threads == 2:
                self._critic_thread = _critic_worker()
                # not a submodule: no state_dict entry, so checkpoints are unchanged
                snapshot = copy.deepcopy(self.critic).requires_grad_(False)
                object.__setattr__(self, "_critic_snapshot", snapshot)
        return self._critic_thread

    # -- export -------------------------------------------------------------------------
    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        example = {
            f"obs.{k}": torch.zeros(
                (2, 1, *self.hparams.obs_specs[k]["shape"]),
                dtype=getattr(torch, self.hparams.obs_specs[k]["dtype"]),
            )
            for k in self.obs_keys
        }
        return _ActorGraph(self), example, ["actions"]

    def export_metadata(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "model_type": "actor",
            "observations": {k: dict(hp.obs_specs[k]) for k in self.obs_keys},
            "obs_steps": 1,
            "action_dim": hp.action_dim,
            "horizon": 1,
            "n_action_steps": 1,
            "control_rate_hz": hp.control_rate_hz,
            "action_bounds": dict(hp.action_bounds),
            "normalization": {"baked": True, "stats": {}},  # SAC acts on raw observations
        }


_critic_pool: ThreadPoolExecutor | None = None


def _critic_worker() -> ThreadPoolExecutor:
    """The critic thread: one for the process, shared by every SAC instance and never shut
    down. A thread that exits runs MKL's per-thread cleanup (`mm_cleanup_thread_cbk`), which
    can spin for minutes against another thread's sgemm allocating its buffers (seen in the
    tests: an instance's thread exiting as it was collected, both threads at 100% for 8 min)."""
    global _critic_pool
    if _critic_pool is None:
        # denormal flushing is per thread (MXCSR): the worker follows train.run's
        _critic_pool = ThreadPoolExecutor(
            1, "sac-critic", initializer=torch.set_flush_denormal, initargs=(True,)
        )
        # Start the thread now, idle: an earlier hang (tests, once) had this thread's first
        # update holding the GIL while the caller was still inside Thread.start.
        _critic_pool.submit(lambda: None).result()
    return _critic_pool


def _forget_critic_worker() -> None:
    global _critic_pool
    _critic_pool = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_critic_worker)


def _scalars(
    critic_loss: torch.Tensor,
    q: torch.Tensor,
    actor_loss: torch.Tensor,
    alpha_loss: torch.Tensor,
    log_prob: torch.Tensor,
) -> dict[str, torch.Tensor]:
    return {
        "loss/critic": critic_loss,
        "loss/actor": actor_loss,
        "loss/temperature": alpha_loss,
        "q_mean": q.detach().mean(),
        "entropy": -log_prob.detach().mean(),
    }


class _ActorGraph(nn.Module):
    """forward(*obs (B, 1, *shape) in sorted key order) -> actions (B, 1, A), the mean action."""

    def __init__(self, sac: SAC) -> None:
        super().__init__()
        self.actor, self.keys = sac.actor, sac.obs_keys

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([o[:, -1].flatten(1).float() for o in obs], -1)
        return self.actor.deterministic(x).unsqueeze(1)
