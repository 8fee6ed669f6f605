"""Goal-mask data: NAMO `.npz` samples -> {"context": (5, S, S), "target": (1, S, S)} in [0, 1].

All files under `data_dir` (recursive) are read once at setup and resized to `image_size` (area
average, see `masks.resize_area`). The split is by episode when names follow the NAMO pattern
`episode_<e>_goal_<g>_proposal_<p>.npz` (proposals of one episode never straddle train/val),
else by file; seeded (`learning.data.split`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from learning.data.keys import CONTEXT, TARGET
from learning.data.split import split_groups
from learning.errors import ConfigError
from sim.namo.mask_files import load_sample

_EPISODE = re.compile(r"(episode_\d+)_")


class GoalMaskDataset(Dataset):
    """In-memory dataset of resized masks from a list of npz files."""

    def __init__(self, files: list[Path], image_size: int):
        if not files:
            raise ValueError("GoalMaskDataset: no files")
        pairs = [load_sample(f, image_size) for f in files]
        self.files = files
        # float16 halves the memory; binary masks stay exact, area fractions keep 3 digits.
        self.context = torch.from_numpy(np.stack([c for c, _ in pairs]).astype(np.float16))
        self.target = torch.from_numpy(np.stack([t for _, t in pairs]).astype(np.float16))[:, None]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {CONTEXT: self.context[i].float(), TARGET: self.target[i].float()}


def split_files(
    files: list[Path], val_fraction: float, seed: int
) -> tuple[list[Path], list[Path]]:
    """Seeded split by episode group (by file when names carry no episode): (train, val)."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        m = _EPISODE.match(f.name)
        groups.setdefault(f"{f.parent}/{m.group(1)}" if m else str(f), []).append(f)
    # Cut order of the one seeded permutation (learning/data/split.py): val, train.
    parts = split_groups(sorted(groups), {"val": val_fraction, "train": None}, seed)
    train, val = ([f for k in parts[name] for f in groups[k]] for name in ("train", "val"))
    return train, val


class GoalMaskDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        max_files: int | None = None,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.val_fraction, self.split_seed, self.max_files = val_fraction, split_seed, max_files
        self.train_dataset: GoalMaskDataset | None = None
        self.val_dataset: GoalMaskDataset | None = None

    def files(self) -> list[Path]:
        if not self.data_dir.is_dir():
            raise ConfigError(f"data.data_dir {os.fspath(self.data_dir)!r}: no such directory")
        files = sorted(self.data_dir.rglob("*.npz"))
        if not files:
            raise ConfigError(f"data.data_dir {os.fspath(self.data_dir)!r}: no .npz files")
        return files[: self.max_files] if self.max_files else files

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        files = self.files()
        try:
            train, val = split_files(files, self.val_fraction, self.split_seed)
        except ValueError as err:
            raise ConfigError(f"data.data_dir {os.fspath(self.data_dir)!r}: {err}") from None
        if not val:
            raise ConfigError(
                f"data.data_dir {os.fspath(self.data_dir)!r}: data.val_fraction 0 leaves no "
                "validation files"
            )
        self.train_dataset = GoalMaskDataset(train, self.image_size)
        self.val_dataset = GoalMaskDataset(val, self.image_size)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
