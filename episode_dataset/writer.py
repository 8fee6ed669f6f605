"""Crash-safe episode writer: one shard file per episode, atomically replaced index file.

Commit of an episode (see docs/dataset_format.md):
1. its steps go to `<FILE>.episodes/demo_<i>.h5.partial` (chunked, resizable datasets);
2. on end_episode the shard is closed, fsynced and os.replace'd to `demo_<i>.h5`;
3. the index `<FILE>` (ExternalLinks + attrs) is rewritten to a temp file and os.replace'd.
A SIGKILL at any point leaves the index of before or after the commit; a shard not yet listed in
the index is ignored by readers and overwritten by the next writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
from h5py import h5a, h5d, h5f, h5g, h5p, h5s, h5t

from episode_dataset._files import (
    WriterLock,
    commit_file,
    shard_dir_for,
    shard_link_name,
    start_writeback,
    sync_filesystem,
)
from episode_dataset.ranges import checked, count, number
from episode_dataset.reader import IndexInfo, open_h5, read_index
from episode_dataset.schema import (
    ACTION_SPEC,
    ACTIONS,
    DATA,
    DONE_DTYPE,
    DONES,
    ENV_ARGS,
    EPISODE_INDEX,
    FORMAT_VERSION,
    FORMAT_VERSION_ATTR,
    MASK,
    META,
    NUM_SAMPLES,
    OBS,
    OBS_SPECS,
    REWARD_DTYPE,
    REWARDS,
    SHARD_SUFFIX,
    TOTAL,
    DatasetError,
    KeySpec,
    demo_index,
    demo_name,
    specs_to_json,
)

REWARD_SPEC = KeySpec(REWARD_DTYPE.name)
DONE_SPEC = KeySpec(DONE_DTYPE.name)

DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_ROWS = 1024
# Streamed rows are written in slabs of ~this many bytes per column (whole chunks); memory per
# open episode is at most this per column (twice this for camera columns: see _Column).
SLAB_BYTES = 4 * 1024 * 1024
# With fsync on, the open shard's pages are handed to the disk every this many bytes written.
WRITE_BEHIND_BYTES = 16 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"


def chunk_rows(spec: KeySpec, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per HDF5 chunk: ~chunk_bytes per chunk, at least one whole row (one image)."""
    row_bytes = spec.np_dtype.itemsize * int(np.prod(spec.shape, dtype=np.int64))
    return int(max(1, min(MAX_CHUNK_ROWS, chunk_bytes // max(row_bytes, 1))))


FLETCHER_BYTES = 4  # what HDF5's fletcher32 filter appends to a chunk: the checksum, native order


def fletcher32_reference(data: np.ndarray) -> int:
    """HDF5's fletcher32 (H5_checksum_fletcher32) of a uint8 array, in numpy: the sums of the
    big-endian 16-bit words (an odd last byte is the high byte of a word) and of their running
    sums, mod 65535. HDF5 folds as it goes, which keeps a sum at 0 only while every word is 0,
    and then lands on the residue in [1, 65535]."""
    raw = data.reshape(-1)
    if len(raw) % 2:
        raw = np.concatenate([raw, np.zeros(1, np.uint8)])
    words = raw.view(">u2").astype(np.int64)
    n = len(words)
    # sum2 = sum over i of (n - i) * w_i; in blocks so that no int64 product overflows
    s1 = s2 = 0
    for at in range(0, n, 1 << 16):
        block = words[at : at + (1 << 16)]
        s1 += int(block.sum())
        s2 += int(np.dot(np.arange(n - at, n - at - len(block), -1, dtype=np.int64), block))

    def fold(x: int) -> int:
        return 0 if x == 0 else (x - 1) % 65535 + 1

    return (fold(s2) << 16) | fold(s1)


def _libhdf5_paths() -> list[str]:
    """Where the libhdf5 that h5py uses is: the process's mapped files (Linux), else the copy a
    wheel bundles (h5py.libs/ on Linux, h5py/.dylibs/ on macOS)."""
    paths: list[str] = []
    with contextlib.suppress(OSError):
        maps = Path("/proc/self/maps").read_text().splitlines()
        paths += sorted({line.split(maxsplit=5)[-1] for line in maps if "/libhdf5" in line})
    root = Path(h5py.__file__).parent
    paths += sorted(
        map(str, [*root.glob(".dylibs/libhdf5*"), *root.parent.glob("h5py.libs/libhdf5*")])
    )
    return [p for p in paths if not Path(p).name.startswith("libhdf5_hl")]


def _libhdf5_fletcher32() -> Callable[[np.ndarray], int] | None:
    """The checksum function of libhdf5 (the filter's own code, ~5 GB/s); None where it cannot
    be found (then the numpy version, ~15x slower, computes the same checksum)."""
    for path in _libhdf5_paths():
        try:
            fn = ctypes.CDLL(path).H5_checksum_fletcher32
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t), ctypes.c_uint32
        return lambda data: fn(data.ctypes.data, data.nbytes)
    return None


# The same checksum either way (tests/test_episode_dataset.py compares both with HDF5's filter).
fletcher32: Callable[[np.ndarray], int] = _libhdf5_fletcher32() or fletcher32_reference

# Chunks at least this big (camera frames) have their checksums computed on a helper thread
# while this one copies rows and writes (libhdf5's function runs without the GIL), so the two
# overlap where a core is free; smaller chunks are cheap and stay on the writing thread.
PARALLEL_CHECKSUM_BYTES = 64 * 1024
_checksum_pool: ThreadPoolExecutor | None = None


def _checksum_thread() -> ThreadPoolExecutor:
    global _checksum_pool
    if _checksum_pool is None:
        _checksum_pool = ThreadPoolExecutor(1, thread_name_prefix="fletcher32")
    return _checksum_pool


def _forget_checksum_thread() -> None:
    global _checksum_pool
    _checksum_pool = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_checksum_thread)


# The file format every writer here makes: HDF5 1.10's (object headers, chunk indices and the
# superblock carry checksums, so a damaged one is an error, never a wrong value or a hang).
LIBVER = ("v110", "latest")


def attr_array(value: Any) -> np.ndarray:
    """An attribute value as stored: a str as a fixed-length UTF-8 string, held in the object
    header (checksummed) rather than the global heap, whose damaged bytes HDF5 can loop on;
    readers get bytes (`schema.attr_str`). Numbers and numeric arrays as they are."""
    if isinstance(value, str):
        data = value.encode()
        return np.array(data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))
    return np.asarray(value)


def put_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Create new attributes (str, int, numeric arrays; see `attr_array`) through h5py's
    low-level API: ~3x faster than the AttributeManager, which shows in a commit that writes
    ~20 of them."""
    for name, value in attrs.items():
        arr = attr_array(value)
        space = h5s.create_simple(arr.shape) if arr.shape else h5s.create(h5s.SCALAR)
        h5a.create(obj.id, name.encode(), h5t.py_create(arr.dtype, logical=True), space).write(arr)


def new_dataset(
    group: h5py.Group, name: str, spec: KeySpec, chunk_rows: int, checksums: bool
) -> h5py.Dataset:
    """An empty resizable (0, *spec.shape) dataset chunked by `chunk_rows` rows, as
    `group.create_dataset(name, shape, maxshape=(None, ...), dtype, chunks, fletcher32)` makes it
    (same creation properties), through h5py's low-level API: ~0.2 ms less per dataset, five of
    them per episode. `name` may hold "/": missing groups are created."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_chunk((chunk_rows, *spec.shape))
    if checksums:  # per-chunk checksum: validate/readers detect damaged bytes
        dcpl.set_fletcher32()
    dcpl.set_obj_track_times(False)
    lcpl = h5p.create(h5p.LINK_CREATE)
    lcpl.set_create_intermediate_group(True)
    lcpl.set_char_encoding(h5t.CSET_ASCII if name.isascii() else h5t.CSET_UTF8)  # as h5py
    space = h5s.create_simple((0, *spec.shape), (h5s.UNLIMITED, *spec.shape))
    tid = h5t.py_create(spec.np_dtype, logical=True)
    return h5py.Dataset(h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl, lcpl=lcpl))


def to_json(value: Any, where: str) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    try:
        return json.dumps(value, sort_keys=True, default=default)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: not JSON serializable ({e})") from None


def json_dict(value: Any, where: str) -> dict[str, Any]:
    """`value` (a dict; None: empty) as it reads back from its JSON, else DatasetError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DatasetError(f"{where}: must be a dict, got {type(value).__name__}")
    return json.loads(to_json(value, where))


def coerce_dones(value: Any, where: str, leading: int | None) -> np.ndarray:
    arr = np.asarray(value)
    # Integer 0/1 dones (robomimic style) are accepted; anything else must already be bool.
    if arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all():
        arr = arr.astype(bool)
    return DONE_SPEC.coerce(arr, where, leading=leading)


class _Column:
    """One resizable dataset in the open shard; rows gathered in a slab buffer, then written.

    A slab is a whole number of chunks (~SLAB_BYTES). Each chunk is handed to HDF5 ready to
    store (`write_direct_chunk`: the bytes plus, with checksums, the fletcher32 filter's 4-byte
    checksum, computed by libhdf5's own function): no selection, chunk cache or filter pipeline
    per write, and no copy but the one into the slab. The file is byte for byte what the filter
    pipeline writes, so readers verify the checksums as before. The last, partly filled chunk is
    written, zero padded as HDF5 pads it, when the episode ends. The rows are copied, so a caller
    may reuse its arrays after append_step.

    Columns of big chunks (camera frames) have two slabs: a full one's checksums are computed on
    the checksum thread while the rows of the next are copied in, and it is written when that
    one is full (or the episode ends), so checksums cost this thread almost nothing.
    """

    def __init__(
        self,
        dsid: h5d.DatasetID,
        spec: KeySpec,
        length_hint: int | None = None,
        on_write: Callable[[int], None] | None = None,
        checksums: bool = True,
    ) -> None:
        self.dsid = dsid
        self.rows = dsid.get_create_plist().get_chunk()[0]
        self.spec = spec
        self.length_hint = length_hint
        self.on_write = on_write
        self.checksums = checksums
        self.row_bytes = spec.np_dtype.itemsize * math.prod(spec.shape)
        self.chunk_nbytes = self.rows * self.row_bytes
        self.stored_nbytes = self.chunk_nbytes + (FLETCHER_BYTES if checksums else 0)
        self.threaded = checksums and self.chunk_nbytes >= PARALLEL_CHECKSUM_BYTES
        self.origin = (0,) * len(spec.shape)
        self.buffer: np.ndarray | None = None  # (chunks, padded chunk bytes) uint8, lazily
        self.data: np.ndarray | None = None  # the same memory as (chunks, rows, *shape)
        self.spare: tuple[np.ndarray, np.ndarray] | None = None  # the other slab (threaded)
        self.sealed: _Sealed | None = None  # a full slab waiting to be written (threaded)
        self.filled = 0  # rows in the slab
        self.size = 0  # rows written to the dataset

    def _new_slab(self) -> tuple[np.ndarray, np.ndarray]:
        cap = self.length_hint or MAX_CHUNK_ROWS
        per_slab = min(MAX_CHUNK_ROWS, SLAB_BYTES // max(1, self.row_bytes), cap)
        chunks = max(1, per_slab // self.rows)
        # Room for the checksum after each chunk, rounded up so every chunk starts aligned.
        stride = -(-(self.chunk_nbytes + FLETCHER_BYTES) // 16) * 16
        buffer = np.empty((chunks, stride), np.uint8)
        data = (
            buffer[:, : self.chunk_nbytes]
            .view(self.spec.np_dtype)
            .reshape(chunks, self.rows, *self.spec.shape)
        )
        return buffer, data

    def append(self, row: np.ndarray) -> None:
        if self.data is None:
            self.buffer, self.data = self._new_slab()
        chunk, at = divmod(self.filled, self.rows)
        self.data[chunk, at] = row
        self.filled += 1
        if self.filled == len(self.data) * self.rows:
            self._slab_full()

    def extend(self, rows: np.ndarray) -> None:
        if self.data is None:
            self.buffer, self.data = self._new_slab()
        capacity = len(self.data) * self.rows
        i = 0
        while i < len(rows):
            chunk, at = divmod(self.filled, self.rows)
            if at:  # complete the partly filled chunk first
                n = min(self.rows - at, len(rows) - i)
                self.data[chunk, at : at + n] = rows[i : i + n]
            else:  # whole chunks at once, then the start of the next one
                n = min(capacity - self.filled, len(rows) - i)
                full = n // self.rows
                if full:
                    block = rows[i : i + full * self.rows]
                    self.data[chunk : chunk + full] = block.reshape(full, *self.data.shape[1:])
                if n % self.rows:
                    self.data[chunk + full, : n % self.rows] = rows[i + full * self.rows : i + n]
            i += n
            self.filled += n
            if self.filled == capacity:
                self._slab_full()

    def _slab_full(self) -> None:
        if not self.threaded:
            self._write(self._seal())
            return
        sealed = self._seal()  # its checksums start now
        if self.sealed is not None:
            self._write(self.sealed)  # the slab before: its checksums ran while this one filled
        self.sealed = sealed
        # Go on in the other slab (written just now, or new).
        spare = self.spare or self._new_slab()
        self.spare = (self.buffer, self.data)
        self.buffer, self.data = spare

    def flush(self) -> None:
        """Write every row not yet written (the episode's end: call this only then)."""
        last = self._seal() if self.filled else None
        if self.sealed is not None:
            self._write(self.sealed)
            self.sealed = None
        if last is not None:
            self._write(last)

    def _seal(self) -> _Sealed:
        """Take the slab's rows for writing: its whole chunks and a partly filled one (zero
        padded, as HDF5 pads an edge chunk with the fill value); checksums start if threaded."""
        filled, self.filled = self.filled, 0
        chunks, part = divmod(filled, self.rows)
        if part:
            self.data[chunks, part:] = 0
            chunks += 1
        body = self.buffer[:chunks]
        sums = _SlabChecksums(body, self.chunk_nbytes) if self.threaded else None
        return _Sealed(body, filled, sums)

    def _write(self, slab: _Sealed) -> None:
        self.dsid.set_extent((self.size + slab.rows, *self.spec.shape))
        for c, chunk in enumerate(slab.chunks):
            if slab.sums is not None:
                slab.sums.wait()
            elif self.checksums:
                put_checksum(chunk, self.chunk_nbytes)
            at = (self.size + c * self.rows, *self.origin)
            self.dsid.write_direct_chunk(at, chunk[: self.stored_nbytes])
        self.size += slab.rows
        if self.on_write is not None:
            self.on_write(slab.rows * self.row_bytes)


def put_checksum(chunk: np.ndarray, body_nbytes: int) -> None:
    """Write the fletcher32 of chunk[:body_nbytes] into the 4 bytes after it (native order, as
    HDF5's filter appends it)."""
    chunk[body_nbytes : body_nbytes + FLETCHER_BYTES].view(np.uint32)[0] = fletcher32(
        chunk[:body_nbytes]
    )


class _Sealed(NamedTuple):
    chunks: np.ndarray  # (chunks, padded chunk bytes) uint8: the slab's filled chunks
    rows: int
    sums: _SlabChecksums | None  # their checksums, being computed on the checksum thread


class _SlabChecksums:
    """The checksums of a slab's chunks (rows of `chunks`), put in place in order on the
    checksum thread; `wait()` returns once the next chunk's is there. A failure is raised by
    `wait()`, never lost on the other thread."""

    def __init__(self, chunks: np.ndarray, body_nbytes: int) -> None:
        self.ready = threading.Semaphore(0)
        self.error: BaseException | None = None
        _checksum_thread().submit(self._run, chunks, body_nbytes)

    def _run(self, chunks: np.ndarray, body_nbytes: int) -> None:
        done = 0
        try:
            for chunk in chunks:
                put_checksum(chunk, body_nbytes)
                done += 1
                self.ready.release()
        except BaseException as error:
            self.error = error
            self.ready.release(len(chunks) - done)

    def wait(self) -> None:
        self.ready.acquire()
        if self.error is not None:
            raise self.error


class _Steps(NamedTuple):
    """T steps, coerced to the stored dtypes."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray


def column_rows(spec: KeySpec, chunk_bytes: int, length_hint: int | None) -> int:
    """Rows per chunk of a column; a known episode length caps it so that short episodes do not
    allocate a full chunk."""
    return min(chunk_rows(spec, chunk_bytes), length_hint or MAX_CHUNK_ROWS)


TEMPLATE_GROUP = "episode"
TEMPLATES_KEPT = 16  # shard templates per writer (one per episode length given to write_episode)


def shard_template(
    columns: dict[str, KeySpec], chunk_bytes: int, length_hint: int | None, checksums: bool
) -> bytes:
    """The bytes of an empty shard: group TEMPLATE_GROUP with an empty dataset (and its attrs)
    per column. Every shard of a writer starts as a copy, renamed to its episode: ~0.7 ms less
    per episode than creating the datasets and attributes each time (bag import: 100s of them).
    """
    f = h5py.File(
        f"shard-template-{id(columns)}", "w", driver="core", backing_store=False, libver=LIBVER
    )
    try:
        group = f.create_group(TEMPLATE_GROUP)
        for name, spec in columns.items():
            ds = new_dataset(
                group, name, spec, column_rows(spec, chunk_bytes, length_hint), checksums
            )
            put_attrs(ds, spec.to_attrs())
        f.flush()
        return f.id.get_file_image()
    finally:
        f.close()


@functools.cache
def _shard_fapl() -> h5p.PropFAID:
    """File access properties as h5py.File sets them for `libver=LIBVER`, made once."""
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_V110, h5f.LIBVER_LATEST)
    return fapl


class _OpenEpisode:
    """The staging shard of the episode being written (a copy of the writer's template)."""

    def __init__(
        self,
        staging: Path,
        name: str,
        template: bytes,
        columns: dict[str, KeySpec],
        metadata: dict[str, Any],
        length_hint: int | None = None,
        write_behind: bool = False,
        checksums: bool = True,
    ) -> None:
        self.staging = staging
        self.name = name
        self.metadata = dict(metadata)
        self.num_steps = 0
        with open(staging, "wb") as f:  # writes it all or raises (a full disk)
            f.write(template)
        # h5py's high-level File/Group/Dataset lookups cost ~0.3 ms per shard; the ids suffice
        fid = h5f.open(os.fsencode(staging), h5f.ACC_RDWR, fapl=_shard_fapl())
        self.file = h5py.File(fid)
        fid.links.move(TEMPLATE_GROUP.encode(), fid, name.encode())
        group = h5g.open(fid, name.encode())
        self.group = h5py.Group(group)
        self.unsynced_bytes = 0
        on_write = self._write_behind if write_behind else None
        self.cols = {
            key: _Column(h5d.open(group, key.encode()), spec, length_hint, on_write, checksums)
            for key, spec in columns.items()
        }
        prefix = f"{OBS}/"
        self.obs = {k[len(prefix) :]: c for k, c in self.cols.items() if k.startswith(prefix)}
        self.actions = self.cols[ACTIONS]
        self.rewards = self.cols[REWARDS]
        self.dones = self.cols[DONES]

    def columns(self) -> list[_Column]:
        return list(self.cols.values())

    def _write_behind(self, nbytes: int) -> None:
        # Start writing the shard's dirty pages to disk now, so the commit's fsync waits only
        # for the last few MiB instead of the whole episode.
        self.unsynced_bytes += nbytes
        if self.unsynced_bytes >= WRITE_BEHIND_BYTES:
            self.unsynced_bytes = 0
            start_writeback(self.file.id.get_vfd_handle())

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def close_discarding(f: h5py.File) -> None:
    """Close a file whose content is being thrown away, even when its writes fail.

    After a failed write (a full disk, a file-size limit) HDF5 cannot flush the file, and a
    close that fails part-way leaves objects whose later release crashes the process. Pointing
    the file's descriptor at /dev/null lets the close finish; the caller deletes the file.
    HDF5 may still fail to size /dev/null to the file's end there (EINVAL): that error is not
    raised, the write error the caller reports is the one that matters.
    """
    if not f.id.valid:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, f.id.get_vfd_handle())
    finally:
        os.close(null)
    with contextlib.suppress(RuntimeError, OSError):
        f.close()


class EpisodeWriter:
    """Write episodes to `path` (index) + `path.episodes/` (one shard per episode).

    On an existing dataset it appends: numbering continues and `obs_specs`/`action_spec`/
    `env_args`, when given, must equal the stored ones (DatasetError otherwise); when omitted
    the stored ones are used. One writer per dataset at a time (enforced with a lock file).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        obs_specs: dict[str, KeySpec] | None = None,
        action_spec: KeySpec | None = None,
        env_args: dict[str, Any] | None = None,
        *,
        fsync: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        checksums: bool = True,
        index_every_s: float = 0.0,
    ) -> None:
        self.path = Path(path)
        # Before any file: "x" failed after the index was written, nan never wrote it again.
        chunk_bytes = checked("chunk_bytes", chunk_bytes, count(1), DatasetError)
        index_every_s = checked("index_every_s", index_every_s, number(0), DatasetError)
        # 0: end_episode lists the episode in the index at once (durable on return with fsync).
        # > 0, for batch jobs that can be rerun (import-bag): ended shards are renamed into
        # place, and the index is rewritten at most every this many seconds and on close, after
        # one sync of the file system (with fsync) instead of an fsync per shard. A crash then
        # loses the episodes ended since the last index write; the index stays valid.
        self.index_every_s = index_every_s
        self._unlisted = 0  # shards committed but not yet in the index
        self._index_due = 0.0
        # Off: no fletcher32 per chunk, so damaged bytes of these episodes read back unnoticed;
        # the writer is then as fast as a rosbag2 MCAP writer (bench recorder_throughput).
        self.checksums = checksums
        self.shard_dir = shard_dir_for(self.path)
        self.fsync = fsync
        self.chunk_bytes = chunk_bytes
        self._open: _OpenEpisode | None = None
        self._closed = False  # its lock released: another writer may own the dataset
        if not self.path.parent.is_dir():
            raise DatasetError(f"{self.path}: parent directory does not exist")
        if self.path.is_dir():
            raise DatasetError(f"{self.path}: is a directory; name the dataset file")
        created = not self.shard_dir.exists()
        self.shard_dir.mkdir(exist_ok=True)
        self._lock = WriterLock(self.shard_dir / ".lock", self.path)
        try:
            self._init_state(obs_specs, action_spec, env_args)
        except BaseException:
            self._lock.release()
            if created:  # a dataset that never came to be leaves nothing behind
                (self.shard_dir / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.shard_dir.rmdir()
            raise
        self._remove_stale_temp_files()
        # shard layout: dataset path in the episode group -> spec
        self._columns = {
            **{f"{OBS}/{k}": spec for k, spec in self.obs_specs.items()},
            ACTIONS: self.action_spec,
            REWARDS: REWARD_SPEC,
            DONES: DONE_SPEC,
        }
        self._templates: dict[int | None, bytes] = {}  # length_hint -> empty shard

    def _init_state(
        self,
        obs_specs: dict[str, KeySpec] | None,
        action_spec: KeySpec | None,
        env_args: dict[str, Any] | None,
    ) -> None:
        if self.path.exists():
            with open_h5(self.path) as f:
                info = read_index(f, self.path)
            self._check_append(info, obs_specs, action_spec, env_args)
            self.obs_specs = info.obs_specs
            self.action_spec = info.action_spec
            self.env_args = info.env_args
            self._lengths = {ep: info.num_samples[ep] for ep in info.episodes}  # sorted
            self._filters = dict(info.filters)
            return
        if any(self.shard_dir.glob(f"demo_*{SHARD_SUFFIX}")):
            # The index is written before the first shard, so this is not a crash leftover:
            # refuse to overwrite episodes of a dataset whose index was deleted.
            raise DatasetError(
                f"{self.path}: missing, but {self.shard_dir.name}/ holds episode shards; "
                "restore the index or delete that directory"
            )
        if obs_specs is None or action_spec is None:
            raise DatasetError(f"{self.path}: new dataset needs obs_specs and action_spec")
        for key, spec in {**obs_specs, ACTIONS: action_spec}.items():
            if not isinstance(spec, KeySpec):
                raise DatasetError(f"{self.path}: spec of {key!r} must be a KeySpec")
            if "/" in key or not key:
                raise DatasetError(f"{self.path}: bad obs key {key!r}")
        self.obs_specs = dict(obs_specs)
        self.action_spec = action_spec
        self.env_args = json_dict(env_args, f"{self.path}: env_args")
        self._lengths = {}
        self._filters = {}
        self._write_index()

    def _check_append(
        self,
        info: IndexInfo,
        obs_specs: dict[str, KeySpec] | None,
        action_spec: KeySpec | None,
        env_args: dict[str, Any] | None,
    ) -> None:
        where = f"{self.path}: appending"
        if info.packed and info.episodes:
            raise DatasetError(f"{where}: file is packed (self-contained); append to a linked one")
        if obs_specs is not None and dict(obs_specs) != info.obs_specs:
            raise DatasetError(
                f"{where}: obs_specs differ from stored: "
                f"{specs_to_json(dict(obs_specs))} != {specs_to_json(info.obs_specs)}"
            )
        if action_spec is not None and action_spec != info.action_spec:
            raise DatasetError(
                f"{where}: action_spec differs from stored: {action_spec} != {info.action_spec}"
            )
        if env_args is not None:
            given = json_dict(env_args, f"{self.path}: env_args")
            if given != info.env_args:
                raise DatasetError(
                    f"{where}: env_args differ from stored: {given} != {info.env_args}"
                )

    def _remove_stale_temp_files(self) -> None:
        # Left by a writer that died mid-episode; safe to delete while we hold the lock.
        for p in self.shard_dir.glob(f"*{PARTIAL_SUFFIX}"):
            p.unlink()
        tmp = self._index_tmp()
        if tmp.exists():
            tmp.unlink()

    # -- properties ------------------------------------------------------------------------
    @property
    def episodes(self) -> list[str]:
        return list(self._lengths)  # numbers only grow, so insertion order is sorted

    @property
    def total_steps(self) -> int:
        return sum(self._lengths.values())

    @property
    def in_episode(self) -> bool:
        return self._open is not None

    @property
    def current_steps(self) -> int:
        """Steps appended to the open episode (0 when none is open)."""
        return 0 if self._open is None else self._open.num_steps

    def _next_name(self) -> str:
        last = next(reversed(self._lengths), None)
        return demo_name(0 if last is None else demo_index(last) + 1)

    # -- whole episodes --------------------------------------------------------------------
    def write_episode(
        self,
        obs: dict[str, Any],
        actions: Any,
        rewards: Any,
        dones: Any,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Write and commit one whole episode; arrays are (T, ...). Returns its name."""
        actions_arr = np.asarray(actions)
        if actions_arr.ndim == 0 or actions_arr.shape[0] == 0:
            raise DatasetError(f"{self.path}: {self._next_name()}: empty episode (no steps)")
        t = actions_arr.shape[0]
        steps = self._coerce_steps(obs, actions_arr, rewards, dones, self._next_name(), t)
        self.begin_episode(metadata, _length_hint=t)
        self._extend(steps, t)
        return self.end_episode()

    def _coerce_steps(
        self, obs: dict[str, Any], actions: Any, rewards: Any, dones: Any, where: str, t: int
    ) -> _Steps:
        """T steps in the stored dtypes; a DatasetError names the key."""
        where = f"{self.path}: {where}"
        self._check_obs_keys(obs, where)
        return _Steps(
            {
                k: s.coerce(obs[k], f"{where}/obs/{k}", leading=t)
                for k, s in self.obs_specs.items()
            },
            self.action_spec.coerce(actions, f"{where}/actions", leading=t),
            REWARD_SPEC.coerce(rewards, f"{where}/rewards", leading=t),
            coerce_dones(dones, f"{where}/dones", leading=t),
        )

    def _extend(self, steps: _Steps, t: int) -> None:
        ep = self._require_open()
        try:
            for k, arr in steps.obs.items():
                ep.obs[k].extend(arr)
            ep.actions.extend(steps.actions)
            ep.rewards.extend(steps.rewards)
            ep.dones.extend(steps.dones)
        except BaseException:
            self.discard_episode()  # columns may now differ in length: never commit that
            raise
        ep.num_steps += t

    # -- streaming -------------------------------------------------------------------------
    def begin_episode(
        self, metadata: dict[str, Any] | None = None, *, _length_hint: int | None = None
    ) -> str:
        """Open a new episode; returns the name it will get on end_episode()."""
        self._require_writable()
        if self._open is not None:
            raise DatasetError(f"{self.path}: {self._open.name}: episode already open")
        name = self._next_name()
        meta = json_dict(metadata, f"{self.path}: {name}: metadata")
        staging = self.shard_dir / f"{name}{SHARD_SUFFIX}{PARTIAL_SUFFIX}"
        self._open = _OpenEpisode(
            staging,
            name,
            self._template(_length_hint),
            self._columns,
            meta,
            _length_hint,
            write_behind=self.fsync,
            checksums=self.checksums,
        )
        return name

    def _template(self, length_hint: int | None) -> bytes:
        template = self._templates.get(length_hint)
        if template is None:
            if len(self._templates) >= TEMPLATES_KEPT:
                del self._templates[next(iter(self._templates))]
            template = shard_template(self._columns, self.chunk_bytes, length_hint, self.checksums)
            self._templates[length_hint] = template
        return template

    def append_step(self, obs: dict[str, Any], action: Any, reward: Any, done: Any) -> None:
        """Buffer one step: obs[key] has the spec shape, action (A,), scalar reward and done."""
        ep = self._require_open()
        where = f"{self.path}: {ep.name} step {ep.num_steps}"
        self._check_obs_keys(obs, where)
        rows = {k: s.coerce(obs[k], f"{where}/obs/{k}") for k, s in self.obs_specs.items()}
        act = self.action_spec.coerce(action, f"{where}/actions")
        rew = REWARD_SPEC.coerce(reward, f"{where}/rewards")
        done_ = coerce_dones(done, f"{where}/dones", leading=None)
        try:
            for k, row in rows.items():
                ep.obs[k].append(row)
            ep.actions.append(act)
            ep.rewards.append(rew)
            ep.dones.append(done_)
        except BaseException:
            self.discard_episode()  # columns may now differ in length: never commit that
            raise
        ep.num_steps += 1

    def append_steps(self, obs: dict[str, Any], actions: Any, rewards: Any, dones: Any) -> None:
        """Append T steps at once to the open episode: arrays (T, ...) as in write_episode."""
        ep = self._require_open()
        t = np.shape(actions)[0] if np.ndim(actions) else 0
        where = f"{ep.name} steps {ep.num_steps}..{ep.num_steps + t}"
        self._extend(self._coerce_steps(obs, actions, rewards, dones, where, t), t)

    def end_episode(self, metadata_update: dict[str, Any] | None = None) -> str:
        """Commit the open episode atomically; returns its name (e.g. "demo_3")."""
        ep = self._require_open()
        where = f"{self.path}: {ep.name}"
        if ep.num_steps == 0:
            raise DatasetError(f"{where}: empty episode (no steps); discard_episode() it")
        meta = dict(ep.metadata)
        if metadata_update is not None:
            meta.update(json_dict(metadata_update, f"{where}: metadata_update"))
        try:
            for col in ep.columns():
                col.flush()
            put_attrs(
                ep.group, {NUM_SAMPLES: ep.num_steps, META: to_json(meta, f"{where}: metadata")}
            )
            ep.file.flush()
            ep.close()
            final = self.shard_dir / f"{ep.name}{SHARD_SUFFIX}"
            commit_file(ep.staging, final, fsync=self.fsync and not self.index_every_s)
        except BaseException:
            self.discard_episode()
            raise
        self._open = None
        self._lengths[ep.name] = ep.num_steps
        self._unlisted += 1
        if time.monotonic() >= self._index_due:
            self._write_index()
        return ep.name

    def discard_episode(self) -> None:
        """Drop the open episode (no-op when none is open), also after a failed write."""
        ep, self._open = self._open, None
        if ep is None:
            return
        try:
            close_discarding(ep.file)
        finally:
            ep.staging.unlink(missing_ok=True)

    def _require_writable(self) -> None:
        if self._closed:
            raise DatasetError(f"{self.path}: writer closed; open a new EpisodeWriter to append")

    def _require_open(self) -> _OpenEpisode:
        if self._open is None:
            raise DatasetError(f"{self.path}: no open episode; call begin_episode() first")
        return self._open

    def _check_obs_keys(self, obs: dict[str, Any], where: str) -> None:
        if not isinstance(obs, Mapping):
            raise DatasetError(
                f"{where}/obs: must be a dict of arrays keyed {sorted(self.obs_specs)}, "
                f"got {type(obs).__name__}"
            )
        missing = sorted(set(self.obs_specs) - set(obs))
        extra = sorted(set(obs) - set(self.obs_specs))
        if missing or extra:
            raise DatasetError(f"{where}/obs: missing keys {missing}, unexpected keys {extra}")

    # -- filters / index -------------------------------------------------------------------
    def add_filter(self, name: str, episodes: list[str]) -> None:
        """Store `mask/<name>` (replacing one of that name); episodes must be committed."""
        self._require_writable()
        if not name or "/" in name:
            raise DatasetError(f"{self.path}: bad filter name {name!r}")
        unknown = [e for e in episodes if e not in self._lengths]
        if unknown:
            raise DatasetError(f"{self.path}: mask/{name}: unknown episodes {unknown}")
        self._filters[name] = list(episodes)
        self._write_index()

    def _index_tmp(self) -> Path:
        return self.path.with_name(f".{self.path.name}.tmp")

    def _write_index(self) -> None:
        if self._unlisted and self.fsync and self.index_every_s:
            sync_filesystem(self.shard_dir)  # the shards first: the index lists only durable ones
        tmp = self._index_tmp()
        f = h5py.File(tmp, "w", libver=LIBVER)
        try:
            write_index_attrs(f, self.env_args, self.obs_specs, self.action_spec, self._lengths)
            # Low-level link creation: ~5 us per link instead of ~25 us through Group.__setitem__;
            # the index is rewritten on every commit, so this bounds commit cost on big datasets.
            data = f[DATA]  # keep the group open while its link proxy is used
            for ep in self.episodes:
                data.id.links.create_external(
                    ep.encode(), shard_link_name(self.path, ep).encode(), f"/{ep}".encode()
                )
            write_filters(f, self._filters)
            f.flush()  # a failed write surfaces here, not in close (see close_discarding)
        except BaseException:
            close_discarding(f)
            tmp.unlink(missing_ok=True)
            raise
        f.close()
        commit_file(tmp, self.path, fsync=self.fsync)
        self._unlisted = 0
        self._index_due = time.monotonic() + self.index_every_s

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock. An episode still open is discarded and reported as an error."""
        if self._closed:
            return
        self._closed = True
        open_name = self._open.name if self._open is not None else None
        self.discard_episode()
        try:
            if self._unlisted:
                self._write_index()
        finally:
            self._lock.release()
        if open_name is not None:
            raise DatasetError(
                f"{self.path}: {open_name}: closed with the episode still open (discarded); "
                "call end_episode() or discard_episode() first"
            )

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.discard_episode()  # the error in flight is the one to report
        self.close()


def write_index_attrs(
    f: h5py.File,
    env_args: dict[str, Any],
    obs_specs: dict[str, KeySpec],
    action_spec: KeySpec,
    lengths: dict[str, int],
) -> None:
    """`data` group attrs and `episode_index` of a linked index or a packed file.

    `lengths` maps episode -> num_samples in episode order.
    """
    data = f.create_group(DATA)
    put_attrs(
        data,
        {
            TOTAL: int(sum(lengths.values())),
            ENV_ARGS: to_json(env_args, f"{f.filename}: env_args"),
            OBS_SPECS: specs_to_json(obs_specs),
            ACTION_SPEC: json.dumps(action_spec.to_dict(), sort_keys=True),
            FORMAT_VERSION_ATTR: FORMAT_VERSION,
        },
    )
    names = list(lengths)
    idx = f.create_group(EPISODE_INDEX)
    idx.create_dataset("demos", data=np.array(names, dtype="S") if names else np.zeros(0, "S1"))
    idx.create_dataset(NUM_SAMPLES, data=np.array([lengths[n] for n in names], dtype=np.int64))


def write_filters(f: h5py.File, filters: dict[str, list[str]]) -> None:
    mask = f.create_group(MASK)
    for name, eps in sorted(filters.items()):
        mask.create_dataset(name, data=np.array(eps, dtype="S") if eps else np.zeros(0, "S1"))
