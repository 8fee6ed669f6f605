"""QFunctionNet: Q(s, a) from 11 state masks + 2 action masks (seed 000).

    model = QFunctionNet.load_from_checkpoint("last.ckpt")
    q = model(state_masks, action_masks)   # (B, 11, H, W), (B, 2, H, W) -> (B, 1)

The encoder comes from the image-encoder registry (`learning.networks.encoders`) by name
(`encoder`, config group `model/q_encoder`): `mask_grid` (the default, registered here: strided
convs over the 13 concatenated channels, then a small fixed spatial grid flattened so "where"
survives), or any registered backbone (`conv`, `resnet18`, ...; they pool globally). An MLP head
reads its features (plus the masked means of `pooled_features`). Inputs larger than
`image_size` are area-averaged down to it first, so checkpoints take full-size 224x224 masks
(`input_shape`, the stored mask size, only fixes the ONNX export's H, W; pick `image_size`
dividing it so both exporters produce a plain AveragePool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learning.data.keys import ACTION_MASKS, EPISODE_ID, GOAL_ID, STATE_MASKS, TARGET_Q
from learning.namo.data import resize_masks
from learning.namo.metrics import group_ids, ranking_metrics
from learning.networks.encoders import build_image_encoder, register_image_encoder
from sim.namo.keys import ACTION_CHANNELS, ACTION_KEYS, STATE_CHANNELS, STATE_KEYS

STATE_INPUT, ACTION_INPUT, Q_OUTPUT = "state_masks", "action_masks", "q_values"  # ONNX names


@register_image_encoder("mask_grid")
class CNNEncoder(nn.Module):
    """(N, S, S, C) -> (N, features): strided 3x3 convs, the final map flattened.

    The final map is average-pooled to `grid` x `grid` only when it is larger than that, so
    small inputs keep every cell and exporters never meet a non-dividing adaptive pool.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (56, 56, 13),
        channels: Sequence[int] | None = None,
        grid: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev, side = int(image_shape[-1]), int(image_shape[0])
        for width in channels or (32, 64, 128, 128):
            layers += [
                nn.Conv2d(prev, width, 3, stride=2, padding=1),
                nn.GroupNorm(8 if width % 8 == 0 else 1, width),
                nn.SiLU(),
            ]
            prev = width
            side = (side + 1) // 2
        if side > grid:
            layers.append(nn.AdaptiveAvgPool2d(grid))
            side = grid
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.out_dim = prev * side * side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.permute(0, 3, 1, 2))  # the registry's HWC -> CHW


class MaskedPooling(nn.Module):
    """Mean of every channel under each "where" mask: (B, C, H, W) -> (B, C * M).

    E.g. post_action_robot_distance averaged over the goal disc says whether the move opens the
    way to the goal; a conv stack has to learn that lookup, this reads it directly.
    """

    def __init__(self, mask_channels: Sequence[int]) -> None:
        super().__init__()
        self.mask_channels = list(mask_channels)
        self.out_per_channel = len(self.mask_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = x[:, self.mask_channels].flatten(2)  # (B, M, HW)
        sums = torch.matmul(x.flatten(2), masks.transpose(1, 2))  # (B, C, M)
        # +1 pixel keeps empty masks (and arbitrary test inputs) away from a division by ~0.
        area = masks.sum(-1).clamp_min(0.0).unsqueeze(1) + 1.0  # (B, 1, M)
        return (sums / area).flatten(1)


# Channels of the 13-channel input used as masks: robot, goal, post_action_robot, target_object,
# target_goal.
POOL_MASKS = (0, 1, 8, 11, 12)


class MaskCentroids(nn.Module):
    """Centroid (x, y in [0, 1]) of each mask channel and the distances between chosen pairs:
    (B, C, H, W) -> (B, 2 * M + P).

    E.g. target_object -> target_goal is how far the move carries the object, which the step
    cost charges for and which the proposals of one object differ by: a conv stack reads such a
    distance off 32-px masks only to a pixel or so, a centroid of the area-averaged masks
    exactly. An empty mask has its centroid at (0, 0).
    """

    def __init__(self, mask_channels: Sequence[int], pairs: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.mask_channels = list(mask_channels)
        # positions within mask_channels of each pair's two ends
        self.pair_from = [self.mask_channels.index(a) for a, _ in pairs]
        self.pair_to = [self.mask_channels.index(b) for _, b in pairs]
        self.out_dim = 2 * len(self.mask_channels) + len(pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = x[:, self.mask_channels]  # (B, M, H, W)
        h, w = masks.shape[-2:]
        ys = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
        xs = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w
        area = masks.sum((-2, -1)).clamp_min(1e-6)  # (B, M)
        cx = (masks.sum(-2) * xs).sum(-1) / area
        cy = (masks.sum(-1) * ys).sum(-1) / area
        centres = torch.stack([cx, cy], dim=-1)  # (B, M, 2)
        delta = centres[:, self.pair_from] - centres[:, self.pair_to]
        dist = delta.square().sum(-1).add(1e-12).sqrt()
        return torch.cat([centres.flatten(1), dist], dim=1)


# Pairs of POOL_MASKS channels whose centroid distance the head reads: the object's carry
# (target_object -> target_goal), the robot's drive (robot -> post_action_robot) and what is
# left of it to the goal (post_action_robot -> goal).
CENTROID_PAIRS = ((11, 12), (0, 8), (8, 1))


class MLP(nn.Module):
    """features -> hidden -> hidden -> output_dim."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def group_ids_torch(episode: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """One id per (episode, goal) state of a batch."""
    keys = torch.stack([episode.reshape(-1), goal.reshape(-1)], dim=1)
    return torch.unique(keys, dim=0, return_inverse=True)[1]


def pairwise_rank_loss(
    pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Logistic loss on every pair of one state whose MCTS Q differ: the higher-Q proposal
    should score higher (RankNet); 0 when the batch holds no such pair."""
    same = groups[:, None] == groups[None, :]
    higher = same & (target[:, None] > target[None, :])
    if not higher.any():
        return pred.sum() * 0.0
    margin = (pred[:, None] - pred[None, :])[higher] / temperature
    return F.softplus(-margin).mean()


def top_move_loss(
    pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Softmax cross-entropy of each state's scores against its best MCTS move (ListNet's top
    one; tied best moves share the target); states whose moves all have one Q are left out."""
    same = groups[:, None] == groups[None, :]
    group_max = torch.where(same, target[None, :], -torch.inf).max(1).values
    group_min = torch.where(same, target[None, :], torch.inf).min(1).values
    best = (target == group_max) & (group_max > group_min)
    if not best.any():
        return pred.sum() * 0.0
    logits = torch.where(same, pred[None, :] / temperature, -torch.inf)
    nll = torch.logsumexp(logits, 1) - pred / temperature  # -log softmax of row i at i
    return nll[best].mean()


# losses over the proposals of one state (data.group_by_state), each weighted by `<name>_weight`
STATE_LOSSES = {"rank": pairwise_rank_loss, "top_move": top_move_loss}


class QFunctionNet(pl.LightningModule):
    """Regress the MCTS Q-value of (state, proposal) with MSE; log per-state ranking metrics."""

    def __init__(
        self,
        input_channels: int = STATE_CHANNELS + ACTION_CHANNELS,
        hidden_dim: int = 512,
        learning_rate: float = 1e-3,
        image_size: int | None = 56,
        encoder_channels: Sequence[int] | None = (32, 64, 128, 128),
        weight_decay: float = 0.0,
        input_shape: Sequence[int] = (224, 224),
        pooled_features: bool = False,
        centroid_features: bool = False,
        encoder: str = "mask_grid",
        encoder_kwargs: Mapping[str, Any] | None = None,
        rank_weight: float = 0.0,
        rank_temperature: float = 0.05,
        top_move_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if input_channels != STATE_CHANNELS + ACTION_CHANNELS:
            raise ValueError(
                f"input_channels={input_channels}: the Q-function reads {STATE_CHANNELS} state + "
                f"{ACTION_CHANNELS} action masks = {STATE_CHANNELS + ACTION_CHANNELS}"
            )
        self.save_hyperparameters()
        # The encoder sees the masks at the side the forward pass pools them to.
        side = image_size or int(input_shape[0])
        channels = None if encoder_channels is None else list(encoder_channels)
        self.encoder = build_image_encoder(
            (side, side, input_channels), encoder, channels=channels, **(encoder_kwargs or {})
        )
        self.pool = MaskedPooling(POOL_MASKS) if pooled_features else None
        self.centroids = MaskCentroids(POOL_MASKS, CENTROID_PAIRS) if centroid_features else None
        extra = input_channels * len(POOL_MASKS) if pooled_features else 0
        extra += self.centroids.out_dim if self.centroids is not None else 0
        self.decoder = MLP(self.encoder.out_dim + extra, hidden_dim, 1)
        self.lr = learning_rate
        self.image_size = image_size
        self._outputs: dict[str, list[dict[str, torch.Tensor]]] = {"val": [], "test": []}

    # ---- export hooks (learning.export) -------------------------------------------------------
    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        """(module, example inputs by ONNX name, output names) at the stored mask size."""
        h, w = (int(d) for d in self.hparams.input_shape)
        example = {
            STATE_INPUT: torch.rand(2, STATE_CHANNELS, h, w),
            ACTION_INPUT: torch.rand(2, ACTION_CHANNELS, h, w),
        }
        return self, example, [Q_OUTPUT]

    def export_metadata(self) -> dict[str, Any]:
        """Contract fields beyond inputs/outputs (docs/q_function.md)."""
        return {
            "model_type": "q_function",
            "state_keys": list(STATE_KEYS),
            "action_keys": list(ACTION_KEYS),
            "image_size": self.image_size,
            "normalization": {"baked": True, "stats": {}},  # masks are already in [0, 1]
        }

    def forward(self, state_masks: torch.Tensor, action_masks: torch.Tensor) -> torch.Tensor:
        """state_masks (B, 11, H, W), action_masks (B, 2, H, W) -> Q (B, 1)."""
        x = torch.cat([state_masks, action_masks], dim=1)  # (B, 13, H, W)
        if self.image_size is not None:
            x = resize_masks(x, self.image_size)
        features = self.encoder(x.permute(0, 2, 3, 1))  # registry encoders take (N, H, W, C)
        if self.pool is not None:
            features = torch.cat([features, self.pool(x)], dim=1)
        if self.centroids is not None:
            features = torch.cat([features, self.centroids(x)], dim=1)
        return self.decoder(features)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        pred = self(batch[STATE_MASKS], batch[ACTION_MASKS])
        loss = F.mse_loss(pred, batch[TARGET_Q])
        batch_size = pred.shape[0]
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", batch_size=batch_size)
        weights = {name: self.hparams[f"{name}_weight"] for name in STATE_LOSSES}
        if stage == "train" and any(w > 0 for w in weights.values()):
            groups = group_ids_torch(batch[EPISODE_ID], batch[GOAL_ID])
            target = batch[TARGET_Q].reshape(-1)
            for name, weight in weights.items():
                if weight > 0:
                    term = STATE_LOSSES[name](
                        pred.reshape(-1), target, groups, self.hparams.rank_temperature
                    )
                    self.log(f"train_{name}_loss", term, batch_size=batch_size)
                    loss = loss + weight * term
        if stage in self._outputs:
            self._outputs[stage].append(
                {
                    "pred": pred.detach().reshape(-1).cpu(),
                    "target": batch[TARGET_Q].reshape(-1).cpu(),
                    "episode": batch[EPISODE_ID].cpu(),
                    "goal": batch[GOAL_ID].cpu(),
                }
            )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def _log_ranking(self, stage: str) -> None:
        outs = self._outputs[stage]
        if not outs:
            return
        cat = {k: torch.cat([o[k] for o in outs]).numpy() for k in outs[0]}
        self._outputs[stage] = []
        m = ranking_metrics(cat["pred"], cat["target"], group_ids(cat["episode"], cat["goal"]))
        # NaN (no rankable state) would poison checkpoint monitors; log only defined values.
        for key in ("spearman", "top1", "pair_acc"):
            if not np.isnan(m[key]):
                self.log(f"{stage}_{key}", m[key], prog_bar=stage == "val")
        self.log(f"{stage}_states", m["states"])

    def on_validation_epoch_end(self) -> None:
        self._log_ranking("val")

    def on_test_epoch_end(self) -> None:
        self._log_ranking("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.lr, weight_decay=self.hparams.weight_decay
        )
