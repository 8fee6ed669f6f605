"""LeRobotDataset v3.0 export / import (episode_dataset/lerobot.py): round trips (bit-exact with
the lossless codec, within a stated tolerance with H.264), the files against the published
layout, a foreign dataset without our roboloop block, and one-line refusals."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from episode_dataset import DatasetError, EpisodeReader, EpisodeWriter, KeySpec, lerobot
from episode_dataset.cli import main
from episode_dataset.lerobot import export_lerobot, import_lerobot
from roboloop_testing.cli import dataset_cli_error
from roboloop_testing.damage import damage

H, W = 24, 32
SPECS = {
    "front": KeySpec("uint8", (H, W, 3), encoding="rgb8", source_topic="/camera/front"),
    "wrist": KeySpec("uint8", (H, W, 3), encoding="rgb8"),
    "state": KeySpec("float32", (4,), units="rad", source_topic="/joint_states"),
    "grip": KeySpec("float32", ()),
}
ACTION_SPEC = KeySpec("float32", (2,), units="N*m")
ENV_ARGS = {"env_name": "Toy-v0", "type": 4, "env_kwargs": {}, "control_rate_hz": 10}
LENGTHS = (5, 7, 4)
# Lossy codecs (yuv420p: H.264 crf 18, AV1 crf 30) on these 24x32 frames: mean |error| per pixel
# value was 4.3 to 4.6 for both, of which 4.0 is the 4:2:0 chroma subsampling alone (H.264 at
# crf 0 gives 4.0).
LOSSY_MEAN_ABS = 6.0
DEFAULT_COLUMNS = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


def frames(n: int, seed: int) -> np.ndarray:
    """Smooth gradients that move with t and differ per episode (so a frame off by one or an
    episode's offset shows)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    t = np.arange(n)[:, None, None]
    red = 128 + 100 * np.sin((x + 3 * t) / 6 + seed)
    green = 128 + 100 * np.cos((y + 2 * t) / 5)
    blue = np.broadcast_to(60.0 + 40 * seed, red.shape)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def workspace(path: Path, specs: dict[str, KeySpec] = SPECS, env_args: dict = ENV_ARGS) -> None:
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, specs, ACTION_SPEC, env_args=env_args) as w:
        for i, n in enumerate(LENGTHS):
            obs = {
                k: frames(n, i + j) if s.is_image else rng.normal(size=(n, *s.shape))
                for j, (k, s) in enumerate(specs.items())
            }
            w.write_episode(
                obs=obs, actions=rng.normal(size=(n, 2)), rewards=rng.normal(size=n),
                dones=np.arange(n) == n - 1, metadata={"seed": i, "terminated": i == 0},
            )  # fmt: skip
        w.add_filter("train", ["demo_0", "demo_2"])


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "ws.hdf5"
    workspace(path)
    return path


def export_small_files(src: Path, out: Path, codec: str) -> str:
    """Tiny file limits and 2 files per chunk: every episode opens a new file, and the third
    one a new chunk."""
    return export_lerobot(
        src, out, codec=codec, chunks_size=2, data_file_mb=1e-6, video_file_mb=1e-6
    )


def assert_same_low_dim(a: EpisodeReader, b: EpisodeReader, ep: str) -> None:
    for key, spec in a.obs_specs.items():
        if not spec.is_image:
            np.testing.assert_array_equal(a.read_obs(ep, key), b.read_obs(ep, key))
    np.testing.assert_array_equal(a.read_actions(ep), b.read_actions(ep))
    np.testing.assert_array_equal(a.read_rewards(ep), b.read_rewards(ep))
    np.testing.assert_array_equal(a.read_dones(ep), b.read_dones(ep))


def test_lossless_round_trip_is_exact(src: Path, tmp_path: Path) -> None:
    summary = export_small_files(src, tmp_path / "lr", "lossless")
    assert summary.endswith("3 episodes, 16 frames, 2 cameras (lossless), fps 10")
    assert "3 episodes, 16 steps" in import_lerobot(tmp_path / "lr", tmp_path / "back.hdf5")
    with EpisodeReader(src) as a, EpisodeReader(tmp_path / "back.hdf5") as b:
        # the roboloop block brings specs (units, topics, the () shape), env_args and filters
        assert b.obs_specs == a.obs_specs and b.action_spec == a.action_spec
        assert b.env_args == a.env_args and b.info.filters == a.info.filters
        assert b.episodes == a.episodes
        for ep in a.episodes:
            assert_same_low_dim(a, b, ep)
            for key in ("front", "wrist"):
                np.testing.assert_array_equal(a.read_obs(ep, key), b.read_obs(ep, key))
            assert b.episode_metadata(ep) == a.episode_metadata(ep)


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_lossy_round_trip_within_tolerance(src: Path, tmp_path: Path, codec: str) -> None:
    export_lerobot(src, tmp_path / "lr", codec=codec)  # one file per family
    import_lerobot(tmp_path / "lr", tmp_path / "back.hdf5")
    with EpisodeReader(src) as a, EpisodeReader(tmp_path / "back.hdf5") as b:
        for ep in a.episodes:
            assert_same_low_dim(a, b, ep)
            for key in ("front", "wrist"):
                want, got = a.read_obs(ep, key), b.read_obs(ep, key)
                error = np.abs(want.astype(np.int16) - got)
                assert error.mean() < LOSSY_MEAN_ABS, (ep, key, error.mean())
                # each frame matches its own source better than its neighbour's: none shifted
                assert error.mean() < np.abs(want[:-1].astype(np.int16) - got[1:]).mean()


def test_layout_follows_lerobot_v3(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "lr"
    export_small_files(src, root, "h264")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["fps"], info["total_episodes"], info["total_frames"]) == (10, 3, 16)
    assert (info["total_tasks"], info["chunks_size"], info["splits"]) == (1, 2, {"train": "0:3"})
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (
        info["video_path"]
        == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    )
    features = info["features"]
    assert features["observation.state"] == {
        "dtype": "float32", "shape": [4], "names": [f"state_{i}" for i in range(4)]
    }  # fmt: skip
    assert features["observation.grip"] == {"dtype": "float32", "shape": [1], "names": None}
    assert features["action"]["shape"] == [2] and features["next.done"]["dtype"] == "bool"
    cam = features["observation.images.front"]
    assert (cam["dtype"], cam["shape"], cam["names"]) == (
        "video", [H, W, 3], ["height", "width", "channels"]
    )  # fmt: skip
    assert cam["info"]["video.codec"] == "h264" and cam["info"]["video.fps"] == 10
    assert (cam["info"]["video.height"], cam["info"]["video.width"]) == (H, W)
    for name in DEFAULT_COLUMNS:
        assert features[name]["shape"] == [1]

    data_files = sorted(root.glob("data/chunk-*/file-*.parquet"))
    assert [p.relative_to(root).as_posix() for p in data_files] == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
    ]
    data = [pq.read_table(p) for p in data_files]
    video_columns = {n for n, f in features.items() if f["dtype"] == "video"}
    for table in data:
        assert set(table.column_names) == set(features) - video_columns
        state = table.schema.field("observation.state").type  # LeRobot's Sequence(length=4)
        assert pa.types.is_fixed_size_list(state) and state.list_size == 4
        assert state.value_type == pa.float32()
    index = np.concatenate([t.column("index").to_numpy() for t in data])
    np.testing.assert_array_equal(index, np.arange(16))
    first = data[1].to_pydict()  # episode 1
    assert first["frame_index"] == list(range(7)) and set(first["episode_index"]) == {1}
    np.testing.assert_allclose(first["timestamp"], np.arange(7) / 10, rtol=1e-6)

    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == list(LENGTHS)
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (0, 5), (5, 12), (12, 16)
    ]  # fmt: skip
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in episodes] == [
        (0, 0), (0, 1), (1, 0)
    ]  # fmt: skip
    assert episodes[1]["tasks"] == ["Toy-v0"]
    assert len(episodes[0]["stats/observation.images.front/mean"]) == 3  # (3, 1, 1)
    for e in episodes:
        v = "videos/observation.images.front"
        path = root / info["video_path"].format(
            video_key="observation.images.front",
            chunk_index=e[f"{v}/chunk_index"],
            file_index=e[f"{v}/file_index"],
        )
        assert e[f"{v}/from_timestamp"] == 0.0  # one episode per file here
        assert e[f"{v}/to_timestamp"] == pytest.approx(e["length"] / 10)
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == e["length"]

    tasks = pq.read_table(root / "meta/tasks.parquet")
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]
    assert tasks.to_pydict() == {"task_index": [0], "__index_level_0__": ["Toy-v0"]}
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["observation.state"]) == {
        "min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"
    }  # fmt: skip
    assert stats["observation.state"]["count"] == [16]
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    with EpisodeReader(src) as r:
        state = np.concatenate([r.read_obs(ep, "state") for ep in r.episodes])
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-5)


def test_many_episodes_share_a_video_file(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "lr"
    export_lerobot(src, root)
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    v = "videos/observation.images.wrist"
    spans = [(e[f"{v}/from_timestamp"], e[f"{v}/to_timestamp"]) for e in episodes]
    np.testing.assert_allclose(spans, [(0.0, 0.5), (0.5, 1.2), (1.2, 1.6)])
    assert {(e[f"{v}/chunk_index"], e[f"{v}/file_index"]) for e in episodes} == {(0, 0)}
    with av.open(str(root / "videos/observation.images.wrist/chunk-000/file-000.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 16


def strip_roboloop(root: Path) -> None:
    """What a dataset written by LeRobot itself looks like: no roboloop block, no meta column."""
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    del info["roboloop"]
    info["features"]["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    info_path.write_text(json.dumps(info))
    for path in root.glob("data/*/*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.append_column("next.success", table.column("next.done")), path)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["roboloop/meta"]), path)


def test_import_foreign_dataset(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "lr"
    export_lerobot(src, root, codec="lossless", task="stack the cubes")
    strip_roboloop(root)
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"]["next.reward"]  # a dataset without rewards
    (root / "meta/info.json").write_text(json.dumps(info))
    for path in root.glob("data/*/*.parquet"):
        pq.write_table(pq.read_table(path).drop_columns(["next.reward"]), path)
    summary = import_lerobot(root, tmp_path / "back.hdf5")
    assert summary.endswith(
        "3 episodes, 16 steps; dropped features: next.success; no next.reward: rewards 0"
    )
    with EpisodeReader(src) as a, EpisodeReader(tmp_path / "back.hdf5") as b:
        assert {k: (s.shape, s.feature_type, s.encoding) for k, s in b.obs_specs.items()} == {
            "front": ((H, W, 3), "image", "rgb8"),
            "wrist": ((H, W, 3), "image", "rgb8"),
            "state": ((4,), "low_dim", None),
            "grip": ((1,), "low_dim", None),  # LeRobot's (1,): our () is not known here
        }
        assert b.obs_specs["state"].units is None  # units and topics are not in the layout
        assert b.env_args == {
            "env_name": "lr", "type": "lerobot", "env_kwargs": {}, "control_rate_hz": 10.0
        }  # fmt: skip
        assert b.episode_metadata("demo_1") == {
            "lerobot_episode_index": 1, "task": "stack the cubes"
        }  # fmt: skip
        np.testing.assert_array_equal(b.read_obs("demo_2", "front"), a.read_obs("demo_2", "front"))
        np.testing.assert_array_equal(b.read_obs("demo_1", "state"), a.read_obs("demo_1", "state"))
        np.testing.assert_array_equal(b.read_rewards("demo_1"), np.zeros(7, np.float32))
        np.testing.assert_array_equal(b.read_dones("demo_1"), a.read_dones("demo_1"))


def images_in_parquet(root: Path, name: str) -> None:
    """Camera `name` as LeRobot's `image` feature (PNG files in the data, no video), the form
    LeRobot writes with use_videos=False."""
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"][name] = info["features"][name] | {"dtype": "image"}
    del info["features"][name]["info"]
    info_path.write_text(json.dumps(info))
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for path in sorted(root.glob("data/*/*.parquet")):
        table = pq.read_table(path)
        cells = []
        for i in table.column("episode_index").to_pylist():
            if not cells or cells[-1][0] != i:
                ep = episodes[i]
                video = root / info["video_path"].format(
                    video_key=name, chunk_index=ep[f"videos/{name}/chunk_index"],
                    file_index=ep[f"videos/{name}/file_index"],
                )  # fmt: skip
                with av.open(str(video)) as c:
                    first = round(ep[f"videos/{name}/from_timestamp"] * info["fps"])
                    frames = [f.to_image() for f in c.decode(video=0)][first:]
            png = io.BytesIO()
            frames.pop(0).save(png, format="PNG")
            cells.append((i, {"bytes": png.getvalue(), "path": None}))
        pq.write_table(table.append_column(name, pa.array([c for _, c in cells])), path)
    shutil.rmtree(root / "videos" / name)


def test_import_images_stored_in_parquet(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "lr"
    export_lerobot(src, root, codec="lossless")
    strip_roboloop(root)
    images_in_parquet(root, "observation.images.front")
    import_lerobot(root, tmp_path / "back.hdf5")
    with EpisodeReader(src) as a, EpisodeReader(tmp_path / "back.hdf5") as b:
        assert b.obs_specs["front"].feature_type == "image"
        for ep in a.episodes:
            for key in ("front", "wrist"):
                np.testing.assert_array_equal(b.read_obs(ep, key), a.read_obs(ep, key))


def test_import_takes_a_few_steps_at_a_time(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoded frames of a long episode are never in memory whole: the import decodes and
    writes STEPS_AT_ONCE steps at a time (2 here, for episodes of 5, 7 and 4 steps), and the
    round trip stays exact, from video and from images stored in the parquet alike."""
    monkeypatch.setattr(lerobot, "STEPS_AT_ONCE", 2)
    taken: list[int] = []
    take = lerobot._FrameCursor.take
    monkeypatch.setattr(
        lerobot._FrameCursor,
        "take",
        lambda cursor, first, n, where: taken.append(n) or take(cursor, first, n, where),
    )
    export_small_files(src, tmp_path / "lr", "lossless")
    import_lerobot(tmp_path / "lr", tmp_path / "back.hdf5")
    assert max(taken) == 2 and sum(taken) == 2 * sum(LENGTHS)  # two cameras
    with EpisodeReader(src) as a, EpisodeReader(tmp_path / "back.hdf5") as b:
        assert b.episodes == a.episodes
        for ep in a.episodes:
            assert_same_low_dim(a, b, ep)
            for key in ("front", "wrist"):
                np.testing.assert_array_equal(a.read_obs(ep, key), b.read_obs(ep, key))

    root = tmp_path / "parquet"
    export_lerobot(src, root, codec="lossless")
    strip_roboloop(root)
    images_in_parquet(root, "observation.images.front")
    decoded: list[int] = []
    decode = lerobot._decode_images
    monkeypatch.setattr(
        lerobot,
        "_decode_images",
        lambda table, *args: decoded.append(len(table)) or decode(table, *args),
    )
    import_lerobot(root, tmp_path / "back2.hdf5")
    assert max(decoded) == 2 and sum(decoded) == sum(LENGTHS)
    with EpisodeReader(src) as a, EpisodeReader(tmp_path / "back2.hdf5") as b:
        for ep in a.episodes:
            np.testing.assert_array_equal(b.read_obs(ep, "front"), a.read_obs(ep, "front"))
            np.testing.assert_array_equal(b.read_dones(ep), a.read_dones(ep))


def test_refusals_are_one_line(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    no_rate = tmp_path / "no_rate.hdf5"
    workspace(no_rate, {"state": SPECS["state"]}, {"env_name": "Toy-v0"})
    with pytest.raises(DatasetError, match=r"no_rate.hdf5: env_args has no control_rate_hz"):
        export_lerobot(no_rate, tmp_path / "x")
    with pytest.raises(DatasetError, match=r"fps 12.5 must be a positive whole number"):
        export_lerobot(no_rate, tmp_path / "x", fps=12.5)
    depth = tmp_path / "depth.hdf5"
    specs = {"depth": KeySpec("float32", (H, W, 1), feature_type="image")}
    with EpisodeWriter(depth, specs, ACTION_SPEC, env_args=ENV_ARGS) as w:
        w.write_episode(obs={"depth": np.zeros((2, H, W, 1))}, actions=np.zeros((2, 2)),
                        rewards=np.zeros(2), dones=[False, True])  # fmt: skip
    with pytest.raises(DatasetError, match=r"obs/depth: video needs uint8 \(H, W, 3\) frames"):
        export_lerobot(depth, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.tmp").exists()

    root = tmp_path / "lr"
    export_lerobot(src, root)
    assert main(["lerobot-export", str(src), str(root)]) == 1
    assert (
        capsys.readouterr().err == f"ERROR: {root}: exists (pass overwrite=True / --overwrite)\n"
    )

    # a video that lost its last episode's frames: named, and nothing is left behind
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    video = broken / "videos/observation.images.front/chunk-000/file-000.mp4"
    with av.open(str(root / "videos/observation.images.front/chunk-000/file-000.mp4")) as c_in:
        with av.open(str(video), "w") as c_out:
            stream = c_out.add_stream("libx264", rate=10)
            stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
            for frame in list(c_in.decode(video=0))[:12]:
                c_out.mux(stream.encode(frame.reformat(format="yuv420p")))
            c_out.mux(stream.encode(None))
    out = tmp_path / "back.hdf5"
    assert main(["lerobot-import", str(broken), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"ERROR: {broken}: episode 2: {video} has 0 frames from 1.200 s")
    assert not out.exists() and not Path(f"{out}.episodes").exists()

    # an episodes table that disagrees with info.json's total_frames, and then with the data
    table = root / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(table).to_pylist()
    rows[1]["length"] = 6
    pq.write_table(pa.Table.from_pylist(rows), table)
    with pytest.raises(DatasetError, match=r"'total_frames' is 16, meta/episodes/ lists 15 fr"):
        import_lerobot(root, out)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"total_frames": 15}))
    with pytest.raises(DatasetError, match=r"episode 1: rows 5..12 of file-000.parquet are not "):
        import_lerobot(root, out)
    assert not out.exists()

    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match=r"codebase_version 'v2.1' \(only v3.x is read\)"):
        import_lerobot(root, out)


def test_damaged_files_give_one_line_errors(src: Path, tmp_path: Path) -> None:
    """Flips and truncations (fixed seed) of every file of an export: the import either
    succeeds (mp4 and parquet data carry no checksums, so a flip in a pixel or a value reads
    as written) or raises one DatasetError line naming a file, and leaves nothing behind.
    Found by such fuzzing: pyarrow's multi-line messages, field names and strings pyarrow
    decodes lazily (a UnicodeDecodeError later), and mp4 tags PyAV decodes as UTF-8."""
    root, out = tmp_path / "lr", tmp_path / "back.hdf5"
    export_lerobot(src, root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rng = np.random.default_rng(1)
    outcomes: dict[str, int] = {"error": 0, "read": 0}
    for case in range(120):
        target = files[case % len(files)]
        pristine = target.read_bytes()
        target.write_bytes(damage(pristine, rng)[1])
        try:
            import_lerobot(root, out)
            outcomes["read"] += 1
        except DatasetError as err:
            outcomes["error"] += 1
            assert "\n" not in str(err) and str(root) in str(err), (target, str(err))
            assert not out.exists() and not Path(f"{out}.episodes").exists()
        out.unlink(missing_ok=True)
        shutil.rmtree(f"{out}.episodes", ignore_errors=True)
        target.write_bytes(pristine)
    assert outcomes["error"] > 30 and outcomes["read"] > 20, outcomes


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"fps": 0}, "'fps' must be a positive finite number, got 0"),
        ({"fps": -30}, "'fps' must be a positive finite number, got -30"),
        ({"fps": float("nan")}, "'fps' must be a positive finite number, got nan"),
        ({"fps": "10"}, "'fps' must be a positive finite number, got '10'"),
        ({"total_episodes": 99}, "'total_episodes' is 99, meta/episodes/ lists 3 episodes"),
        ({"total_frames": 15}, "'total_frames' is 15, meta/episodes/ lists 16 frames"),
    ],
    ids=["fps0", "fps-30", "fpsnan", "fps-str", "total_episodes", "total_frames"],
)
def test_import_refuses_bad_fps_and_totals_of_info_json(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit: dict, message: str
) -> None:
    """Before, fps 0 imported with exit 0 (control_rate_hz 0.0, only learning's export failed
    later), fps -30 blamed the mp4 ("has 1 frames") and total_episodes 99 for 3 went unseen."""
    root, out = tmp_path / "lr", tmp_path / "back.hdf5"
    export_lerobot(src, root)
    info_path = root / "meta/info.json"
    info_path.write_text(json.dumps(json.loads(info_path.read_text()) | edit))
    err = dataset_cli_error(capsys, "lerobot-import", str(root), str(out))
    assert err == f"ERROR: {info_path}: {message}"
    assert not out.exists() and not Path(f"{out}.episodes").exists()


@pytest.mark.parametrize("where", ["state", "actions", "rewards"])
def test_export_refuses_nan_and_inf_as_validate_does(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    """Before, the export wrote NaN/Infinity into the parquet and meta/stats.json, exit 0."""
    src = tmp_path / "nan.hdf5"
    specs = {"state": SPECS["state"], "front": SPECS["front"]}
    with EpisodeWriter(src, specs, ACTION_SPEC, env_args=ENV_ARGS) as w:
        for i in range(2):
            obs = {"state": np.zeros((4, 4)), "front": frames(4, i)}
            actions, rewards = np.zeros((4, 2)), np.zeros(4)
            if i == 1:  # step 2 of the second episode
                bad = {"state": obs["state"], "actions": actions, "rewards": rewards}[where]
                bad[2] = np.inf if where == "actions" else np.nan
            w.write_episode(obs=obs, actions=actions, rewards=rewards, dones=[0, 0, 0, 1])
    key = {"state": "obs/state"}.get(where, where)
    expected = f"ERROR: {src}: demo_1/{key}: NaN/Inf at step 2"
    assert dataset_cli_error(capsys, "validate", str(src)) == expected
    out = tmp_path / "lr"
    assert dataset_cli_error(capsys, "lerobot-export", str(src), str(out)) == expected
    assert not out.exists() and not (tmp_path / ".lr.tmp").exists()


def test_outputs_of_the_wrong_kind_are_refused_and_kept(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: IsADirectoryError (import into a directory) and NotADirectoryError (export over
    a file) tracebacks; --overwrite never deletes what is not a dataset of the command's kind."""
    root = tmp_path / "lr"
    export_lerobot(src, root)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    text = tmp_path / "text.hdf5"
    text.write_text("keep")
    err = dataset_cli_error(capsys, "lerobot-import", str(root), str(folder), "--overwrite")
    assert err == f"ERROR: {folder}: is a directory; name the output file"
    err = dataset_cli_error(capsys, "lerobot-export", str(src), str(text), "--overwrite")
    assert err == f"ERROR: {text}: exists and is not a directory; name the output directory"
    err = dataset_cli_error(capsys, "lerobot-export", str(src), str(folder), "--overwrite")
    assert err == f"ERROR: {folder}: not a LeRobot dataset (no meta/info.json); not overwritten"
    assert (folder / "mine.txt").read_text() == "keep" and text.read_text() == "keep"
    # a LeRobot dataset is what --overwrite replaces
    assert main(["lerobot-export", str(src), str(root), "--overwrite"]) == 0


def test_a_failed_overwrite_keeps_the_dataset_it_would_replace(src: Path, tmp_path: Path) -> None:
    """lerobot-import --overwrite moves the old dataset aside, and back when the import fails
    halfway (a truncated video): nothing the user had is lost."""
    root, out = tmp_path / "lr", tmp_path / "back.hdf5"
    export_lerobot(src, root)
    import_lerobot(root, out)
    before = EpisodeReader(out).episodes
    video = sorted(root.rglob("*.mp4"))[-1]
    video.write_bytes(video.read_bytes()[:500])
    with pytest.raises(DatasetError):
        import_lerobot(root, out, overwrite=True)
    assert EpisodeReader(out).episodes == before  # the old one, links and all
    assert not list(tmp_path.glob(".*")), "nothing left aside"
