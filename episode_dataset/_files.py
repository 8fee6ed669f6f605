"""Atomic-file helpers: where shards live, fsync, replace, single-writer lock."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from episode_dataset.schema import SHARD_DIR_SUFFIX, SHARD_SUFFIX, DatasetError


def shard_dir_for(path: Path) -> Path:
    return path.with_name(path.name + SHARD_DIR_SUFFIX)


def shard_link_name(path: Path, name: str) -> str:
    """ExternalLink file name of a shard, relative to the index file's directory."""
    return f"{path.name}{SHARD_DIR_SUFFIX}/{name}{SHARD_SUFFIX}"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write back everything dirty on the file system holding `path` and wait for it: one call
    for many new files (Linux syncfs) instead of one fsync, and one journal commit, per file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs is None:
            os.sync()
        elif _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)


def _find_syncfs() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux: os.sync()
        return None


_syncfs = _find_syncfs()


def _find_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


_sync_file_range = _find_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting, so that a later fsync waits
    only for what was written since. Linux sync_file_range(SYNC_FILE_RANGE_WRITE): the pages stay
    cached (POSIX_FADV_DONTNEED, the fallback, also drops them: ~2x the CPU time)."""
    if _sync_file_range is not None:
        if _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sync_file_range: {os.strerror(err)}")
    elif hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def check_output_file(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse, in one DatasetError line, a one-file output `dst` that is the input `src`, a
    directory (never deleted for a file, even with `overwrite`) or, without `overwrite`, an
    existing file."""
    if dst.resolve() == src.resolve():
        raise DatasetError(f"{dst}: output must differ from input {src}")
    if dst.is_dir():
        raise DatasetError(f"{dst}: is a directory; name the output file")
    if dst.exists() and not overwrite:
        raise DatasetError(f"{dst}: exists (pass overwrite=True / --overwrite)")


@contextlib.contextmanager
def whole_or_absent(final: Path) -> Iterator[Path]:
    """`with whole_or_absent(final) as tmp:` write `tmp`; at the end it replaces `final`, so a
    reader finds the old file or the whole new one. On any error (a full disk, a Ctrl-C, a
    killed worker's SIGTERM) the temporary file is removed and the error goes on."""
    tmp = final.with_name(final.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def commit_file(tmp: Path, final: Path, *, fsync: bool) -> None:
    """Make a closed temp file visible under its final name; after a crash either name holds."""
    if fsync:
        fsync_file(tmp)
    os.replace(tmp, final)
    if fsync:
        fsync_dir(final.parent)


class WriterLock:
    """Exclusive flock so two writers never interleave commits. The OS drops it on SIGKILL."""

    def __init__(self, lock_path: Path, dataset: Path) -> None:
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DatasetError(f"{dataset}: already open for writing by another writer") from None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
