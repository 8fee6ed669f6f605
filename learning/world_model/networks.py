"""Observation encoder and decoder of the world model (DreamerV3 shapes).

Each key's declared `feature_type` picks its path: an "image" key (H, W, C), pixels already
scaled to [0, 1], goes through its own CNN of four stride-2 convolutions (channels d, 2d, 4d,
8d; 64x64 -> 4x4) and back through the mirrored transposed CNN; the "low_dim" keys (already
normalized) are concatenated into one MLP and decoded by one MLP. A dict observation with both
uses both; the embedding is the concatenation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from episode_dataset import IMAGE
from learning.errors import ConfigError
from learning.networks.mlp import mlp

CNN_STAGES = 4  # stride-2 stages: 64x64 -> 4x4 as in DreamerV3
_SIDE = 2**CNN_STAGES


def image_keys(obs_specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The image keys, sorted; ConfigError (one line) for an image the CNN cannot take."""
    keys = sorted(k for k, s in obs_specs.items() if s["feature_type"] == IMAGE)
    for key in keys:
        shape = tuple(obs_specs[key]["shape"])
        if len(shape) != 3 or shape[0] % _SIDE or shape[1] % _SIDE:
            raise ConfigError(
                f"image key {key!r} has shape {list(shape)}: the world-model CNN needs (H, W, C) "
                f"with H and W multiples of {_SIDE} (e.g. 64x64)"
            )
    return keys


def _vector_keys(obs_specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(k for k, s in obs_specs.items() if s["feature_type"] != IMAGE)


def _conv_stack(channels: Sequence[int], transpose: bool) -> nn.Sequential:
    """Kernel 4, stride 2, padding 1: each stage halves (or doubles) H and W exactly."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    pairs = list(zip(channels[:-1], channels[1:], strict=True))
    for i, (c_in, c_out) in enumerate(pairs):
        layers.append(conv(c_in, c_out, 4, stride=2, padding=1))
        if not (transpose and i == len(pairs) - 1):  # the decoder's last stage outputs pixels
            layers += [nn.GroupNorm(1, c_out), nn.SiLU()]
    return nn.Sequential(*layers)


class ObservationEncoder(nn.Module):
    """{key: (N, *shape)} normalized -> e(o) (N, out_dim)."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        cnn_depth: int,
        hidden_dim: int,
        mlp_layers: int,
    ) -> None:
        super().__init__()
        self.image_keys, self.vector_keys = image_keys(obs_specs), _vector_keys(obs_specs)
        depths = [cnn_depth * 2**i for i in range(CNN_STAGES)]
        self.cnns = nn.ModuleDict()
        self.out_dim = 0
        for key in self.image_keys:
            h, w, c = obs_specs[key]["shape"]
            self.cnns[key] = _conv_stack([c, *depths], transpose=False)
            self.out_dim += depths[-1] * (h // _SIDE) * (w // _SIDE)
        self.vector_dim = sum(int(obs_specs[k]["shape"][0]) for k in self.vector_keys)
        if self.vector_keys:
            self.mlp = mlp(self.vector_dim, [hidden_dim] * mlp_layers, hidden_dim)
            self.out_dim += hidden_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [
            # HWC -> CHW, centred around 0 (DreamerV3: pixels - 0.5)
            self.cnns[k](obs[k].permute(0, 3, 1, 2) - 0.5).flatten(1)
            for k in self.image_keys
        ]
        if self.vector_keys:
            parts.append(self.mlp(torch.cat([obs[k] for k in self.vector_keys], -1)))
        return torch.cat(parts, -1)


class ObservationDecoder(nn.Module):
    """features (N, feature_dim) -> {key: (N, *shape)} predicted normalized observations."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        feature_dim: int,
        cnn_depth: int,
        hidden_dim: int,
        mlp_layers: int,
    ) -> None:
        super().__init__()
        self.image_keys, self.vector_keys = image_keys(obs_specs), _vector_keys(obs_specs)
        depths = [cnn_depth * 2**i for i in reversed(range(CNN_STAGES))]
        self.inputs, self.cnns = nn.ModuleDict(), nn.ModuleDict()
        self.grids: dict[str, tuple[int, int, int]] = {}
        for key in self.image_keys:
            h, w, c = obs_specs[key]["shape"]
            self.grids[key] = (depths[0], h // _SIDE, w // _SIDE)
            self.inputs[key] = nn.Linear(feature_dim, depths[0] * (h // _SIDE) * (w // _SIDE))
            self.cnns[key] = _conv_stack([*depths, c], transpose=True)
        self.sizes = [int(obs_specs[k]["shape"][0]) for k in self.vector_keys]
        if self.vector_keys:
            self.mlp = mlp(feature_dim, [hidden_dim] * mlp_layers, sum(self.sizes))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.image_keys:
            grid = self.inputs[key](features).unflatten(-1, self.grids[key])
            out[key] = self.cnns[key](grid).permute(0, 2, 3, 1) + 0.5  # CHW -> HWC, [0, 1]
        if self.vector_keys:
            parts = self.mlp(features).split(self.sizes, -1)
            out.update(zip(self.vector_keys, parts, strict=True))
        return out
