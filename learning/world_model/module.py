"""World model (RSSM, learning/world_model/rssm.py) trained offline on episode sequences.

A batch holds (B, T) sequences from one episode each (`EpisodeDataModule(sequence_length=T)`):
o_t, a_t (the action taken at o_t), r_t (the reward it earned), terminal_t (the episode ended in
a terminal state after a_t), is_pad_t (past the episode end). Every sequence starts from the
initial state (zeros) with a zero raw previous action, as the filter starts an episode:

    h_t, z_t ~ q(. | h_t, e(o_t))   with h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})     (filter)
    s'_t = (h_{t+1}, z_{t+1})       the latent after a_t: z_{t+1} from q where o_{t+1} is in
                                    the sequence, else sampled from the prior p(. | h_{t+1})
                                    (the last step, and the last real step before padding)

Loss per real step (padding excluded), DreamerV3's terms with DreamerV2's KL balancing:

    recon  = sum_key || dec(h_t, z_t)[key] - o_t[key] ||^2     (normalized obs, pixels in [0, 1])
    reward = (rew(s'_t) - symlog(r_t))^2                       symlog(x) = sign(x) log(1 + |x|)
    cont   = BCE(cont(s'_t), 1 - terminal_t)
    kl     = a max(free, KL(sg(q) || p)) + (1 - a) max(free, KL(q || sg(p)))   a = kl_balance
    loss   = recon + reward + cont + kl_scale * kl

(a = 0.8 trains the prior towards the posterior four times as fast as the posterior towards the
prior; `free` = free nats per step: below it a term gives no gradient.)

Exported graphs (learning/export.py, model type `world_model`, `step` option): the latent
(h, z) and the noise are graph inputs and outputs, observations and actions raw (normalization
baked in), see docs/world_model.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from learning.algorithms.acting import example_observations
from learning.data.keys import ACTIONS, IS_PAD, OBS, REWARDS, TERMINALS
from learning.networks.mlp import mlp
from learning.normalization import Normalizer
from learning.world_model.networks import ObservationDecoder, ObservationEncoder
from learning.world_model.rssm import RSSM
from roboloop_runtime.contract import PREDICTION_OUTPUT_PREFIX

STATE_NAMES = ("deter", "stoch")  # state_in.<name> / state_out.<name>: h and z


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class WorldModel(L.LightningModule):
    """RSSM + encoder/decoder + reward and continue heads (module docstring).

    Data-derived args (obs_specs, action_dim, normalization, control_rate_hz, action_bounds)
    come from the DataModule's `model_kwargs()`.
    """

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        normalization: Mapping[str, Mapping[str, Any]],
        optimizer: Callable[..., torch.optim.Optimizer],
        deter_dim: int = 256,
        hidden_dim: int = 256,
        stoch: int = 32,
        classes: int = 32,
        latent: str = "categorical",
        unimix: float = 0.01,
        cnn_depth: int = 24,
        mlp_layers: int = 1,
        kl_balance: float = 0.8,
        free_nats: float = 1.0,
        kl_scale: float = 1.0,
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
    ) -> None:
        # This call's arguments, given explicitly: Lightning's own collection also reads every
        # enclosing __init__ (Dreamer's, which builds this model), and that one's obs_specs
        # (every env key, not only dreamer.obs_keys) would replace these.
        init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        if not 0.0 <= kl_balance <= 1.0:
            raise ValueError(f"kl_balance {kl_balance} is not in [0, 1]")
        del init_args["optimizer"]
        self.save_hyperparameters(init_args)
        self.obs_keys = sorted(obs_specs)
        self.normalizer = Normalizer(normalization)
        self.encoder = ObservationEncoder(obs_specs, cnn_depth, hidden_dim, mlp_layers)
        self.rssm = RSSM(
            action_dim, self.encoder.out_dim, deter_dim, hidden_dim, stoch, latent, classes, unimix
        )
        feat = self.rssm.feature_dim
        self.decoder = ObservationDecoder(obs_specs, feat, cnn_depth, hidden_dim, mlp_layers)
        self.reward_head = mlp(feat, [hidden_dim] * mlp_layers, 1)
        self.continue_head = mlp(feat, [hidden_dim] * mlp_layers, 1)
        self.optimizer_factory = optimizer
        self.export_step = "filter"  # which graph `export_graph` gives (learning.export --step)

    # ---- maths ---------------------------------------------------------------------------
    def embed(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs[key] (N, *shape) raw -> e(o) (N, embed_dim)."""
        return self.encoder({k: self.normalizer.normalize(k, obs[k]) for k in self.obs_keys})

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (..., F) -> reward (raw units) and continue probability, (...,) each."""
        reward = symexp(self.reward_head(features).squeeze(-1))
        return reward, torch.sigmoid(self.continue_head(features).squeeze(-1))

    def observe(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Filter a batch of (B, T) sequences from the initial state; returns per step (B, T):
        h, z (posterior samples), post/prior statistics, and the latent after each action
        (next_h, next_z, see the module docstring)."""
        actions = self.normalizer.normalize(ACTIONS, batch[ACTIONS])
        b, t_len = actions.shape[:2]
        obs = {k: batch[OBS][k].flatten(0, 1) for k in self.obs_keys}
        embed = self.embed(obs).unflatten(0, (b, t_len))
        rssm = self.rssm
        noise = torch.randn(
            (2, b, t_len, rssm.stoch_dim), generator=generator, device=actions.device
        )
        h, z = rssm.initial_state(b, actions.device)
        # the filter's episode start: zero state, a raw zero action (normalized like any other)
        a_prev = self.normalizer.normalize(ACTIONS, torch.zeros_like(batch[ACTIONS][:, 0]))
        hs, zs, posts, priors = [], [], [], []
        for t in range(t_len):
            h = rssm.transition(h, z, a_prev)
            post = rssm.posterior(h, embed[:, t])
            z = rssm.sample(post, noise[0, :, t])
            hs.append(h), zs.append(z), posts.append(post), priors.append(rssm.prior(h))
            a_prev = actions[:, t]
        h_end = rssm.transition(h, z, a_prev)  # after the last action: no o_T in the batch
        prior_next = torch.stack([*priors[1:], rssm.prior(h_end)], 1)
        z_prior_next = rssm.sample(prior_next, noise[1])
        out = {
            "h": torch.stack(hs, 1),
            "z": torch.stack(zs, 1),
            "post": torch.stack(posts, 1),
            "prior": torch.stack(priors, 1),
        }
        next_h = torch.cat([out["h"][:, 1:], h_end[:, None]], 1)
        # q where o_{t+1} is in the sequence (not the last step, not padding), else p.
        seen = torch.zeros_like(batch[IS_PAD])
        seen[:, :-1] = ~batch[IS_PAD][:, 1:]
        z_post_next = torch.cat([out["z"][:, 1:], out["z"][:, -1:]], 1)
        out["next_h"] = next_h
        out["next_z"] = torch.where(seen[..., None], z_post_next, z_prior_next)
        return out

    def loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss terms of the module docstring, each a mean over real steps."""
        return self.loss_terms(batch, self.observe(batch, generator))

    def loss_terms(
        self, batch: Mapping[str, Any], lat: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """`loss` from the batch's filtered latents `lat` (`observe`; Dreamer imagines from
        them too)."""
        hp, rssm = self.hparams, self.rssm
        valid = (~batch[IS_PAD]).float()  # (B, T)
        n = valid.sum().clamp(min=1.0)

        def mean(x: torch.Tensor) -> torch.Tensor:  # over real steps
            return (x * valid).sum() / n

        feat = rssm.features(lat["h"], lat["z"])
        pred = self.decoder(feat.flatten(0, 1))
        recon = 0.0
        for k in self.obs_keys:
            target = self.normalizer.normalize(k, batch[OBS][k])
            err = (pred[k].unflatten(0, target.shape[:2]) - target) ** 2
            recon = recon + mean(err.flatten(2).sum(-1))
        next_feat = rssm.features(lat["next_h"], lat["next_z"])
        reward = mean((self.reward_head(next_feat).squeeze(-1) - symlog(batch[REWARDS])) ** 2)
        cont_target = 1.0 - batch[TERMINALS].float()
        cont = mean(
            F.binary_cross_entropy_with_logits(
                self.continue_head(next_feat).squeeze(-1), cont_target, reduction="none"
            )
        )
        post, prior = lat["post"], lat["prior"]
        dyn = rssm.kl(post.detach(), prior)  # trains the prior
        rep = rssm.kl(post, prior.detach())  # trains the posterior (representation)
        free = hp.free_nats
        kl = mean(hp.kl_balance * dyn.clamp(min=free) + (1 - hp.kl_balance) * rep.clamp(min=free))
        total = recon + reward + cont + hp.kl_scale * kl
        return {
            "loss": total,
            "recon": recon,
            "reward": reward,
            "cont": cont,
            "kl": mean(dyn),  # the divergence itself, before free nats
        }

    # ---- Lightning -----------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.loss(batch)
        self.log("train_loss", terms["loss"], prog_bar=True, on_epoch=True, on_step=False)
        for name in ("recon", "reward", "cont", "kl"):
            self.log(f"train_{name}", terms[name], on_epoch=True, on_step=False)
        return terms["loss"]

    def _eval_step(self, batch: Mapping[str, Any], batch_idx: int, split: str) -> torch.Tensor:
        # Fixed noise per batch index: the validation loss is comparable across epochs.
        gen = torch.Generator(device=self.device).manual_seed(batch_idx)
        terms = self.loss(batch, generator=gen)
        self.log(f"{split}_loss", terms["loss"], prog_bar=True, sync_dist=True)
        for name in ("recon", "reward", "cont", "kl"):
            self.log(f"{split}_{name}", terms[name], sync_dist=True)
        return terms["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(params=self.parameters())

    # ---- export --------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, Any]:
        """The world-model part of the ONNX `roboloop` metadata (docs/world_model.md)."""
        hp, rssm = self.hparams, self.rssm
        dims = {"deter": rssm.deter_dim, "stoch": rssm.stoch_dim}
        return {
            "model_type": "world_model",
            "step": self.export_step,
            "latent": hp.latent,
            "observations": {k: dict(hp.obs_specs[k]) for k in self.obs_keys},
            "action_dim": hp.action_dim,
            "control_rate_hz": hp.control_rate_hz,
            **({"action_bounds": dict(hp.action_bounds)} if hp.action_bounds else {}),
            "normalization": {"baked": True, "stats": self.normalizer.stats},
            "state": {
                name: {"shape": [dims[name]], "dtype": "float32", "initial": 0.0}
                for name in STATE_NAMES
            },
        }

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        """(module, example inputs by ONNX name, output names) of `export_step`'s graph."""
        hp, rssm = self.hparams, self.rssm
        state = {
            "state_in.deter": torch.zeros(2, rssm.deter_dim),
            "state_in.stoch": torch.zeros(2, rssm.stoch_dim),
        }
        noise = {"noise": torch.zeros(2, rssm.stoch_dim)}
        state_out = ["state_out.deter", "state_out.stoch"]
        if self.export_step == "actor":
            raise ValueError(
                "a world model checkpoint has no actor: export the actor from a Dreamer "
                "checkpoint (python -m learning.train --config-name=train_dreamer)"
            )
        if self.export_step == "decode":
            names = [PREDICTION_OUTPUT_PREFIX + k for k in self.obs_keys]
            return DecodeGraph(self), state, names
        if self.export_step == "imagine":
            example = {"action": torch.zeros(2, hp.action_dim), **noise, **state}
            return ImagineGraph(self), example, [*state_out, "reward", "continue"]
        # one step, no history: the acting models' example inputs without their time axis
        example = {k: v[:, 0] for k, v in example_observations(hp.obs_specs, 1).items()}
        example.update({"prev_action": torch.zeros(2, hp.action_dim), **noise, **state})
        return FilterGraph(self), example, state_out


class FilterGraph(nn.Module):
    """forward(*obs in sorted key order, prev_action, noise, deter, stoch) -> (deter, stoch):
    one filter step, raw observation and action in (zeros state and action at episode start)."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *obs, prev_action, noise, h, z = inputs
        m = self.model
        embed = m.embed(dict(zip(m.obs_keys, obs, strict=True)))
        action = m.normalizer.normalize(ACTIONS, prev_action)
        return m.rssm.filter_step(h, z, action, embed, noise)


class ImagineGraph(nn.Module):
    """forward(action, noise, deter, stoch) -> (deter, stoch, reward, continue): one prior
    step after raw action a_t, with the reward it earns and the probability the episode goes
    on."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, action: torch.Tensor, noise: torch.Tensor, h: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        m = self.model
        action = m.normalizer.normalize(ACTIONS, action)
        h, z = m.rssm.imagine_step(h, z, action, noise)
        reward, cont = m.heads(m.rssm.features(h, z))
        return h, z, reward, cont


class DecodeGraph(nn.Module):
    """forward(deter, stoch) -> predictions in sorted key order: the decoder's observation of
    the latent in raw units (normalization undone; images as float pixels clamped to 0..255)."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        pred = m.decoder(m.rssm.features(h, z))
        raw = {k: m.normalizer.unnormalize(k, pred[k]) for k in m.obs_keys}
        for k in m.decoder.image_keys:
            raw[k] = raw[k].clamp(0.0, 255.0)
        return tuple(raw[k] for k in m.obs_keys)
