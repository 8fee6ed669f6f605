"""Lazy, pickle-safe reader for linked (index + shards) and packed episode datasets."""

from __future__ import annotations

import itertools
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from episode_dataset.ranges import checked, count
from episode_dataset.schema import (
    ACTION_SPEC,
    ACTIONS,
    DATA,
    DONES,
    ENV_ARGS,
    EPISODE_INDEX,
    MASK,
    META,
    NUM_SAMPLES,
    OBS,
    OBS_SPECS,
    REWARDS,
    TOTAL,
    DatasetError,
    KeySpec,
    attr_str,
    sort_demos,
)


@dataclass
class IndexInfo:
    """Everything small about a dataset, read from the index file without touching shards."""

    path: Path
    episodes: list[str]
    num_samples: dict[str, int]
    total: int
    env_args: dict[str, Any]
    obs_specs: dict[str, KeySpec]
    action_spec: KeySpec
    filters: dict[str, list[str]]
    # episode -> (shard file name relative to the index dir, object path); None = stored inline.
    links: dict[str, tuple[str, str] | None] = field(default_factory=dict)

    @property
    def packed(self) -> bool:
        return all(v is None for v in self.links.values())


# What h5py raises on damaged bytes, depending on where they hit: OSError (read errors, bad
# checksums, truncation), KeyError (an object header it cannot open), ValueError / TypeError /
# RuntimeError (a datatype, dataspace or link it cannot map). DatasetError is a ValueError and
# passes through unchanged.
H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)


@contextmanager
def h5_errors(where: str, at: str = "") -> Iterator[None]:
    """Turn what h5py raises on a damaged file into one DatasetError line naming `where` (the
    file and the object being read) and `at` (e.g. " at steps [0, 12)")."""
    try:
        yield
    except DatasetError:
        raise
    except H5_ERRORS as e:
        raise DatasetError(f"{where}: unreadable{at} ({_first_line(e)})") from None


def open_h5(path: Path, what: str = "") -> h5py.File:
    """Open read-only with a one-line DatasetError for missing or non-HDF5 files."""
    label = f"{what}: " if what else ""
    if not path.exists():
        raise DatasetError(f"{label}{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{label}{path}: not a readable HDF5 file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def json_attr(attrs: h5py.AttributeManager, name: str, where: str) -> Any:
    """The JSON attribute `name`, or one DatasetError line (missing, unreadable, not JSON)."""
    with h5_errors(f"{where}: attribute {name!r}"):
        if name not in attrs:
            raise DatasetError(f"{where}: missing attribute {name!r}")
        text = attr_str(attrs[name])
    try:
        text.encode()  # h5py hands undecodable bytes over as lone surrogates
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, UnicodeError) as e:
        raise DatasetError(f"{where}: attribute {name!r} is not valid JSON ({e})") from None


def check_chunks(ds: h5py.Dataset, where: str) -> None:
    """DatasetError unless every chunk the data covers is stored: HDF5 reads a chunk that its
    (damaged) chunk index cannot find as the fill value, without an error."""
    with h5_errors(where):
        if ds.chunks is None or ds.size == 0:
            return
        grid = [range(0, size, step) for size, step in zip(ds.shape, ds.chunks, strict=True)]
        stored: set[tuple[int, ...]] = set()
        ds.id.chunk_iter(lambda chunk: stored.add(tuple(chunk.chunk_offset)))
    missing = len(set(itertools.product(*grid)) - stored)
    if missing:
        raise DatasetError(f"{where}: {missing} chunks missing from the chunk index (damaged)")


def get_object(parent: h5py.Group, name: str, where: str) -> h5py.HLObject | None:
    """`parent[name]`, or None when no such link exists. A link whose object cannot be opened
    (its header's checksum failed) is one DatasetError line naming `where`, not "missing":
    `Group.get` and `in` would say it is not there."""
    with h5_errors(where):
        try:
            return parent[name]
        except KeyError:
            if parent.get(name, getlink=True) is None:
                return None
            raise  # the link is there, its object is not readable


def optional_group(parent: h5py.Group, name: str, where: str) -> h5py.Group | None:
    """The group `name` of `parent`, or None when there is no such link (`where` names the
    parent: file and object)."""
    obj = get_object(parent, name, f"{where}: {name!r}")
    if obj is not None and not isinstance(obj, h5py.Group):
        raise DatasetError(f"{where}: not a {name!r} group")
    return obj


def require_group(parent: h5py.Group, name: str, where: str) -> h5py.Group:
    """The group `name` of `parent` (`where` names the parent: file and object)."""
    group = optional_group(parent, name, where)
    if group is None:
        raise DatasetError(f"{where}: missing {name!r} group")
    return group


def read_index(f: h5py.File, path: Path) -> IndexInfo:
    """Parse the small part of an open dataset file (index or packed)."""
    data = require_group(f, DATA, f"{path}")
    where = f"{path}: data"
    env_args = json_attr(data.attrs, ENV_ARGS, where)
    specs = json_attr(data.attrs, OBS_SPECS, where)
    action = json_attr(data.attrs, ACTION_SPEC, where)
    try:
        obs_specs = {k: KeySpec.from_dict(v) for k, v in specs.items()}
        action_spec = KeySpec.from_dict(action)
        bad = [k for k in obs_specs if not (k.isprintable() and k and "/" not in k)]
        if bad:
            raise DatasetError(f"{where}: bad obs key {bad[0]!r} in obs_specs")
    except DatasetError:
        raise
    except KeyError as e:
        raise DatasetError(f"{where}: missing spec field {e}") from None
    except (AttributeError, TypeError, ValueError) as e:  # valid JSON of the wrong shape
        raise DatasetError(f"{where}: bad obs_specs/action_spec ({_first_line(e)})") from None
    with h5_errors(f"{where}: attribute 'total'"):
        if TOTAL not in data.attrs:
            raise DatasetError(f"{where}: missing attribute 'total'")
        total = int(data.attrs[TOTAL])
    with h5_errors(f"{where}: episode list"):
        names = list(data.keys())
    try:
        episodes = sort_demos(names)
    except DatasetError as e:
        raise DatasetError(f"{where}: {e}") from None
    links: dict[str, tuple[str, str] | None] = {}
    for ep in episodes:
        with h5_errors(f"{where}/{ep}: link"):
            link = data.get(ep, getlink=True)
            links[ep] = (link.filename, link.path) if isinstance(link, h5py.ExternalLink) else None
        shard = Path(links[ep][0]) if links[ep] else None
        if shard is not None and not str(shard).isprintable():
            raise DatasetError(f"{where}/{ep}: external link to {str(shard)!r}: not a file name")
        if shard is not None and (shard.is_absolute() or ".." in shard.parts):
            # The writer links `<file>.episodes/demo_<i>.h5`; a file may not make readers open
            # any other path on the machine.
            raise DatasetError(
                f"{where}/{ep}: external link to {str(shard)!r} outside the dataset directory"
            )
    num_samples = _read_lengths(f, path, episodes)
    filters = {}
    mask = optional_group(f, MASK, f"{path}")
    with h5_errors(f"{path}: {MASK}"):
        masks = list(mask.items()) if mask is not None else []
    for name, ds in masks:
        if not (isinstance(name, str) and name.isprintable()):
            raise DatasetError(f"{path}: {MASK}: bad filter name {name!r}")
        with h5_errors(f"{path}: {MASK}/{name}"):
            filters[name] = [attr_str(x) for x in ds[()]]
    return IndexInfo(
        path=path,
        episodes=episodes,
        num_samples=num_samples,
        total=total,
        env_args=env_args,
        obs_specs=obs_specs,
        action_spec=action_spec,
        filters=filters,
        links=links,
    )


def _read_lengths(f: h5py.File, path: Path, episodes: list[str]) -> dict[str, int]:
    idx = optional_group(f, EPISODE_INDEX, f"{path}")
    if idx is not None:
        with h5_errors(f"{path}: {EPISODE_INDEX}"):
            names = [attr_str(x) for x in idx["demos"][()]]
            lengths = [int(n) for n in idx[NUM_SAMPLES][()]]
        if sorted(names) != sorted(episodes) or len(lengths) != len(names):
            raise DatasetError(f"{path}: episode_index does not list the episodes in data/")
        if any(n < 0 for n in lengths):
            raise DatasetError(f"{path}: episode_index has a negative length")
        by_name = dict(zip(names, lengths, strict=True))
        return {ep: by_name[ep] for ep in episodes}
    # Plain robomimic file: lengths live on each demo group.
    out = {}
    for ep in episodes:
        with h5_errors(f"{path}: {ep}: attribute 'num_samples'"):
            attrs = f[DATA][ep].attrs
            if NUM_SAMPLES not in attrs:
                raise DatasetError(f"{path}: {ep}: missing attribute 'num_samples'")
            out[ep] = int(attrs[NUM_SAMPLES])
    return out


class EpisodeReader:
    """Read episodes lazily: metadata at construction, arrays per key and window on demand.

    h5py handles are opened on first use in each process and dropped when pickled or forked, so
    one reader can be handed to DataLoader workers. At most `max_open_shards` shard files stay
    open (LRU) to respect the fd limit on datasets with many episodes.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_open_shards: int = 64) -> None:
        self.path = Path(path)
        # 0 closed each shard as it opened; -1 emptied the cache and failed on it.
        self.max_open_shards = checked("max_open_shards", max_open_shards, count(1), DatasetError)
        self._pid = os.getpid()
        self._index_file: h5py.File | None = None
        self._shards: OrderedDict[str, h5py.File] = OrderedDict()
        # Resolved h5py.Dataset objects per episode: path lookups cost ~50 us each, a cached
        # slice read a few us. Bounded like the shards and dropped with them.
        self._datasets: OrderedDict[str, dict[str, h5py.Dataset]] = OrderedDict()
        self._info = read_index(self._index(), self.path)
        self._shard_episode = {
            link[0]: ep for ep, link in self._info.links.items() if link is not None
        }

    # -- metadata --------------------------------------------------------------------------
    @property
    def info(self) -> IndexInfo:
        return self._info

    @property
    def episodes(self) -> list[str]:
        return list(self._info.episodes)

    def __len__(self) -> int:
        return len(self._info.episodes)

    @property
    def total_steps(self) -> int:
        return sum(self._info.num_samples.values())

    @property
    def obs_specs(self) -> dict[str, KeySpec]:
        return dict(self._info.obs_specs)

    @property
    def action_spec(self) -> KeySpec:
        return self._info.action_spec

    @property
    def env_args(self) -> dict[str, Any]:
        return self._info.env_args

    @property
    def filters(self) -> list[str]:
        return sorted(self._info.filters)

    @property
    def packed(self) -> bool:
        return self._info.packed

    def num_steps(self, ep: str) -> int:
        self._check_ep(ep)
        return self._info.num_samples[ep]

    def filter(self, name: str) -> list[str]:
        if name not in self._info.filters:
            raise DatasetError(f"{self.path}: no filter {name!r} (have {self.filters})")
        return list(self._info.filters[name])

    def episode_metadata(self, ep: str) -> dict[str, Any]:
        attrs = self.episode_group(ep).attrs
        with h5_errors(f"{self.path}: {ep}: attribute {META!r}"):
            if META not in attrs:
                return {}
        return json_attr(attrs, META, f"{self.path}: {ep}")

    # -- arrays ----------------------------------------------------------------------------
    def read_obs(self, ep: str, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Obs `key` of steps [start, stop): (stop - start, *spec.shape). Reads only that slice."""
        if key not in self._info.obs_specs:
            raise DatasetError(
                f"{self.path}: {ep}: unknown obs key {key!r} (have {sorted(self._info.obs_specs)})"
            )
        return self._read(ep, f"{OBS}/{key}", start, stop)

    def read_actions(self, ep: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read(ep, ACTIONS, start, stop)

    def read_rewards(self, ep: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read(ep, REWARDS, start, stop)

    def read_dones(self, ep: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """bool, also for files that store dones as 0/1 integers (robomimic)."""
        return self._read(ep, DONES, start, stop) != 0

    def read_window(
        self, ep: str, start: int = 0, stop: int | None = None, keys: list[str] | None = None
    ) -> dict[str, Any]:
        """{"obs": {key: (n, *shape)}, "actions", "rewards", "dones"} for steps [start, stop)."""
        keys = list(self._info.obs_specs) if keys is None else keys
        return {
            OBS: {k: self.read_obs(ep, k, start, stop) for k in keys},
            ACTIONS: self.read_actions(ep, start, stop),
            REWARDS: self.read_rewards(ep, start, stop),
            DONES: self.read_dones(ep, start, stop),
        }

    def read_episode(self, ep: str) -> dict[str, Any]:
        return self.read_window(ep)

    def episode_return(self, ep: str) -> float:
        return float(np.sum(self.read_rewards(ep), dtype=np.float64))

    def episode_group(self, ep: str) -> h5py.Group:
        """The h5py group of one episode (shard handle cached; do not close it)."""
        self._check_ep(ep)
        link = self._info.links[ep]
        if link is None:
            data = require_group(self._index(), DATA, f"{self.path}")
            return require_group(data, ep, f"{self.path}: {DATA}")
        filename, obj = link
        shard = self._shard(filename, ep)
        with h5_errors(f"{self.path}: {ep}: shard {filename}"):
            present = obj in shard
        if not present:
            raise DatasetError(f"{self.path}: {ep}: shard {filename} has no object {obj}")
        return require_group(shard, obj, f"{self.path}: {ep}: shard {filename}")

    # -- handles ---------------------------------------------------------------------------
    def dataset(self, ep: str, name: str) -> h5py.Dataset:
        """The h5py dataset `name` ("obs/state", "actions", ...) of one episode (cached)."""
        self._check_pid()
        cache = self._datasets.get(ep)
        if cache is not None:
            self._datasets.move_to_end(ep)
            ds = cache.get(name)
            if ds is not None:
                return ds
        group = self.episode_group(ep)  # may evict shards (and their cache entries)
        where = f"{self.path}: {ep}/{name}"
        obj = get_object(group, name, where)
        if not isinstance(obj, h5py.Dataset):
            raise DatasetError(f"{where}: " + ("missing" if obj is None else "not a dataset"))
        with h5_errors(where):
            length = obj.shape[0] if obj.ndim else None
        if length != self._info.num_samples[ep]:  # damaged dataspace, or a foreign file
            raise DatasetError(f"{where}: length {length} != num_samples {self.num_steps(ep)}")
        check_chunks(obj, where)
        cache = self._datasets.setdefault(ep, {})
        self._datasets.move_to_end(ep)
        cache[name] = obj
        while len(self._datasets) > self.max_open_shards:
            self._datasets.popitem(last=False)
        return obj

    def _read(self, ep: str, name: str, start: int, stop: int | None) -> np.ndarray:
        n = self.num_steps(ep)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise DatasetError(
                f"{self.path}: {ep}/{name}: window [{start}, {stop}) outside [0, {n}]"
            )
        ds = self.dataset(ep, name)
        with h5_errors(f"{self.path}: {ep}/{name}"):  # damaged chunk, checksum, datatype
            return ds[start:stop]

    def _check_ep(self, ep: str) -> None:
        if ep not in self._info.num_samples:
            raise DatasetError(f"{self.path}: unknown episode {ep!r}")

    def _check_pid(self) -> None:
        # A forked child must not share the parent's HDF5 handles: forget them and reopen.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._index_file = None
            self._shards = OrderedDict()
            self._datasets = OrderedDict()

    def _index(self) -> h5py.File:
        self._check_pid()
        if self._index_file is None:
            self._index_file = open_h5(self.path)
        return self._index_file

    def _shard(self, filename: str, ep: str) -> h5py.File:
        self._check_pid()
        f = self._shards.get(filename)
        if f is not None:
            self._shards.move_to_end(filename)
            return f
        shard_path = self.path.parent / filename
        if not shard_path.exists():
            raise DatasetError(
                f"{self.path}: {ep}: broken external link, shard {filename} is missing"
            )
        f = open_h5(shard_path, f"{self.path}: {ep}")
        self._shards[filename] = f
        while len(self._shards) > self.max_open_shards:
            old_name, old = self._shards.popitem(last=False)
            self._datasets.pop(self._shard_episode.get(old_name, ""), None)
            old.close()
        return f

    def close(self) -> None:
        if os.getpid() == self._pid:
            for f in self._shards.values():
                f.close()
            if self._index_file is not None:
                self._index_file.close()
        self._shards = OrderedDict()
        self._datasets = OrderedDict()
        self._index_file = None

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_index_file"] = None
        state["_shards"] = OrderedDict()
        state["_datasets"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return (
            f"EpisodeReader({str(self.path)!r}, episodes={len(self)}, steps={self.total_steps}, "
            f"obs={sorted(self._info.obs_specs)})"
        )
