"""Observation encoders: dict of normalized (B, obs_steps, *shape) tensors -> (B, out_dim).

Each key's `feature_type` (declared by the dataset, carried in the model's `obs_specs`) picks its
path: "low_dim" keys (shape (D,)) are flattened over time; "image" keys (shape (H, W, C), already
scaled to [0, 1] by the normalizer) go frame by frame through an image encoder built from the
`IMAGE_ENCODERS` registry. A new backbone (ResNet, ViT) registers itself by name and is chosen in
the config (`model.encoder.image_encoder.name`); nothing here changes:

    @register_image_encoder("resnet18")
    class ResNet18Encoder(nn.Module):
        def __init__(self, image_shape, feature_dim=512, ...): ...  # needs an `out_dim`
        def forward(self, images):  # (N, H, W, C) in [0, 1] -> (N, out_dim)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from episode_dataset import FEATURE_TYPES, IMAGE, LOW_DIM

# name -> factory(image_shape=(H, W, C), **kwargs) -> nn.Module with `out_dim`.
IMAGE_ENCODERS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_image_encoder(name: str) -> Callable[[F], F]:
    """Class/function decorator: make `factory` buildable as image encoder `name`."""

    def register(factory: F) -> F:
        if name in IMAGE_ENCODERS:
            raise ValueError(f"image encoder {name!r} is already registered")
        IMAGE_ENCODERS[name] = factory
        return factory

    return register


@register_image_encoder("conv")
class ConvImageEncoder(nn.Module):
    """(N, H, W, C) in [0, 1] -> (N, feature_dim): strided 3x3 convs, global pool, linear."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int] = (16, 32, 32),
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        in_channels = int(image_shape[-1])
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


def build_image_encoder(image_shape: Sequence[int], name: str, **kwargs: Any) -> nn.Module:
    """The registered image encoder `name` for frames of `image_shape` (H, W, C)."""
    if name not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {name!r} (registered: {sorted(IMAGE_ENCODERS)})")
    encoder = IMAGE_ENCODERS[name](image_shape=tuple(image_shape), **kwargs)
    if not isinstance(getattr(encoder, "out_dim", None), int):
        raise TypeError(f"image encoder {name!r} has no integer `out_dim`")
    return encoder


class ObservationEncoder(nn.Module):
    """Concatenate per-key features.

    `obs_specs[key] = {"shape": [...], "dtype": ..., "feature_type": "image" | "low_dim"}`;
    `image_encoder = {"name": <IMAGE_ENCODERS key>, **its keyword arguments}`, one encoder per
    image key.
    """

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        obs_steps: int,
        image_encoder: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        image_cfg = dict(image_encoder or {"name": "conv"})
        image_name = image_cfg.pop("name", "conv")
        self.keys = sorted(obs_specs)
        self.image_encoders = nn.ModuleDict()
        out_dim = 0
        for key in self.keys:
            shape = tuple(obs_specs[key]["shape"])
            kind = obs_specs[key].get("feature_type")
            if kind not in FEATURE_TYPES:
                raise ValueError(
                    f"observation {key!r}: feature_type {kind!r} is not one of {FEATURE_TYPES}"
                )
            if kind == IMAGE:
                if len(shape) != 3:
                    raise ValueError(f"observation {key!r}: image shape {shape} is not (H, W, C)")
                enc = build_image_encoder(shape, image_name, **image_cfg)
                self.image_encoders[key] = enc
                out_dim += obs_steps * enc.out_dim
            elif len(shape) == 1:  # LOW_DIM
                out_dim += obs_steps * shape[0]
            else:
                raise ValueError(f"observation {key!r}: {LOW_DIM} shape {shape} is not (D,)")
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
