"""Proximal Policy Optimization with a clipped surrogate (Schulman et al. 2017, arXiv:1707.06347),
one module in the CleanRL style: the paper's equations beside the lines that compute them.

    python -m learning.train --config-name=train_ppo env_id=HalfCheetah-v5

Gaussian policy pi(a|s) = N(mu(s), diag(exp(log_std))^2) and value V(s), two tanh MLPs (the
Stable-Baselines3 / CleanRL layout, orthogonal init). The shared loop (learning.online.loop)
collects with `act`, stores with `observe` and calls `update` once the rollout is full.

Normalization lives here, as buffers (so in every checkpoint):
- observations: running mean/variance, clipped to +-clip_obs after scaling; baked into the
  exported actor (contract-v2 `actor`, no noise input: the mean action, clipped to the env's
  bounds). The player updates its acting statistics with every observation before acting on it,
  as SB3's VecNormalize does (so the first rollout is normalized too); at each update `obs_rms`
  takes in the whole rollout of every data-parallel rank (all-gathered), and every rank acts
  from those same statistics again (between updates each rank's acting statistics follow its own
  envs; the rollout stores the observations as they were acted on);
- rewards: divided by the running std of the discounted return (as SB3's VecNormalize), for
  training only: the actor does not need it. Its statistics take in the rollout at the start of
  `update`, before any gradient step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn

from learning.online.algorithm import AlgorithmError, OnlineAlgorithm, Transition
from learning.online.rollout import RolloutStorage

LOG_2PI = math.log(2 * math.pi)
LOGGED = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")  # per minibatch
Gather = Callable[[torch.Tensor], torch.Tensor]  # (N, D) -> (N x ranks, D)


class RunningMeanStd(nn.Module):
    """Mean and variance of a stream of (N, D) batches (Chan et al.'s parallel update), float64
    buffers updated in place (inside `torch.inference_mode` too)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: torch.Tensor) -> None:
        merge_moments(self.mean, self.var, self.count, x)

    def std(self, eps: float = 1e-8) -> torch.Tensor:
        return torch.sqrt(self.var + eps)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A copy of (mean, var, count), ordinary tensors (also when asked in inference_mode)."""
        with torch.inference_mode(False):
            return self.mean.clone(), self.var.clone(), self.count.clone()


def merge_moments(
    mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, x: torch.Tensor
) -> None:
    """Fold the (N, D) batch `x` into float64 (mean, var, count), in place."""
    x = x.to(torch.float64)
    n = x.shape[0]
    batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
    delta, total = batch_mean - mean, count + n
    m2 = var * count + batch_var * n + delta.square() * count * n / total
    mean.add_(delta * n / total)
    var.copy_(m2 / total)
    count.add_(n)


def mlp(n_in: int, hidden: int, n_out: int, out_gain: float) -> nn.Sequential:
    """Two tanh hidden layers, orthogonal init (gain sqrt(2); `out_gain` on the last layer)."""
    layers = [nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()]
    layers.append(nn.Linear(hidden, n_out))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            gain = out_gain if layer is layers[-1] else math.sqrt(2)
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class PPO(OnlineAlgorithm):
    """PPO-Clip; env dimensions from learning.data.spec.model_dims, the rest hyperparameters."""

    algorithm = "ppo"
    forward_methods = ("losses",)

    def __init__(
        self,
        obs_specs: dict[str, dict[str, Any]],
        action_dim: int,
        control_rate_hz: float | None = None,
        action_bounds: dict[str, Any] | None = None,
        hidden_dim: int = 64,
        learning_rate: float = 3e-4,
        anneal_lr: bool = True,
        rollout_steps: int = 2048,  # env steps per update, all envs together
        minibatch_size: int = 64,
        update_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_coef: float = 0.2,
        clip_vloss: bool = False,
        vf_coef: float = 0.5,
        ent_coef: float = 0.0,
        max_grad_norm: float = 0.5,
        norm_adv: bool = True,
        normalize_obs: bool = True,
        normalize_reward: bool = True,
        clip_obs: float = 10.0,
        clip_reward: float = 10.0,
        log_std_init: float = 0.0,
        adam_eps: float = 1e-5,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.obs_keys = sorted(obs_specs)
        obs_dim = sum(math.prod(obs_specs[k]["shape"]) for k in self.obs_keys)
        self.actor_mean = mlp(obs_dim, hidden_dim, action_dim, out_gain=0.01)
        self.actor_logstd = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.critic = mlp(obs_dim, hidden_dim, 1, out_gain=1.0)
        self.obs_rms = RunningMeanStd(obs_dim)
        self.return_rms = RunningMeanStd(1)
        bounds = action_bounds or {}
        low = torch.tensor(bounds.get("low", [-math.inf] * action_dim), dtype=torch.float32)
        high = torch.tensor(bounds.get("high", [math.inf] * action_dim), dtype=torch.float32)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self._returns = np.zeros(0)  # per-env discounted return so far (reward scale)
        self._affine: tuple[torch.Tensor, torch.Tensor] | None = None  # see normalize
        # The player's statistics: obs_rms at the last update plus every observation acted on
        # since (None: copy obs_rms when next needed).
        self._acting: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._loss_terms = torch.compile(self._eager_losses) if compile else self._eager_losses

    # ---- spaces and observations ---------------------------------------------------------
    @classmethod
    def check_spaces(
        cls, observation_space: gym.spaces.Dict, action_space: gym.Space, env_id: str
    ) -> None:
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise AlgorithmError(
                f"env_id={env_id}: PPO here needs continuous (Box, 1-D) actions, the env has "
                f"{action_space}"
            )
        for key, space in observation_space.spaces.items():
            if not isinstance(space, gym.spaces.Box) or space.dtype.kind != "f":
                raise AlgorithmError(
                    f"env_id={env_id}: PPO here takes float vector observations; {key!r} is "
                    f"{space}"
                )

    def flat_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """{key: (B, *shape)} -> (B, D) float32, keys in sorted order."""
        return torch.cat([obs[k].flatten(1).float() for k in self.obs_keys], dim=-1)

    def acting_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._acting is None:
            self._acting = self.obs_rms.moments()
        return self._acting

    def track(self, x: torch.Tensor) -> None:
        """Fold observations about to be acted on into the player's statistics."""
        merge_moments(*self.acting_moments(), x)
        self._affine = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """clip((x - mean) / std, +-clip_obs) with the player's statistics."""
        if not self.hparams.normalize_obs:
            return x
        if self._affine is None:  # float32 (mean, std), cached until the statistics change
            mean, var, _ = self.acting_moments()
            with torch.inference_mode(False):  # ordinary tensors, even when first asked by act
                self._affine = (mean.float(), torch.sqrt(var + 1e-8).float())
        center, scale = self._affine
        clip = self.hparams.clip_obs
        return ((x - center) / scale).clamp(-clip, clip)

    def _resync(self) -> None:
        """Act from obs_rms again (after an update, a load)."""
        self._acting, self._affine = None, None

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._resync()
        return super().load_state_dict(*args, **kwargs)

    def _logp_offset(self) -> torch.Tensor:
        return self.actor_logstd.sum() + 0.5 * LOG_2PI * self.hparams.action_dim

    def clip_action(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, self.action_high), self.action_low)

    # ---- collection (the player, under inference_mode) ----------------------------------
    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raw = self.flat_obs(obs)
        if self.hparams.normalize_obs and not deterministic:
            self.track(raw)  # collection: the statistics see an observation before it is acted on
        z = self.normalize(raw)
        mean = self.actor_mean(z)
        if deterministic:
            return self.clip_action(mean), {}
        eps = torch.randn_like(mean)
        action = mean + self.actor_logstd.exp() * eps  # a ~ N(mu(s), sigma^2)
        extras = {
            "obs": z,
            "actions": action,  # unclipped: the log-prob is of what was sampled
            # log N(a; mu, sigma^2) = sum_i -eps_i^2 / 2 - log sigma_i - log(2 pi) / 2
            "logp": (-0.5 * eps.square()).sum(-1) - self._logp_offset(),
            "values": self.critic(z).squeeze(-1),
        }
        return self.clip_action(action), extras

    def make_storage(
        self, num_envs: int, device: torch.device, rank: int = 0
    ) -> RolloutStorage:  # on-policy: no sampling seed
        steps = self.hparams.rollout_steps
        if steps % num_envs:
            raise AlgorithmError(
                f"training.steps_per_iteration={steps} is not a multiple of "
                f"online.num_envs={num_envs}"
            )
        self._returns = np.zeros(num_envs)
        return RolloutStorage(steps // num_envs, num_envs, device)

    def observe(self, storage: RolloutStorage, step: Transition) -> None:
        hp = self.hparams
        bootstrap = torch.zeros_like(step.rewards)
        if bool(step.truncated.any()):  # collection side: a host sync here costs nothing
            # A time limit is not a terminal state: r_T += gamma V(s_T) (SB3's bootstrap)
            final_v = self.critic(self.normalize(self.flat_obs(step.next_obs))).squeeze(-1)
            bootstrap = hp.gamma * final_v * step.truncated.float()
        e = step.extras
        storage.add(
            obs=e["obs"],  # normalized, as acted on
            raw_obs=self.flat_obs(step.obs),  # for the statistics, at update time
            actions=e["actions"],
            logp=e["logp"],
            values=e["values"],
            rewards=step.rewards,
            bootstrap=bootstrap,
            dones=(step.terminated | step.truncated).float(),
        )
        storage.tail = {"raw_obs": self.flat_obs(step.next_obs)}

    def ready(self, storage: RolloutStorage, env_steps: int) -> bool:
        return storage.full

    # ---- learning -------------------------------------------------------------------------
    def losses(self, *minibatch: torch.Tensor, **named: torch.Tensor) -> dict[str, torch.Tensor]:
        """The PPO objective on one minibatch (called through the Fabric-wrapped learner):
        `_eager_losses`, compiled when `compile=True`."""
        return self._loss_terms(*minibatch, **named)

    def _eager_losses(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        old_values: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        hp = self.hparams
        mean = self.actor_mean(obs)
        logp = gaussian_logp(actions, mean, self.actor_logstd)
        # H[N(mu, sigma^2)] = sum_i (1/2 + 1/2 log 2pi + log sigma_i)
        entropy = (0.5 + 0.5 * LOG_2PI + self.actor_logstd).sum()
        logratio = logp - old_logp
        ratio = logratio.exp()  # r_t(theta) = pi_theta(a|s) / pi_theta_old(a|s)
        if hp.norm_adv:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        # L^CLIP = E[min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)]            (paper eq. 7)
        clipped = ratio.clamp(1 - hp.clip_coef, 1 + hp.clip_coef)
        policy_loss = torch.maximum(-advantages * ratio, -advantages * clipped).mean()
        values = self.critic(obs).squeeze(-1)
        # L^VF = (V(s) - R)^2, optionally clipped around V_old like the policy
        value_loss = (values - returns).square()
        if hp.clip_vloss:
            v_clip = old_values + (values - old_values).clamp(-hp.clip_coef, hp.clip_coef)
            value_loss = torch.maximum(value_loss, (v_clip - returns).square())
        value_loss = value_loss.mean()
        # L = -L^CLIP + c1 L^VF - c2 H                                   (paper eq. 9)
        loss = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
        with torch.no_grad():
            approx_kl = ((ratio - 1) - logratio).mean()  # unbiased KL(old || new) estimator
            clip_fraction = ((ratio - 1).abs() > hp.clip_coef).float().mean()
        return {
            "loss": loss,
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy.detach(),
            "approx_kl": approx_kl,
            "clip_fraction": clip_fraction,
        }

    def advantages(
        self, storage: RolloutStorage, gather: Gather = lambda x: x
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE (Schulman et al. 2016, arXiv:1506.02438, eq. 16) over the rollout, once per
        update on the host (T small steps; numpy is far cheaper per step than torch):
            delta_t = r_t + gamma V(s_{t+1}) (1 - d_t) - V(s_t)
            A_t     = delta_t + gamma lambda (1 - d_t) A_{t+1},   R_t = A_t + V(s_t)"""
        hp, d = self.hparams, storage.data
        with torch.no_grad():
            last_value = self.critic(self.normalize(storage.tail["raw_obs"])).squeeze(-1)
        values, nonterminal = d["values"].cpu().numpy(), 1.0 - d["dones"].cpu().numpy()
        rewards = self.scaled_rewards(storage, gather)
        next_values = np.concatenate([values[1:], last_value.cpu().numpy()[None]])
        deltas = rewards + hp.gamma * next_values * nonterminal - values
        adv = np.zeros_like(rewards)
        last = np.zeros_like(rewards[0])
        for t in reversed(range(len(rewards))):
            last = deltas[t] + hp.gamma * hp.gae_lambda * nonterminal[t] * last
            adv[t] = last
        advantages = torch.from_numpy(adv).to(d["values"].device)
        return advantages, advantages + d["values"]

    def scaled_rewards(self, storage: RolloutStorage, gather: Gather = lambda x: x) -> np.ndarray:
        """(T, B) rewards / std(G) (clipped), G_t = gamma G_{t-1} + r_t the discounted return
        (its statistics updated with this rollout's on every rank: `gather`), plus the
        truncation bootstraps (already in value units); raw rewards + bootstraps when reward
        normalization is off."""
        hp, d = self.hparams, storage.data
        rewards = d["rewards"].cpu().numpy().astype(np.float64)
        if hp.normalize_reward:
            dones = d["dones"].cpu().numpy()
            returns = np.empty_like(rewards)
            for t in range(len(rewards)):
                self._returns = self._returns * hp.gamma + rewards[t]
                returns[t] = self._returns
                self._returns = self._returns * (1.0 - dones[t])
            device = d["rewards"].device
            self.return_rms.update(gather(torch.from_numpy(returns.reshape(-1, 1)).to(device)))
            std = float(self.return_rms.std())  # once per rollout, before any gradient step
            rewards = np.clip(rewards / std, -hp.clip_reward, hp.clip_reward)
        return (rewards + d["bootstrap"].cpu().numpy()).astype(np.float32)

    def update(
        self,
        fabric: Fabric,
        learner: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: RolloutStorage,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        hp = self.hparams
        (optimizer,) = optimizers
        lr = hp.learning_rate * (1.0 - progress) if hp.anneal_lr else hp.learning_rate
        for group in optimizer.param_groups:
            group["lr"] = lr

        def gather(x: torch.Tensor) -> torch.Tensor:  # (N, D) of every rank, stacked
            return fabric.all_gather(x).reshape(-1, x.shape[-1])

        advantages, returns = self.advantages(storage, gather)
        # Rows were written under inference_mode: ordinary tensors for autograd.
        batch = [
            storage.data["obs"].flatten(0, 1),
            storage.data["actions"].flatten(0, 1),
            storage.data["logp"].flatten(),
            advantages.flatten(),
            returns.flatten(),
            storage.data["values"].flatten(),
        ]
        n, size = batch[2].shape[0], hp.minibatch_size
        params = [p for p in learner.parameters() if p.requires_grad]
        stats: list[torch.Tensor] = []
        for _ in range(hp.update_epochs):
            order = torch.randperm(n, device=batch[2].device)
            shuffled = [x[order] for x in batch]  # one gather per epoch; minibatches are views
            for start in range(0, n, size):
                out = learner.losses(*(x[start : start + size] for x in shuffled))
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(out["loss"])
                if hp.max_grad_norm:
                    clip_grad_norm(params, hp.max_grad_norm)
                optimizer.step()
                stats.append(torch.stack([out[k] for k in LOGGED]))
        returns, values = batch[4], batch[5]
        # Explained variance 1 - Var[R - V] / Var[R]: 1 = the critic predicts the returns.
        explained = 1 - (returns - values).var() / returns.var().clamp_min(1e-8)
        if hp.normalize_obs:  # every rank's rollout, then every rank acts from the same stats
            self.obs_rms.update(gather(storage.data["raw_obs"].flatten(0, 1).clone()))
            self._resync()
        storage.clear()  # the next rollout overwrites the rows
        means = torch.stack(stats).mean(0)
        scalars = {f"train/{k}": v for k, v in zip(LOGGED, means, strict=True)}
        scalars["train/explained_variance"] = explained
        scalars["train/learning_rate"] = torch.tensor(lr)
        scalars["train/action_std"] = self.actor_logstd.detach().exp().mean()
        return scalars

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        # Fused Adam: one kernel for every parameter (foreach where fused is unavailable).
        fused = {"fused": True} if _fused_adam_ok(self.device) else {"foreach": True}
        return [
            torch.optim.Adam(
                self.parameters(),
                lr=self.hparams.learning_rate,
                eps=self.hparams.adam_eps,
                **fused,
            )
        ]

    # ---- export (OnlineAlgorithm.export_graph): the running stats, baked ----------------
    def observation_stats(self) -> dict[str, dict[str, Any]]:
        """Per key {"mode": "mean_std", "mean", "std"}: the running statistics, split by key."""
        if not self.hparams.normalize_obs:
            return {}
        stats, start = {}, 0
        mean, std = self.obs_rms.mean.cpu().numpy(), self.obs_rms.std().cpu().numpy()
        for key in self.obs_keys:
            shape = tuple(self.hparams.obs_specs[key]["shape"])
            end = start + math.prod(shape)
            stats[key] = {
                "mode": "mean_std",
                "mean": mean[start:end].reshape(shape).tolist(),
                "std": std[start:end].reshape(shape).tolist(),
            }
            start = end
        return stats


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> None:
    """Scale the gradients to a global L2 norm <= max_norm, without a host sync (no finiteness
    check) and without torch.nn.utils.clip_grad_norm_'s per-call grouping (~40% of its cost
    on 64-wide MLPs); the gradients are already all-reduced, so every rank scales alike."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))


def gaussian_logp(a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; mean, exp(log_std)^2), summed over action dimensions."""
    return (-0.5 * ((a - mean) / log_std.exp()).square() - log_std - 0.5 * LOG_2PI).sum(-1)


def _fused_adam_ok(device: torch.device) -> bool:
    try:
        torch.optim.Adam([nn.Parameter(torch.zeros(1, device=device))], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True
