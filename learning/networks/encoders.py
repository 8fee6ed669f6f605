"""Observation encoders: dict of normalized (B, obs_steps, *shape) tensors -> (B, out_dim).

Low-dim keys (shape (D,)) are flattened over time; image keys (shape (H, W, C), already
scaled to [0, 1] by the normalizer) go frame by frame through a small conv net.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


class ConvImageEncoder(nn.Module):
    """(N, H, W, C) in [0, 1] -> (N, feature_dim): strided 3x3 convs, global pool, linear."""

    def __init__(
        self, in_channels: int, channels: Sequence[int] = (16, 32, 32), feature_dim: int = 64
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(in_channels, out, 3, stride=2, padding=1), nn.GroupNorm(1, out)]
            layers += [nn.Mish()]
            in_channels = out
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, feature_dim)
        self.out_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images.permute(0, 3, 1, 2))  # HWC -> CHW
        return self.head(x.mean(dim=(2, 3)))


class ObservationEncoder(nn.Module):
    """Concatenate per-key features. `obs_specs[key] = {"shape": [...], "dtype": ...}`."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        obs_steps: int,
        image_channels: Sequence[int] = (16, 32, 32),
        image_feature_dim: int = 64,
    ) -> None:
        super().__init__()
        self.keys = sorted(obs_specs)
        self.image_encoders = nn.ModuleDict()
        out_dim = 0
        for key in self.keys:
            shape = tuple(obs_specs[key]["shape"])
            if len(shape) == 3:
                enc = ConvImageEncoder(shape[-1], image_channels, image_feature_dim)
                self.image_encoders[key] = enc
                out_dim += obs_steps * enc.out_dim
            elif len(shape) == 1:
                out_dim += obs_steps * shape[0]
            else:
                raise ValueError(f"observation {key!r}: unsupported shape {shape}")
        self.out_dim = out_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for key in self.keys:
            x = obs[key]
            b, steps = x.shape[:2]
            if key in self.image_encoders:
                x = self.image_encoders[key](x.reshape(b * steps, *x.shape[2:]))
            feats.append(x.reshape(b, -1))
        return torch.cat(feats, dim=-1)
