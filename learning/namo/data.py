"""QFunctionDataModule: NAMO mask files -> (state_masks, action_masks, target_q) batches.

One file `episode_<e>_goal_<g>_proposal_<p>.npz` is one (state, proposal) pair scored by MCTS.
Splits are by EPISODE (one scene never lands in two splits, so validation measures transfer to
unseen scenes; `learning.data.split`, seeded). Files are opened lazily per item; `setup` only
reads each zip's key directory.

Batch keys (learning/data/keys.py; shapes for batch size B, S = image_size or the file's H/W):
    state_masks  (B, 11, S, S) float32   STATE_KEYS order
    action_masks (B, 2, S, S)  float32   ACTION_KEYS order
    target_q     (B, 1)        float32   goal_q_value
    episode, goal, proposal (B,) int64   group ids: one state = (episode, goal)
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from learning.data.keys import (
    ACTION_MASKS,
    EPISODE_ID,
    GOAL_ID,
    PROPOSAL_ID,
    STATE_MASKS,
    TARGET_Q,
)
from learning.data.split import split_groups
from sim.namo.keys import ACTION_KEYS, FILE_GLOB, FILE_RE, STATE_KEYS, TARGET_KEY
from sim.namo.mask_files import NPZ_ERRORS, MaskFileError, open_npz, read_array

REQUIRED_KEYS = (*STATE_KEYS, *ACTION_KEYS, TARGET_KEY)


@dataclass(frozen=True)
class MaskFile:
    path: Path
    episode: int
    goal: int
    proposal: int


def find_mask_files(data_dir: str | Path) -> list[MaskFile]:
    """All `episode_*_goal_*_proposal_*.npz` under `data_dir` (non-recursive), sorted by ids."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MaskFileError(f"{root}: data_dir is not a directory")
    files = []
    for path in root.glob(FILE_GLOB):
        match = FILE_RE.match(path.name)
        if match is None:  # e.g. episode_x_goal_1_proposal_2.npz: the glob is looser than ids
            raise MaskFileError(
                f"{path}: name does not match episode_<int>_goal_<int>_proposal_<int>.npz"
            )
        files.append(MaskFile(path, *(int(g) for g in match.groups())))
    if not files:
        raise MaskFileError(f"{root}: no {FILE_GLOB} files")
    return sorted(files, key=lambda f: (f.episode, f.goal, f.proposal))


def check_keys(path: Path) -> None:
    """Raise MaskFileError naming the file and the first missing key (reads only the zip index)."""
    try:
        with zipfile.ZipFile(path) as zf:
            present = {name.removesuffix(".npy") for name in zf.namelist()}
    except NPZ_ERRORS as err:
        raise MaskFileError(f"{path}: cannot read npz: {err}") from None
    for key in REQUIRED_KEYS:
        if key not in present:
            raise MaskFileError(f"{path}: missing key {key!r}")


def load_item(path: Path, image_size: int | None = None) -> dict[str, torch.Tensor]:
    """Read one mask file into unbatched tensors (see the module docstring for keys)."""
    with open_npz(path) as npz:
        state = np.stack([_mask(npz, path, k) for k in STATE_KEYS])
        action = np.stack([_mask(npz, path, k) for k in ACTION_KEYS])
        q = np.asarray(read_array(npz, path, TARGET_KEY), dtype=np.float32)
    if q.size != 1:
        raise MaskFileError(f"{path}: key {TARGET_KEY!r} has shape {q.shape}, expected a scalar")
    state_t, action_t = torch.from_numpy(state), torch.from_numpy(action)
    if image_size is not None:
        state_t, action_t = resize_masks(state_t, image_size), resize_masks(action_t, image_size)
    return {
        STATE_MASKS: state_t,
        ACTION_MASKS: action_t,
        TARGET_Q: torch.from_numpy(q.reshape(1)),
    }


def _mask(npz: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    arr = read_array(npz, path, key)
    if arr.ndim != 2:
        raise MaskFileError(f"{path}: key {key!r} has shape {arr.shape}, expected (H, W)")
    return arr.astype(np.float32, copy=False)


def resize_masks(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average (C, H, W) or (B, C, H, W) masks to size x size; identity when already there.

    The network applies the same pooling to its inputs, so downsizing here (to save memory
    and time) or inside the network gives identical numbers.
    """
    if x.shape[-2:] == (size, size):
        return x
    if x.ndim == 3:
        return F.adaptive_avg_pool2d(x.unsqueeze(0), size).squeeze(0)
    return F.adaptive_avg_pool2d(x, size)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element k in 0..7 of the square's symmetry group on the last two axes (k=0: identity).

    A NAMO scene seen in a mirror or rotated by 90 degrees is the same problem with the same
    MCTS value (the masks and geodesic fields transform together), so training on all 8 views
    is free data. Needs square masks (a rotated non-square mask is another shape).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral: masks of shape {tuple(x.shape[-2:])} are not square")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_pose(pose: Sequence[float], k: int, side: float) -> tuple[float, ...]:
    """World point (x, y) or pose (x, y, theta) under `dihedral(., k)` of a side x side world.

    The masks' grid has row 0 at the TOP of the world (sim.namo.grid), so the image's mirror
    (`flip(-1)`) is x -> side - x and `rot90` (first axis towards the second) turns the world
    90 degrees counter-clockwise about its centre: (x, y) -> (side - y, x), theta + pi/2.
    A mirrored rectangle's yaw is -theta; yaws are wrapped to [-pi/2, pi/2) because a
    rectangle is the same after half a turn (the range proposals are drawn from).
    """
    x, y = float(pose[0]), float(pose[1])
    theta = float(pose[2]) if len(pose) > 2 else None
    if k >= 4:
        x = side - x
        theta = None if theta is None else -theta
    for _ in range(k % 4):
        x, y = side - y, x
        theta = None if theta is None else theta + math.pi / 2
    if theta is None:
        return (x, y)
    return (x, y, (theta + math.pi / 2) % math.pi - math.pi / 2)


class QFunctionDataset(Dataset):
    """Lazy dataset over mask files; every item is read from disk when asked for.

    augment: apply one random symmetry of the square (same for state and action masks).
    cache: keep every item read (before augmentation) in memory, so epochs after the first
    read nothing (13 x S x S float32 per item: 53 kB at 32 x 32; per loader worker).
    """

    def __init__(
        self,
        files: list[MaskFile],
        image_size: int | None = None,
        augment: bool = False,
        cache: bool = False,
    ) -> None:
        self.files = files
        self.image_size = image_size
        self.augment = augment
        self.cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        f = self.files[index]
        if self.cache is None:
            item = load_item(f.path, self.image_size)
        else:
            if index not in self.cache:
                self.cache[index] = load_item(f.path, self.image_size)
            item = dict(self.cache[index])  # augmentation replaces entries, never edits them
        if self.augment:
            k = int(torch.randint(8, ()))
            item[STATE_MASKS] = dihedral(item[STATE_MASKS], k).contiguous()
            item[ACTION_MASKS] = dihedral(item[ACTION_MASKS], k).contiguous()
        item[EPISODE_ID] = torch.tensor(f.episode)
        item[GOAL_ID] = torch.tensor(f.goal)
        item[PROPOSAL_ID] = torch.tensor(f.proposal)
        return item


class StateBatchSampler(Sampler[list[int]]):
    """Batches of whole states: every proposal of `states_per_batch` (episode, goal) states.

    A per-state ranking loss needs a state's proposals side by side in one batch; a shuffled
    loader almost never puts two there. States are shuffled every epoch (seeded) when `shuffle`.
    """

    def __init__(
        self, files: list[MaskFile], states_per_batch: int, shuffle: bool, seed: int = 0
    ) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(files):
            groups.setdefault((f.episode, f.goal), []).append(i)
        self.groups = list(groups.values())
        self.states_per_batch = max(1, states_per_batch)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.groups) // self.states_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.groups)) if self.shuffle else range(len(self.groups))
        order = list(order)
        for start in range(0, len(order), self.states_per_batch):
            chunk = order[start : start + self.states_per_batch]
            yield [i for g in chunk for i in self.groups[g]]


class QFunctionDataModule(pl.LightningDataModule):
    """Episode-split NAMO mask data for Q(s, a) regression (seed 000 names and defaults)."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        image_size: int | None = None,
        split_seed: int = 0,
        augment: bool = False,
        group_by_state: bool = False,
        cache: bool = False,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        # Cut order of the one seeded permutation (learning/data/split.py): train, val, test.
        self.fractions = {"train": None, "val": val_fraction, "test": test_fraction}
        self.image_size = image_size
        self.split_seed = split_seed
        self.augment = augment
        # Training batches of whole states (about batch_size proposals) for a ranking loss.
        self.group_by_state = group_by_state
        self.cache = cache  # items kept in memory after their first read (QFunctionDataset)
        self.splits: dict[str, QFunctionDataset] = {}
        self.split_episodes: dict[str, list[int]] = {}

    def prepare_data(self) -> None:
        # Fail before training starts: every file is listed and its key directory checked.
        for f in find_mask_files(self.data_dir):
            check_keys(f.path)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        files = find_mask_files(self.data_dir)
        try:
            episode_splits = split_groups(
                sorted({f.episode for f in files}), self.fractions, self.split_seed
            )
        except ValueError as err:
            raise MaskFileError(f"{self.data_dir}: {err}") from None
        for name, episodes in episode_splits.items():
            keep = set(episodes)
            self.split_episodes[name] = sorted(keep)
            self.splits[name] = QFunctionDataset(
                [f for f in files if f.episode in keep],
                self.image_size,
                augment=self.augment and name == "train",  # val/test see the data as stored
                cache=self.cache,
            )

    def model_kwargs(self) -> dict[str, list[int]]:
        """Data-derived model argument for learning.train: the stored mask size (H, W)."""
        first = find_mask_files(self.data_dir)[0]
        with open_npz(first.path) as npz:
            return {"input_shape": [int(d) for d in _mask(npz, first.path, STATE_KEYS[0]).shape]}

    @property
    def has_test_split(self) -> bool:
        """learning.train runs `trainer.test` after fitting when this is true."""
        return len(self.splits.get("test", ())) > 0

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        if len(dataset) == 0:
            raise MaskFileError(
                f"{self.data_dir}: split {split!r} is empty "
                f"({len(self.split_episodes['train'])} train episodes; need more episodes)"
            )
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        if self.group_by_state and split == "train":
            states = len({(f.episode, f.goal) for f in dataset.files})
            per_state = len(dataset) / states
            sampler = StateBatchSampler(
                dataset.files, round(self.batch_size / per_state), shuffle, self.split_seed
            )
            return DataLoader(dataset, batch_sampler=sampler, **workers)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, **workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
