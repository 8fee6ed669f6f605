"""Recurrent state-space model (RSSM: PlaNet, Dreamer V1-V3), one step at a time.

The latent state s_t = (h_t, z_t): a deterministic GRU state h (B, deter_dim) and a stochastic
state z (B, stoch_dim), flat. Two kinds of z, a constructor choice:

    gaussian     z = mean + std * noise, std = softplus(.) + min_std      (PlaNet, DreamerV1)
    categorical  z = `groups` one-hot vectors of `classes` each, sampled by Gumbel-max from
                 probs = (1 - unimix) softmax(logits) + unimix / classes; straight-through
                 gradients z + probs - sg(probs)                          (DreamerV2, V3)

One step, a_{t-1} the action taken before o_t (zeros at episode start, where the previous
state is zeros too: `initial_state`):

    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])                deterministic transition
    p(z_t | h_t)                                         prior (imagination)
    q(z_t | h_t, e(o_t))                                 posterior (filtering)

Noise is an argument, never drawn here: standard normal noise (B, stoch_dim) for both kinds
(the categorical maps it to Gumbel noise through the normal CDF), so an exported graph holds no
random op and noise = 0 gives the distribution's mode (the mean, or the most probable class).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from learning.networks.mlp import mlp

LATENTS = ("gaussian", "categorical")
_UNIFORM_EPS = 1e-6  # keeps -log(-log u) finite where the normal CDF rounds to 0 or 1


class RSSM(nn.Module):
    """Transition (GRU), prior and posterior of the latent state (module docstring).

    `embed_dim`: size of the observation embedding e(o_t) the posterior reads.
    `stoch`: gaussian dimensions, or categorical groups (each of `classes` classes).
    """

    def __init__(
        self,
        action_dim: int,
        embed_dim: int,
        deter_dim: int,
        hidden_dim: int,
        stoch: int,
        latent: str = "categorical",
        classes: int = 32,
        unimix: float = 0.01,
        min_std: float = 0.1,
    ) -> None:
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"latent {latent!r} is not one of {list(LATENTS)}")
        self.latent, self.classes, self.unimix, self.min_std = latent, classes, unimix, min_std
        self.groups = stoch
        self.deter_dim = deter_dim
        self.stoch_dim = stoch * classes if latent == "categorical" else stoch
        stats_dim = self.stoch_dim if latent == "categorical" else 2 * stoch  # logits | mean,std
        self.transition_in = nn.Sequential(
            nn.Linear(self.stoch_dim + action_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU()
        )
        self.gru = nn.GRUCell(hidden_dim, deter_dim)
        self.prior_net = mlp(deter_dim, [hidden_dim], stats_dim)
        self.posterior_net = mlp(deter_dim + embed_dim, [hidden_dim], stats_dim)

    @property
    def feature_dim(self) -> int:
        """Size of `features(h, z)`, what every head reads."""
        return self.deter_dim + self.stoch_dim

    def initial_state(self, batch: int, device: torch.device | None = None) -> tuple:
        """(h, z) at episode start: zeros (the exported graphs' `initial` state)."""
        return (
            torch.zeros(batch, self.deter_dim, device=device),
            torch.zeros(batch, self.stoch_dim, device=device),
        )

    @staticmethod
    def features(h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([h, z], -1)

    # ---- the three maps of one step -----------------------------------------------------
    def transition(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]); action normalized (B, A)."""
        return self.gru(self.transition_in(torch.cat([z, action], -1)), h)

    def prior(self, h: torch.Tensor) -> torch.Tensor:
        """Statistics of p(z_t | h_t): logits (B, stoch_dim) or [mean, raw std] (B, 2 stoch)."""
        return self.prior_net(h)

    def posterior(self, h: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Statistics of q(z_t | h_t, e(o_t)), laid out as `prior`'s."""
        return self.posterior_net(torch.cat([h, embed], -1))

    # ---- distributions ------------------------------------------------------------------
    def _log_probs(self, stats: torch.Tensor) -> torch.Tensor:
        """(..., groups, classes) log of the unimix-smoothed class probabilities."""
        probs = F.softmax(stats.unflatten(-1, (self.groups, self.classes)), -1)
        return torch.log((1 - self.unimix) * probs + self.unimix / self.classes)

    def _mean_std(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = stats.chunk(2, -1)
        return mean, F.softplus(raw) + self.min_std

    def sample(self, stats: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z (B, stoch_dim) from statistics and standard normal noise (B, stoch_dim)."""
        if self.latent == "gaussian":
            mean, std = self._mean_std(stats)
            return mean + std * noise
        log_probs = self._log_probs(stats)
        # u = Phi(noise) ~ U(0, 1); Gumbel-max: argmax(log p + g), g = -log(-log u).
        u = (0.5 * (1 + torch.erf(noise / math.sqrt(2)))).clamp(_UNIFORM_EPS, 1 - _UNIFORM_EPS)
        gumbel = -torch.log(-torch.log(u)).unflatten(-1, (self.groups, self.classes))
        index = (log_probs + gumbel).argmax(-1, keepdim=True)
        one_hot = (index == torch.arange(self.classes, device=stats.device)).to(stats.dtype)
        probs = log_probs.exp()
        return (one_hot + probs - probs.detach()).flatten(-2)  # straight-through gradients

    def kl(self, post: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """KL(q || p) (...,) summed over the latent, from the two statistics tensors."""
        if self.latent == "gaussian":
            (m_q, s_q), (m_p, s_p) = self._mean_std(post), self._mean_std(prior)
            # KL(N(m_q, s_q) || N(m_p, s_p)) = log(s_p/s_q) + (s_q^2 + (m_q-m_p)^2) / 2s_p^2 - 1/2
            kl = torch.log(s_p / s_q) + (s_q**2 + (m_q - m_p) ** 2) / (2 * s_p**2) - 0.5
            return kl.sum(-1)
        lq, lp = self._log_probs(post), self._log_probs(prior)
        return (lq.exp() * (lq - lp)).sum((-2, -1))  # sum_groups sum_classes q (log q - log p)

    # ---- the exported steps -------------------------------------------------------------
    def filter_step(
        self,
        h: torch.Tensor,
        z: torch.Tensor,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_{t-1}, z_{t-1}), a_{t-1}, e(o_t), noise -> (h_t, z_t ~ q)."""
        h = self.transition(h, z, prev_action)
        return h, self.sample(self.posterior(h, embed), noise)

    def imagine_step(
        self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_t, z_t), a_t, noise -> (h_{t+1}, z_{t+1} ~ p)."""
        h = self.transition(h, z, action)
        return h, self.sample(self.prior(h), noise)
