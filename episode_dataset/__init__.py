"""Torch-free episode dataset format (numpy + h5py): robomimic-compatible, crash-safe writes.

See docs/dataset_format.md. Never import torch here: the ROS recorder and sim collectors use it.
"""

from __future__ import annotations

from episode_dataset._files import whole_or_absent
from episode_dataset.pack import pack
from episode_dataset.reader import EpisodeReader, IndexInfo
from episode_dataset.schema import (
    ACTIONS,
    DATA,
    DONES,
    FEATURE_TYPES,
    IMAGE,
    LOW_DIM,
    MASK,
    OBS,
    REWARDS,
    DatasetError,
    KeySpec,
)
from episode_dataset.validate import DatasetSummary, validate_file
from episode_dataset.writer import EpisodeWriter

__all__ = [
    "ACTIONS",
    "DATA",
    "DONES",
    "FEATURE_TYPES",
    "IMAGE",
    "LOW_DIM",
    "MASK",
    "OBS",
    "REWARDS",
    "DatasetError",
    "DatasetSummary",
    "EpisodeReader",
    "EpisodeWriter",
    "IndexInfo",
    "KeySpec",
    "pack",
    "validate_file",
    "whole_or_absent",
]
