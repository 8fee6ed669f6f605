"""Observation encoders: dict of normalized (B, obs_steps, *shape) tensors -> (B, out_dim).

Each key's `feature_type` (declared by the dataset, carried in the model's `obs_specs`) picks its
path. "image" keys (shape (H, W, C), already scaled to [0, 1] by the normalizer) are resized
(optional), cropped and go frame by frame through an image encoder of the `IMAGE_ENCODERS`
registry (`conv`, `resnet18`, `resnet34`, `resnet50`), one per camera or one shared by all.
"low_dim" keys (shape (D,)) are concatenated per step and go through a `LOW_DIM_ENCODERS` entry
(`identity`, `mlp`). A new backbone registers itself by name and is chosen in the config
(`model.encoder.image_encoder.name`); nothing here changes:

    @register_image_encoder("vit_tiny")
    class ViTTiny(nn.Module):
        def __init__(self, image_shape, feature_dim=..., use_group_norm=...): ...  # `out_dim`
        def forward(self, images):  # (N, H, W, C) in [0, 1] -> (N, out_dim)

Output layout (shared with the networks): (B, obs_steps * step_dim), step-major: every key's
features of step 0, then of step 1, ... (images in sorted key order, then the low-dim features),
so `cond.reshape(B, obs_steps, step_dim)` gives one token per observation step.

Crop: with `crop_shape` (h, w) every frame is cropped to it: at a random place in training when
`random_crop` (one offset per sample and camera, shared by the frames of its history so motion
between them stays real), at the centre otherwise. `random_crop=false` still crops (centre, in
training too): Diffusion Policy's encoder skipped the crop altogether then, so the network was
built for the crop size and trained on another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from episode_dataset import FEATURE_TYPES, IMAGE, LOW_DIM
from learning.networks import resnet
from learning.networks.mlp import mlp

# name -> factory(image_shape=(H, W, C), **kwargs) -> nn.Module with `out_dim`.
IMAGE_ENCODERS: dict[str, Callable[..., nn.Module]] = {}
# name -> factory(in_dim=D, emb_dim=E, **kwargs) -> nn.Module (N, D) -> (N, out_dim), with
# `out_dim`; E is the width of an encoder that projects (the seed's `emb_dim`).
LOW_DIM_ENCODERS: dict[str, Callable[..., nn.Module]] = {}

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


def _register(
    table: dict[str, Callable[..., nn.Module]], what: str, name: str
) -> Callable[[Factory], Factory]:
    def register(factory: Factory) -> Factory:
        if name in table:
            raise ValueError(f"{what} {name!r} is already registered")
        table[name] = factory
        return factory

    return register


def register_image_encoder(name: str) -> Callable[[Factory], Factory]:
    """Class/function decorator: make `factory` buildable as image encoder `name`."""
    return _register(IMAGE_ENCODERS, "image encoder", name)


def register_low_dim_encoder(name: str) -> Callable[[Factory], Factory]:
    """Class/function decorator: make `factory` buildable as low-dim encoder `name`."""
    return _register(LOW_DIM_ENCODERS, "low-dim encoder", name)


for _depth in (18, 34, 50):
    register_image_encoder(f"resnet{_depth}")(getattr(resnet, f"resnet{_depth}"))


@register_image_encoder("conv")
class ConvImageEncoder(nn.Module):
    """(N, H, W, C) in [0, 1] -> (N, feature_dim): strided 3x3 convs, global pool, linear.
    Its norm is GroupNorm over all channels of a layer (`use_group_norm`) or BatchNorm."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int] | None = None,
        feature_dim: int | None = None,
        use_group_norm: bool = True,
    ) -> None:
        super().__init__()
        in_channels = int(image_shape[-1])
        layers: list[nn.Module] = []
        for out in channels or (16, 32, 32):
            norm = nn.GroupNorm(1, out) if use_group_norm else nn.BatchNorm2d(out)
            layers += [nn.Conv2d(in_channels, out, 3, stride=2, padding=1), norm, nn.Mish()]
            in_channels = out
        self.convs = nn.Sequential(*layers)
        self.out_dim = int(feature_dim or 64)
        self.head = nn.Linear(in_channels, self.out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images.permute(0, 3, 1, 2))  # HWC -> CHW
        return self.head(x.mean(dim=(2, 3)))


@register_low_dim_encoder("identity")
class IdentityEncoder(nn.Module):
    """(N, D) -> (N, D): the normalized low-dim features as they are (`emb_dim` does not
    apply: nothing is projected)."""

    def __init__(self, in_dim: int, emb_dim: int | None = None) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_low_dim_encoder("mlp")
class MLPEncoder(nn.Module):
    """(N, D) -> (N, emb_dim): Linear -> LayerNorm -> Mish per hidden width, linear head."""

    def __init__(
        self, in_dim: int, emb_dim: int = 256, hidden_dims: Sequence[int] = (256,)
    ) -> None:
        super().__init__()
        self.net = mlp(in_dim, list(hidden_dims), emb_dim)
        self.out_dim = int(emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _build(
    table: Mapping[str, Callable[..., nn.Module]], what: str, name: str, **kwargs: Any
) -> nn.Module:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r} (registered: {sorted(table)})")
    encoder = table[name](**kwargs)
    if not isinstance(getattr(encoder, "out_dim", None), int):
        raise TypeError(f"{what} {name!r} has no integer `out_dim`")
    return encoder


def build_image_encoder(image_shape: Sequence[int], name: str, **kwargs: Any) -> nn.Module:
    """The registered image encoder `name` for frames of `image_shape` (H, W, C)."""
    return _build(IMAGE_ENCODERS, "image encoder", name, image_shape=tuple(image_shape), **kwargs)


def build_low_dim_encoder(in_dim: int, name: str, **kwargs: Any) -> nn.Module:
    """The registered low-dim encoder `name` for (N, in_dim) features."""
    return _build(LOW_DIM_ENCODERS, "low-dim encoder", name, in_dim=in_dim, **kwargs)


def _pair(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    """None, or (h, w) from a 2-sequence of positive ints (one-line error otherwise)."""
    if value is None:
        return None
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    ok = len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    if not ok or min(pair) < 1:
        raise ValueError(f"{name} {value!r} is not two positive ints [height, width]")
    return pair  # type: ignore[return-value]


class ImageCrop(nn.Module):
    """(B, T, H, W, C) -> (B, T, h, w, C): random crop in training when `random`, else centre.

    One offset per sample, shared by its T frames. Indexing by gathered rows/columns keeps the
    random crop a few tensor ops for a whole batch; the centre crop is a static slice, so the
    exported graph holds it and still takes the full camera frame.
    """

    def __init__(self, crop: tuple[int, int], random: bool) -> None:
        super().__init__()
        self.crop, self.random = crop, random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (height, width) = self.crop, x.shape[2:4]
        if not (self.training and self.random):
            top, left = (height - h) // 2, (width - w) // 2
            return x[:, :, top : top + h, left : left + w]
        b = x.shape[0]
        top = torch.randint(0, height - h + 1, (b, 1, 1), device=x.device)
        left = torch.randint(0, width - w + 1, (b, 1, 1), device=x.device)
        rows = top + torch.arange(h, device=x.device)[None, :, None]  # (B, h, 1)
        cols = left + torch.arange(w, device=x.device)[None, None, :]  # (B, 1, w)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # x.transpose(0, 1)[:, batch, rows, cols] -> (T, B, h, w, C)
        return x.transpose(0, 1)[:, batch, rows, cols].transpose(0, 1)


class ObservationEncoder(nn.Module):
    """Several cameras plus low-dim keys, over an observation history -> (B, T * step_dim).

    `obs_specs[key] = {"shape": [...], "dtype": ..., "feature_type": "image" | "low_dim"}`.
    `image_encoder = {"name": <IMAGE_ENCODERS key>, **its keyword arguments}`: one per image key,
    or one for all of them with `share_rgb_model` (their frames must then have one shape after
    resize and crop). `low_dim_encoder = {"name": <LOW_DIM_ENCODERS key>, **kwargs}` takes the
    concatenated low-dim keys of a step. `resize_shape` / `crop_shape`: (h, w) or None.
    """

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        obs_steps: int,
        image_encoder: Mapping[str, Any] | None = None,
        low_dim_encoder: Mapping[str, Any] | None = None,
        share_rgb_model: bool = False,
        resize_shape: Sequence[int] | None = None,
        crop_shape: Sequence[int] | None = None,
        random_crop: bool = True,
    ) -> None:
        super().__init__()
        image_cfg = dict(image_encoder or {"name": "conv"})
        image_name = image_cfg.pop("name", "conv")
        low_cfg = dict(low_dim_encoder or {"name": "identity"})
        low_name = low_cfg.pop("name", "identity")
        self.resize = _pair(resize_shape, "resize_shape")
        crop = _pair(crop_shape, "crop_shape")
        self.crop = None if crop is None else ImageCrop(crop, random_crop)
        self.obs_steps = obs_steps
        self.image_keys: list[str] = []
        self.low_dim_keys: list[str] = []
        frame_shapes = {}
        low_dim = 0
        for key in sorted(obs_specs):
            shape = tuple(obs_specs[key]["shape"])
            kind = obs_specs[key].get("feature_type")
            if kind not in FEATURE_TYPES:
                raise ValueError(
                    f"observation {key!r}: feature_type {kind!r} is not one of {FEATURE_TYPES}"
                )
            if kind == IMAGE:
                frame_shapes[key] = self._frame_shape(key, shape)
                self.image_keys.append(key)
            elif len(shape) == 1:  # LOW_DIM
                self.low_dim_keys.append(key)
                low_dim += shape[0]
            else:
                raise ValueError(f"observation {key!r}: {LOW_DIM} shape {shape} is not (D,)")
        self.image_encoders = nn.ModuleDict()
        if share_rgb_model and frame_shapes:
            if len(set(frame_shapes.values())) > 1:
                raise ValueError(
                    f"share_rgb_model: cameras give frames of different shapes {frame_shapes} "
                    "after resize/crop"
                )
            self.shared = build_image_encoder(
                next(iter(frame_shapes.values())), image_name, **image_cfg
            )
            image_dim = len(frame_shapes) * self.shared.out_dim
        else:
            self.shared = None
            for key, frame in frame_shapes.items():
                self.image_encoders[key] = build_image_encoder(frame, image_name, **image_cfg)
            image_dim = sum(e.out_dim for e in self.image_encoders.values())
        self.low_dim_encoder = (
            build_low_dim_encoder(low_dim, low_name, **low_cfg) if self.low_dim_keys else None
        )
        self.step_dim = image_dim + (self.low_dim_encoder.out_dim if self.low_dim_encoder else 0)
        self.out_dim = obs_steps * self.step_dim

    def _frame_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(h, w, C) of `key`'s frames after resize and crop (one-line errors)."""
        if len(shape) != 3:
            raise ValueError(f"observation {key!r}: image shape {shape} is not (H, W, C)")
        height, width = self.resize or shape[:2]
        if self.crop is None:
            return (height, width, shape[2])
        h, w = self.crop.crop
        if h > height or w > width:
            raise ValueError(
                f"observation {key!r}: crop_shape [{h}, {w}] is larger than its image "
                f"{height}x{width}" + (" (after resize)" if self.resize else "")
            )
        return (h, w, shape[2])

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, C) -> (B * T, h, w, C): resized, cropped, one frame per row."""
        b, t = x.shape[:2]
        if self.resize is not None:
            x = F.interpolate(
                x.flatten(0, 1).permute(0, 3, 1, 2), size=self.resize, mode="bilinear"
            )
            x = x.permute(0, 2, 3, 1).unflatten(0, (b, t))
        if self.crop is not None:
            x = self.crop(x)
        return x.flatten(0, 1)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs[key] (B, T, *shape) normalized -> (B, T * step_dim), step-major."""
        b, t = obs[(self.image_keys + self.low_dim_keys)[0]].shape[:2]
        frames = [self._frames(obs[k]) for k in self.image_keys]
        if self.shared is not None:  # all cameras in one batch through the one backbone
            feats = list(self.shared(torch.cat(frames)).chunk(len(frames)))
        else:
            feats = [
                self.image_encoders[k](f) for k, f in zip(self.image_keys, frames, strict=True)
            ]
        if self.low_dim_encoder is not None:
            low = torch.cat([obs[k].flatten(0, 1) for k in self.low_dim_keys], dim=-1)
            feats.append(self.low_dim_encoder(low))
        return torch.cat(feats, dim=-1).reshape(b, t * self.step_dim)  # (B*T, step) rows
