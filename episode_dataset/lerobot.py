"""LeRobotDataset v3.0: export an episode dataset to its layout, import one back.

Layout written (LeRobot's `codebase_version` "v3.0"; many episodes per file)::

    meta/info.json                          fps, features (dtype/shape/names), path templates,
                                            totals; plus a "roboloop" block (our specs)
    meta/stats.json                         per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                      task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, tasks,
                                            dataset_from/to_index, data/ and videos/<key>/
                                            chunk and file indices, video from/to_timestamp,
                                            stats/<feature>/<stat>
    data/chunk-XXX/file-XXX.parquet         one row per step: the low-dim features, timestamp,
                                            frame_index, episode_index, index, task_index
    videos/<key>/chunk-XXX/file-XXX.mp4     the episodes' frames back to back, frame i of the
                                            file at pts i / fps

Keys: obs `k` -> `observation.<k>` (low-dim) or `observation.images.<k>` (camera, stored as
video), actions -> `action`, rewards -> `next.reward`, dones -> `next.done`. A file rolls over
to the next at `data_files_size_in_mb` / `video_files_size_in_mb`, and the file index to the
next chunk after `chunks_size` files, as LeRobot does.

The "roboloop" block of info.json (LeRobot ignores unknown keys) and the `roboloop/meta` column
of the episodes table carry what the layout has no place for (key specs with units, encodings
and source topics, env_args, filters, per-episode metadata), so our own exports import back
whole. What is lost either way is listed in docs/lerobot.md.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from episode_dataset.reader import EpisodeReader
from episode_dataset.schema import FORMAT_VERSION, DatasetError, KeySpec
from episode_dataset.validate import check_finite
from episode_dataset.writer import EpisodeWriter

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
# LeRobot's defaults (lerobot/datasets/utils.py).
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100.0
VIDEO_FILE_MB = 200.0
STEPS_AT_ONCE = 256  # frames read, encoded or decoded at a time: long episodes in bounded memory

ACTION = "action"
OBS_PREFIX = "observation."
IMAGES_PREFIX = "observation.images."
REWARD = "next.reward"
DONE = "next.done"
# The bookkeeping columns every LeRobot data file has.
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
ROBOLOOP = "roboloop"  # our block in info.json
META_COLUMN = "roboloop/meta"  # per-episode metadata (JSON) in the episodes table
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's q01 .. q99
STATS_FRAMES = 100  # camera frames per episode that enter the image stats


@dataclass(frozen=True)
class VideoCodec:
    """An ffmpeg encoder with its pixel format and options."""

    encoder: str
    pix_fmt: str
    options: dict[str, str]


# g=2 (a key frame every 2 frames) keeps random access cheap, as LeRobot records.
VIDEO_CODECS = {
    "h264": VideoCodec("libx264", "yuv420p", {"crf": "18", "g": "2"}),
    # LeRobot's own default encoder
    "av1": VideoCodec("libsvtav1", "yuv420p", {"crf": "30", "g": "2"}),
    # H.264 in RGB at qp 0: bit-exact frames, larger files
    "lossless": VideoCodec("libx264rgb", "rgb24", {"qp": "0", "g": "2"}),
}


# -- export ---------------------------------------------------------------------------------


def export_lerobot(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fps: int | None = None,
    task: str | None = None,
    codec: str = "h264",
    robot_type: str | None = None,
    overwrite: bool = False,
    chunks_size: int = CHUNKS_SIZE,
    data_file_mb: float = DATA_FILE_MB,
    video_file_mb: float = VIDEO_FILE_MB,
) -> str:
    """Write the episode dataset `src` as a LeRobotDataset v3.0 directory `out_dir`; returns a
    one-line summary. The directory is built beside `out_dir` and renamed into place.

    `fps` defaults to env_args["control_rate_hz"]; `task` (every episode's task string) to
    env_args["task"], then env_args["env_name"]. `codec` is a VIDEO_CODECS name.
    """
    src, out_dir = Path(src), Path(out_dir)
    if codec not in VIDEO_CODECS:
        raise DatasetError(f"unknown video codec {codec!r} (have {sorted(VIDEO_CODECS)})")
    if out_dir.exists() and not overwrite:
        raise DatasetError(f"{out_dir}: exists (pass overwrite=True / --overwrite)")
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: exists and is not a directory; name the output directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INFO_PATH).is_file():
        # --overwrite replaces a LeRobot dataset, never some other directory
        raise DatasetError(f"{out_dir}: not a LeRobot dataset (no {INFO_PATH}); not overwritten")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with EpisodeReader(src) as reader:
            summary = _Exporter(
                reader, tmp, fps=_fps(src, reader.env_args, fps), task=_task(reader, task),
                codec=codec, robot_type=robot_type, chunks_size=chunks_size,
                data_file_mb=data_file_mb, video_file_mb=video_file_mb,
            ).run()  # fmt: skip
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"{src} -> {out_dir}: {summary}"


def _fps(src: Path, env_args: dict[str, Any], fps: int | None) -> int:
    value = env_args.get("control_rate_hz") if fps is None else fps
    if value is None:
        raise DatasetError(f"{src}: env_args has no control_rate_hz; pass fps (--fps)")
    if not isinstance(value, (int, float)) or value <= 0 or float(value) != int(value):
        # Video timestamps are frame_index / fps; LeRobot keeps fps an int.
        raise DatasetError(f"{src}: fps {value!r} must be a positive whole number")
    return int(value)


def _task(reader: EpisodeReader, task: str | None) -> str:
    if task is not None:
        return task
    return str(reader.env_args.get("task") or reader.env_args.get("env_name") or "")


def feature_name(key: str, spec: KeySpec) -> str:
    """The LeRobot feature name of obs `key`."""
    return (IMAGES_PREFIX if spec.is_image else OBS_PREFIX) + key


def _vector_feature(spec: KeySpec, label: str) -> dict[str, Any]:
    size = math.prod(spec.shape)
    if len(spec.shape) > 1:
        # LeRobot vectors are (D,); our (H, W)-shaped low-dim keys travel flattened and the
        # roboloop block keeps their shape.
        label = f"{label}_flat"
    names = None if size == 1 else [f"{label}_{i}" for i in range(size)]
    return {"dtype": spec.dtype, "shape": [size], "names": names}


@dataclass
class _Files:
    """The (chunk, file) counter of one file family: LeRobot's update_chunk_file_indices."""

    chunks_size: int
    chunk_index: int = 0
    file_index: int = 0

    def advance(self) -> None:
        self.file_index += 1
        if self.file_index == self.chunks_size:
            self.chunk_index, self.file_index = self.chunk_index + 1, 0

    def path(self, root: Path, template: str, **kw: str) -> Path:
        index = {"chunk_index": self.chunk_index, "file_index": self.file_index}
        path = root / template.format(**index, **kw)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class _DataWriter:
    """Low-dim rows into data/chunk-XXX/file-XXX.parquet, a new file past `limit_mb`."""

    root: Path
    schema: pa.Schema
    limit_mb: float
    files: _Files
    _writer: pq.ParquetWriter | None = None
    _mb: float = 0.0

    def write(self, table: pa.Table) -> tuple[int, int]:
        if self._writer is not None and self._mb + table.nbytes / 2**20 > self.limit_mb:
            self.close()
            self.files.advance()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.files.path(self.root, DATA_PATH), self.schema)
            self._mb = 0.0
        self._writer.write_table(table)
        self._mb += table.nbytes / 2**20
        return self.files.chunk_index, self.files.file_index

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@dataclass
class _VideoWriter:
    """One camera's episodes back to back into videos/<key>/chunk-XXX/file-XXX.mp4."""

    root: Path
    key: str
    codec: VideoCodec
    fps: int
    limit_mb: float
    files: _Files
    _container: Any = None
    _stream: Any = None
    _path: Path | None = None
    _frames: int = 0  # frames in the open file
    info: dict[str, Any] = field(default_factory=dict)

    def open_episode(self) -> tuple[int, int, float]:
        """(chunk, file, from_timestamp) of the episode about to be written."""
        # the file appears with the first muxed packet (an encoder may still hold every frame)
        written = self._path.stat().st_size if self._path and self._path.exists() else 0
        if self._container is not None and written / 2**20 >= self.limit_mb:
            self.close()
            self.files.advance()
        if self._container is None:
            self._path = self.files.path(self.root, VIDEO_PATH, video_key=self.key)
            self._container = av.open(str(self._path), "w")
            self._stream = None
            self._frames = 0
        return self.files.chunk_index, self.files.file_index, self._frames / self.fps

    def write(self, frames: np.ndarray) -> None:
        if self._stream is None:
            self._stream = self._container.add_stream(
                self.codec.encoder, rate=self.fps, options=self.codec.options
            )
            self._stream.height, self._stream.width = frames.shape[1:3]
            self._stream.pix_fmt = self.codec.pix_fmt
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self._frames
            self._container.mux(self._stream.encode(frame))
            self._frames += 1

    def timestamp(self) -> float:
        return self._frames / self.fps

    def close(self) -> None:
        if self._container is None:
            return
        self._container.mux(self._stream.encode(None))
        if not self.info:
            self.info = {
                "video.height": self._stream.height,
                "video.width": self._stream.width,
                "video.codec": self._stream.codec_context.codec.canonical_name,
                "video.pix_fmt": self.codec.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": self.fps,
                "video.channels": 3,
                "has_audio": False,
            }
        self._container.close()
        self._container = None


class _Exporter:
    def __init__(
        self, reader: EpisodeReader, root: Path, *, fps: int, task: str, codec: str,
        robot_type: str | None, chunks_size: int, data_file_mb: float, video_file_mb: float,
    ) -> None:  # fmt: skip
        self.reader, self.root, self.fps, self.task = reader, root, fps, task
        self.codec, self.robot_type, self.chunks_size = codec, robot_type, chunks_size
        specs = reader.obs_specs
        for key, spec in specs.items():
            if spec.is_image and (spec.dtype != "uint8" or spec.shape[2] != 3):
                raise DatasetError(
                    f"{reader.path}: obs/{key}: video needs uint8 (H, W, 3) frames, "
                    f"got {spec.dtype} {spec.shape}"
                )
        self.cameras = [k for k, s in specs.items() if s.is_image]
        self.low_dim = [k for k, s in specs.items() if not s.is_image]
        self.features: dict[str, dict[str, Any]] = {
            ACTION: _vector_feature(reader.action_spec, ACTION)
        }
        for key in self.low_dim:
            self.features[feature_name(key, specs[key])] = _vector_feature(specs[key], key)
        for key in self.cameras:
            self.features[feature_name(key, specs[key])] = {
                "dtype": "video",
                "shape": list(specs[key].shape),
                "names": ["height", "width", "channels"],
            }
        self.features[REWARD] = {"dtype": "float32", "shape": [1], "names": None}
        self.features[DONE] = {"dtype": "bool", "shape": [1], "names": None}
        self.features.update(DEFAULT_FEATURES)
        self.data = _DataWriter(root, self._schema(), data_file_mb, _Files(chunks_size))
        self.videos = {
            key: _VideoWriter(
                root,
                feature_name(key, specs[key]),
                VIDEO_CODECS[codec],
                fps,
                video_file_mb,
                _Files(chunks_size),
            )
            for key in self.cameras
        }

    def _schema(self) -> pa.Schema:
        fields = []
        for name, ft in self.features.items():
            if ft["dtype"] == "video":
                continue
            value = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
            shape = ft["shape"]
            # LeRobot's (1,) features are plain columns, (D,) ones fixed-size lists.
            fields.append(pa.field(name, value if shape == [1] else pa.list_(value, shape[0])))
        return pa.schema(fields)

    def _column(self, name: str, values: np.ndarray) -> pa.Array:
        values = values.reshape(len(values), -1)
        if self.features[name]["shape"] == [1]:
            return pa.array(values[:, 0])
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])

    def run(self) -> str:
        reader = self.reader
        if not len(reader):
            raise DatasetError(f"{reader.path}: no episodes to export")
        rows: list[dict[str, Any]] = []
        episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        start = 0
        try:
            for i, ep in enumerate(reader.episodes):
                row, stats = self._episode(i, ep, start)
                rows.append(row)
                episode_stats.append(stats)
                start += row["length"]
        finally:
            self.data.close()
            for video in self.videos.values():
                video.close()
        for key, video in self.videos.items():
            self.features[feature_name(key, reader.obs_specs[key])]["info"] = video.info
        self._write_meta(rows, episode_stats, start)
        return (
            f"{len(rows)} episodes, {start} frames, {len(self.cameras)} cameras "
            f"({self.codec}), fps {self.fps}"
        )

    def _episode(self, i: int, ep: str, start: int) -> tuple[dict[str, Any], dict[str, Any]]:
        reader = self.reader
        n = reader.num_steps(ep)

        def finite(name: str, values: np.ndarray) -> np.ndarray:
            check_finite(f"{reader.path}: {ep}/{name}", values)  # refused as validate does
            return values

        arrays = {ACTION: finite("actions", reader.read_actions(ep))}
        for key in self.low_dim:
            arrays[feature_name(key, reader.obs_specs[key])] = finite(
                f"obs/{key}", reader.read_obs(ep, key)
            )
        arrays[REWARD] = finite("rewards", reader.read_rewards(ep))
        arrays[DONE] = reader.read_dones(ep)
        frame_index = np.arange(n, dtype=np.int64)
        arrays["timestamp"] = (frame_index / self.fps).astype(np.float32)
        arrays["frame_index"] = frame_index
        arrays["episode_index"] = np.full(n, i, dtype=np.int64)
        arrays["index"] = start + frame_index
        arrays["task_index"] = np.zeros(n, dtype=np.int64)
        names = self.data.schema.names
        table = pa.table({name: self._column(name, arrays[name]) for name in names})
        chunk, file = self.data.write(table)
        row: dict[str, Any] = {
            "episode_index": i,
            "tasks": [self.task],
            "length": n,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": start,
            "dataset_to_index": start + n,
        }
        stats = {name: _stats(arr.reshape(n, -1)) for name, arr in arrays.items()}
        for key, video in self.videos.items():
            chunk, file, from_ts = video.open_episode()
            sample = []
            for lo in range(0, n, STEPS_AT_ONCE):
                frames = reader.read_obs(ep, key, lo, min(n, lo + STEPS_AT_ONCE))
                video.write(frames)
                sample.append(frames[:: max(1, n // STATS_FRAMES)])
            name = video.key
            row |= {
                f"videos/{name}/chunk_index": chunk,
                f"videos/{name}/file_index": file,
                f"videos/{name}/from_timestamp": from_ts,
                f"videos/{name}/to_timestamp": video.timestamp(),
            }
            stats[name] = _image_stats(np.concatenate(sample))
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        row[META_COLUMN] = json.dumps(reader.episode_metadata(ep), sort_keys=True)
        return row, stats

    def _write_meta(
        self, rows: list[dict[str, Any]], episode_stats: list[dict[str, Any]], frames: int
    ) -> None:
        reader = self.reader
        columns: dict[str, list[Any]] = {name: [r[name] for r in rows] for name in rows[0]}
        for name in self.features:
            for stat in episode_stats[0].get(name, {}):
                columns[f"stats/{name}/{stat}"] = [s[name][stat].tolist() for s in episode_stats]
        path = _Files(self.chunks_size).path(self.root, EPISODES_PATH)
        pq.write_table(pa.table(columns), path)
        _write_tasks(self.root / TASKS_PATH, [self.task])
        stats = {name: _aggregate([s[name] for s in episode_stats]) for name in episode_stats[0]}
        _write_json(self.root / STATS_PATH, {k: _tolist(v) for k, v in stats.items()})
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(rows),
            "total_frames": frames,
            "total_tasks": 1,
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data.limit_mb,
            "video_files_size_in_mb": next(iter(self.videos.values())).limit_mb
            if self.videos
            else VIDEO_FILE_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(rows)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.videos else None,
            "features": self.features,
            ROBOLOOP: {
                "format_version": FORMAT_VERSION,
                "env_args": reader.env_args,
                "obs_specs": {k: s.to_dict() for k, s in reader.obs_specs.items()},
                "action_spec": reader.action_spec.to_dict(),
                "filters": reader.info.filters,
            },
        }
        _write_json(self.root / INFO_PATH, info)


def _stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min/max/mean/std/count and quantiles per dimension of (N, D) values (LeRobot's keys)."""
    x = values.astype(np.float64)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([len(x)]),
    }
    for q in QUANTILES:
        stats[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0)
    return stats


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (N, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1) as LeRobot's."""
    x = frames.reshape(-1, frames.shape[-1]) / 255.0
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
    }
    return {k: v.reshape(-1, 1, 1) for k, v in stats.items()} | {"count": np.array([len(frames)])}


def _aggregate(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from per-episode ones: exact min/max/mean/std (pooled variance);
    quantiles are the count-weighted mean of the episodes' (LeRobot's approximation)."""
    counts = np.array([s["count"][0] for s in stats], dtype=np.float64)
    w = counts / counts.sum()

    def weighted(name: str) -> np.ndarray:
        return np.tensordot(w, np.stack([s[name] for s in stats]), axes=1)

    mean = weighted("mean")
    second = np.tensordot(w, np.stack([s["std"] ** 2 + s["mean"] ** 2 for s in stats]), axes=1)
    out = {
        "min": np.min([s["min"] for s in stats], axis=0),
        "max": np.max([s["max"] for s in stats], axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
        "count": np.array([int(counts.sum())]),
    }
    for name in stats[0]:
        if name.startswith("q"):
            out[name] = weighted(name)
    return out


def _tolist(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4) + "\n")


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """tasks.parquet as pandas writes a frame indexed by task string: LeRobot reads it with
    pandas and names a task by its row's index (`tasks.iloc[i].name`)."""
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": tasks}
    )
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],  # fmt: skip
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


# -- import ---------------------------------------------------------------------------------


def import_lerobot(
    root: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> str:
    """Write the LeRobotDataset v3.x directory `root` as the episode dataset `out`; returns a
    one-line summary. Features other than observation.*, action, next.reward and next.done are
    named in the summary as dropped; without next.reward the rewards are 0, without next.done
    an episode is done at its last step (also said in the summary). A failed import removes
    what it wrote."""
    root, out = Path(root), Path(out)
    plan = _ImportPlan.read(root)
    shards = out.with_name(out.name + ".episodes")
    if out.is_dir():  # never deleted for a file, even with --overwrite
        raise DatasetError(f"{out}: is a directory; name the output file")
    if shards.exists() and not shards.is_dir():
        raise DatasetError(f"{shards}: exists and is not a directory; not overwritten")
    replaced: list[tuple[Path, Path]] = []  # (aside, original): the dataset --overwrite replaces
    if out.exists() or shards.exists():
        if not overwrite:
            raise DatasetError(f"{out}: exists (pass overwrite=True / --overwrite)")
        # Moved aside, not deleted, until the new one is complete: a failed import puts it back
        # (killed, it stays beside it as .<name>.replaced).
        for path in (out, shards):
            if path.exists():
                aside = path.with_name(f".{path.name}.replaced")
                _remove(aside)
                path.rename(aside)
                replaced.append((aside, path))
    try:
        with EpisodeWriter(out, plan.obs_specs, plan.action_spec, env_args=plan.env_args) as w:
            for row in plan.episodes:
                n = row.get("length")  # sizes the shard's chunks; checked against its rows
                w.begin_episode(plan.metadata(row), _length_hint=n if _count(n) else None)
                for piece in plan.pieces(row):
                    w.append_steps(**piece)
                w.end_episode()
            for name, members in plan.filters.items():
                w.add_filter(name, members)
    except BaseException:
        plan.close()
        _remove(out)
        _remove(shards)
        for aside, path in replaced:
            aside.rename(path)
        raise
    plan.close()
    for aside, _ in replaced:
        _remove(aside)
    notes = [f"dropped features: {', '.join(plan.dropped)}"] if plan.dropped else []
    absent = {REWARD: "rewards 0", DONE: "done at each episode's last step"}
    notes += [f"no {k}: {v}" for k, v in absent.items() if k not in plan.info["features"]]
    steps = sum(r["length"] for r in plan.episodes)
    return "; ".join([f"{root} -> {out}: {len(plan.episodes)} episodes, {steps} steps", *notes])


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _remove(path: Path) -> None:
    """Delete a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found (not a LeRobotDataset v3 root?)") from None
    except (OSError, UnicodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable JSON ({e})") from None


def _read_parquet(path: Path) -> pa.Table:
    """The table, its strings and names checked: pyarrow decodes them lazily, so damaged bytes
    would otherwise surface later as a UnicodeDecodeError."""
    try:
        table = pq.read_table(path)
        table.validate(full=True)  # string columns hold valid UTF-8, offsets in range
        str(table.schema)  # decodes every field name, nested ones too
        return table
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, pa.ArrowException, UnicodeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatasetError(f"{path}: not a readable parquet file ({reason})") from None


def _spec_of(name: str, ft: dict[str, Any], where: str) -> KeySpec:
    dtype, shape = ft.get("dtype"), tuple(ft.get("shape") or ())
    try:
        if dtype in ("video", "image"):
            return KeySpec("uint8", shape, encoding="rgb8", feature_type="image")
        return KeySpec(dtype, shape)
    except (DatasetError, TypeError) as e:
        raise DatasetError(f"{where}: feature {name!r}: {e}") from None


@dataclass
class _ImportPlan:
    root: Path
    info: dict[str, Any]
    obs_specs: dict[str, KeySpec]
    action_spec: KeySpec
    env_args: dict[str, Any]
    filters: dict[str, list[str]]
    obs_features: dict[str, str]  # our obs key -> LeRobot feature
    dropped: list[str]
    episodes: list[dict[str, Any]]
    tasks: list[str]
    _data: tuple[Path, pa.Table, np.ndarray] | None = None  # the open data file, its index
    _videos: dict[str, _FrameCursor] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path) -> _ImportPlan:
        with _foreign_content(f"{root}"):
            return cls._read(root)

    @classmethod
    def _read(cls, root: Path) -> _ImportPlan:
        info = _read_json(root / INFO_PATH)
        where = f"{root / INFO_PATH}"
        version = str(info.get("codebase_version", ""))
        if not version.startswith("v3."):
            raise DatasetError(f"{where}: codebase_version {version!r} (only v3.x is read)")
        features: dict[str, dict[str, Any]] = info.get("features") or {}
        videos = any(ft.get("dtype") == "video" for ft in features.values())
        for name in ("fps", "features", "data_path", *(["video_path"] if videos else [])):
            if name not in info:
                raise DatasetError(f"{where}: missing {name!r}")
        if ACTION not in features:
            raise DatasetError(f"{where}: no {ACTION!r} feature")
        fps = info["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
            # frame i of a video is at i / fps: 0, negative or NaN would misplace every frame
            raise DatasetError(f"{where}: 'fps' must be a positive finite number, got {fps!r}")
        ours = info.get(ROBOLOOP) or {}
        stored = {k: KeySpec.from_dict(v) for k, v in ours.get("obs_specs", {}).items()}
        obs_specs, obs_features, dropped = {}, {}, []
        for name, ft in features.items():
            if name in DEFAULT_FEATURES or name in (ACTION, REWARD, DONE):
                continue
            if not name.startswith(OBS_PREFIX):
                dropped.append(name)
                continue
            key = name.removeprefix(IMAGES_PREFIX).removeprefix(OBS_PREFIX)
            obs_specs[key] = stored.get(key) or _spec_of(name, ft, where)
            obs_features[key] = name
        action = ours.get("action_spec")
        action_spec = (
            KeySpec.from_dict(action) if action else _spec_of(ACTION, features[ACTION], where)
        )
        env_args = ours.get("env_args") or {
            "env_name": info.get("robot_type") or root.name,
            "type": "lerobot",
            "env_kwargs": {},
            "control_rate_hz": float(info["fps"]),
        }
        episodes = [
            row
            for path in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
            for row in _read_parquet(path).to_pylist()
        ]
        if not episodes:
            raise DatasetError(f"{root}/meta/episodes: no episode files")
        episodes.sort(key=lambda r: r["episode_index"])
        _check_totals(info, episodes, where)
        tasks_table = _read_parquet(root / TASKS_PATH)
        tasks = _task_names(tasks_table, root / TASKS_PATH)
        return cls(
            root, info, obs_specs, action_spec, env_args, dict(ours.get("filters", {})),
            obs_features, dropped, episodes, tasks,
        )  # fmt: skip

    def metadata(self, row: dict[str, Any]) -> dict[str, Any]:
        """The episode's metadata for the writer: our own export's as it was, else LeRobot's
        episode index and task."""
        with _foreign_content(f"{self.root}: episode {row.get('episode_index')}"):
            if META_COLUMN in row:
                return json.loads(row[META_COLUMN])
            tasks = row.get("tasks") or []
            return {
                "lerobot_episode_index": row["episode_index"],
                "task": tasks[0] if len(tasks) == 1 else tasks,
            }

    def pieces(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """append_steps' arguments for one row of the episodes table, STEPS_AT_ONCE steps at a
        time: decoded frames of a long episode are never in memory whole."""
        with _foreign_content(f"{self.root}: episode {row.get('episode_index')}"):
            yield from self._pieces(row)

    def _pieces(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        i, n = row["episode_index"], row["length"]
        where = f"{self.root}: episode {i}"
        rows = self._rows(row, where)
        for lo in range(0, n, STEPS_AT_ONCE):
            m = min(n, lo + STEPS_AT_ONCE) - lo
            table = rows.slice(lo, m)
            obs = {}
            for key, name in self.obs_features.items():
                spec = self.obs_specs[key]
                if self.info["features"][name]["dtype"] == "image":
                    obs[key] = _decode_images(table, name, spec, where, lo)
                elif spec.is_image:
                    obs[key] = self._frames(name, row, lo, m, where)
                else:
                    obs[key] = _array(table, name, where).reshape(m, *spec.shape)
            names = table.column_names
            yield {
                "obs": obs,
                "actions": _array(table, ACTION, where).reshape(m, *self.action_spec.shape),
                "rewards": (
                    _array(table, REWARD, where) if REWARD in names else np.zeros(m, np.float32)
                ).reshape(m),
                "dones": (
                    _array(table, DONE, where) if DONE in names else np.arange(lo, lo + m) == n - 1
                ).reshape(m),
            }

    def _rows(self, row: dict[str, Any], where: str) -> pa.Table:
        """The episode's rows: global indices dataset_from_index..dataset_to_index of its data
        file (LeRobot's own lookup), checked against episode_index and frame_index."""
        path = self.root / self.info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        if self._data is None or self._data[0] != path:
            table = _read_parquet(path)
            self._data = (path, table, _array(table, "index", f"{where}: {path.name}"))
        _, table, index = self._data
        lo, hi = np.searchsorted(index, [row["dataset_from_index"], row["dataset_to_index"]])
        picked = table.slice(lo, hi - lo)
        n = row["length"]
        episode = _array(picked, "episode_index", where)
        frames = _array(picked, "frame_index", where)
        if (
            len(picked) != n
            or (episode != row["episode_index"]).any()
            or (frames != np.arange(n)).any()
        ):
            raise DatasetError(
                f"{where}: rows {row['dataset_from_index']}..{row['dataset_to_index']} of "
                f"{path.name} are not its {n} frames in order"
            )
        return picked

    def _frames(self, name: str, row: dict[str, Any], lo: int, n: int, where: str) -> np.ndarray:
        """Frames lo..lo+n of the episode's video; the file is decoded forward, once."""
        path = self.root / self.info["video_path"].format(
            video_key=name,
            chunk_index=row[f"videos/{name}/chunk_index"],
            file_index=row[f"videos/{name}/file_index"],
        )
        cursor = self._videos.get(name)
        first = round(row[f"videos/{name}/from_timestamp"] * self.info["fps"]) + lo
        if cursor is None or cursor.path != path or cursor.next_index > first:
            if cursor is not None:
                cursor.close()
            cursor = self._videos[name] = _FrameCursor(path, self.info["fps"])
        return cursor.take(first, n, where)

    def close(self) -> None:
        for cursor in self._videos.values():
            cursor.close()
        self._videos.clear()


def _check_totals(info: dict[str, Any], episodes: list[dict[str, Any]], where: str) -> None:
    """info.json's total_episodes and total_frames, where given, against meta/episodes/."""
    frames = sum(row["length"] for row in episodes)
    for name, held, what in (
        ("total_episodes", len(episodes), "episodes"),
        ("total_frames", frames, "frames"),
    ):
        value = info.get(name)
        if value is not None and (isinstance(value, bool) or value != held):
            raise DatasetError(
                f"{where}: {name!r} is {value!r}, meta/episodes/ lists {held} {what}"
            )


@contextmanager
def _foreign_content(where: str) -> Iterator[None]:
    """A dataset from elsewhere, or damaged, may hold any JSON or column where a value is
    expected: what Python raises on reading it becomes one DatasetError line."""
    try:
        yield
    except DatasetError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise DatasetError(f"{where}: unexpected content ({type(e).__name__}: {reason})") from None


def _task_names(table: pa.Table, path: Path) -> list[str]:
    """Task strings by task_index: the pandas index column (LeRobot's layout) or a `task`
    column."""
    try:
        meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    except (UnicodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable pandas metadata ({e})") from None
    index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    name = index_cols[0] if index_cols else "task"
    if name not in table.column_names or "task_index" not in table.column_names:
        raise DatasetError(f"{path}: needs task_index and the task strings ({name!r})")
    indices, names = table.column("task_index").to_pylist(), table.column(name).to_pylist()
    by_index = dict(zip(indices, names, strict=True))
    return [by_index[i] for i in sorted(by_index)]


def _array(table: pa.Table, name: str, where: str) -> np.ndarray:
    if name not in table.column_names:
        raise DatasetError(f"{where}: data has no column {name!r}")
    column = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        width = len(column[0]) if len(column) else 0
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
    return column.to_numpy(zero_copy_only=False)


def _decode_images(
    table: pa.Table, name: str, spec: KeySpec, where: str, first_step: int = 0
) -> np.ndarray:
    """LeRobot's `image` features: encoded files (PNG) in a {bytes, path} column of the data."""
    if name not in table.column_names:
        raise DatasetError(f"{where}: data has no column {name!r}")
    frames = []
    for step, cell in enumerate(table.column(name).to_pylist(), first_step):
        try:
            with Image.open(io.BytesIO(cell["bytes"])) as img:
                frames.append(np.asarray(img.convert("RGB")))
        except (OSError, TypeError, KeyError) as e:
            raise DatasetError(f"{where}: {name} step {step}: unreadable image ({e})") from None
        if frames[-1].shape != spec.shape:
            raise DatasetError(
                f"{where}: {name} step {step}: shape {frames[-1].shape} != {spec.shape}"
            )
    return np.stack(frames)


class _FrameCursor:
    """Decodes one mp4 forward; episodes are taken in file order (frame i at pts i / fps)."""

    def __init__(self, path: Path, fps: int) -> None:
        if not path.exists():
            raise DatasetError(f"{path}: file not found")
        self.path, self.fps = path, fps
        try:
            # the container's metadata is not needed: damaged tags must not fail the decode
            self._container = av.open(str(path), metadata_errors="replace")
            stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError) as e:
            raise DatasetError(f"{path}: not a readable video ({e})") from None
        self._frames = self._decode(stream)
        self.next_index = 0

    def _decode(self, stream: Any) -> Iterator[tuple[int, np.ndarray]]:
        for frame in self._container.decode(stream):
            yield round(float(frame.time) * self.fps), frame.to_ndarray(format="rgb24")

    def take(self, first: int, n: int, where: str) -> np.ndarray:
        out = []
        try:
            for index, img in self._frames:
                self.next_index = index + 1
                if index >= first:
                    out.append(img)
                if len(out) == n:
                    break
        except (av.FFmpegError, TypeError) as e:  # TypeError: a frame without a time
            raise DatasetError(f"{where}: {self.path}: undecodable ({e})") from None
        if len(out) != n:
            raise DatasetError(
                f"{where}: {self.path} has {len(out)} frames from {first / self.fps:.3f} s, "
                f"the episode needs {n}"
            )
        return np.stack(out)

    def close(self) -> None:
        self._container.close()
