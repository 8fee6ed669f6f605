"""ResNet18/34/50 image backbones written here (torchvision does not load beside the CPU torch).

He et al.'s ResNet with the two changes Diffusion Policy makes for behaviour cloning: BatchNorm
is replaced by GroupNorm with C // 16 groups (`use_group_norm`, the default: batch statistics
couple the samples of a batch and drift between training and the served policy, and the small
batches of image BC make them noisy), and the classifier (`fc`) is dropped: the globally pooled
features are the output, optionally projected to `feature_dim`.

Frames come in as (N, H, W, C) floats (the registry's convention); permuting them to (N, C, H, W)
gives a channels-last tensor without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

GROUP_SIZE = 16  # channels per GroupNorm group


def norm2d(channels: int, use_group_norm: bool) -> nn.Module:
    """GroupNorm(C // 16, C) or BatchNorm2d(C)."""
    if not use_group_norm:
        return nn.BatchNorm2d(channels)
    if channels % GROUP_SIZE:
        raise ValueError(
            f"use_group_norm: a width of {channels} channels is not a multiple of {GROUP_SIZE}"
        )
    return nn.GroupNorm(channels // GROUP_SIZE, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or 1x1 projection) shortcut: ResNet18/34."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, use_group_norm: bool) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, stride, 1, bias=False),
            norm2d(width, use_group_norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 3, 1, 1, bias=False),
            norm2d(out_ch, use_group_norm),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride, use_group_norm)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4x the width: ResNet50."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, use_group_norm: bool) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False),
            norm2d(width, use_group_norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            norm2d(width, use_group_norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 1, bias=False),
            norm2d(out_ch, use_group_norm),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride, use_group_norm)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int, use_group_norm: bool) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm2d(out_ch, use_group_norm)
    )


class ResNet(nn.Module):
    """(N, H, W, C) in [0, 1] -> (N, out_dim): stem (7x7/2 conv, 3x3/2 max pool), four stages
    of `blocks` residual blocks (the last three halve the resolution), global average pool,
    then a linear projection to `feature_dim` when one is given (else out_dim is the last
    stage's width: 512 for ResNet18/34, 2048 for ResNet50 at the standard `channels`)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: Sequence[int],
        image_shape: Sequence[int],
        channels: Sequence[int] | None = None,
        feature_dim: int | None = None,
        use_group_norm: bool = True,
        pool: str = "avg",
        keypoints: int = 32,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"ResNet: pool {pool!r} is not one of {sorted(POOLS)}")
        channels = list(channels or (64, 128, 256, 512))
        if len(channels) != len(blocks):
            raise ValueError(f"ResNet: {len(channels)} channels for {len(blocks)} stages")
        in_ch = channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(int(image_shape[-1]), in_ch, 7, 2, 3, bias=False),
            norm2d(in_ch, use_group_norm),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        for i, (width, n) in enumerate(zip(channels, blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(in_ch, width, stride, use_group_norm))
                in_ch = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = POOLS[pool](in_ch, keypoints)
        pooled = self.pool.out_dim
        self.proj = nn.Identity() if feature_dim is None else nn.Linear(pooled, feature_dim)
        self.out_dim = pooled if feature_dim is None else int(feature_dim)
        # Channels-last weights to match the NHWC frames: on this CPU (one thread, 56x56, width
        # 16..64) 5 % faster training steps and 20-30 % faster torch inference.
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images.permute(0, 3, 1, 2)))  # NHWC -> NCHW view
        return self.proj(self.pool(x))


class AvgPool(nn.Module):
    """(N, C, H, W) -> (N, C): global average (Diffusion Policy's ResNet)."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class SpatialSoftmax(nn.Module):
    """(N, C, H, W) -> (N, 2K): K keypoints (robomimic's image encoders): a 1x1 conv to K maps,
    a softmax over each map's positions, the expected (x, y) in [-1, 1]. Keeps where things are,
    which a global average throws away."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, keypoints, 1)
        self.out_dim = 2 * keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        attention = self.conv(x).flatten(2).softmax(dim=-1)  # (N, K, H*W)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(h * w, 2)
        return (attention @ grid).flatten(1)  # (N, K, 2) -> (N, 2K)


POOLS = {"avg": AvgPool, "spatial_softmax": SpatialSoftmax}


def resnet18(image_shape: Sequence[int], **kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), image_shape, **kwargs)


def resnet34(image_shape: Sequence[int], **kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), image_shape, **kwargs)


def resnet50(image_shape: Sequence[int], **kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), image_shape, **kwargs)
