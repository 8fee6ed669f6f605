"""The torch side of the policy interface: a trained model behind `Policy` (eager PyTorch)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from learning.checkpoint import load_model
from learning.export import with_feature_types
from roboloop_runtime import PolicyMetadata, QueuedChunkPolicy


class TorchPolicy(QueuedChunkPolicy):
    """Wrap a model with `predict_action_chunk(obs, noise)` and `export_metadata()`.

    Same noise generator as `OnnxPolicy`: given one seed both produce the same actions.
    """

    def __init__(
        self,
        model: nn.Module,
        seed: int = 0,
        device: str = "cpu",
        n_action_steps: int | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        # The same fields the exporter writes (a checkpoint from before feature types were
        # recorded gets the v1 rule, as its export would).
        self.model_metadata: dict[str, Any] = with_feature_types(model.export_metadata())
        super().__init__(
            PolicyMetadata.from_dict(self.model_metadata), seed=seed, n_action_steps=n_action_steps
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, seed: int = 0, device: str = "cpu", **kwargs: Any
    ) -> TorchPolicy:
        model, _ = load_model(path)
        return cls(model, seed=seed, device=device, **kwargs)

    @torch.inference_mode()
    def _predict(self, obs_history: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        obs = {k: torch.from_numpy(v).to(self.device) for k, v in obs_history.items()}
        actions = self.model.predict_action_chunk(obs, torch.from_numpy(noise).to(self.device))
        return actions.float().cpu().numpy()
