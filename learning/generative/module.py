"""GenerativeModule: one LightningModule for every (network, path, sampler) combination.

Targets are masks in [0, 1] mapped to x1 = 2 m - 1 in [-1, 1]; the network input is
[context (5), coordinate grid (2), x_t (1)] = 8 channels. Loss (seed 001: "MSE + auxiliary"):

    loss = ||f(x_t, t) - target||^2 + aux_loss_weight * BCE(aux_logits, m)

where `target` comes from the path (velocity, eps, ...) and the auxiliary head predicts the
clean goal mask's occupancy m from the same trunk (see `dit.DiT`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from learning.data.keys import CONTEXT, TARGET
from sim.namo.keys import CONTEXT_KEYS

GOAL_MASKS_OUTPUT = "goal_masks"


def coordinate_grid(batch: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, S, S) y and x coordinates in [-1, 1] (pixel centres)."""
    c = (torch.arange(size, dtype=like.dtype, device=like.device) + 0.5) * (2.0 / size) - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([yy, xx])[None].expand(batch, -1, -1, -1)


def network_input(context: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """context (B, 5, S, S) in [0, 1], x_t (B, 1, S, S) -> (B, 8, S, S)."""
    grid = coordinate_grid(context.shape[0], context.shape[-1], context)
    return torch.cat([context, grid, x_t], dim=1)


def mask_to_x(mask: torch.Tensor) -> torch.Tensor:
    return mask * 2.0 - 1.0


def x_to_mask(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


class GenerativeModule(L.LightningModule):
    def __init__(
        self,
        network: nn.Module,
        path: Any,
        sampler: Any,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        aux_loss_weight: float = 0.0,
        num_val_samples: int = 8,
        sample_every_n_epochs: int = 1,
        mask_threshold: float = 0.5,
        seed: int = 42,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "path", "sampler", "optimizer"])
        self.network, self.path, self.sampler = network, path, sampler
        self.optimizer_factory = optimizer
        self.aux_loss_weight = aux_loss_weight
        self.val_loss_best = float("inf")
        self._val_batch: dict[str, torch.Tensor] | None = None

    # ---- maths ---------------------------------------------------------------------------
    def losses(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        context, mask = batch[CONTEXT], batch[TARGET]
        pair = self.path.sample(mask_to_x(mask), generator)
        out, aux_logits = self.network.forward_with_aux(network_input(context, pair.x_t), pair.t)
        mse = F.mse_loss(out.float(), pair.target.float())
        terms = {"mse": mse, "loss": mse}
        if aux_logits is not None and self.aux_loss_weight > 0:
            aux = F.binary_cross_entropy_with_logits(aux_logits.float(), mask.float())
            terms["aux"] = aux
            terms["loss"] = mse + self.aux_loss_weight * aux
        return terms

    def model_fn(
        self, context: torch.Tensor
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Network with the scene bound: (x_t, t) -> output, for the samplers."""
        return lambda x, t: self.network(network_input(context, x), t)

    @torch.no_grad()
    def generate(
        self,
        context: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """context (B, 5, S, S) -> sampled goal masks (B, 1, S, S) in [0, 1]."""
        if noise is None:
            shape = (context.shape[0], 1, *context.shape[-2:])
            noise = torch.randn(shape, generator=generator, device=context.device)
        x1 = self.sampler.sample(self.path, self.model_fn(context), noise, generator)
        return x_to_mask(x1)

    # ---- lightning -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        bs = batch[TARGET].shape[0]
        self.log("train_loss", terms["loss"], prog_bar=True, batch_size=bs)
        if "aux" in terms:
            self.log("train_aux_loss", terms["aux"], batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Fixed noise/times per batch so val_loss moves only when the model does.
        gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed + batch_idx)
        terms = self.losses(batch, gen)
        self.log(
            "val_loss",
            terms["loss"],
            prog_bar=True,
            sync_dist=True,
            batch_size=batch[TARGET].shape[0],
        )
        if batch_idx == 0:
            n = self.hparams.num_val_samples
            self._val_batch = {k: v[:n] for k, v in batch.items()}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val = self.trainer.callback_metrics.get("val_loss")
        if val is not None:
            self.val_loss_best = min(self.val_loss_best, float(val))
            self.log("val_loss_best", self.val_loss_best, sync_dist=False)
        every = self.hparams.sample_every_n_epochs
        if self._val_batch is not None and every > 0 and self.current_epoch % every == 0:
            self._log_samples(self._val_batch)

    def _log_samples(self, batch: dict[str, torch.Tensor]) -> None:
        gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed)
        samples = self.generate(batch[CONTEXT], generator=gen)
        pred = samples > self.hparams.mask_threshold
        truth = batch[TARGET] > 0.5
        inter = (pred & truth).flatten(1).sum(1).float()
        union = (pred | truth).flatten(1).sum(1).float()
        self.log("val_sample_iou", (inter / union.clamp(min=1)).mean(), sync_dist=True)
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(experiment, "add_image"):
            experiment.add_image(
                "Validation_Samples_generated_vs_ground_truth",
                sample_grid(batch[CONTEXT], samples, batch[TARGET]),
                self.global_step,
                dataformats="HW",
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_loss_best"] = self.val_loss_best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_loss_best = checkpoint.get("val_loss_best", float("inf"))

    # ---- export (`python -m learning.export --ckpt PATH --out FILE.onnx`) ----------------
    def export_graph(self) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
        """Network + unrolled deterministic sampler as one graph (noise is an input)."""
        if not getattr(self.sampler, "deterministic", False):
            # the hint names the keys of this checkpoint's sampler family (ODE or diffusion)
            hint = (
                "sampler_type=ddim --sampler eta=0"
                if hasattr(self.sampler, "eta")
                else ("method=euler")
            )
            raise ValueError(
                f"ONNX export needs a deterministic fixed-step sampler (ODE euler/midpoint/rk4 or "
                f"DDIM eta=0), got {self.sampler!r}; choose one with `python -m learning.export "
                f"--ckpt ... --out ... --sampler {hint}`"
            )
        size = self.network.image_size
        gen = torch.Generator().manual_seed(0)
        example = {f"obs.{k}": torch.rand(2, size, size, generator=gen) for k in CONTEXT_KEYS}
        example["noise"] = torch.randn(2, 1, size, size, generator=gen)
        graph = GoalGeneratorGraph(self.network, self.path, self.sampler).cpu().eval()
        return graph, example, [GOAL_MASKS_OUTPUT]

    def export_metadata(self) -> dict[str, Any]:
        size = self.network.image_size
        return {
            "model_type": "goal_generator",
            "observations": {k: {"shape": [size, size], "dtype": "float32"} for k in CONTEXT_KEYS},
            "context_keys": list(CONTEXT_KEYS),
            "image_size": size,
            "mask_threshold": self.hparams.mask_threshold,
            "sampler": self.sampler.describe(),
            "normalization": {"baked": True, "stats": {}},  # masks in [0, 1] in and out
            "layout": "row b of every input is one scene + one noise draw (B, 1, S, S); "
            "K proposals for one scene = the scene repeated in K rows with K noises",
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            return torch.optim.AdamW(self.parameters(), lr=1e-4)
        return self.optimizer_factory(self.parameters())


class GoalGeneratorGraph(nn.Module):
    """Exported graph: 5 masks (B, S, S) + noise (B, 1, S, S) -> goal masks (B, 1, S, S)."""

    def __init__(self, network: nn.Module, path: Any, sampler: Any):
        super().__init__()
        self.network, self.path, self.sampler = network, path, sampler

    def forward(
        self,
        robot_image: torch.Tensor,
        goal_image: torch.Tensor,
        movable_objects_image: torch.Tensor,
        static_objects_image: torch.Tensor,
        target_object: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        context = torch.stack(
            [robot_image, goal_image, movable_objects_image, static_objects_image, target_object],
            dim=1,
        )

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.network(network_input(context, x), t)

        return x_to_mask(self.sampler.sample(self.path, model_fn, noise))


def sample_grid(context: torch.Tensor, samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """One row per example: [scene, target object, generated, ground truth] -> (H', W') in [0, 1].

    Scene = static 0.35 + movable 0.6 + robot/goal 1.0 (brightest wins).
    """
    scene = torch.maximum(
        torch.maximum(0.35 * context[:, 3], 0.6 * context[:, 2]),
        torch.maximum(context[:, 0], context[:, 1]),
    )
    cols = [scene, context[:, 4], samples[:, 0], truth[:, 0]]
    pad = 2
    cols = [F.pad(c.float().cpu(), (pad, pad, pad, pad), value=0.5) for c in cols]
    rows = torch.cat(cols, dim=-1)  # (B, H+2p, 4(W+2p))
    return rows.reshape(-1, rows.shape[-1])
