"""episode_dataset: real HDF5 files in tmp_path; roundtrip, windows, streaming, append, filters,
validation of every corruption kind, CLI, pack, and pickling for DataLoader-style workers."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from episode_dataset import (
    ACTIONS,
    DONES,
    IMAGE,
    LOW_DIM,
    OBS,
    REWARDS,
    DatasetError,
    EpisodeReader,
    EpisodeWriter,
    KeySpec,
    pack,
    validate_file,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 16, 20
OBS_SPECS = {
    "state": KeySpec("float32", (5,), units="rad"),
    "image": KeySpec("uint8", (H, W, 3), encoding="rgb8", source_topic="/camera/image"),
}
ACTION_SPEC = KeySpec("float32", (2,), units="N")
ENV_ARGS = {"env_name": "Reacher-v5", "type": 4, "env_kwargs": {"frame_skip": 2}}


def make_episode(seed: int, steps: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "obs": {
            "state": rng.normal(size=(steps, 5)).astype(np.float32),
            "image": rng.integers(0, 256, size=(steps, H, W, 3), dtype=np.uint8),
        },
        "actions": rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32),
        "rewards": rng.normal(size=steps).astype(np.float32),
        "dones": np.arange(steps) == steps - 1,
    }


def write_dataset(path: Path, lengths: tuple[int, ...] = (7, 12, 9)) -> list[dict]:
    episodes = [make_episode(i, n) for i, n in enumerate(lengths)]
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, env_args=ENV_ARGS) as w:
        for i, ep in enumerate(episodes):
            name = w.write_episode(**ep, metadata={"seed": np.int64(i), "dropped": 0})
            assert name == f"demo_{i}"
    return episodes


def assert_episode_equal(r: EpisodeReader, name: str, ep: dict) -> None:
    for key, arr in ep["obs"].items():
        got = r.read_obs(name, key)
        assert got.dtype == arr.dtype and np.array_equal(got, arr), f"{name}/{key}"
    np.testing.assert_array_equal(r.read_actions(name), ep["actions"])
    np.testing.assert_array_equal(r.read_rewards(name), ep["rewards"])
    np.testing.assert_array_equal(r.read_dones(name), ep["dones"])


def test_roundtrip_image_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.hdf5"
    episodes = write_dataset(path)
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0", "demo_1", "demo_2"]
        assert [r.num_steps(e) for e in r.episodes] == [7, 12, 9]
        assert r.total_steps == 28
        assert r.obs_specs == OBS_SPECS and r.action_spec == ACTION_SPEC
        assert r.env_args == ENV_ARGS
        assert r.episode_metadata("demo_1") == {"seed": 1, "dropped": 0}
        for i, ep in enumerate(episodes):
            assert_episode_equal(r, f"demo_{i}", ep)
        assert r.episode_return("demo_2") == pytest.approx(float(episodes[2]["rewards"].sum()))
        assert r.read_dones("demo_0").dtype == np.bool_
        assert not r.packed
    # Plain h5py (what robomimic does) follows the relative ExternalLinks transparently.
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data/demo_0/obs/state"][:], episodes[0]["obs"]["state"])
        link = f["data"].get("demo_1", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.filename == "x.hdf5.episodes/demo_1.h5" and not os.path.isabs(link.filename)
        assert f["data/demo_1"].attrs["num_samples"] == 12
        assert f["data"].attrs["total"] == 28
        assert json.loads(f["data"].attrs["env_args"]) == ENV_ARGS
        specs = json.loads(f["data"].attrs["obs_specs"])
        assert specs["image"]["encoding"] == "rgb8"
        assert specs["image"]["source_topic"] == "/camera/image"
        img = f["data/demo_0/obs/image"]
        # strings are fixed-length UTF-8 (h5py reads bytes), kept out of HDF5's global heap
        assert img.attrs["encoding"] == b"rgb8" and img.attrs["dtype"] == b"uint8"
        assert tuple(img.attrs["shape"]) == (H, W, 3)
        assert f["data/demo_0/obs/state"].attrs["units"] == b"rad"
        assert json.loads(f["data/demo_0"].attrs["meta"]) == {"seed": 0, "dropped": 0}
    # Moving the index together with its shard directory keeps it readable.
    moved = tmp_path / "moved"
    moved.mkdir()
    os.rename(path, moved / "x.hdf5")
    os.rename(tmp_path / "x.hdf5.episodes", moved / "x.hdf5.episodes")
    with EpisodeReader(moved / "x.hdf5") as r:
        assert_episode_equal(r, "demo_1", episodes[1])


def test_window_reads(tmp_path: Path) -> None:
    path = tmp_path / "x.hdf5"
    episodes = write_dataset(path)
    with EpisodeReader(path) as r:
        np.testing.assert_array_equal(
            r.read_obs("demo_1", "image", 3, 8), episodes[1]["obs"]["image"][3:8]
        )
        np.testing.assert_array_equal(
            r.read_actions("demo_1", 10, 12), episodes[1]["actions"][10:]
        )
        win = r.read_window("demo_2", 2, 4, keys=["state"])
        assert set(win[OBS]) == {"state"} and win[ACTIONS].shape == (2, 2)
        assert win[REWARDS].shape == (2,) and win[DONES].shape == (2,)
        assert r.read_obs("demo_0", "state", 7, 7).shape == (0, 5)
        # Image datasets are chunked by whole frames, a few per chunk, so a window touches
        # only the chunks it needs.
        ds = r.episode_group("demo_1")["obs/image"]
        assert ds.chunks[1:] == (H, W, 3) and ds.chunks[0] * H * W * 3 <= 64 * 1024
        with pytest.raises(DatasetError, match=r"demo_1/obs/state: window \[5, 13\) outside"):
            r.read_obs("demo_1", "state", 5, 13)
        with pytest.raises(DatasetError, match="demo_0: unknown obs key 'depth'"):
            r.read_obs("demo_0", "depth")
        with pytest.raises(DatasetError, match="unknown episode 'demo_9'"):
            r.read_actions("demo_9")


def test_streaming_api(tmp_path: Path) -> None:
    path = tmp_path / "s.hdf5"
    ep = make_episode(5, 40)  # small chunk_bytes: image rows are flushed every 2 steps
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, env_args=ENV_ARGS, chunk_bytes=2048) as w:
        assert w.begin_episode({"seed": 5}) == "demo_0"
        for t in range(40):
            step_obs = {k: v[t] for k, v in ep["obs"].items()}
            w.append_step(
                step_obs, ep["actions"][t], float(ep["rewards"][t]), bool(ep["dones"][t])
            )
        assert w.in_episode and w.current_steps == 40
        assert w.end_episode(metadata_update={"dropped": 3, "stale": 1}) == "demo_0"
        # A discarded episode leaves nothing behind and does not consume a number.
        w.begin_episode()
        w.append_step({k: v[0] for k, v in ep["obs"].items()}, ep["actions"][0], 0.0, False)
        w.discard_episode()
        assert not w.in_episode
        assert list(w.shard_dir.glob("*.partial")) == []
        w.begin_episode()
        with pytest.raises(DatasetError, match=r"s.hdf5: demo_1 step 0/obs/image: shape \(4,"):
            w.append_step(
                {"state": ep["obs"]["state"][0], "image": np.zeros((4, 4, 3))}, [0, 0], 0, 0
            )
        with pytest.raises(DatasetError, match="demo_1 step 0/obs/image: dtype float64 cannot"):
            w.append_step(
                {"state": ep["obs"]["state"][0], "image": np.zeros((H, W, 3))}, [0, 0], 0, 0
            )
        with pytest.raises(DatasetError, match=r"demo_1 step 0/obs: missing keys \['image'\]"):
            w.append_step({"state": ep["obs"]["state"][0]}, [0, 0], 0, 0)
        with pytest.raises(DatasetError, match="demo_1: episode already open"):
            w.begin_episode()
        with pytest.raises(DatasetError, match="demo_1: empty episode"):
            w.end_episode()
        w.discard_episode()
        with pytest.raises(DatasetError, match="no open episode"):
            w.end_episode()
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0"]
        assert_episode_equal(r, "demo_0", ep)
        assert r.episode_metadata("demo_0") == {"seed": 5, "dropped": 3, "stale": 1}


def test_streaming_slabs_copy_rows_and_cross_chunk_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import episode_dataset.writer as writer

    # Slabs of a few rows and write-behind every few KiB: an episode of 23 steps crosses many
    # slab and chunk boundaries and ends mid-slab and mid-chunk.
    monkeypatch.setattr(writer, "SLAB_BYTES", 3 * H * W * 3)
    monkeypatch.setattr(writer, "WRITE_BEHIND_BYTES", 4096)
    path = tmp_path / "s.hdf5"
    ep = make_episode(7, 23)
    obs = {k: np.empty_like(v[0]) for k, v in ep["obs"].items()}
    action = np.empty(2, np.float32)
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, chunk_bytes=2 * H * W * 3) as w:
        w.begin_episode()
        for t in range(23):
            for k, v in ep["obs"].items():
                obs[k][...] = v[t]  # the caller reuses its arrays: rows must be copied
            action[...] = ep["actions"][t]
            w.append_step(obs, action, ep["rewards"][t], ep["dones"][t])
        w.end_episode()
    validate_file(path)
    with EpisodeReader(path) as r:
        assert_episode_equal(r, "demo_0", ep)
        assert r.episode_group("demo_0")["obs/image"].chunks[0] == 2


def test_checksums_off_writes_plain_chunks(tmp_path: Path) -> None:
    ep = make_episode(3, 9)
    for checksums in (True, False):
        path = tmp_path / f"c{checksums}.hdf5"
        with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, checksums=checksums) as w:
            w.write_episode(**ep)
            w.begin_episode()
            for t in range(9):
                w.append_step({k: v[t] for k, v in ep["obs"].items()}, ep["actions"][t],
                              ep["rewards"][t], ep["dones"][t])  # fmt: skip
            w.end_episode()
        validate_file(path)
        with EpisodeReader(path) as r:
            for name in r.episodes:
                assert_episode_equal(r, name, ep)
                group = r.episode_group(name)
                assert {group[k].fletcher32 for k in ("obs/image", ACTIONS)} == {checksums}


@pytest.mark.parametrize("checksum_thread", [False, True])
def test_chunks_are_stored_as_hdf5s_filter_pipeline_stores_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checksum_thread: bool
) -> None:
    """The writer hands HDF5 finished chunks (write_direct_chunk, its own fletcher32): each
    stored chunk, the zero-padded last one included, is byte for byte what h5py's ordinary
    write through the filter pipeline stores, so readers check the same checksums. Either way:
    checksums computed in line, or on the checksum thread (chunks of a camera frame)."""
    from episode_dataset import writer
    from episode_dataset.writer import fletcher32, fletcher32_reference

    threaded = []

    class CountedSlabChecksums(writer._SlabChecksums):
        def __init__(self, chunks: np.ndarray, body_nbytes: int) -> None:
            threaded.append(len(chunks))
            super().__init__(chunks, body_nbytes)

    monkeypatch.setattr(writer, "_SlabChecksums", CountedSlabChecksums)
    monkeypatch.setattr(writer, "PARALLEL_CHECKSUM_BYTES", 0 if checksum_thread else 1 << 62)
    rng = np.random.default_rng(8)
    for n in (0, 1, 6, 721, 4099):  # odd lengths, a last partial 360-word block
        for data in (rng.integers(0, 256, n, dtype=np.uint8), np.zeros(n, np.uint8)):
            assert fletcher32(data) == fletcher32_reference(data)
    ep = make_episode(4, 23)
    for checksums in (True, False):
        path = tmp_path / f"d{checksums}.hdf5"
        with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, chunk_bytes=2 * H * W * 3,
                           checksums=checksums) as w:  # fmt: skip
            w.begin_episode()
            w.append_steps({k: v[:10] for k, v in ep["obs"].items()}, ep["actions"][:10],
                           ep["rewards"][:10], ep["dones"][:10])  # fmt: skip
            for t in range(10, 23):  # continues a partly filled image chunk, ends in one
                w.append_step({k: v[t] for k, v in ep["obs"].items()}, ep["actions"][t],
                              ep["rewards"][t], ep["dones"][t])  # fmt: skip
            w.end_episode()
        with EpisodeReader(path) as r, h5py.File(tmp_path / f"ref{checksums}.h5", "w") as ref:
            group = r.episode_group("demo_0")
            for key, arr in {"obs/image": ep["obs"]["image"], "obs/state": ep["obs"]["state"],
                             ACTIONS: ep["actions"]}.items():  # fmt: skip
                ds = group[key]
                want = ref.create_dataset(key, data=arr, chunks=ds.chunks,
                                          maxshape=ds.maxshape, fletcher32=checksums)  # fmt: skip
                chunks = want.id.get_num_chunks()
                assert ds.id.get_num_chunks() == chunks and (key != "obs/image" or chunks == 12)
                for i in range(chunks):
                    at = want.id.get_chunk_info(i).chunk_offset
                    assert ds.id.read_direct_chunk(at) == want.id.read_direct_chunk(at), key
    assert bool(threaded) == checksum_thread


def test_a_checksum_failure_on_the_thread_is_raised_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error computing a checksum on the checksum thread reaches the writing call (no hang,
    nothing committed from that episode); the writer then writes the next episode."""
    from episode_dataset import writer

    real, calls = writer.fletcher32, []

    def failing(data: np.ndarray) -> int:
        calls.append(len(data))
        if len(calls) == 3:
            raise MemoryError("no memory for this checksum")
        return real(data)

    monkeypatch.setattr(writer, "PARALLEL_CHECKSUM_BYTES", 0)
    monkeypatch.setattr(writer, "fletcher32", failing)
    path = tmp_path / "f.hdf5"
    ep = make_episode(1, 30)
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, chunk_bytes=H * W * 3) as w:
        with pytest.raises(MemoryError, match="no memory for this checksum"):
            w.write_episode(**ep)
        assert not w.in_episode and w.episodes == []
        w.write_episode(**ep)
    validate_file(path)
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0"]
        assert_episode_equal(r, "demo_0", ep)


def test_a_forked_child_writes_with_checksums_on_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked after the parent started its checksum thread has none of its threads: it
    starts its own (it used to wait forever for the parent's), and its file reads back."""
    import multiprocessing

    from episode_dataset import writer

    monkeypatch.setattr(writer, "PARALLEL_CHECKSUM_BYTES", 0)
    ep = make_episode(2, 12)

    with EpisodeWriter(tmp_path / "parent.hdf5", OBS_SPECS, ACTION_SPEC) as w:
        w.write_episode(**ep)
    assert writer._checksum_pool is not None  # the parent's thread is running
    child = multiprocessing.get_context("fork").Process(
        target=_write_one_episode, args=(tmp_path / "child.hdf5", ep)
    )
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    with EpisodeReader(tmp_path / "child.hdf5") as r:
        assert_episode_equal(r, "demo_0", ep)


def _write_one_episode(path: Path, ep: dict) -> None:
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC) as w:
        w.write_episode(**ep)


def test_shards_of_many_lengths_from_the_template_cache(tmp_path: Path) -> None:
    """Shards start as a copy of a per-length template (at most TEMPLATES_KEPT kept): episodes
    of 20 lengths, revisiting evicted ones, each get chunks capped by their length and read
    back exactly."""
    from episode_dataset.writer import TEMPLATES_KEPT

    lengths = [*range(1, TEMPLATES_KEPT + 5), 1, 2, TEMPLATES_KEPT + 4]
    eps = [make_episode(i, n) for i, n in enumerate(lengths)]
    path = tmp_path / "t.hdf5"
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC) as w:
        for ep in eps:
            w.write_episode(**ep)
        assert len(w._templates) == TEMPLATES_KEPT
    validate_file(path)
    with EpisodeReader(path) as r:
        for i, (n, ep) in enumerate(zip(lengths, eps, strict=True)):
            assert_episode_equal(r, f"demo_{i}", ep)
            assert r.episode_group(f"demo_{i}")[ACTIONS].chunks[0] == n


def test_camera_chunks_carry_checksums_that_catch_a_flipped_byte(tmp_path: Path) -> None:
    """A camera stream (a chunk per frame) reads back; with checksums a byte flipped on disk is
    a one-line DatasetError, not garbage; without, it reads back unnoticed."""
    big = {"cam": KeySpec("uint8", (128, 160, 3), encoding="rgb8")}  # 60 KiB: a chunk a row
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(70, 128, 160, 3), dtype=np.uint8)
    for checksums in (True, False):
        path = tmp_path / f"cam_{checksums}.hdf5"
        with EpisodeWriter(path, big, ACTION_SPEC, chunk_bytes=32 * 1024,
                           checksums=checksums) as w:  # fmt: skip
            w.begin_episode()
            row = np.empty((128, 160, 3), np.uint8)
            for t in range(70):
                row[...] = frames[t]  # the caller reuses its array
                w.append_step({"cam": row}, np.zeros(2, np.float32), 0.0, t == 69)
            w.end_episode()
        validate_file(path)
        with EpisodeReader(path) as r:
            ds = r.episode_group("demo_0")["obs/cam"]
            assert (ds.shape, ds.chunks[0], ds.fletcher32) == ((70, 128, 160, 3), 1, checksums)
            np.testing.assert_array_equal(ds[:], frames)
            offset = ds.id.get_chunk_info_by_coord((40, 0, 0, 0)).byte_offset
        shard = path.with_name(path.name + ".episodes") / "demo_0.h5"
        with open(shard, "r+b") as f:
            f.seek(offset + 1000)
            byte = f.read(1)
            f.seek(offset + 1000)
            f.write(bytes([byte[0] ^ 0xFF]))
        with EpisodeReader(path) as r:
            if checksums:
                with pytest.raises(DatasetError, match="demo_0/obs/cam.*unreadable"):
                    r.read_obs("demo_0", "cam")
            else:  # without checksums the damage reads back unnoticed
                damaged = r.episode_group("demo_0")["obs/cam"][40]
                assert np.count_nonzero(damaged != frames[40]) == 1


def test_batch_index_lists_episodes_on_close_and_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "batch.hdf5"
    eps = [make_episode(i, 6 + i) for i in range(3)]
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, index_every_s=3600) as w:
        for ep in eps:
            w.write_episode(**ep)
        assert w.episodes == ["demo_0", "demo_1", "demo_2"]
        with EpisodeReader(path) as r:
            assert r.episodes == []  # not listed yet: the index is rewritten on close
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0", "demo_1", "demo_2"]
        for i, ep in enumerate(eps):
            assert_episode_equal(r, f"demo_{i}", ep)
    with pytest.raises(RuntimeError, match="source broke"):
        with EpisodeWriter(path, index_every_s=3600) as w:
            w.write_episode(**eps[0])
            w.begin_episode()
            w.append_step({k: v[0] for k, v in eps[1]["obs"].items()}, eps[1]["actions"][0],
                          0.0, False)  # fmt: skip
            raise RuntimeError("source broke")
    validate_file(path)
    with EpisodeReader(path) as r:  # the completed episode is listed, the open one is not
        assert r.episodes == ["demo_0", "demo_1", "demo_2", "demo_3"]
        assert_episode_equal(r, "demo_3", eps[0])


def test_append_steps_in_batches_and_attrs_typed_as_h5py_does(tmp_path: Path) -> None:
    from episode_dataset.writer import new_dataset, put_attrs

    path = tmp_path / "b.hdf5"
    ep = make_episode(4, 30)
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, chunk_bytes=2048) as w:
        w.begin_episode({"seed": 4})
        for lo, hi in ((0, 7), (7, 8), (8, 30)):
            w.append_steps({k: v[lo:hi] for k, v in ep["obs"].items()}, ep["actions"][lo:hi],
                           ep["rewards"][lo:hi], ep["dones"][lo:hi])  # fmt: skip
        with pytest.raises(DatasetError, match=r"demo_0 steps 30\.\.32/obs/state: shape"):
            w.append_steps({"state": np.zeros((3, 5)), "image": ep["obs"]["image"][:2]},
                           np.zeros((2, 2)), np.zeros(2), np.zeros(2, bool))  # fmt: skip
        assert w.current_steps == 30  # the bad batch wrote nothing
        w.end_episode()
    with EpisodeReader(path) as r:
        assert_episode_equal(r, "demo_0", ep)
        assert r.episode_metadata("demo_0")["seed"] == 4
    values = {"text": "héllo", "count": 7, "shape": np.asarray((64, 64, 3), np.int64)}
    with h5py.File(tmp_path / "attrs.h5", "w") as f:
        put_attrs(f.create_group("fast"), values)
        # what h5py makes of a fixed-length UTF-8 string, an int and an int64 array
        text = "héllo".encode()
        ref_attrs = f.create_group("h5py").attrs
        ref_attrs.create("text", text, dtype=h5py.string_dtype("utf-8", len(text)))
        ref_attrs.update({k: v for k, v in values.items() if k != "text"})
        assert f["fast"].attrs["text"].decode() == "héllo"
        for name in values:
            fast, ref = f["fast"].attrs.get_id(name), f["h5py"].attrs.get_id(name)
            assert fast.get_type() == ref.get_type() and fast.shape == ref.shape, name
            np.testing.assert_array_equal(f["fast"].attrs[name], f["h5py"].attrs[name])
        for i, (spec, checksums) in enumerate(
            [(KeySpec("uint8", (4, 5, 3)), True), (KeySpec("bool"), False)]
        ):
            fast = new_dataset(f.create_group(f"d{i}"), "obs/x", spec, 3, checksums)
            ref = f.create_group(f"r{i}").create_dataset(
                "obs/x", shape=(0, *spec.shape), maxshape=(None, *spec.shape),
                dtype=spec.np_dtype, chunks=(3, *spec.shape), fletcher32=checksums,
            )  # fmt: skip
            a, b = fast.id.get_create_plist(), ref.id.get_create_plist()
            for get in ("get_chunk", "get_nfilters", "get_fill_time", "get_alloc_time",
                        "get_obj_track_times", "get_layout"):  # fmt: skip
                assert getattr(a, get)() == getattr(b, get)(), get
            assert fast.id.get_type() == ref.id.get_type() and fast.maxshape == ref.maxshape
            assert (fast.fletcher32, fast.shape) == (checksums, (0, *spec.shape))


def test_streaming_roundtrip_and_close_with_open_episode(tmp_path: Path) -> None:
    path = tmp_path / "s.hdf5"
    ep = make_episode(5, 40)
    w = EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, chunk_bytes=2048)
    w.begin_episode({"seed": 5})
    for t in range(40):
        w.append_step({k: v[t] for k, v in ep["obs"].items()}, ep["actions"][t],
                      ep["rewards"][t], int(ep["dones"][t]))  # fmt: skip
    w.end_episode({"dropped": 3})
    w.begin_episode()
    w.append_step({k: v[0] for k, v in ep["obs"].items()}, ep["actions"][0], 0.0, False)
    with pytest.raises(DatasetError, match="demo_1: closed with the episode still open"):
        w.close()
    assert list(w.shard_dir.glob("*.partial")) == []
    validate_file(path)
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0"]
        assert_episode_equal(r, "demo_0", ep)
        assert r.episode_metadata("demo_0") == {"seed": 5, "dropped": 3}
    with EpisodeWriter(path) as w, pytest.raises(DatasetError, match=r"outside uint8 range"):
        bad = make_episode(1, 3)
        bad["obs"]["image"] = bad["obs"]["image"].astype(np.uint16) + 200
        w.write_episode(**bad)
    # Integer 0/1 dones are accepted (robomimic style); other integers are not.
    with EpisodeWriter(path) as w, pytest.raises(DatasetError, match="demo_1/dones: dtype int64"):
        w.write_episode(**{**make_episode(1, 3), "dones": np.array([0, 2, 1])})


def test_a_closed_writer_refuses_more_work(tmp_path: Path) -> None:
    """Before: a closed writer, its lock released, still wrote and listed episodes beside the
    next writer of the dataset."""
    path = tmp_path / "c.hdf5"
    w = EpisodeWriter(path, OBS_SPECS, ACTION_SPEC)
    w.write_episode(**make_episode(0, 3))
    w.close()
    with EpisodeWriter(path) as other:
        for call in (
            lambda: w.write_episode(**make_episode(1, 3)),
            w.begin_episode,
            lambda: w.add_filter("train", ["demo_0"]),
        ):
            with pytest.raises(DatasetError, match=r"c.hdf5: writer closed; open a new"):
                call()
        assert other.write_episode(**make_episode(2, 4)) == "demo_1"
    w.close()  # a second close does nothing
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0", "demo_1"] and r.filters == []
        assert r.num_steps("demo_1") == 4


def test_arguments_of_the_wrong_kind_are_one_line_errors(tmp_path: Path) -> None:
    """Before: obs given as an array was "unhashable type: 'numpy.ndarray'", metadata as a list
    dict()'s words, and env_args=[1] was stored as the dataset's env_args."""
    path = tmp_path / "k.hdf5"
    ep = make_episode(0, 3)
    with pytest.raises(DatasetError, match=r"k.hdf5: env_args: must be a dict, got list"):
        EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, env_args=[1])
    assert not path.exists()
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC) as w:
        for call, says in (
            (
                lambda: w.write_episode(**{**ep, "obs": ep["obs"]["state"]}),
                r"demo_0/obs: must be a dict of arrays keyed \['image', 'state'\], got ndarray",
            ),
            (lambda: w.write_episode(**ep, metadata=[1]), "demo_0: metadata: must be a dict"),
        ):
            with pytest.raises(DatasetError, match=says) as err:
                call()
            assert "\n" not in str(err.value)
        w.begin_episode()
        with pytest.raises(DatasetError, match=r"demo_0 step 0/obs: must be a dict of arrays"):
            w.append_step(None, ep["actions"][0], 0.0, False)
        w.append_step({k: v[0] for k, v in ep["obs"].items()}, ep["actions"][0], 0.0, False)
        with pytest.raises(DatasetError, match="demo_0: metadata_update: must be a dict, got str"):
            w.end_episode("done")
        assert w.end_episode() == "demo_0"
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0"] and r.env_args == {}


def test_key_spec_shape_must_be_a_tuple_of_integers() -> None:
    """Before: KeySpec("float32", 3) was "'int' object is not iterable" and (3.5,) became (3,)."""
    for shape in (3, (3.5,), ("a",), None):
        with pytest.raises(DatasetError, match=r"KeySpec: shape must be a tuple of integers, got"):
            KeySpec("float32", shape)  # type: ignore[arg-type]
    assert KeySpec("uint8", [np.int64(4), 5, 3], encoding="rgb8").shape == (4, 5, 3)


def test_writer_and_reader_options_are_checked_before_any_file(tmp_path: Path) -> None:
    """Before: chunk_bytes="x" left an index without its shard folder, index_every_s=nan never
    listed an episode before close, chunk_bytes=0 was taken; a reader's max_open_shards=0 read
    as a shard missing its episode, -1 as a KeyError."""
    path = tmp_path / "o.hdf5"
    for kwargs, says in (
        ({"chunk_bytes": "x"}, "chunk_bytes='x': must be an integer >= 1"),
        ({"chunk_bytes": 0}, "chunk_bytes=0: must be an integer >= 1"),
        ({"index_every_s": float("nan")}, "index_every_s=nan: must be a number >= 0"),
        ({"index_every_s": -1.0}, "index_every_s=-1.0: must be a number >= 0"),
    ):
        with pytest.raises(DatasetError, match=re.escape(says)):
            EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, **kwargs)
    assert list(tmp_path.iterdir()) == []
    write_dataset(path, (3,))
    for bad in (0, -1, 2.5):
        with pytest.raises(DatasetError, match=rf"max_open_shards={bad}: must be an integer >= 1"):
            EpisodeReader(path, max_open_shards=bad)


def test_feature_type_declared_stored_and_derived_for_old_files(tmp_path: Path) -> None:
    path = tmp_path / "f.hdf5"
    # Declared: a (3, 4, 4) float "image" without encoding, and a (2, 2) low-dim key.
    specs = {
        "depth": KeySpec("float32", (3, 4, 4), feature_type=IMAGE),
        "grid": KeySpec("float32", (2, 2)),
        "camera": KeySpec("uint8", (4, 4, 3), encoding="rgb8"),
    }
    assert [s.feature_type for s in specs.values()] == [IMAGE, LOW_DIM, IMAGE]
    obs = {k: np.zeros((2, *s.shape), s.np_dtype) for k, s in specs.items()}
    with EpisodeWriter(path, specs, ACTION_SPEC, env_args=ENV_ARGS) as w:
        w.write_episode(obs=obs, actions=np.zeros((2, 2)), rewards=np.zeros(2), dones=[0, 1])
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["obs_specs"])["depth"]["feature_type"] == IMAGE
        assert f["data/demo_0/obs/grid"].attrs["feature_type"].decode() == LOW_DIM
    # A file written before the field (and before fixed-length strings: h5py's str attribute):
    # the type is derived once, from the encoding.
    with h5py.File(path, "a") as f:
        old = json.loads(f["data"].attrs["obs_specs"])
        for spec in old.values():
            del spec["feature_type"]
        f["data"].attrs["obs_specs"] = json.dumps(old)
    with EpisodeReader(path) as r:
        types = {k: s.feature_type for k, s in r.obs_specs.items()}
    assert types == {"depth": LOW_DIM, "grid": LOW_DIM, "camera": IMAGE}
    with pytest.raises(DatasetError, match="feature_type 'pointcloud' not in"):
        KeySpec("float32", (5, 3), feature_type="pointcloud")
    with pytest.raises(DatasetError, match=r"an image has shape \(H, W, C\), got \(64,\)"):
        KeySpec("uint8", (64,), encoding="mono8")


def test_append_continues_numbering_and_checks_specs(tmp_path: Path) -> None:
    path = tmp_path / "a.hdf5"
    episodes = write_dataset(path, (4, 5))
    reader_before = EpisodeReader(path)
    extra = make_episode(10, 6)
    with EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, env_args=ENV_ARGS) as w:
        assert w.episodes == ["demo_0", "demo_1"]
        assert w.write_episode(**extra) == "demo_2"
        # A second writer on the same dataset is refused while this one is open.
        with pytest.raises(DatasetError, match="already open for writing"):
            EpisodeWriter(path)
    with EpisodeWriter(path) as w:  # specs omitted: the stored ones are used
        assert w.write_episode(**make_episode(11, 3)) == "demo_3"
    bad_specs = {**OBS_SPECS, "state": KeySpec("float32", (6,), units="rad")}
    with pytest.raises(DatasetError, match="a.hdf5: appending: obs_specs differ"):
        EpisodeWriter(path, bad_specs, ACTION_SPEC)
    with pytest.raises(DatasetError, match="appending: action_spec differs"):
        EpisodeWriter(path, OBS_SPECS, KeySpec("float32", (2,)))  # units differ
    with pytest.raises(DatasetError, match="appending: env_args differ"):
        EpisodeWriter(path, OBS_SPECS, ACTION_SPEC, env_args={"env_name": "Pendulum-v1"})
    # The refused writers released their lock.
    with EpisodeWriter(path) as w:
        assert w.total_steps == 18
    validate_file(path)
    with EpisodeReader(path) as r:
        assert r.episodes == ["demo_0", "demo_1", "demo_2", "demo_3"]
        assert_episode_equal(r, "demo_0", episodes[0])
        assert_episode_equal(r, "demo_2", extra)
    # A reader opened earlier keeps its consistent snapshot (the index is replaced, not edited).
    assert reader_before.episodes == ["demo_0", "demo_1"]
    assert_episode_equal(reader_before, "demo_1", episodes[1])
    reader_before.close()
    # An index deleted by hand must not let a new writer overwrite the old shards.
    shutil.copy(path, tmp_path / "a.bak")
    path.unlink()
    with pytest.raises(DatasetError, match="a.hdf5: missing, but a.hdf5.episodes/ holds"):
        EpisodeWriter(path, OBS_SPECS, ACTION_SPEC)
    shutil.copy(tmp_path / "a.bak", path)
    # Packed files are read-only archives.
    pack(path, tmp_path / "p.hdf5")
    with pytest.raises(DatasetError, match="p.hdf5: appending: file is packed"):
        EpisodeWriter(tmp_path / "p.hdf5")


def test_filters(tmp_path: Path) -> None:
    path = tmp_path / "f.hdf5"
    write_dataset(path)
    with EpisodeWriter(path) as w:
        w.add_filter("train", ["demo_0", "demo_2"])
        w.add_filter("valid", ["demo_1"])
        w.add_filter("valid", ["demo_1", "demo_2"])  # replaces
        with pytest.raises(DatasetError, match=r"mask/test: unknown episodes \['demo_7'\]"):
            w.add_filter("test", ["demo_7"])
    with h5py.File(path, "r") as f:  # robomimic reads masks as byte strings
        assert [x.decode() for x in f["mask/train"][:]] == ["demo_0", "demo_2"]
    with EpisodeReader(path) as r:
        assert r.filters == ["train", "valid"]
        assert r.filter("valid") == ["demo_1", "demo_2"]
        with pytest.raises(DatasetError, match="no filter 'test'"):
            r.filter("test")
    # Filters survive appends.
    with EpisodeWriter(path) as w:
        w.write_episode(**make_episode(9, 3))
    assert EpisodeReader(path).filter("train") == ["demo_0", "demo_2"]


# -- validation: each corruption -> one line naming file, episode, key --------------------------


def _shard(path: Path, ep: str = "demo_1") -> Path:
    return path.with_name(path.name + ".episodes") / f"{ep}.h5"


def _edit_shard(path: Path, fn: Callable[[h5py.Group], None], ep: str = "demo_1") -> None:
    with h5py.File(_shard(path, ep), "r+") as f:
        fn(f[ep])


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> None:
    del group[name]
    group[name] = data


def _garbage(p: Path) -> None:
    p.write_bytes(b"this is not hdf5 at all\n" * 100)


def _flip_data_bytes(path: Path) -> None:
    """Damage stored image bytes of demo_1 without touching any HDF5 metadata."""
    shard = _shard(path)
    with h5py.File(shard, "r") as f:
        offset = f["demo_1/obs/image"].id.get_chunk_info(0).byte_offset + 100
    with open(shard, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(8)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def _edit_index(path: Path, fn: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def _relink(path: Path, target: str) -> None:
    """Point data/demo_1 of the index at `target` (an existing copy of the same shard)."""

    def relink(f: h5py.File) -> None:
        del f["data/demo_1"]
        f["data/demo_1"] = h5py.ExternalLink(target, "/demo_1")

    _edit_index(path, relink)


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "not_hdf5": (_garbage, r"x.hdf5: not a readable HDF5 file"),
    "no_data_group": (
        lambda p: h5py.File(p, "w").close(),
        r"x.hdf5: missing 'data' group",
    ),
    "missing_key": (
        lambda p: _edit_shard(p, lambda g: g.__delitem__("obs/state")),
        r"x.hdf5: demo_1/obs/state: missing",
    ),
    "missing_actions": (
        lambda p: _edit_shard(p, lambda g: g.__delitem__("actions")),
        r"x.hdf5: demo_1/actions: missing",
    ),
    "length_mismatch": (
        lambda p: _edit_shard(p, lambda g: _replace(g, "actions", np.zeros((11, 2), np.float32))),
        r"x.hdf5: demo_1/actions: length \(11,\) != num_samples 12",
    ),
    "num_samples_mismatch": (
        lambda p: _edit_shard(p, lambda g: g.attrs.__setitem__("num_samples", 13)),
        r"x.hdf5: demo_1: num_samples 13 != 12 listed in episode_index",
    ),
    "total_mismatch": (
        lambda p: _edit_index(p, lambda f: f["data"].attrs.__setitem__("total", 99)),
        r"x.hdf5: data: attribute total=99 != sum of num_samples 28",
    ),
    "dtype_mismatch": (
        lambda p: _edit_shard(p, lambda g: _replace(g, "obs/state", np.zeros((12, 5)))),
        r"x.hdf5: demo_1/obs/state: dtype float64 != declared float32",
    ),
    "shape_mismatch": (
        lambda p: _edit_shard(
            p, lambda g: _replace(g, "obs/image", np.zeros((12, H, W, 4), np.uint8))
        ),
        r"x.hdf5: demo_1/obs/image: shape \(16, 20, 4\) per step != declared \(16, 20, 3\)",
    ),
    "nan": (
        lambda p: _edit_shard(p, lambda g: g["obs/state"].__setitem__((3, 1), np.nan)),
        r"x.hdf5: demo_1/obs/state: NaN/Inf at step 3",
    ),
    "inf_reward": (
        lambda p: _edit_shard(p, lambda g: g["rewards"].__setitem__(10, np.inf)),
        r"x.hdf5: demo_1/rewards: NaN/Inf at step 10",
    ),
    "undeclared_key": (
        lambda p: _edit_shard(p, lambda g: g.create_dataset("obs/depth", data=np.zeros(12))),
        r"x.hdf5: demo_1/obs: keys \['depth'\] not declared",
    ),
    "broken_link": (
        lambda p: _shard(p).unlink(),
        r"x.hdf5: demo_1: broken external link, shard x.hdf5.episodes/demo_1.h5 is missing",
    ),
    "corrupt_shard": (
        lambda p: _garbage(_shard(p)),
        r"x.hdf5: demo_1: .*demo_1.h5: not a readable HDF5 file",
    ),
    "flipped_data_bytes": (
        _flip_data_bytes,
        r"x.hdf5: demo_1/obs/image: unreadable at steps \[0, 12\) \(.*",
    ),
    "bad_mask": (
        lambda p: _edit_index(p, lambda f: f.create_dataset("mask/bad", data=[b"demo_9"])),
        r"x.hdf5: mask/bad: unknown episodes \['demo_9'\]",
    ),
    "bad_meta": (
        lambda p: _edit_shard(p, lambda g: g.attrs.__setitem__("meta", "{not json")),
        r"x.hdf5: demo_1: attribute 'meta' is not valid JSON",
    ),
    # Shards are data under the dataset's own directory: a link elsewhere is refused unread.
    "link_absolute": (
        lambda p: _relink(p, str(_shard(p).resolve())),
        r"x.hdf5: data/demo_1: external link to '/.*demo_1.h5' outside the dataset directory",
    ),
    "link_parent": (
        lambda p: _relink(p, f"../{p.parent.name}/{_shard(p).relative_to(p.parent)}"),
        r"x.hdf5: data/demo_1: external link to '\.\./.*' outside the dataset directory",
    ),
    "link_name_newline": (  # names from the file never break the one-line error
        lambda p: _relink(p, "x.hdf5.episodes/demo\n1.h5"),
        r"x.hdf5: data/demo_1: external link to 'x.hdf5.episodes/demo\\n1.h5': not a file name",
    ),
    "episode_name_newline": (
        lambda p: _edit_index(p, lambda f: f["data"].create_group("demo_3\n")),
        r"x.hdf5: data: bad episode name 'demo_3\\n'",
    ),
    "episode_name_not_utf8": (
        lambda p: _edit_index(p, lambda f: f["data"].create_group(b"demo_\xff")),
        r"x.hdf5: data: bad episode name .*demo_",
    ),
    "bad_episode_name": (
        lambda p: _edit_index(p, lambda f: f["data"].create_group("episode_x")),
        r"x.hdf5: data: bad episode name 'episode_x'",
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_validation_errors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.hdf5"
    write_dataset(path)
    validate_file(path)
    corrupt, pattern = CORRUPTIONS[kind]
    corrupt(path)
    with pytest.raises(DatasetError) as info:
        validate_file(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert isinstance(info.value, ValueError)
    assert re.search(pattern, msg), msg
    if kind == "flipped_data_bytes":  # the reader reports it too instead of returning garbage
        with EpisodeReader(path) as r, pytest.raises(DatasetError, match="demo_1/obs/image: unr"):
            r.read_obs("demo_1", "image")


def test_validation_of_packed_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.hdf5"
    write_dataset(path)
    packed = tmp_path / "p.hdf5"
    pack(path, packed)
    with h5py.File(packed, "r+") as f:
        f["data/demo_2/actions"][4, 0] = np.nan
    with pytest.raises(DatasetError, match=r"p.hdf5: demo_2/actions: NaN/Inf at step 4"):
        validate_file(packed)
    validate_file(packed, check_data=False)
    with pytest.raises(DatasetError, match="nope.hdf5: file not found"):
        validate_file(tmp_path / "nope.hdf5")


# -- pack --------------------------------------------------------------------------------------


def _external_links(f: h5py.File) -> list[str]:
    found = []

    def visit(name: str, link: h5py.Link) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.append(name)

    f.visititems_links(visit)
    return found


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_pack_is_self_contained_and_equivalent(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / "x.hdf5"
    episodes = write_dataset(path)
    with EpisodeWriter(path) as w:
        w.add_filter("train", ["demo_0", "demo_1"])
    out_dir = tmp_path / "share"
    out_dir.mkdir()
    summary = pack(path, out_dir / "p.hdf5", compression=compression)
    assert (summary.num_episodes, summary.total_steps, summary.packed) == (3, 28, True)
    with pytest.raises(DatasetError, match="p.hdf5: exists"):
        pack(path, out_dir / "p.hdf5")
    # Remove the source entirely: the packed file must stand alone.
    linked = EpisodeReader(path)
    expected_meta = {e: linked.episode_metadata(e) for e in linked.episodes}
    linked.close()
    os.rename(path.with_name("x.hdf5.episodes"), tmp_path / "gone")
    with h5py.File(out_dir / "p.hdf5", "r") as f:
        assert _external_links(f) == []
        np.testing.assert_array_equal(f["data/demo_0/obs/state"][:], episodes[0]["obs"]["state"])
        assert f["data/demo_0"].attrs["num_samples"] == 7
        if compression:
            assert f["data/demo_1/obs/image"].compression == "gzip"
    with EpisodeReader(out_dir / "p.hdf5") as r:
        assert r.packed and r.env_args == ENV_ARGS and r.obs_specs == OBS_SPECS
        assert r.filter("train") == ["demo_0", "demo_1"]
        for i, ep in enumerate(episodes):
            assert_episode_equal(r, f"demo_{i}", ep)
            assert r.episode_metadata(f"demo_{i}") == expected_meta[f"demo_{i}"]
    # pack refuses an invalid source instead of copying damage.
    with pytest.raises(DatasetError, match="demo_0: broken external link"):
        pack(path, tmp_path / "q.hdf5")
    assert not (tmp_path / "q.hdf5").exists()


# -- workers -----------------------------------------------------------------------------------


# Run in a fresh interpreter: forking the test worker itself copies whatever threads earlier
# tests left in it (a fork Pool once hung there for 10 minutes in CI).
_WORKERS_SCRIPT = """
import multiprocessing as mp, os, sys
import numpy as np
from episode_dataset import EpisodeReader

def read(args):
    reader, ep = args
    return os.getpid(), reader.read_obs(ep, "image", 2, 5), reader.read_actions(ep)

if __name__ == "__main__":
    reader = EpisodeReader(sys.argv[1], max_open_shards=2)
    for ep in reader.episodes:  # open handles in the parent before handing the reader over
        reader.read_obs(ep, "state", 0, 1)
    with mp.get_context(sys.argv[2]).Pool(2) as pool:
        results = pool.map(read, [(reader, ep) for ep in reader.episodes])
    for (pid, image, actions), ep in zip(results, reader.episodes, strict=True):
        assert pid != os.getpid()
        np.testing.assert_array_equal(image, reader.read_obs(ep, "image", 2, 5))
        np.testing.assert_array_equal(actions, reader.read_actions(ep))
    print("workers read", len(results), "episodes")
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_reader_in_worker_processes(tmp_path: Path, method: str) -> None:
    path = tmp_path / "x.hdf5"
    episodes = write_dataset(path)
    reader = EpisodeReader(path, max_open_shards=2)
    for ep in reader.episodes:
        reader.read_obs(ep, "state", 0, 1)
    assert len(reader._shards) == 2  # LRU bound respected
    clone = pickle.loads(pickle.dumps(reader))
    assert_episode_equal(clone, "demo_1", episodes[1])
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(path), method],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"workers read {len(episodes)} episodes" in done.stdout
    # The parent's handles still work after the pickled copies were used.
    assert_episode_equal(reader, "demo_2", episodes[2])
    reader.close()


# -- CLI ---------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "episode_dataset", *args],
        capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
    )  # fmt: skip


def test_cli_info_validate_pack(tmp_path: Path) -> None:
    path = tmp_path / "x.hdf5"
    write_dataset(path)
    with EpisodeWriter(path) as w:
        w.add_filter("train", ["demo_0", "demo_2"])
    res = _cli("info", str(path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Reacher-v5" in out and "episodes: 3   steps: 28" in out and "train (2)" in out
    assert "obs/image" in out and "rgb8" in out and "/camera/image" in out and "rad" in out
    assert "image:u8[12, 16, 20, 3]" in out and '{"dropped": 0, "seed": 1}' in out

    res = _cli("validate", str(path))
    assert res.returncode == 0 and res.stdout.strip() == "OK: 3 episodes, 28 steps"

    res = _cli("pack", str(path), str(tmp_path / "p.hdf5"))
    assert res.returncode == 0, res.stderr
    assert _cli("validate", str(tmp_path / "p.hdf5")).stdout.strip() == "OK: 3 episodes, 28 steps"

    _edit_shard(path, lambda g: g["obs/state"].__setitem__((0, 0), np.inf), ep="demo_2")
    res = _cli("validate", str(path))
    assert res.returncode == 1
    assert res.stderr.strip() == f"ERROR: {path}: demo_2/obs/state: NaN/Inf at step 0"


def test_pack_and_writer_refuse_a_directory_as_the_file(tmp_path: Path) -> None:
    """Before: pack wrote the whole output, then an IsADirectoryError traceback."""
    path, folder = tmp_path / "x.hdf5", tmp_path / "folder"
    write_dataset(path, (3,))
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    res = _cli("pack", str(path), str(folder), "--overwrite")
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == f"ERROR: {folder}: is a directory; name the output file\n"
    assert (folder / "mine.txt").read_text() == "keep"
    assert not (tmp_path / ".folder.tmp").exists()
    with pytest.raises(DatasetError, match=r"folder: is a directory; name the dataset file"):
        EpisodeWriter(folder, OBS_SPECS, ACTION_SPEC)
    assert not (tmp_path / "folder.episodes").exists()


def test_info_says_the_layout_of_a_file_without_episodes(tmp_path: Path) -> None:
    """An index without episodes has no links: before, a linked one (the writer's, episodes
    can be appended) was shown as "packed (self-contained)"."""
    linked, packed = tmp_path / "linked.hdf5", tmp_path / "packed.hdf5"
    EpisodeWriter(linked, OBS_SPECS, ACTION_SPEC, env_args=ENV_ARGS).close()
    pack(linked, packed)
    for path, layout in (
        (linked, "layout:   linked (linked.hdf5.episodes/), no episodes yet"),
        (packed, "layout:   packed (self-contained), no episodes"),
    ):
        res = _cli("info", str(path))
        assert res.returncode == 0, res.stderr
        assert layout in res.stdout.splitlines()
    write_dataset(linked, (3,))  # the linked one takes episodes
    assert "layout:   linked (linked.hdf5.episodes/)" in _cli("info", str(linked)).stdout


def test_never_imports_torch() -> None:
    code = "import sys, episode_dataset.cli; assert 'torch' not in sys.modules, 'torch imported'"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
