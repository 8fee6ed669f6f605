"""Behaviour cloning (BC): regress the demonstrator's actions; a deterministic `actor` export.

Two policies, one loss. Observations and actions are normalized with the data's stats
(learning/normalization.py; actions mean_std by default, as for flow BC), o~ = normalize(o),
a~ = normalize(a):

    MLP  (use_sequences=false)  a~_{t..t+H-1} = f(e(o~_{t-k+1..t}))     k = obs_steps frames
    LSTM (use_sequences=true)   (h_t, c_t) = LSTM(e(o~_t), (h_{t-1}, c_{t-1})),  h, c = 0 at start
                                a~_t = g(h_t)                            one frame, one action

    L(theta) = mean over unpadded steps of || a~_pred - a~ ||^2          (MSE)

MSE rather than a Gaussian NLL: the exported actor serves one action (the mean), and the NLL
with a fixed variance is this MSE up to constants; a learned variance would only reweight
samples by how uncertain the model claims to be, a variance nothing downstream uses.

The LSTM trains on `sequence_length`-step sequences of the episode datamodule, each from a zero
state (a sequence that starts mid-episode teaches it to act from a cold state); padded steps
past an episode's end are left out of the loss. It acts every step, carrying (h, c) between
calls: the export declares them as contract v2 recurrent state (`state_in.h`, `state_in.c` ->
`state_out.h`, `state_out.c`, each (B, lstm_layers, lstm_hidden), zero at episode start).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from learning.algorithms.acting import acting_fields, example_observations
from learning.data.keys import ACTIONS, IS_PAD, OBS
from learning.errors import ConfigError
from learning.networks.mlp import mlp
from learning.normalization import Normalizer

STATE_NAMES = ("h", "c")  # LSTM hidden and cell state, in the order `LSTMActor.step` takes them


class MLPActor(nn.Module):
    """features (B, in_dim) -> actions (B, horizon, action_dim)."""

    def __init__(
        self, in_dim: int, action_dim: int, horizon: int, hidden_dims: Sequence[int]
    ) -> None:
        super().__init__()
        self.action_dim, self.horizon = action_dim, horizon
        self.net = mlp(in_dim, list(hidden_dims), horizon * action_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).reshape(-1, self.horizon, self.action_dim)


class LSTMActor(nn.Module):
    """An LSTM over per-step features, then an MLP head per step.

    `forward` runs a whole sequence through `nn.LSTM` (training); `step` is one step written
    out from the same weights (acting and export: plain matmuls, state batch-first).
    """

    def __init__(
        self,
        in_dim: int,
        action_dim: int,
        hidden_size: int,
        num_layers: int = 1,
        head_dims: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(in_dim, hidden_size, num_layers, batch_first=True)
        self.head = mlp(hidden_size, list(head_dims), action_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, T, in_dim), zero initial state -> actions (B, T, action_dim)."""
        hidden, _ = self.lstm(features)
        return self.head(hidden)

    def step(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, in_dim), h and c (B, num_layers, hidden) -> action (B, A), h', c'."""
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            b = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            gates = x @ w_ih.T + h[:, layer] @ w_hh.T + b  # torch's gate order: i, f, g, o
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)  # h' = o * tanh(c')
            hs.append(h_new)
            cs.append(c_new)
            x = h_new  # the next layer's input
        return self.head(x), torch.stack(hs, 1), torch.stack(cs, 1)


class BehaviorCloning(L.LightningModule):
    """BC with an MLP on the observation window, or (use_sequences) an LSTM over sequences.

    Data-derived args (obs_specs, action_dim, normalization, control_rate_hz, action_bounds)
    come from the DataModule's `model_kwargs()`. `obs_steps`, `horizon`, `n_action_steps` shape
    the MLP's window and chunk; the LSTM sees one frame per step and acts every step (its
    memory is the recurrent state), so its export declares 1 for each.
    """

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        normalization: Mapping[str, Mapping[str, Any]],
        obs_steps: int,
        horizon: int,
        n_action_steps: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        use_sequences: bool = False,
        hidden_dims: Sequence[int] = (256, 256),
        lstm_hidden: int = 128,
        lstm_layers: int = 1,
        control_rate_hz: float | None = None,
        action_bounds: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.obs_keys = sorted(obs_specs)
        self.normalizer = Normalizer(normalization)
        self.use_sequences = bool(use_sequences)
        if self.use_sequences:  # the LSTM is the memory: one frame in, one action out
            self.window, self.horizon, self.n_action_steps = 1, 1, 1
            self.encoder = encoder(obs_specs=obs_specs, obs_steps=1)
            self.actor: nn.Module = LSTMActor(
                self.encoder.out_dim, action_dim, lstm_hidden, lstm_layers, hidden_dims
            )
        else:
            self.window, self.horizon, self.n_action_steps = obs_steps, horizon, n_action_steps
            self.encoder = encoder(obs_specs=obs_specs, obs_steps=obs_steps)
            self.actor = MLPActor(self.encoder.out_dim, action_dim, horizon, hidden_dims)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    # ---- maths ---------------------------------------------------------------------------
    def features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs[key] (B, window, *shape) raw -> (B, encoder.out_dim)."""
        return self.encoder({k: self.normalizer.normalize(k, obs[k]) for k in self.obs_keys})

    def sequence_features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs[key] (B, T, *shape) raw -> (B, T, encoder.out_dim): each step a 1-frame window."""
        b, t = obs[self.obs_keys[0]].shape[:2]
        frames = {k: obs[k].reshape(b * t, 1, *obs[k].shape[2:]) for k in self.obs_keys}
        return self.features(frames).reshape(b, t, -1)

    def loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if (IS_PAD in batch) != self.use_sequences:  # the LSTM needs sequences, the MLP windows
            want = "sequences (data.sequence_length: T)" if self.use_sequences else "windows"
            raise ConfigError(
                f"model.use_sequences={str(self.use_sequences).lower()} trains on {want}, "
                f"the data gives {'sequences' if IS_PAD in batch else 'windows'}"
            )
        target = self.normalizer.normalize(ACTIONS, batch[ACTIONS])  # a~: (B, H, A) or (B, T, A)
        if not self.use_sequences:
            pred = self.actor(self.features(batch[OBS]))
            return ((pred - target) ** 2).mean()  # || f(e(o~)) - a~ ||^2
        pred = self.actor(self.sequence_features(batch[OBS]))  # (B, T, A), zero initial state
        keep = (~batch[IS_PAD]).float()[..., None]  # steps past an episode's end: no loss
        return ((pred - target) ** 2 * keep).sum() / (keep.sum() * target.shape[-1])

    def predict_action_chunk(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MLP: obs[key] (B, obs_steps, *shape) raw -> actions (B, horizon, A) raw. `noise` is
        ignored (the `TorchPolicy` call; a deterministic actor draws none)."""
        if self.use_sequences:
            raise TypeError("the LSTM actor carries state: act with step(obs, state)")
        return self.normalizer.unnormalize(ACTIONS, self.actor(self.features(obs)))

    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        """The LSTM's episode-start state: {"h", "c"} zeros (batch, lstm_layers, lstm_hidden)."""
        shape = (batch, self.hparams.lstm_layers, self.hparams.lstm_hidden)
        return {name: torch.zeros(shape, device=self.device) for name in STATE_NAMES}

    def step(
        self, obs: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """LSTM, one step: obs[key] (B, 1, *shape) raw, state -> actions (B, 1, A) raw, state'."""
        a, h, c = self.actor.step(self.features(obs), state["h"], state["c"])
        return self.normalizer.unnormalize(ACTIONS, a)[:, None], {"h": h, "c": c}

    # ---- Lightning -----------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("test_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.scheduler_factory(optimizer=opt)}

    # ---- export --------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, Any]:
        """The actor part of the ONNX `roboloop` metadata (see docs/export_contract.md)."""
        meta = acting_fields(
            "actor",
            self.hparams,
            obs_steps=self.window,
            horizon=self.horizon,
            n_action_steps=self.n_action_steps,
            stats=self.normalizer.stats,
        )
        if self.use_sequences:
            shape = [self.hparams.lstm_layers, self.hparams.lstm_hidden]
            meta["state"] = {
                name: {"shape": shape, "dtype": "float32", "initial": 0.0} for name in STATE_NAMES
            }
        return meta

    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        """(module, example inputs by ONNX name, output names) for `learning.export`."""
        example = example_observations(self.hparams.obs_specs, self.window)
        if not self.use_sequences:
            return _ActorGraph(self), example, ["actions"]
        state = self.initial_state(2)
        example.update({f"state_in.{name}": state[name] for name in STATE_NAMES})
        outputs = ["actions", *(f"state_out.{name}" for name in STATE_NAMES)]
        return _RecurrentActorGraph(self), example, outputs


class _ActorGraph(nn.Module):
    """forward(*obs in sorted key order) -> actions: what the MLP's ONNX file computes."""

    def __init__(self, model: BehaviorCloning) -> None:
        super().__init__()
        self.model = model

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        return self.model.predict_action_chunk(dict(zip(self.model.obs_keys, obs, strict=True)))


class _RecurrentActorGraph(nn.Module):
    """forward(*obs, h, c) -> (actions, h', c'): one LSTM step, the state in and out."""

    def __init__(self, model: BehaviorCloning) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *obs, h, c = inputs
        named = dict(zip(self.model.obs_keys, obs, strict=True))
        actions, state = self.model.step(named, {"h": h, "c": c})
        return actions, state["h"], state["c"]
