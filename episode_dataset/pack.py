"""Consolidate a linked dataset (index + shards) into one self-contained HDF5 file for sharing."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from episode_dataset._files import check_output_file, commit_file
from episode_dataset.reader import EpisodeReader
from episode_dataset.schema import DATA
from episode_dataset.validate import DatasetSummary, validate_file
from episode_dataset.writer import LIBVER, put_attrs, write_filters, write_index_attrs

_COPY_BYTES = 16 * 1024 * 1024


def pack(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    compression: str | None = None,
    overwrite: bool = False,
) -> DatasetSummary:
    """Validate `src` (linked or packed), then write `dst` with real datasets instead of links.

    `compression` (e.g. "gzip") recompresses every dataset; None keeps them uncompressed. `dst`
    appears atomically (temp file + os.replace). Returns the summary of the validated output.
    """
    src, dst = Path(src), Path(dst)
    check_output_file(src, dst, overwrite)
    validate_file(src)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with EpisodeReader(src) as r, h5py.File(tmp, "w", libver=LIBVER) as out:
            info = r.info
            write_index_attrs(
                out, info.env_args, info.obs_specs, info.action_spec, info.num_samples
            )
            for ep in r.episodes:
                _copy(r.episode_group(ep), out[DATA], ep, compression)
            write_filters(out, info.filters)
        commit_file(tmp, dst, fsync=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return validate_file(dst)


def _copy(src: h5py.Group | h5py.Dataset, parent: h5py.Group, name: str, comp: str | None) -> None:
    if isinstance(src, h5py.Group):
        group = parent.create_group(name)
        _copy_attrs(src, group)
        for key in src:
            _copy(src[key], group, key, comp)
        return
    chunks = src.chunks
    if chunks is not None and src.ndim and src.shape[0]:
        chunks = (min(chunks[0], src.shape[0]), *chunks[1:])  # no slack in a fixed-size copy
    elif comp is not None and src.ndim and src.shape[0]:
        chunks = True
    ds = parent.create_dataset(
        name,
        shape=src.shape,
        dtype=src.dtype,
        chunks=chunks,
        compression=comp,
        fletcher32=src.fletcher32 and chunks is not None,
    )
    _copy_attrs(src, ds)
    if src.ndim == 0:
        ds[()] = src[()]
        return
    row_bytes = max(1, src.dtype.itemsize * (src.size // max(src.shape[0], 1)))
    block = max(1, _COPY_BYTES // row_bytes)
    for start in range(0, src.shape[0], block):
        ds[start : start + block] = src[start : start + block]


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    """Attributes in the writer's encoding (`writer.attr_array`), whatever encoding the source
    used: a file written before fixed-length strings is packed in today's format."""
    put_attrs(dst, {k: v.decode() if isinstance(v, bytes) else v for k, v in src.attrs.items()})
