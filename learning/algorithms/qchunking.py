"""Q-chunking (Li, Zhou & Levine 2025, arXiv:2507.07969): RL over action chunks with prior data,
in one module, the paper's equations beside the lines. Two agents on the shared online loop:

    ACRLPD (algorithm "acrlpd", QC)   a BC flow policy over chunks of h = horizon_length actions;
                                      acting, evaluation and TD targets take the best of N flow
                                      samples under the critic (BC: best_of_n_samples 1)
    QCFQL  (algorithm "qc_fql")       + a one-step policy mu_w distilled from the flow and pushed
                                      up the critic (FQL's actor; FQL = QCFQL with h = 1)

Units: actions are normalized to [-1, 1] by the env's action bounds and clipped there wherever
an action is produced; observations by dataset statistics when `normalize_observations` (else
identity; images uint8 -> [0, 1]). Flow time: t=0 noise, t=1 data (learning/networks/
flow_policy.py). A batch (learning.online.chunk_replay.ChunkReplay.sample, the offline windows'
keys): OBS, NEXT_OBS {key: (B, 1, *shape)}, ACTIONS (B, h, A), CHUNK_RETURN, BOOTSTRAP, VALID (B,).

    critic   Q_j(s, a_{t:t+h}), j = 1..K: K LayerNorm MLPs on (critic encoder(s), flat chunk),
             one stacked module; Qbar_j their Polyak copies, Qbar <- tau Q + (1 - tau) Qbar
    target   y = sum_{i<h} gamma^i r_{t+i} + gamma^h BOOTSTRAP agg_j Qbar_j(s_{t+h}, a')
             a' = argmax_{a^k} mean_j Q_j(s_{t+h}, a^k),  a^k = Euler(v_theta, z^k), k = 1..N
             (best-of-N under the ONLINE critic, valued by the target critics; agg mean | min)
    L_Q      = mean_{j, b} VALID_b (Q_j(s_b, a_b) - y_b)^2    (a chunk cut without its next
             observation drops out; one mean over critics and rows: not K times the loss)
    L_bc     = E || v_theta(x_t, t, s) - (a - x0) ||^2,  x_t = (1 - t) x0 + t a    (flow matching)
    H_hat(s) = sum_d 0.5 log(2 pi e sigma_d^2(s)),  sigma_d^2 the variance of chunk dim d over M
             flow samples from s (differentiable through the Euler sampler; a Gaussian estimate
             of the flow's entropy), sigma^2 floored at VAR_FLOOR
    L_pi     = bc_alpha L_bc - alpha H_hat                      (an exploration floor)
    J(alpha) = alpha (H_hat - H_target) (stop-gradient on H_hat), H_target = -0.5 h A
    total    = L_Q + L_pi (+ J(alpha)): each reaches only its own parameters (critic; policy;
             log alpha), so one backward is three separate steps, each with its own Adam.

With separate Adams the scale of a loss does not matter to its own parameters, and the flow
shares none with the critics (their own encoder) or QCFQL's one-step policy: bc_alpha sets BC
against the entropy bonus alpha H_hat only (against a critic only if parameters were shared).

QCFQL adds FQL's actor (arXiv:2502.02538, eq. 6-8; learning/algorithms/fql.py offline):

    L_mu = alpha_distill E || mu_w(s, z) - sg(clip(Euler(v_theta, z))) ||^2
           - E[Q(s, clip(mu_w(s, z)))] / sg(E |Q|),  Q = mean_j Q_j through frozen critic weights
    acting and the target's a' = clip(mu_w(s, z)) (1 network call; best_of_n_samples 1)

Acting: a chunk is executed open-loop for its h steps (a queue per env, refilled when empty,
cleared when the env's episode ends); there are no uniform random warm-up actions: from the
first step the (pretrained) policy acts, which is QC's offline-to-online. `update` runs
`utd_ratio` x `gradient_step` once the storage holds `start_training` rows.

Export (`python -m learning.export`): best_of_n_samples N > 1 gives contract `best_of_n`:
obs.* (B, 1, *shape) raw + noise (B, N, h, A) -> actions (B, h, A) env units, q (B,), exactly
`select_chunk`; N = 1 a `policy` (noise (B, h, A)). Both execute the whole chunk open-loop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn

from episode_dataset import IMAGE
from learning.algorithms.acting import acting_fields, example_observations
from learning.algorithms.fql import Q_AGGREGATES, td_target
from learning.algorithms.sac import EnsembleLinear, full_precision, polyak_update
from learning.data.keys import ACTIONS, BOOTSTRAP, CHUNK_RETURN, NEXT_OBS, OBS, VALID
from learning.networks.flow_policy import euler_chunks, flow_matching_loss, repeat_rows
from learning.normalization import Normalizer, affine, compute_stats
from learning.online.algorithm import AlgorithmError, OnlineAlgorithm, Transition

log = logging.getLogger(__name__)

VAR_FLOOR = 1e-6  # sigma_d^2 floor of the entropy estimate: log 0 when the flow collapses


# ---- critics -----------------------------------------------------------------------------
class EnsembleLayerNorm(nn.Module):
    """LayerNorm of each member's features, an affine per member: (K, B, D) -> (K, B, D)."""

    def __init__(self, k: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, 1, dim))
        self.bias = nn.Parameter(torch.zeros(k, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """K MLPs Q_j(feat, chunk) (Linear -> LayerNorm -> GELU per hidden width, linear head) as
    one stacked module: (B, F), (B, h, A) -> (K, B); one batched matmul per layer."""

    def __init__(
        self,
        in_dim: int,
        num_critics: int,
        hidden_dims: Sequence[int],
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.k = num_critics
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers.append(EnsembleLinear(num_critics, in_dim, width))
            if layer_norm:
                layers.append(EnsembleLayerNorm(num_critics, width))
            layers.append(nn.GELU())
            in_dim = width
        self.hidden = nn.Sequential(*layers)
        self.head = EnsembleLinear(num_critics, in_dim, 1)

    def forward(self, features: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, chunk.flatten(1).to(features.dtype)], -1)
        h = self.hidden(x.expand(self.k, *x.shape))
        return full_precision(self.head, h).squeeze(-1)  # heads in fp32 under bf16-mixed


class ChunkCritic(nn.Module):
    """Q_j(s, a) = CriticEnsemble(encoder(s), a): obs {key: (B, 1, *shape)} normalized, chunk
    (B, h, A) normalized -> (K, B). `features` once per observation serves N candidates."""

    def __init__(self, encoder: nn.Module, ensemble: CriticEnsemble) -> None:
        super().__init__()
        self.encoder, self.ensemble = encoder, ensemble

    def features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(obs)

    def forward(self, obs: Mapping[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
        return self.ensemble(self.features(obs), chunk)


def gaussian_entropy(samples: torch.Tensor) -> torch.Tensor:
    """H_hat = sum_d 0.5 log(2 pi e sigma_d^2) of samples (B, M, D) per row -> (B,), the
    variance over the M samples, floored at VAR_FLOOR."""
    var = samples.var(1).clamp_min(VAR_FLOOR)
    return 0.5 * torch.log(2 * math.pi * math.e * var).sum(-1)


# ---- the agent ---------------------------------------------------------------------------
class ACRLPD(OnlineAlgorithm):
    """Q-chunking with a BC flow policy and best-of-N (module docstring). `policy` is a
    FlowPolicy factory (configs/policy/*.yaml), `critic_encoder` an observation-encoder
    factory (configs/obs_encoder/default.yaml) for the critics' own encoder."""

    algorithm = "acrlpd"
    precisions = ("32-true", "bf16-mixed")  # gradient_step enters fabric.autocast itself
    forward_methods = ("losses",)

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        policy: Callable[..., nn.Module],
        critic_encoder: Callable[..., nn.Module],
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
        horizon_length: int = 5,
        num_critics: int = 10,
        critic_hidden_dims: Sequence[int] = (512, 512, 512, 512),
        layer_norm: bool = True,
        q_agg: str = "mean",
        discount: float = 0.99,
        tau: float = 0.005,
        bc_alpha: float = 1.0,
        best_of_n_samples: int = 32,
        flow_steps: int = 10,
        use_adaptive_temperature: bool = True,
        target_entropy: float | None = None,
        init_temperature: float = 0.01,
        entropy_samples: int = 4,
        entropy_batch: int = 32,
        normalize_observations: bool = False,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        batch_size: int = 256,
        utd_ratio: int = 1,
        start_training: int = 0,
        buffer_size: int = 1_000_000,
        max_memory_gb: float = 16.0,
        gradient_accumulation_steps: int = 1,
        freeze_backbone: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not action_bounds:
            raise AlgorithmError(f"{self.algorithm} needs action_bounds (a bounded Box)")
        if q_agg not in Q_AGGREGATES:
            raise AlgorithmError(f"q_agg {q_agg!r} is not one of {sorted(Q_AGGREGATES)}")
        for name, value in (
            ("horizon_length", horizon_length),
            ("num_critics", num_critics),
            ("best_of_n_samples", best_of_n_samples),
            ("flow_steps", flow_steps),
            ("utd_ratio", utd_ratio),
            ("gradient_accumulation_steps", gradient_accumulation_steps),
        ):
            if int(value) < 1:
                raise AlgorithmError(f"{name}={value} must be >= 1")
        if use_adaptive_temperature and entropy_samples < 2:
            raise AlgorithmError(f"entropy_samples={entropy_samples}: a variance needs >= 2")
        self.save_hyperparameters(ignore=["policy", "critic_encoder"])
        self.obs_keys = sorted(obs_specs)
        self.horizon = horizon_length
        dims = {"obs_specs": obs_specs, "obs_steps": 1, "action_dim": action_dim}
        self.policy = policy(horizon=horizon_length, **dims)
        encoder = critic_encoder(obs_specs=obs_specs, obs_steps=1)
        ensemble = CriticEnsemble(
            encoder.out_dim + horizon_length * action_dim,
            num_critics,
            critic_hidden_dims,
            layer_norm,
        )
        self.critic = ChunkCritic(encoder, ensemble)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        if freeze_backbone:
            for p in self.policy.backbone_parameters():
                p.requires_grad_(False)
        self.log_alpha = nn.Parameter(
            torch.tensor(math.log(init_temperature)), requires_grad=use_adaptive_temperature
        )
        chunk_dim = horizon_length * action_dim
        self.target_entropy = -0.5 * chunk_dim if target_entropy is None else target_entropy
        # observations: identity (low-dim) / [0, 1] (images) until `load_offline` sets stats
        self.obs_norm = Normalizer({k: self._identity_stats(obs_specs[k]) for k in self.obs_keys})
        low, high = (torch.tensor(action_bounds[k], dtype=torch.float32) for k in ("low", "high"))
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_scale", ((high - low) / 2).clamp_min(1e-6))
        self._queue: torch.Tensor | None = None  # (E, h, A) env units: the chunk being executed
        self._step: torch.Tensor | None = None  # (E,) its next action (h: empty)

    @staticmethod
    def _identity_stats(spec: Mapping[str, Any]) -> dict[str, Any]:
        if spec.get("feature_type") == IMAGE:
            return {"mode": "image"}
        shape = tuple(spec["shape"])
        return {
            "mode": "mean_std",
            "mean": np.zeros(shape).tolist(),
            "std": np.ones(shape).tolist(),
        }

    # ---- units ---------------------------------------------------------------------------
    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.obs_norm.normalize(k, obs[k]) for k in self.obs_keys}

    def to_normalized(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions.float() - self.action_center) / self.action_scale

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_scale + self.action_center

    @staticmethod
    def clip(actions: torch.Tensor) -> torch.Tensor:
        return actions.clamp(-1.0, 1.0)

    def set_observation_stats(self, obs: Mapping[str, torch.Tensor]) -> None:
        """Mean/std normalization of the low-dim keys from observations {key: (N, ..., D)}
        (images keep [0, 1]); buffers, so they are in every checkpoint and the export."""
        for k in self.obs_keys:
            if self.hparams.obs_specs[k].get("feature_type") == IMAGE:
                continue
            x = obs[k].reshape(-1, *self.hparams.obs_specs[k]["shape"]).double().cpu().numpy()
            center, scale = affine(compute_stats(x, "mean_std"))
            getattr(self.obs_norm, f"{k}_center").copy_(torch.from_numpy(center))
            getattr(self.obs_norm, f"{k}_scale").copy_(torch.from_numpy(scale))

    def observation_stats(self) -> dict[str, dict[str, Any]]:
        """The stats in the buffers now (a loaded checkpoint's, not the constructor's)."""
        stats = {}
        for k in self.obs_keys:
            if self.hparams.obs_specs[k].get("feature_type") == IMAGE:
                stats[k] = {"mode": "image"}
                continue
            center = getattr(self.obs_norm, f"{k}_center").tolist()
            scale = getattr(self.obs_norm, f"{k}_scale").tolist()
            stats[k] = {"mode": "mean_std", "mean": center, "std": scale}
        return stats

    # ---- sampling ------------------------------------------------------------------------
    def candidates(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """N chunks per observation: obs normalized (B rows), noise (B, N, h, A) ->
        clip(Euler(v_theta, z)) (B * N, h, A), row-major; the prefix is computed once."""
        ctx = repeat_rows(self.policy.prefix(obs), noise.shape[1])
        return self.clip(
            euler_chunks(self.policy, ctx, noise.flatten(0, 1), self.hparams.flow_steps)
        )

    def best_of_n(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a* = argmax_k mean_j Q_j(s, a^k) over the candidates of `noise` (B, N, h, A):
        (a* normalized (B, h, A), its mean Q (B,), k* (B,))."""
        n = noise.shape[1]
        chunks = self.candidates(obs, noise)  # (B * N, h, A)
        features = repeat_rows(self.critic.features(obs), n)
        q = self.critic.ensemble(features, chunks).mean(0).unflatten(0, (-1, n))  # (B, N)
        index = q.argmax(1)
        chosen = chunks.unflatten(0, (-1, n)).gather(
            1, index[:, None, None, None].expand(-1, 1, *chunks.shape[1:])
        )
        return chosen.squeeze(1), q.gather(1, index[:, None]).squeeze(1), index

    def select_chunk(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw obs {key: (B, 1, *shape)}, noise (B, N, h, A) -> (chunk (B, h, A) in env units,
        q (B,), index (B,)): the exported best_of_n graph."""
        chunk, q, index = self.best_of_n(self.normalize_obs(obs), noise)
        return self.to_env(chunk), q, index

    # ---- losses --------------------------------------------------------------------------
    @torch.no_grad()
    def td_targets(self, batch: Mapping[str, Any], noise: torch.Tensor) -> torch.Tensor:
        """y = R + gamma^h BOOTSTRAP agg_j Qbar_j(s', a'), a' the best of `noise` (B, N, h, A)
        at s' under the online critic (B,)."""
        hp = self.hparams
        next_obs = self.normalize_obs(batch[NEXT_OBS])
        next_actions = self.best_of_n(next_obs, noise)[0]  # argmax of the online critic's mean
        next_q = self.critic_target(next_obs, next_actions)  # (K, B) target critics
        return td_target(
            batch[CHUNK_RETURN], batch[BOOTSTRAP], next_q, hp.discount, self.horizon, hp.q_agg
        )

    def critic_loss(
        self,
        batch: Mapping[str, Any],
        obs: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_Q = mean_{j,b} VALID_b (Q_j(s_b, a_b) - y_b)^2: one mean over critics and rows."""
        q = self.critic(obs, actions)  # (K, B)
        loss = (batch[VALID] * (q.float() - y).pow(2)).mean()
        return loss, {"q_mean": q.detach().mean(), "target_mean": y.mean()}

    def entropy(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """H_hat(s) (B,) from `entropy_samples` Euler samples per observation, with gradient."""
        hp = self.hparams
        b = next(iter(obs.values())).shape[0]
        noise = torch.randn(
            b, hp.entropy_samples, self.horizon, hp.action_dim, device=self.action_center.device
        )
        ctx = repeat_rows(self.policy.prefix(obs), hp.entropy_samples)
        chunks = euler_chunks(self.policy, ctx, noise.flatten(0, 1), hp.flow_steps)
        return gaussian_entropy(chunks.float().unflatten(0, (b, hp.entropy_samples)).flatten(2))

    def actor_losses(
        self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """L_pi = bc_alpha L_bc (- alpha H_hat) and J(alpha); QCFQL adds its one-step actor."""
        hp = self.hparams
        bc = flow_matching_loss(self.policy, obs, actions)
        out = {"loss/bc": bc, "loss/actor": hp.bc_alpha * bc}
        if hp.use_adaptive_temperature:
            rows = min(hp.entropy_batch, actions.shape[0])
            h_hat = self.entropy({k: v[:rows] for k, v in obs.items()}).mean()
            alpha = self.log_alpha.exp()
            out["loss/actor"] = out["loss/actor"] - alpha.detach() * h_hat
            # J(alpha) = alpha (H_hat - H_target): alpha falls while the spread is above target
            out["loss/temperature"] = alpha * (h_hat - self.target_entropy).detach()
            out["entropy"] = h_hat.detach()
            out["temperature"] = alpha.detach()
        return out

    def losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Every loss of one batch (raw units in) and logged parts; `total` is their sum."""
        obs = self.normalize_obs(batch[OBS])
        actions = self.clip(self.to_normalized(batch[ACTIONS]))
        hp = self.hparams
        b = actions.shape[0]
        noise = torch.randn(b, hp.best_of_n_samples, *actions.shape[1:], device=actions.device)
        y = self.td_targets(batch, noise)
        critic_loss, parts = self.critic_loss(batch, obs, actions, y)
        out = {"loss/critic": critic_loss, **parts, **self.actor_losses(obs, actions)}
        out["loss/total"] = critic_loss + out["loss/actor"] + out.get("loss/temperature", 0.0)
        return out

    # ---- the learner ---------------------------------------------------------------------
    def actor_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Critic (critic_lr), actor (actor_lr), temperature (actor_lr; when adaptive)."""
        hp = self.hparams
        opts = [
            torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr),
            torch.optim.Adam(self.actor_parameters(), lr=hp.actor_lr),
        ]
        if hp.use_adaptive_temperature:
            opts.append(torch.optim.Adam([self.log_alpha], lr=hp.actor_lr))
        return opts

    def gradient_step(
        self,
        fabric: Fabric,
        learner: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: Any,
    ) -> dict[str, torch.Tensor]:
        """ONE update: `gradient_accumulation_steps` batches of `batch_size` (their gradients
        summed at 1/n each), one step of every optimizer, then Qbar <- tau Q + (1 - tau) Qbar."""
        hp = self.hparams
        n = hp.gradient_accumulation_steps
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        for _ in range(n):
            batch = storage.sample(hp.batch_size)
            with fabric.autocast():
                out = learner.losses(batch)
            fabric.backward(out["loss/total"] / n)
        for opt in optimizers:
            opt.step()
        polyak_update(
            list(self.critic_target.parameters()), list(self.critic.parameters()), hp.tau
        )
        return {k: v.detach() for k, v in out.items()}

    def update(
        self,
        fabric: Fabric,
        learner: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        storage: Any,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        """utd_ratio gradient steps (the env phase; `ready` holds them until start_training)."""
        for _ in range(self.hparams.utd_ratio):
            scalars = self.gradient_step(fabric, learner, optimizers, storage)
        return scalars

    def ready(self, storage: Any, env_steps: int) -> bool:
        """Online updates start once `start_training` env steps are stored (Q-chunking's
        warm-up counts online steps: the offline rows do not end it)."""
        online = len(storage) - storage.offline_steps
        return online >= self.hparams.start_training and len(storage) >= self.hparams.batch_size

    # ---- storage -------------------------------------------------------------------------
    @classmethod
    def check_spaces(
        cls, observation_space: gym.spaces.Dict, action_space: gym.Space, env_id: str
    ) -> None:
        """Chunks are normalized by the action bounds: a bounded 1-D Box."""
        box = isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1
        if not (box and action_space.is_bounded("both")):
            raise AlgorithmError(
                f"{env_id}: {cls.algorithm} needs a bounded 1-D Box action space, got "
                f"{action_space}"
            )

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """The seed's `config.validate()` on the run's root keys, before anything is built."""
        from learning.algorithms.qchunking_config import ACRLPDConfig

        ACRLPDConfig.from_config(cfg).validate()

    def make_storage(self, num_envs: int, device: torch.device, rank: int = 0) -> Any:
        from learning.online.chunk_replay import ChunkReplay

        hp = self.hparams
        storage = ChunkReplay(
            hp.obs_specs,
            hp.action_dim,
            capacity=hp.buffer_size,
            num_envs=num_envs,
            horizon=self.horizon,
            discount=hp.discount,
            max_bytes=int(hp.max_memory_gb * 1024**3),
            seed=hp.seed + 1000 * rank,  # each data-parallel rank samples its own rows
            device=device,
        )
        log.info(storage.describe())
        return storage

    def load_offline(self, storage: Any, path: str) -> dict[str, Any]:
        """Prefill the storage's offline stream from dataset `path` (H5 episodes, refused over
        max_memory_gb); with `normalize_observations`, the observation stats come from it."""
        from learning.online.chunk_replay import load_offline_episodes

        info = load_offline_episodes(storage, path, self.hparams.max_memory_gb)
        if self.hparams.normalize_observations:  # every step of the dataset
            rows = storage.offline_steps
            data = storage.offline.data
            self.set_observation_stats(  # low-dim keys (cameras may be left on disk)
                {k: data[f"obs.{k}"][0, :rows] for k in self.obs_keys if f"obs.{k}" in data}
            )
        return info

    def storage_state(self, storage: Any) -> dict[str, Any]:
        return storage.state_dict()

    def load_storage_state(self, storage: Any, state: dict[str, Any]) -> None:
        storage.load_state_dict(state)

    # ---- the player ----------------------------------------------------------------------
    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The next action of each env's chunk (B, A) in env units; envs whose chunk is used
        up get a new one from `select_chunk` (best-of-N in evaluation too: QC's policy)."""
        hp = self.hparams
        b = next(iter(obs.values())).shape[0]
        device = self.action_center.device
        if self._queue is None or self._queue.shape[0] != b:
            self._queue = torch.zeros(b, self.horizon, hp.action_dim, device=device)
            self._step = torch.full((b,), self.horizon, dtype=torch.long, device=device)
        empty = torch.nonzero(self._step >= self.horizon).squeeze(1)
        if len(empty):
            sub = {k: obs[k][empty].unsqueeze(1) for k in self.obs_keys}
            noise = torch.randn(len(empty), hp.best_of_n_samples, self.horizon, hp.action_dim)
            training = self.training
            self.train(False)  # centre crops, no dropout: acting is the exported graph
            try:
                self._queue[empty] = self.select_chunk(sub, noise.to(device))[0].float()
            finally:
                self.train(training)
            self._step[empty] = 0
        actions = self._queue[torch.arange(b, device=device), self._step]
        self._step += 1
        return actions, {}

    @contextlib.contextmanager
    def acting_context(self) -> Iterator[None]:
        """Evaluation executes chunks of its own; the collection's queues are kept aside."""
        saved = self._queue, self._step
        self._queue = self._step = None
        try:
            yield
        finally:
            self._queue, self._step = saved

    def observe(self, storage: Any, step: Transition) -> None:
        storage.add(
            step.obs, step.actions, step.rewards, step.next_obs, step.terminated, step.truncated
        )
        if self._step is not None:  # a new episode starts with a new chunk
            self._step[step.terminated | step.truncated] = self.horizon

    # ---- export --------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, Any]:
        hp = self.hparams
        n = hp.best_of_n_samples
        fields = acting_fields(
            "best_of_n" if n > 1 else "policy",
            hp,
            obs_steps=1,
            horizon=self.horizon,
            n_action_steps=self.horizon,  # the chunk runs open-loop
            stats=self.observation_stats(),
        )
        fields["sampler"] = self.sampler_metadata()
        if n > 1:
            fields["num_samples"] = n
        return fields

    def sampler_metadata(self) -> dict[str, Any]:
        return {"type": "euler", "steps": self.hparams.flow_steps}

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        """obs.* (B, 1, *shape) + noise (B, N, h, A) -> actions (B, h, A), q (B,); with N = 1
        noise (B, h, A) -> actions (a `policy`)."""
        hp = self.hparams
        example = example_observations(hp.obs_specs, 1)
        n = hp.best_of_n_samples
        if n > 1:
            example["noise"] = torch.zeros(2, n, self.horizon, hp.action_dim)
            return _BestOfNGraph(self), example, ["actions", "q"]
        example["noise"] = torch.zeros(2, self.horizon, hp.action_dim)
        return _PolicyGraph(self), example, ["actions"]


class _BestOfNGraph(nn.Module):
    """forward(*obs.<key> sorted, noise (B, N, h, A)) -> (actions (B, h, A), q (B,))."""

    def __init__(self, algo: ACRLPD) -> None:
        super().__init__()
        self.algo = algo

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *obs, noise = inputs
        chunk, q, _ = self.algo.select_chunk(
            dict(zip(self.algo.obs_keys, obs, strict=True)), noise
        )
        return chunk, q


class _PolicyGraph(nn.Module):
    """forward(*obs.<key> sorted, noise (B, h, A)) -> actions (B, h, A): one candidate."""

    def __init__(self, algo: ACRLPD) -> None:
        super().__init__()
        self.algo = algo

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *obs, noise = inputs
        named = dict(zip(self.algo.obs_keys, obs, strict=True))
        return self.algo.select_chunk(named, noise[:, None])[0]


class QCFQL(ACRLPD):
    """QC-FQL: ACRLPD's flow (BC only) distilled into a one-step policy mu_w(s, z) that also
    climbs the critic (module docstring); acting and targets use mu_w. `alpha` is the
    distillation weight (QC-FQL's OGBench value 100; FQL's 10 offline)."""

    algorithm = "qc_fql"

    def __init__(
        self,
        *,
        policy: Callable[..., nn.Module],
        alpha: float = 100.0,
        num_critics: int = 2,
        best_of_n_samples: int = 1,
        use_adaptive_temperature: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            policy=policy,
            num_critics=num_critics,
            best_of_n_samples=best_of_n_samples,
            use_adaptive_temperature=use_adaptive_temperature,
            **kwargs,
        )
        hp = self.hparams
        # the same network family, read as a map noise -> chunk: mu_w(s, z) = net(z, 0, ctx)
        self.one_step_policy = policy(
            obs_specs=hp.obs_specs, obs_steps=1, action_dim=hp.action_dim, horizon=self.horizon
        )
        if hp.freeze_backbone:
            for p in self.one_step_policy.backbone_parameters():
                p.requires_grad_(False)

    def one_step(self, ctx: Any, z: torch.Tensor) -> torch.Tensor:
        return self.one_step_policy.velocity(z, torch.zeros(z.shape[0], device=z.device), ctx)

    def candidates(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """clip(mu_w(s, z)) for each of the N noises (1 network call each)."""
        ctx = repeat_rows(self.one_step_policy.prefix(obs), noise.shape[1])
        return self.clip(self.one_step(ctx, noise.flatten(0, 1)))

    def actor_losses(
        self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """+ L_mu = alpha ||mu_w(s, z) - sg(clip(Euler(v_theta, z)))||^2 - Q(s, mu) / sg(|Q|)."""
        out = super().actor_losses(obs, actions)
        hp = self.hparams
        z = torch.randn_like(actions)
        with torch.no_grad():
            target = self.clip(
                euler_chunks(self.policy, self.policy.prefix(obs), z, hp.flow_steps)
            )
        mu = self.one_step(self.one_step_policy.prefix(obs), z)
        distill = F.mse_loss(mu, target)
        # Q through frozen critic weights: this loss moves w only (the critic's own step is L_Q)
        frozen = {n: p.detach() for n, p in self.critic.named_parameters()}
        q = torch.func.functional_call(self.critic, frozen, (obs, self.clip(mu))).mean(0)
        q_loss = -q.mean() / q.abs().mean().detach().clamp_min(1e-6)
        out["loss/actor"] = out["loss/actor"] + hp.alpha * distill + q_loss
        out["loss/distill"], out["loss/q"] = distill, q_loss
        return out

    def actor_parameters(self) -> list[nn.Parameter]:
        mu = [p for p in self.one_step_policy.parameters() if p.requires_grad]
        return super().actor_parameters() + mu

    def sampler_metadata(self) -> dict[str, Any]:
        return {"type": "one_step", "steps": 1}
