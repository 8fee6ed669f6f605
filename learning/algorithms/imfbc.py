"""Improved mean-flow behaviour cloning (IMFBC): MFBC with the model's own velocity as tangent.

Everything is MFBC's (learning/algorithms/mfbc.py: t=0 noise, t=1 data, flow map
X_{t->s}(x) = x + (s - t) u(x, t, s), 1-NFE sampler) except the direction of the JVP:

    u_tgt = v - (t - s) du/dt,   du/dt along dx/dt = sg(u_theta(x_t, t, t))

The conditional velocity v = x1 - x0 is one noisy sample of the marginal velocity; the model's
instantaneous velocity u_theta(x, t, t) (what the s = t samples train by flow matching) estimates
the marginal itself, so the derivative follows the flow the sampler actually integrates. The
tangent is stop-gradient like the whole target: only u_theta(x_t, t, s) is regressed.
"""

from __future__ import annotations

import torch

from learning.algorithms.mfbc import MFBC


class IMFBC(MFBC):
    """MFBC whose JVP tangent is the network's instantaneous velocity (see module docstring)."""

    def tangent(
        self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            return self.network(x_t, t, c, t)  # u_theta(x_t, t, s=t): the velocity at t
