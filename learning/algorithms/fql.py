"""Flow Q-learning (FQL; Park, Li & Levine 2025, arXiv:2502.02538) over action chunks, offline.

Three parts, each with its own observation encoder; one time convention (t=0 noise, t=1 data)
and actions in normalized units (learning/normalization.py), clipped to the normalized
`action_bounds` [lo, hi] wherever an action is produced:

    BC flow     v_theta(x_t, t, c): FBC's flow matching on the data chunks (FlowBC.loss)
    one-step    mu_w(c, z) = net(z, t=0, c): noise z ~ N(0, I) -> a chunk in one call (the
                exported policy, 1 NFE)
    critic      Q_phi = (Q_1, Q_2), a LayerNorm MLP each, on the observation and the chunk;
                a Polyak copy Q_phi' (tau) gives the targets

    critic      L_Q = E[ valid (Q_j(s, a) - y)^2 ],
                y = R + gamma^h bootstrap agg_j Q'_j(s', clip(mu_w(s', z')))           (Q-chunking:
                R = sum_{i<h} gamma^i r_{t+i}, s' = s_{t+h}, agg = mean or min over j)
    actor       L_pi = L_flow(theta) + alpha E|| mu_w(s, z) - sg(a_flow(s, z)) ||^2
                       - E[Q(s, clip(mu_w(s, z)))] / sg(E|Q|),   Q = mean_j Q_j
                a_flow = clip(Euler_N(v_theta, z)): the BC flow's N-step sample from the same z
                (eq. 6-8 of the paper; the Q term through frozen critic weights)

`action_chunking`: the policy and critic act on the whole data chunk (h = horizon; Q-chunking)
or on its first action only while the target still backs up over the chunk's h steps (n-step
returns). The data windows give R, s', bootstrap and valid (docs/training.md, windows for other
families). Manual optimization: one backward of L_Q + L_pi (they reach disjoint parameters),
then the actor and critic Adams step and the target follows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from learning.algorithms.flow_bc import FlowBC, euler_sample
from learning.algorithms.sac import polyak_update
from learning.data.keys import ACTIONS, BOOTSTRAP, CHUNK_RETURN, NEXT_OBS, OBS, VALID
from learning.networks.mlp import mlp

Q_AGGREGATES = {"mean": lambda q: q.mean(0), "min": lambda q: q.min(0).values}


class QEnsemble(nn.Module):
    """K critics Q_j(c, a): features (B, obs_dim) and chunk (B, horizon, A) -> (K, B)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        hidden_dims: Sequence[int] = (512, 512, 512, 512),
        num_qs: int = 2,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        in_dim = obs_dim + horizon * action_dim
        self.members = nn.ModuleList(
            mlp(in_dim, list(hidden_dims), 1, norm=layer_norm) for _ in range(num_qs)
        )

    def forward(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cond, actions.flatten(1)], dim=-1)
        return torch.stack([m(x).squeeze(-1) for m in self.members])


class Critic(nn.Module):
    """Q_j(obs, a) = QEnsemble(encoder(obs), a); the target network copies both parts."""

    def __init__(self, encoder: nn.Module, q: nn.Module) -> None:
        super().__init__()
        self.encoder, self.q = encoder, q

    def forward(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        return self.q(self.encoder(obs), actions)


def td_target(
    chunk_return: torch.Tensor,
    bootstrap: torch.Tensor,
    next_q: torch.Tensor,
    discount: float,
    steps: int,
    q_agg: str,
) -> torch.Tensor:
    """y = R + gamma^h bootstrap agg_j Q'_j(s', a'); next_q (K, B) from the target critics."""
    return chunk_return + discount**steps * bootstrap * Q_AGGREGATES[q_agg](next_q)


class FQL(FlowBC):
    """FQL on the offline loop (see module docstring). `alpha` weighs distillation against Q;
    `sampler_steps` are the BC flow's Euler steps for the distillation target."""

    def __init__(
        self,
        network: Callable[..., nn.Module],
        encoder: Callable[..., nn.Module],
        critic: Callable[..., nn.Module],
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        normalization: Mapping[str, Mapping[str, Any]],
        obs_steps: int,
        horizon: int,
        n_action_steps: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: None = None,
        sampler_steps: int = 10,
        alpha: float = 10.0,
        discount: float = 0.99,
        tau: float = 0.005,
        q_agg: str = "mean",
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
    ) -> None:
        if q_agg not in Q_AGGREGATES:
            raise ValueError(f"q_agg {q_agg!r} is not one of {sorted(Q_AGGREGATES)}")
        if scheduler is not None:
            raise ValueError("FQL keeps a constant learning rate: set model.scheduler=null")
        if action_bounds is None:
            raise ValueError("FQL needs action_bounds (from the dataset): it clips to them")
        super().__init__(
            network=network,
            encoder=encoder,
            obs_specs=obs_specs,
            action_dim=action_dim,
            normalization=normalization,
            obs_steps=obs_steps,
            horizon=horizon,
            n_action_steps=n_action_steps,
            optimizer=optimizer,
            sampler_steps=sampler_steps,
            control_rate_hz=control_rate_hz,
            action_bounds=action_bounds,
        )
        self.save_hyperparameters(
            ignore=["network", "encoder", "critic", "optimizer", "scheduler"]
        )
        self.automatic_optimization = False  # two optimizers, one backward (training_step)
        dims = {"action_dim": action_dim, "horizon": horizon}
        self.actor_encoder = encoder(obs_specs=obs_specs, obs_steps=obs_steps)
        self.actor = network(obs_dim=self.actor_encoder.out_dim, obs_steps=obs_steps, **dims)
        critic_encoder = encoder(obs_specs=obs_specs, obs_steps=obs_steps)
        self.critic = Critic(critic_encoder, critic(obs_dim=critic_encoder.out_dim, **dims))
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        bounds = [torch.tensor(action_bounds[k], dtype=torch.float32) for k in ("low", "high")]
        low, high = (self.normalizer.normalize(ACTIONS, b) for b in bounds)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)

    # ---- maths ---------------------------------------------------------------------------
    def clip(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, self.action_high), self.action_low)

    def one_step(self, obs: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """mu_w(s, z): raw obs, noise (B, horizon, A) -> normalized chunk (not clipped)."""
        c = self.actor_encoder(self.normalize_obs(obs))
        return self.actor(z, torch.zeros(z.shape[0], device=z.device), c)

    def losses(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Critic and actor losses of one batch (module docstring) and their parts."""
        hp = self.hparams
        steps = batch[ACTIONS].shape[1]  # h: the data chunk the target backs up over
        policy_batch = {OBS: batch[OBS], ACTIONS: batch[ACTIONS][:, : hp.horizon]}
        a_data = self.normalizer.normalize(ACTIONS, policy_batch[ACTIONS])
        z_next, z = torch.randn(2, *a_data.shape, generator=generator, device=a_data.device)

        # critic: y = R + gamma^h bootstrap agg_j Q'_j(s', clip(mu(s', z')))
        with torch.no_grad():
            next_q = self.critic_target(
                self.normalize_obs(batch[NEXT_OBS]),
                self.clip(self.one_step(batch[NEXT_OBS], z_next)),
            )
            y = td_target(
                batch[CHUNK_RETURN], batch[BOOTSTRAP], next_q, hp.discount, steps, hp.q_agg
            )
        obs = self.normalize_obs(batch[OBS])
        q = self.critic(obs, a_data)  # (K, B)
        critic_loss = (batch[VALID] * (q - y).pow(2)).mean()

        # actor: BC flow + alpha distillation onto the (detached) Euler flow - normalized Q
        flow_loss = super().loss(policy_batch, generator)
        with torch.no_grad():
            c = self.condition(batch[OBS])
            target = self.clip(
                euler_sample(lambda x, t: self.network(x, t, c), z, hp.sampler_steps)
            )
        a_pi = self.one_step(batch[OBS], z)
        distill_loss = F.mse_loss(a_pi, target)
        frozen = {n: p.detach() for n, p in self.critic.named_parameters()}
        q_pi = torch.func.functional_call(self.critic, frozen, (obs, self.clip(a_pi))).mean(0)
        q_loss = -q_pi.mean() / q_pi.abs().mean().detach()
        return {
            "critic_loss": critic_loss,
            "actor_loss": flow_loss + hp.alpha * distill_loss + q_loss,
            "flow_loss": flow_loss,
            "distill_loss": distill_loss,
            "q_loss": q_loss,
            "q_mean": q.detach().mean(),
        }

    def predict_action_chunk(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor
    ) -> torch.Tensor:
        """obs[key] (B, obs_steps, *shape) raw, noise (B, H, A) -> clip(mu(s, z)) (B, H, A) raw."""
        return self.normalizer.unnormalize(ACTIONS, self.clip(self.one_step(obs, noise)))

    def sampler_metadata(self) -> dict[str, Any]:
        return {"type": "one_step", "steps": 1}

    # ---- Lightning -----------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        total = out["critic_loss"] + out["actor_loss"]
        optimizers = self.optimizers()
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(total)  # the two losses reach disjoint parameters
        for opt in optimizers:
            opt.step()
        # theta' <- tau theta + (1 - tau) theta'
        polyak_update(
            list(self.critic_target.parameters()), list(self.critic.parameters()), self.hparams.tau
        )
        self.log("train_loss", total, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        for key in ("critic_loss", "flow_loss", "distill_loss", "q_mean"):
            self.log(f"train_{key}", out[key], on_epoch=True, on_step=False, sync_dist=True)
        return total.detach()

    def _eval_step(self, batch: Mapping[str, Any], batch_idx: int, split: str) -> torch.Tensor:
        # Fixed noise per batch index; the loss that tracks fit: TD error + BC flow matching.
        gen = torch.Generator(device=self.device).manual_seed(batch_idx)
        out = self.losses(batch, generator=gen)
        loss = out["critic_loss"] + out["flow_loss"]
        actions = batch[ACTIONS][:, : self.hparams.horizon]
        noise = torch.randn(actions.shape, generator=gen, device=self.device)
        action_mse = F.mse_loss(self.predict_action_chunk(batch[OBS], noise), actions)
        self.log(f"{split}_loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{split}_action_mse", action_mse, sync_dist=True)
        self.log(f"{split}_q_mean", out["q_mean"], sync_dist=True)
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Actor (BC flow, one-step policy, their encoders) and critic (with its encoder)."""
        critic = {id(p) for p in self.critic.parameters()}
        actor = [p for p in self.parameters() if p.requires_grad and id(p) not in critic]
        return [
            self.optimizer_factory(params=actor),
            self.optimizer_factory(params=self.critic.parameters()),
        ]
