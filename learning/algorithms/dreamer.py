"""Dreamer (Hafner et al.: V1 arXiv:1912.01603, V2 2010.02193, V3 2301.04104) on the shared
online loop: a world model learnt from replayed sequences, an actor and a critic learnt in its
imagination.

    world model   the RSSM of learning/world_model (module.py's loss: reconstruction, reward,
                  continue, KL balanced 0.8 with free nats), on (B, T) replay windows
    imagination   from every posterior state s_0 of the batch (detached), H steps of
                  a_i ~ π(·|s_i), s_{i+1} ~ p(·|s_i, a_i); r_i, c_i from the reward and continue
                  heads of s_i (i >= 1)
    λ-returns     R_H = v(s_H);  R_i = r_{i+1} + γ c_{i+1} ((1 − λ) v(s_{i+1}) + λ R_{i+1})
                  with v the slow critic (V2's target network)
    weights       w_0 = 1, w_i = Π_{j<=i} γ c_j (detached): imagined steps after a predicted
                  episode end count less
    actor         `reinforce` (default, V3):
                    J = −E[w_i log π(a_i|s_i) sg((R_i − v(s_i)) / max(1, S))]
                  `dynamics` (V1, V2): J = −E[w_i R_i / max(1, S)], backpropagated through the
                  frozen world model; both − η E[w_i H(π(·|s_i))], and S = EMA of the returns'
                  95th − 5th percentile (V3's return normalization)
    critic        E[w_i (f(sg s_i) − symlog(sg R_i))²], v = symexp(f); slow critic v̄ ← EMA

One gradient step is one forward (`losses`) and one backward of the three losses' sum: each
reaches only its own parameters (the actor's path through the world model and the critics uses
detached weights, as SAC's actor loss does), so DDP averages every parameter in one pass.

The player keeps a latent (h, z) and the previous action per env and filters every observation
into it (noise drawn: a posterior sample; evaluation: the mode); an episode end resets its row.
Actions are tanh-squashed Gaussians in the normalized action box [−1, 1] (the world model's
own action normalization), mapped to env units.

Export (`learning.export --step`): the world model's filter, imagine and decode graphs, and the
actor on the latent (model type `world_model`, step `actor`: latent + noise -> actions, noise 0
the mode), so the world-model node serves the whole agent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gymnasium as gym
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.distributions import Normal
from torch.func import functional_call

from learning.algorithms.sac import SquashedGaussianActor, squashed_gaussian
from learning.data.keys import ACTIONS
from learning.networks.mlp import mlp
from learning.online.algorithm import AlgorithmError, OnlineAlgorithm, Transition
from learning.online.sequence_replay import SequenceReplay
from learning.world_model.module import WorldModel, symexp, symlog

log = logging.getLogger(__name__)

# How the actor's loss reaches it: through the world model's dynamics (DreamerV1/V2 for
# continuous actions), or by the score function of its own log-probability (REINFORCE, V3).
ACTOR_GRADIENTS = ("dynamics", "reinforce")


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    continues: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """R_0 .. R_{H-1} (H, N) from rewards r_1..r_H, values v_1..v_H, continues c_1..c_H, all
    (H, N): R_{H-1} bootstraps from v_H (module docstring)."""
    out = []
    ret = values[-1]
    for i in reversed(range(rewards.shape[0])):
        ret = rewards[i] + gamma * continues[i] * ((1 - lam) * values[i] + lam * ret)
        out.append(ret)
    return torch.stack(out[::-1])


def _identity(shape: Sequence[int]) -> dict[str, Any]:
    zeros = torch.zeros(tuple(shape)).tolist()
    return {"mode": "mean_std", "mean": zeros, "std": torch.ones(tuple(shape)).tolist()}


class Dreamer(OnlineAlgorithm):
    """Dreamer on the online loop (module docstring). Sizes come from a world-model preset
    (configs/world_model/), `obs_keys` picks the observations it sees (e.g. only `image`)."""

    algorithm = "dreamer"
    forward_methods = ("losses",)

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
        obs_keys: Sequence[str] | None = None,
        deter_dim: int = 256,
        hidden_dim: int = 256,
        stoch: int = 32,
        classes: int = 32,
        latent: str = "categorical",
        cnn_depth: int = 24,
        mlp_layers: int = 1,
        actor_critic_layers: int = 2,
        kl_balance: float = 0.8,
        free_nats: float = 1.0,
        imagine_horizon: int = 15,
        discount: float = 0.99,
        lambda_: float = 0.95,
        entropy_scale: float = 3e-4,
        actor_gradient: str = "reinforce",
        return_ema_decay: float = 0.99,
        slow_critic_rate: float = 0.02,
        world_model_lr: float = 1e-4,
        actor_lr: float = 3e-5,
        critic_lr: float = 3e-5,
        world_model_grad_clip: float = 1000.0,
        actor_critic_grad_clip: float = 100.0,
        batch_size: int = 16,
        sequence_length: int = 64,
        replay_ratio: float = 0.5,
        learning_starts: int = 1000,
        buffer_size: int = 100_000,
        buffer_max_bytes: int | None = 4 * 1024**3,
        prefill_dataset: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not action_bounds:
            raise AlgorithmError("Dreamer needs action_bounds (a bounded Box action space)")
        if actor_gradient not in ACTOR_GRADIENTS:
            raise AlgorithmError(
                f"actor_gradient {actor_gradient!r} is not one of {list(ACTOR_GRADIENTS)}"
            )
        keys = sorted(obs_specs) if obs_keys is None else sorted(obs_keys)
        missing = [k for k in keys if k not in obs_specs]
        if missing:
            raise AlgorithmError(
                f"Dreamer: obs_keys {missing} are not observations of this env {sorted(obs_specs)}"
            )
        self.save_hyperparameters()
        self.obs_keys = keys
        specs = {k: dict(obs_specs[k]) for k in keys}
        normalization: dict[str, dict[str, Any]] = {
            k: {"mode": "image"} if s.get("feature_type") == "image" else _identity(s["shape"])
            for k, s in specs.items()
        }
        normalization[ACTIONS] = {
            "mode": "min_max",
            "min": list(action_bounds["low"]),
            "max": list(action_bounds["high"]),
        }
        self.world_model = WorldModel(
            specs,
            action_dim,
            normalization,
            optimizer=torch.optim.Adam,  # unused: the loop builds the optimizers below
            deter_dim=deter_dim,
            hidden_dim=hidden_dim,
            stoch=stoch,
            classes=classes,
            latent=latent,
            cnn_depth=cnn_depth,
            mlp_layers=mlp_layers,
            kl_balance=kl_balance,
            free_nats=free_nats,
            control_rate_hz=control_rate_hz,
            action_bounds=action_bounds,
        )
        feat = self.world_model.rssm.feature_dim
        widths = [hidden_dim] * actor_critic_layers
        ones = [1.0] * action_dim
        self.actor = SquashedGaussianActor(feat, action_dim, widths, [-v for v in ones], ones)
        self.critic = mlp(feat, widths, 1)
        self.slow_critic = mlp(feat, widths, 1).requires_grad_(False)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.register_buffer("return_scale", torch.ones(()))  # S of the module docstring
        self.export_step = "filter"  # learning.export --step
        self._acting: dict[str, torch.Tensor] | None = None  # per-env latent + previous action
        self._credit = 0.0  # gradient steps owed (replay_ratio per env step)
        self._warming_up = learning_starts > 0

    @classmethod
    def check_spaces(
        cls, observation_space: gym.spaces.Dict, action_space: gym.Space, env_id: str
    ) -> None:
        if not (
            isinstance(action_space, gym.spaces.Box)
            and len(action_space.shape) == 1
            and action_space.is_bounded("both")
        ):
            raise AlgorithmError(
                f"{env_id}: Dreamer needs a bounded 1-D Box action space, got {action_space}"
            )

    # -- the player ---------------------------------------------------------------------
    def make_storage(self, num_envs: int, device: torch.device, rank: int = 0) -> SequenceReplay:
        hp = self.hparams
        specs = {k: hp.obs_specs[k] for k in self.obs_keys}
        replay = SequenceReplay(
            specs,
            hp.action_dim,
            hp.buffer_size,
            num_envs,
            hp.buffer_max_bytes,
            seed=hp.seed + 1000 * rank,
            device=device,
        )
        log.info(replay.describe())
        if hp.prefill_dataset:
            self._prefill(replay, str(hp.prefill_dataset))
        self._warming_up = len(replay) < hp.learning_starts
        return replay

    def _prefill(self, replay: SequenceReplay, path: str) -> None:
        """Every episode of the dataset at `path` into the replay (round robin over the
        streams), before the first env step: Dreamer starts from recorded experience."""
        from episode_dataset import EpisodeReader

        hp = self.hparams
        with EpisodeReader(path) as reader:
            for k in self.obs_keys:
                if k not in reader.obs_specs:
                    raise AlgorithmError(
                        f"prefill_dataset {path}: no observation {k!r} "
                        f"(it has {sorted(reader.obs_specs)})"
                    )
                have, want = list(reader.obs_specs[k].shape), list(hp.obs_specs[k]["shape"])
                if have != want:
                    raise AlgorithmError(
                        f"prefill_dataset {path}: observation {k!r} is {have}, the env's {want}"
                    )
            if list(reader.action_spec.shape) != [hp.action_dim]:
                raise AlgorithmError(
                    f"prefill_dataset {path}: actions are {list(reader.action_spec.shape)}, "
                    f"the env's [{hp.action_dim}]"
                )
            for i, ep in enumerate(reader.episodes):
                replay.add_episode(
                    i % replay.num_envs,
                    {k: torch.from_numpy(reader.read_obs(ep, k)) for k in self.obs_keys},
                    torch.from_numpy(reader.read_actions(ep)),
                    torch.from_numpy(reader.read_rewards(ep)),
                    bool(reader.episode_metadata(ep).get("terminated", False)),
                )
            log.info("prefill: %d episodes (%d steps) from %s", len(reader), len(replay), path)

    def _initial_action(self, batch: int, device: torch.device) -> torch.Tensor:
        """A raw zero action, normalized: the previous action at episode start (as the world
        model's filter starts every training sequence)."""
        zero = torch.zeros(batch, self.hparams.action_dim, device=device)
        return self.world_model.normalizer.normalize(ACTIONS, zero)

    def _reset_rows(self, rows: torch.Tensor) -> None:
        """Episode start for the envs where `rows` (B,) is true: zero latent, the initial
        previous action (masked writes: no host sync on the acting path)."""
        state = self._acting
        if state is None:
            return
        keep = ~rows[:, None]
        state["h"] = state["h"] * keep
        state["z"] = state["z"] * keep
        start = self._initial_action(1, rows.device)
        state["action"] = torch.where(keep, state["action"], start)

    @contextlib.contextmanager
    def acting_context(self) -> Iterator[None]:
        """Evaluation acts from latents of its own; the collection's latents are kept."""
        saved, self._acting = self._acting, None
        try:
            yield
        finally:
            self._acting = saved

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wm, hp = self.world_model, self.hparams
        batch = next(iter(obs.values())).shape[0]
        device = next(iter(obs.values())).device
        if self._acting is None or self._acting["h"].shape[0] != batch:
            h, z = wm.rssm.initial_state(batch, device)
            self._acting = {"h": h, "z": z, "action": self._initial_action(batch, device)}
        state = self._acting
        embed = wm.embed({k: obs[k] for k in self.obs_keys})
        noise = torch.zeros(batch, wm.rssm.stoch_dim, device=device)
        if not deterministic:
            noise.normal_()
        h, z = wm.rssm.filter_step(state["h"], state["z"], state["action"], embed, noise)
        if deterministic:
            action = self.actor.deterministic(wm.rssm.features(h, z))
        elif self._warming_up:  # uniform over the box until learning starts
            action = torch.rand(batch, hp.action_dim, device=device) * 2 - 1
        else:
            action_noise = torch.randn(batch, hp.action_dim, device=device)
            action = self.actor(wm.rssm.features(h, z), action_noise)[0]
        state.update(h=h, z=z, action=action)
        return wm.normalizer.unnormalize(ACTIONS, action), {}

    def observe(self, storage: SequenceReplay, step: Transition) -> None:
        storage.add(
            {k: step.obs[k] for k in self.obs_keys},
            step.actions,
            step.rewards,
            step.terminated,
            step.truncated,
        )
        self._reset_rows(step.terminated | step.truncated)
        self._warming_up = len(storage) < self.hparams.learning_starts
        if not self._warming_up:
            self._credit += self.hparams.replay_ratio * step.actions.shape[0]

    def ready(self, storage: SequenceReplay, env_steps: int) -> bool:
        return not self._warming_up and self._credit >= 1.0

    def storage_state(self, storage: SequenceReplay) -> dict[str, Any]:
        return storage.state_dict()

    def load_storage_state(self, storage: SequenceReplay, state: dict[str, Any]) -> None:
        storage.load_state_dict(state)
        self._warming_up = len(storage) < self.hparams.learning_starts

    # -- the learner --------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        return [
            torch.optim.Adam(self.world_model.parameters(), lr=hp.world_model_lr, eps=1e-8),
            torch.optim.Adam(self.actor.parameters(), lr=hp.actor_lr, eps=1e-5),
            torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr, eps=1e-5),
        ]

    def _imagine(
        self, h: torch.Tensor, z: torch.Tensor, frozen: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """H steps from (h, z) (N, ...) under the actor, through the world model's detached
        weights `frozen`: features (H+1, N, F), log-probs of a_0..a_{H-1}, rewards and
        continues of s_1..s_H."""
        wm, hp = self.world_model, self.hparams
        step = _ImagineStep(wm)
        feats, log_probs, scores = [wm.rssm.features(h, z)], [], []
        ones = torch.ones(hp.action_dim, device=h.device)
        for _ in range(hp.imagine_horizon):
            noise = torch.randn(h.shape[0], hp.action_dim, device=h.device)
            mean, log_std = self.actor.distribution(feats[-1])
            action, log_prob = squashed_gaussian(mean, log_std, noise, ones)
            if hp.actor_gradient == "reinforce":
                # log N(u; μ, σ) of the drawn pre-tanh u, held fixed: the score function
                u = (mean + log_std.exp() * noise).detach()
                scores.append(Normal(mean, log_std.exp()).log_prob(u).sum(-1))
                action = action.detach()  # no gradient through the dynamics
            state_noise = torch.randn(h.shape[0], wm.rssm.stoch_dim, device=h.device)
            h, z = functional_call(
                step, _prefixed(frozen, "rssm.", "model.rssm."), (h, z, action, state_noise)
            )
            feats.append(wm.rssm.features(h, z))
            log_probs.append(log_prob)
        feat = torch.stack(feats)
        reward = functional_call(wm.reward_head, _prefixed(frozen, "reward_head."), (feat[1:],))
        cont = functional_call(wm.continue_head, _prefixed(frozen, "continue_head."), (feat[1:],))
        return {
            "features": feat,
            "log_probs": torch.stack(log_probs),
            **({"scores": torch.stack(scores)} if scores else {}),
            "rewards": symexp(reward.squeeze(-1)),
            "continues": torch.sigmoid(cont.squeeze(-1)),
        }

    def losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """World-model, actor and critic losses of one replay batch (module docstring)."""
        wm, hp = self.world_model, self.hparams
        lat = wm.observe(batch)
        wm_terms = wm.loss_terms(batch, lat)

        # imagination from every real posterior state, through frozen world-model weights
        real = ~batch["is_pad"].flatten()
        h0 = lat["h"].flatten(0, 1)[real].detach()
        z0 = lat["z"].flatten(0, 1)[real].detach()
        frozen = {n: p.detach() for n, p in wm.named_parameters()}
        imag = self._imagine(h0, z0, frozen)
        feat = imag["features"]
        slow = self.slow_critic
        values = symexp(slow(feat).squeeze(-1))  # v̄(s_0 .. s_H), no gradient (buffers only)
        returns = lambda_returns(
            imag["rewards"], values[1:], imag["continues"], hp.discount, hp.lambda_
        )  # (H, N)
        discounts = torch.cat([torch.ones_like(imag["continues"][:1]), imag["continues"][:-1]])
        weights = torch.cumprod(hp.discount * discounts, 0).detach() / hp.discount

        # actor: the normalized return (dynamics backprop) or advantage (REINFORCE), plus an
        # entropy bonus
        with torch.no_grad():
            q = torch.tensor([0.05, 0.95], device=returns.device)
            lo, hi = torch.quantile(returns.flatten().float(), q)
            scale = hp.return_ema_decay * self.return_scale + (1 - hp.return_ema_decay) * (hi - lo)
            self.return_scale.copy_(scale)
        entropy = -imag["log_probs"]
        norm = scale.clamp(min=1.0)
        if hp.actor_gradient == "reinforce":
            objective = imag["scores"] * ((returns - values[:-1]) / norm).detach()
        else:
            objective = returns / norm
        actor_loss = -(weights * (objective + hp.entropy_scale * entropy)).mean()

        # critic: symlog regression of the λ-returns from detached imagined states
        critic_out = self.critic(feat[:-1].detach()).squeeze(-1)
        critic_loss = (weights * (critic_out - symlog(returns.detach())) ** 2).mean()
        return {
            "loss/world_model": wm_terms["loss"],
            "loss/actor": actor_loss,
            "loss/critic": critic_loss,
            "world_model/recon": wm_terms["recon"].detach(),
            "world_model/reward": wm_terms["reward"].detach(),
            "world_model/kl": wm_terms["kl"].detach(),
            "imagination/return": returns.detach().mean(),
            "imagination/return_scale": scale.detach(),
            "actor/entropy": entropy.detach().mean(),
        }

    def update(
        self,
        fabric: Fabric,
        learner: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: SequenceReplay,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        hp = self.hparams
        steps = int(self._credit)
        self._credit -= steps
        clips = (hp.world_model_grad_clip, hp.actor_critic_grad_clip, hp.actor_critic_grad_clip)
        modules = (self.world_model, self.actor, self.critic)
        for _ in range(steps):
            batch = storage.sample(hp.batch_size, hp.sequence_length)
            out = learner.losses(batch)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            fabric.backward(out["loss/world_model"] + out["loss/actor"] + out["loss/critic"])
            for module, clip in zip(modules, clips, strict=True):
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip, foreach=True)
            for opt in optimizers:
                opt.step()
            with torch.no_grad():  # v̄ ← v̄ + rate (v − v̄)
                torch._foreach_lerp_(
                    list(self.slow_critic.parameters()),
                    list(self.critic.parameters()),
                    hp.slow_critic_rate,
                )
        scalars = {k: v.detach() for k, v in out.items()}
        scalars["train/gradient_steps"] = torch.tensor(float(steps))
        return scalars

    # -- export -------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, Any]:
        self.world_model.export_step = self.export_step
        return {**self.world_model.export_metadata(), "step": self.export_step}

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        if self.export_step != "actor":
            self.world_model.export_step = self.export_step
            return self.world_model.export_graph()
        rssm, hp = self.world_model.rssm, self.hparams
        example = {
            "state_in.deter": torch.zeros(2, rssm.deter_dim),
            "state_in.stoch": torch.zeros(2, rssm.stoch_dim),
            "noise": torch.zeros(2, hp.action_dim),
        }
        return LatentActorGraph(self), example, ["actions"]


def _prefixed(
    params: Mapping[str, torch.Tensor], prefix: str, new_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The entries of `params` under `prefix`, renamed to start with `new_prefix`."""
    return {
        new_prefix + n.removeprefix(prefix): p for n, p in params.items() if n.startswith(prefix)
    }


class _ImagineStep(nn.Module):
    """`rssm.imagine_step` as a forward, so `functional_call` can run it on other weights."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.rssm.imagine_step(h, z, action, noise)


class LatentActorGraph(nn.Module):
    """forward(deter, stoch, noise) -> actions (B, A) in env units: a = tanh(μ + σ ε) mapped
    from [−1, 1] to the action bounds (noise 0: the mode the evaluation acts with)."""

    def __init__(self, dreamer: Dreamer) -> None:
        super().__init__()
        self.dreamer = dreamer

    def forward(self, h: torch.Tensor, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        d = self.dreamer
        action, _ = d.actor(d.world_model.rssm.features(h, z), noise)
        return d.world_model.normalizer.unnormalize(ACTIONS, action)
