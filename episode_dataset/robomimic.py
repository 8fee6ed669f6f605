"""Robomimic-style HDF5: export a workspace episode dataset to it, read such a file back.

Layout written (robomimic's; plain h5py, one self-contained file)::

    data/                  attrs: total (int), env_args (JSON: env_name, type, env_kwargs, ...)
      demo_<i>/            attrs: num_samples (int)
        obs/<key>          (T, *shape)   attrs: feature_type ("image" | "low_dim")
        actions            (T, A)
        rewards            (T,) float32
        dones              (T,) int64: 1 at the terminal step of a terminated episode, else 0
    mask/<filter>          (N,) bytes demo names (robomimic filter keys)

`export_robomimic` renames cameras by a map (the seed's layout: base_0_rgb, left_wrist_0_rgb,
right_wrist_0_rgb) and concatenates the low-dim keys into one `state` (B, D) key. `env_args`
is copied as is, so the control rate and action bounds the workspace keeps there survive.
What the layout loses: per-episode metadata (seed, policy, recorder counts; `terminated`
survives as `dones`), key units / encodings / source topics, which slice of `state` was which
key, and the linked crash-safe form (the export is written once, atomically).

`H5DatasetReader(path)` reads such a file, or any robomimic file with `data/demo_<i>` groups:
the reading API of `EpisodeReader` (episodes, obs_specs, action_spec, num_steps, read_obs,
read_actions, read_rewards, read_dones, episode_metadata) plus `iter_episodes()` and the
metadata an agent is built from (`action_bounds`, `control_rate_hz`). A key's feature type is
its dataset's `feature_type` attribute; a file without it (robomimic's own) gets robomimic's
naming rule: keys ending in `image` or `rgb` are images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from episode_dataset._files import check_output_file, commit_file
from episode_dataset.reader import (
    EpisodeReader,
    check_chunks,
    h5_errors,
    json_attr,
    open_h5,
    require_group,
)
from episode_dataset.schema import (
    ACTIONS,
    DATA,
    DONES,
    ENV_ARGS,
    IMAGE,
    LOW_DIM,
    NUM_SAMPLES,
    OBS,
    REWARDS,
    TOTAL,
    DatasetError,
    KeySpec,
    attr_str,
    sort_demos,
)
from episode_dataset.validate import check_finite
from episode_dataset.writer import LIBVER, chunk_rows, put_attrs, to_json, write_filters

STATE = "state"
FEATURE_TYPE = "feature_type"
# robomimic names cameras `<camera>_image`; the seed (openpi) `<camera>_rgb`
IMAGE_SUFFIXES = ("image", "rgb")


def export_robomimic(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    cameras: Mapping[str, str] | None = None,
    state_keys: Sequence[str] | None = None,
    compression: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write the workspace dataset `src` as robomimic-style `dst` (atomically); returns a
    one-line summary.

    `cameras` renames image keys (e.g. {"front": "base_0_rgb"}; unlisted cameras keep their
    names). The low-dim keys `state_keys` (None: all, sorted) are concatenated per step, in
    that order, into `state`; low-dim keys not listed keep their own names.
    """
    src, dst = Path(src), Path(dst)
    check_output_file(src, dst, overwrite)
    with EpisodeReader(src) as reader:
        if not len(reader):  # robomimic files hold at least one demo_<i>
            raise DatasetError(f"{src}: no episodes to export")
        renames, state = _layout(src, reader.obs_specs, dict(cameras or {}), state_keys)
        tmp = dst.with_name(f".{dst.name}.tmp")
        try:
            with h5py.File(tmp, "w", libver=LIBVER) as out:
                data = out.create_group(DATA)
                env_args = to_json(reader.env_args, f"{src}: env_args")
                put_attrs(data, {TOTAL: reader.total_steps, ENV_ARGS: env_args})
                for ep in reader.episodes:
                    _write_demo(data, ep, reader, renames, state, compression)
                write_filters(out, reader.info.filters)
            H5DatasetReader(tmp).close()  # readable as robomimic's before it appears
            commit_file(tmp, dst, fsync=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return f"{src} -> {dst}: {len(reader)} episodes, {reader.total_steps} steps"


def _layout(
    src: Path,
    specs: dict[str, KeySpec],
    cameras: dict[str, str],
    state_keys: Sequence[str] | None,
) -> tuple[dict[str, str], list[str]]:
    """(workspace key -> output key for keys copied as they are, keys concatenated to state)."""
    low_dim = sorted(k for k, s in specs.items() if not s.is_image)
    state = list(low_dim if state_keys is None else state_keys)
    for key in cameras:
        if key not in specs or not specs[key].is_image:
            raise DatasetError(f"{src}: camera {key!r} is not an image key of the dataset")
    for key in state:
        if key not in low_dim:
            raise DatasetError(f"{src}: state key {key!r} is not a low-dim key of the dataset")
    renames = {k: cameras.get(k, k) for k in sorted(specs) if k not in state}
    names = list(renames.values()) + ([STATE] if state else [])
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise DatasetError(f"{src}: two keys would be written as obs/{clash}")
    return renames, state


def _write_demo(
    data: h5py.Group,
    ep: str,
    reader: EpisodeReader,
    renames: dict[str, str],
    state: list[str],
    compression: str | None,
) -> None:
    group = data.create_group(ep)
    steps = reader.num_steps(ep)
    put_attrs(group, {NUM_SAMPLES: steps})

    def finite(name: str, values: np.ndarray) -> np.ndarray:
        check_finite(f"{reader.path}: {ep}/{name}", values)  # refused as validate does
        return values

    for key, name in renames.items():  # cameras: a slice at a time, never a whole episode
        spec = reader.obs_specs[key]
        ds = _empty_dataset(group, f"{OBS}/{name}", steps, spec, compression)
        for start in range(0, steps, COPY_STEPS):
            stop = min(start + COPY_STEPS, steps)
            ds[start:stop] = finite(f"{OBS}/{key}", reader.read_obs(ep, key, start, stop))
        put_attrs(ds, {FEATURE_TYPE: spec.feature_type})
    obs = {}
    if state:
        values = [finite(f"{OBS}/{k}", reader.read_obs(ep, k)).reshape(steps, -1) for k in state]
        joined = np.concatenate(values, axis=1)
        obs[STATE] = (joined, KeySpec(joined.dtype.name, joined.shape[1:]))
    for name, (array, spec) in obs.items():
        ds = _dataset(group, f"{OBS}/{name}", array, spec, compression)
        put_attrs(ds, {FEATURE_TYPE: spec.feature_type})
    actions = finite(ACTIONS, reader.read_actions(ep))
    _dataset(group, ACTIONS, actions, reader.action_spec, compression)
    rewards = finite(REWARDS, reader.read_rewards(ep)).astype(np.float32)
    _dataset(group, REWARDS, rewards, KeySpec("float32", ()), compression)
    dones = np.zeros(steps, np.int64)  # robomimic: done = 1 at a terminal (success) step
    if steps and reader.episode_metadata(ep).get("terminated", False):
        dones[-1] = 1
    _dataset(group, DONES, dones, KeySpec("int64", ()), compression)


COPY_STEPS = 256  # camera steps copied at a time by the export


def _dataset(
    group: h5py.Group, name: str, array: np.ndarray, spec: KeySpec, compression: str | None
) -> h5py.Dataset:
    ds = _empty_dataset(group, name, len(array), KeySpec(array.dtype.name, array.shape[1:]),
                        compression, chunk_spec=spec)  # fmt: skip
    if len(array):
        ds[...] = array
    return ds


def _empty_dataset(
    group: h5py.Group,
    name: str,
    steps: int,
    spec: KeySpec,
    compression: str | None,
    chunk_spec: KeySpec | None = None,
) -> h5py.Dataset:
    """(steps, *spec.shape) of spec.dtype, chunked by whole rows of `chunk_spec` (default
    `spec`), to be filled."""
    shape = (steps, *spec.shape)
    chunks = (min(chunk_rows(chunk_spec or spec), steps), *spec.shape) if steps else None
    return group.create_dataset(
        name,
        shape=shape,
        dtype=np.dtype(spec.dtype),
        chunks=chunks,
        compression=compression if chunks else None,
        fletcher32=chunks is not None,  # damaged bytes raise on read instead of reading garbage
    )


@dataclass
class Episode:
    """One episode of a robomimic-style file: obs {key: (T, *shape)}, actions (T, A), rewards
    (T,) float32, terminated (the last step is a true terminal)."""

    name: str
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool


class H5DatasetReader:
    """Read a robomimic-style HDF5 file (module docstring); one-line DatasetErrors naming the
    file and the group for anything missing or damaged."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = open_h5(self.path)
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> None:
        data = require_group(self._h5, DATA, f"{self.path}")
        where = f"{self.path}: {DATA}"
        self.env_args: dict[str, Any] = json_attr(data.attrs, ENV_ARGS, where)
        with h5_errors(f"{where}: episode list"):
            names = list(data.keys())
        try:
            self._episodes = sort_demos(names)
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None
        if not self._episodes:
            raise DatasetError(f"{where}: no demo_<i> groups (no episodes)")
        self._lengths = {}
        for ep in self._episodes:
            group = require_group(data, ep, where)
            with h5_errors(f"{where}/{ep}: attribute {NUM_SAMPLES!r}"):
                if NUM_SAMPLES not in group.attrs:
                    raise DatasetError(f"{where}/{ep}: missing attribute {NUM_SAMPLES!r}")
                self._lengths[ep] = int(group.attrs[NUM_SAMPLES])
        with h5_errors(f"{where}: attribute {TOTAL!r}"):
            total = int(data.attrs[TOTAL]) if TOTAL in data.attrs else None
        if total is not None and total != sum(self._lengths.values()):
            raise DatasetError(
                f"{where}: total {total} != sum of num_samples {sum(self._lengths.values())}"
            )
        # Specs from the first episode; every read checks its episode against them.
        first = f"{where}/{self._episodes[0]}"
        obs = require_group(require_group(data, self._episodes[0], where), OBS, first)
        self._obs_specs = {key: self._spec(obs, key, f"{first}/{OBS}") for key in sorted(obs)}
        group = require_group(data, self._episodes[0], where)
        self._action_spec = self._spec(group, ACTIONS, first)

    def _spec(self, group: h5py.Group, key: str, where: str) -> KeySpec:
        with h5_errors(f"{where}/{key}"):
            ds = group.get(key)
            if not isinstance(ds, h5py.Dataset) or ds.ndim < 1:
                raise DatasetError(f"{where}/{key}: not a (T, ...) dataset")
            kind = attr_str(ds.attrs[FEATURE_TYPE]) if FEATURE_TYPE in ds.attrs else None
            shape, dtype = ds.shape[1:], ds.dtype.name
        if kind is None:
            kind = IMAGE if key.endswith(IMAGE_SUFFIXES) and len(shape) == 3 else LOW_DIM
        try:
            return KeySpec(dtype, shape, feature_type=kind)
        except DatasetError as e:
            raise DatasetError(f"{where}/{key}: {e}") from None

    # -- metadata ----------------------------------------------------------------------------
    @property
    def episodes(self) -> list[str]:
        return list(self._episodes)

    def __len__(self) -> int:
        return len(self._episodes)

    @property
    def total_steps(self) -> int:
        return sum(self._lengths.values())

    @property
    def obs_specs(self) -> dict[str, KeySpec]:
        return dict(self._obs_specs)

    @property
    def action_spec(self) -> KeySpec:
        return self._action_spec

    @property
    def action_bounds(self) -> tuple[list[float], list[float]] | None:
        """(low, high) from env_args["action_space"], None when the file does not say."""
        space = self.env_args.get("action_space")
        if space is None:
            return None
        try:
            low, high = [float(x) for x in space["low"]], [float(x) for x in space["high"]]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{self.path}: env_args action_space is not {{'low': [...], 'high': [...]}}"
            ) from None
        if not len(low) == len(high) == self._action_spec.shape[0]:
            raise DatasetError(
                f"{self.path}: env_args action_space has {len(low)}/{len(high)} bounds for "
                f"actions of shape {self._action_spec.shape}"
            )
        return low, high

    @property
    def control_rate_hz(self) -> float | None:
        rate = self.env_args.get("control_rate_hz")
        return None if rate is None else float(rate)

    def num_steps(self, ep: str) -> int:
        if ep not in self._lengths:
            raise DatasetError(f"{self.path}: unknown episode {ep!r}")
        return self._lengths[ep]

    def terminated(self, ep: str) -> bool:
        """The episode ended at a true terminal: its last `dones` is set."""
        steps = self.num_steps(ep)
        return bool(steps and self.read_dones(ep, steps - 1)[0])

    def episode_metadata(self, ep: str) -> dict[str, Any]:
        """What the layout keeps of an episode's metadata: {"terminated": bool}."""
        return {"terminated": self.terminated(ep)}

    # -- arrays ------------------------------------------------------------------------------
    def read_obs(self, ep: str, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        if key not in self._obs_specs:
            raise DatasetError(
                f"{self.path}: {ep}: unknown obs key {key!r} (have {sorted(self._obs_specs)})"
            )
        return self._read(ep, f"{OBS}/{key}", self._obs_specs[key], start, stop)

    def read_actions(self, ep: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read(ep, ACTIONS, self._action_spec, start, stop)

    def read_rewards(self, ep: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read(ep, REWARDS, None, start, stop).astype(np.float32)

    def read_dones(self, ep: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read(ep, DONES, None, start, stop) != 0

    def iter_episodes(self) -> Iterator[Episode]:
        """Every episode, whole, in order."""
        for ep in self._episodes:
            yield Episode(
                name=ep,
                obs={k: self.read_obs(ep, k) for k in self._obs_specs},
                actions=self.read_actions(ep),
                rewards=self.read_rewards(ep),
                terminated=self.terminated(ep),
            )

    def _read(
        self, ep: str, name: str, spec: KeySpec | None, start: int, stop: int | None
    ) -> np.ndarray:
        steps = self.num_steps(ep)
        stop = steps if stop is None else stop
        where = f"{self.path}: {DATA}/{ep}/{name}"
        if not 0 <= start <= stop <= steps:
            raise DatasetError(f"{where}: window [{start}, {stop}) outside [0, {steps}]")
        group = require_group(require_group(self._h5, DATA, f"{self.path}"), ep, f"{self.path}")
        with h5_errors(where):
            ds = group.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{where}: " + ("missing" if ds is None else "not a dataset"))
        with h5_errors(where):
            shape, dtype = ds.shape, ds.dtype
        if not shape or shape[0] != steps:
            raise DatasetError(f"{where}: shape {shape} does not hold num_samples {steps} steps")
        want = (steps, *spec.shape) if spec is not None else (steps,)
        if shape != want or (spec is not None and dtype != spec.np_dtype):
            raise DatasetError(
                f"{where}: {dtype.name}{list(shape)}, the file's first episode has "
                f"{np.dtype(spec.dtype if spec else dtype).name}{list(want)}"
            )
        check_chunks(ds, where)
        with h5_errors(where):
            return ds[start:stop]

    @property
    def _h5(self) -> h5py.File:
        if self._file is None:
            raise DatasetError(f"{self.path}: reader is closed")
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def __enter__(self) -> H5DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"H5DatasetReader({str(self.path)!r}, episodes={len(self)}, "
            f"steps={self.total_steps}, obs={sorted(self._obs_specs)})"
        )


def parse_cameras(items: Sequence[str]) -> dict[str, str]:
    """["front=base_0_rgb", ...] (the CLI's --camera) -> {"front": "base_0_rgb"}."""
    out = {}
    for item in items:
        key, sep, name = item.partition("=")
        if not (sep and key and name) or "/" in name:
            raise DatasetError(f"--camera {item!r}: expected WORKSPACE_KEY=ROBOMIMIC_NAME")
        out[key] = name
    return out


def describe(reader: H5DatasetReader) -> str:
    """One JSON line: episodes, steps, obs keys with feature types and shapes, actions."""
    keys = {k: [s.feature_type, list(s.shape), s.dtype] for k, s in reader.obs_specs.items()}
    return json.dumps(
        {
            "episodes": len(reader),
            "steps": reader.total_steps,
            "obs": keys,
            "actions": list(reader.action_spec.shape),
        }
    )
