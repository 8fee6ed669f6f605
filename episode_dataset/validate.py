"""Full structural + value check of a dataset file; the first problem is one DatasetError line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from episode_dataset.reader import (
    IndexInfo,
    check_chunks,
    get_object,
    h5_errors,
    json_attr,
    open_h5,
    read_index,
    require_group,
)
from episode_dataset.schema import (
    ACTIONS,
    DATA,
    DONES,
    META,
    NUM_SAMPLES,
    OBS,
    REWARDS,
    DatasetError,
    KeySpec,
    attr_str,
)

# Rows per read when scanning float data for NaN/Inf: bounds memory on image-sized rows.
_SCAN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DatasetSummary:
    path: Path
    num_episodes: int
    total_steps: int
    packed: bool

    def __str__(self) -> str:
        return f"OK: {self.num_episodes} episodes, {self.total_steps} steps"


def validate_file(path: str | os.PathLike[str], *, check_data: bool = True) -> DatasetSummary:
    """Raise DatasetError("FILE: demo_3/obs/state: ...") on the first problem found.

    Checks: HDF5 readable, `data` group and its attrs, every episode reachable (external links
    resolve to readable shards), declared keys present with length num_samples and the declared
    dtype/shape, no undeclared obs keys, total == sum(num_samples), masks name existing episodes,
    and (check_data) every array reads back (HDF5 fletcher32 chunk checksums are verified on
    read) with no NaN/Inf in float data. check_data=False checks structure only.
    """
    path = Path(path)
    with open_h5(path) as f:
        info = read_index(f, path)
        for ep in info.episodes:
            with _episode_group(f, info, ep) as group, h5_errors(f"{path}: {ep}"):
                _check_episode(path, ep, group, info, check_data)
    steps = sum(info.num_samples.values())
    if info.total != steps:
        raise DatasetError(
            f"{path}: data: attribute total={info.total} != sum of num_samples {steps}"
        )
    for name, eps in info.filters.items():
        unknown = [e for e in eps if e not in info.num_samples]
        if unknown:
            raise DatasetError(f"{path}: mask/{name}: unknown episodes {unknown}")
    return DatasetSummary(path, len(info.episodes), steps, info.packed)


@contextmanager
def _episode_group(f: h5py.File, info: IndexInfo, ep: str) -> Iterator[h5py.Group]:
    path = info.path
    link = info.links[ep]
    if link is None:
        yield require_group(require_group(f, DATA, f"{path}"), ep, f"{path}: {DATA}")
        return
    filename, objpath = link
    shard_path = path.parent / filename
    if not shard_path.exists():
        raise DatasetError(f"{path}: {ep}: broken external link, shard {filename} is missing")
    where = f"{path}: {ep}: shard {filename}"
    with open_h5(shard_path, f"{path}: {ep}") as shard:
        with h5_errors(where):
            present = objpath in shard
        if not present:
            raise DatasetError(f"{where} has no object {objpath}")
        yield require_group(shard, objpath, where)


def _check_episode(
    path: Path, ep: str, group: h5py.Group, info: IndexInfo, check_data: bool
) -> None:
    where = f"{path}: {ep}"
    if NUM_SAMPLES not in group.attrs:
        raise DatasetError(f"{where}: missing attribute 'num_samples'")
    n = int(group.attrs[NUM_SAMPLES])
    if n != info.num_samples[ep]:
        raise DatasetError(
            f"{where}: num_samples {n} != {info.num_samples[ep]} listed in episode_index"
        )
    if META in group.attrs:
        json_attr(group.attrs, META, where)
    obs = get_object(group, OBS, f"{where}/obs")
    if obs is None:
        raise DatasetError(f"{where}/obs: missing group")
    with h5_errors(f"{where}/obs"):
        extra = sorted(set(obs) - set(info.obs_specs))
    if extra:
        raise DatasetError(f"{where}/obs: keys {extra} not declared in data.attrs['obs_specs']")
    for key, spec in info.obs_specs.items():
        _check_dataset(f"{where}/obs/{key}", group, f"{OBS}/{key}", n, spec, check_data)
    _check_dataset(f"{where}/actions", group, ACTIONS, n, info.action_spec, check_data)
    _check_dataset(f"{where}/rewards", group, REWARDS, n, None, check_data, kinds="f")
    _check_dataset(f"{where}/dones", group, DONES, n, None, check_data, kinds="biu")


def _check_dataset(
    where: str,
    group: h5py.Group,
    name: str,
    n: int,
    spec: KeySpec | None,
    check_data: bool,
    kinds: str = "",
) -> None:
    ds = get_object(group, name, where)
    if ds is None:
        raise DatasetError(f"{where}: missing")
    if not isinstance(ds, h5py.Dataset):
        raise DatasetError(f"{where}: not a dataset")
    with h5_errors(where):
        _check_layout(where, ds, n, spec, kinds)
    if not check_data:
        return
    check_chunks(ds, where)
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    block = max(1, _SCAN_BYTES // row_bytes)
    for start in range(0, n, block):
        # checksum mismatch, truncated file, damaged datatype
        with h5_errors(where, at=f" at steps [{start}, {min(n, start + block)})"):
            rows = ds[start : start + block]
        check_finite(where, rows, start)


def check_finite(where: str, rows: np.ndarray, start: int = 0) -> None:
    """DatasetError("WHERE: NaN/Inf at step S") when float `rows` (steps `start`, ...) hold a
    NaN or Inf: the check `validate` makes, for exporters that read the arrays themselves."""
    if rows.dtype.kind != "f":
        return
    bad = ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
    if bad.any():
        raise DatasetError(f"{where}: NaN/Inf at step {start + int(np.argmax(bad))}")


def _check_layout(where: str, ds: h5py.Dataset, n: int, spec: KeySpec | None, kinds: str) -> None:
    if ds.ndim == 0 or ds.shape[0] != n:
        raise DatasetError(f"{where}: length {ds.shape[:1]} != num_samples {n}")
    if spec is not None:
        if ds.shape[1:] != spec.shape:
            raise DatasetError(f"{where}: shape {ds.shape[1:]} per step != declared {spec.shape}")
        if ds.dtype != spec.np_dtype:
            raise DatasetError(f"{where}: dtype {ds.dtype} != declared {spec.dtype}")
        if "dtype" in ds.attrs and attr_str(ds.attrs["dtype"]) != spec.dtype:
            raise DatasetError(
                f"{where}: attribute dtype {attr_str(ds.attrs['dtype'])} != declared {spec.dtype}"
            )
    else:
        if ds.ndim != 1:
            raise DatasetError(f"{where}: shape {ds.shape} != ({n},)")
        if ds.dtype.kind not in kinds:
            raise DatasetError(f"{where}: dtype {ds.dtype} not allowed")
