"""Robomimic-style HDF5 (episode_dataset/robomimic.py): workspace -> robomimic -> reader round
trip with three cameras in the seed's layout and a concatenated state, the file as robomimic
sees it, foreign files, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from episode_dataset import DatasetError, EpisodeWriter, KeySpec, validate_file
from episode_dataset.cli import main
from episode_dataset.robomimic import H5DatasetReader, export_robomimic
from roboloop_testing.cli import dataset_cli_error

CAMERAS = {"front": "base_0_rgb", "left": "left_wrist_0_rgb", "right": "right_wrist_0_rgb"}
SPECS = {
    **{k: KeySpec("uint8", (6, 8, 3), encoding="rgb8") for k in CAMERAS},
    "qpos": KeySpec("float32", (3,), units="rad"),
    "gripper": KeySpec("float32", (1,)),
}
ENV_ARGS = {
    "env_name": "Bimanual-v0",
    "type": "roboloop",
    "env_kwargs": {},
    "control_rate_hz": 50.0,
    "action_space": {"low": [-1.0, -2.0], "high": [1.0, 2.0]},
}
LENGTHS, TERMINATED = (5, 3, 7), (True, False, False)


def workspace(path: Path) -> list[dict]:
    """Write a dataset of three episodes; returns what was written."""
    rng = np.random.default_rng(0)
    episodes = []
    with EpisodeWriter(path, SPECS, KeySpec("float32", (2,)), env_args=ENV_ARGS) as w:
        for steps, terminated in zip(LENGTHS, TERMINATED, strict=True):
            ep = {
                "obs": {
                    k: rng.integers(0, 256, (steps, *s.shape), dtype=np.uint8)
                    if s.is_image
                    else rng.normal(size=(steps, *s.shape)).astype(np.float32)
                    for k, s in SPECS.items()
                },
                "actions": rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
                "rewards": rng.normal(size=steps).astype(np.float32),
                "terminated": terminated,
            }
            dones = np.arange(steps) == steps - 1
            w.write_episode(
                obs=ep["obs"], actions=ep["actions"], rewards=ep["rewards"], dones=dones,
                metadata={"seed": 3, "terminated": terminated},
            )  # fmt: skip
            episodes.append(ep)
        w.add_filter("train", ["demo_0", "demo_2"])
    return episodes


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, list[dict]]:
    src, dst = tmp_path / "ws.hdf5", tmp_path / "robomimic.hdf5"
    episodes = workspace(src)
    summary = export_robomimic(src, dst, cameras=CAMERAS, state_keys=["qpos", "gripper"])
    assert summary.endswith("3 episodes, 15 steps")
    return dst, episodes


def test_round_trip_three_cameras_and_state(exported: tuple[Path, list[dict]]) -> None:
    path, written = exported
    with H5DatasetReader(path) as reader:
        specs = reader.obs_specs
        assert {k: (s.feature_type, s.shape) for k, s in specs.items()} == {
            "base_0_rgb": ("image", (6, 8, 3)),
            "left_wrist_0_rgb": ("image", (6, 8, 3)),
            "right_wrist_0_rgb": ("image", (6, 8, 3)),
            "state": ("low_dim", (4,)),
        }
        assert reader.action_spec.shape == (2,)
        assert reader.action_bounds == ([-1.0, -2.0], [1.0, 2.0])
        assert reader.control_rate_hz == 50.0
        episodes = list(reader.iter_episodes())
        assert [e.name for e in episodes] == reader.episodes == ["demo_0", "demo_1", "demo_2"]
        for ep, want in zip(episodes, written, strict=True):
            for key, name in CAMERAS.items():
                np.testing.assert_array_equal(ep.obs[name], want["obs"][key])
                assert ep.obs[name].dtype == np.uint8
            state = np.concatenate([want["obs"]["qpos"], want["obs"]["gripper"]], axis=1)
            np.testing.assert_array_equal(ep.obs["state"], state)
            np.testing.assert_array_equal(ep.actions, want["actions"])
            np.testing.assert_array_equal(ep.rewards, want["rewards"])
            assert ep.terminated is want["terminated"]
            assert reader.episode_metadata(ep.name) == {"terminated": want["terminated"]}
        # windows read only their rows, as EpisodeReader's do
        np.testing.assert_array_equal(
            reader.read_obs("demo_2", "base_0_rgb", 2, 5), written[2]["obs"]["front"][2:5]
        )


def test_file_is_robomimic_layout(exported: tuple[Path, list[dict]]) -> None:
    path, written = exported
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert data.attrs["total"] == sum(LENGTHS)
        env_args = json.loads(data.attrs["env_args"])
        assert env_args == ENV_ARGS  # env_name, type, env_kwargs (+ rate and bounds kept)
        for i, (steps, terminated) in enumerate(zip(LENGTHS, TERMINATED, strict=True)):
            demo = data[f"demo_{i}"]
            assert demo.attrs["num_samples"] == steps
            assert sorted(demo["obs"]) == sorted([*CAMERAS.values(), "state"])
            want_dones = np.zeros(steps, np.int64)
            want_dones[-1] = terminated  # robomimic: done marks the terminal step
            np.testing.assert_array_equal(demo["dones"][()], want_dones)
            # every array carries checksums: a damaged byte is an error, not another value
            names: list[str] = []
            demo.visit(names.append)
            arrays = [demo[n] for n in names if isinstance(demo[n], h5py.Dataset)]
            assert len(arrays) == 3 + len(CAMERAS) + 1 and all(a.fletcher32 for a in arrays)
        assert [m.decode() for m in f["mask/train"][()]] == ["demo_0", "demo_2"]


def test_foreign_robomimic_file_uses_the_naming_rule(tmp_path: Path) -> None:
    """robomimic's own files carry no feature_type: `*image` / `*rgb` keys are cameras."""
    path = tmp_path / "lift.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        data.attrs["total"] = 4
        demo = data.create_group("demo_0")
        demo.attrs["num_samples"] = 4
        demo["obs/agentview_image"] = np.zeros((4, 8, 8, 3), np.uint8)
        demo["obs/robot0_eef_pos"] = np.ones((4, 3))
        demo["actions"] = np.zeros((4, 7))
        demo["rewards"] = np.arange(4, dtype=np.float64)
        demo["dones"] = np.array([0, 0, 0, 1])
    with H5DatasetReader(path) as reader:
        kinds = {k: s.feature_type for k, s in reader.obs_specs.items()}
        assert kinds == {"agentview_image": "image", "robot0_eef_pos": "low_dim"}
        assert reader.action_bounds is None and reader.control_rate_hz is None
        (episode,) = reader.iter_episodes()
        assert episode.terminated and episode.rewards.dtype == np.float32
        assert episode.obs["robot0_eef_pos"].dtype == np.float64


def damage(path: Path, how: str) -> str:
    """Break an exported file one way; returns what the error must name."""
    with h5py.File(path, "r+") as f:
        if how == "no_data":
            del f["data"]
            return "missing 'data' group"
        if how == "no_actions":
            del f["data/demo_1/actions"]
            return "data/demo_1/actions: missing"
        if how == "no_camera_in_one_demo":
            del f["data/demo_2/obs/left_wrist_0_rgb"]
            return "data/demo_2/obs/left_wrist_0_rgb: missing"
        if how == "short_rewards":
            del f["data/demo_0/rewards"]
            f["data/demo_0/rewards"] = np.zeros(2, np.float32)
            return "data/demo_0/rewards: shape (2,)"
        if how == "bad_env_args":
            f["data"].attrs["env_args"] = "{not json"
            return "attribute 'env_args' is not valid JSON"
        if how == "bad_demo_name":
            f["data"].create_group("episode_x")
            return "bad episode name 'episode_x'"
        if how == "no_num_samples":
            del f["data/demo_1"].attrs["num_samples"]
            return "data/demo_1: missing attribute 'num_samples'"
        if how == "total":
            f["data"].attrs["total"] = 99
            return "total 99 != sum of num_samples 15"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "no_data",
        "no_actions",
        "no_camera_in_one_demo",
        "short_rewards",
        "bad_env_args",
        "bad_demo_name",
        "no_num_samples",
        "total",
    ],
)
def test_bad_files_are_refused_in_one_line(exported: tuple[Path, list[dict]], how: str) -> None:
    path, _ = exported
    expected = damage(path, how)
    with pytest.raises(DatasetError) as err:
        with H5DatasetReader(path) as reader:
            list(reader.iter_episodes())
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        H5DatasetReader(tmp_path / "absent.hdf5")
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"no hdf5 here")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        H5DatasetReader(junk)


def test_export_refusals(tmp_path: Path) -> None:
    src = tmp_path / "ws.hdf5"
    workspace(src)
    for kwargs, match in (
        (dict(cameras={"qpos": "base_0_rgb"}), "camera 'qpos' is not an image key"),
        (dict(state_keys=["front"]), "state key 'front' is not a low-dim key"),
        (dict(cameras={"front": "cam", "left": "cam"}), "two keys would be written as obs/cam"),
    ):
        with pytest.raises(DatasetError, match=match):
            export_robomimic(src, tmp_path / "out.hdf5", **kwargs)
        assert not (tmp_path / "out.hdf5").exists()
    export_robomimic(src, tmp_path / "out.hdf5")
    with pytest.raises(DatasetError, match="exists"):
        export_robomimic(src, tmp_path / "out.hdf5")


def test_cli_exports_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, dst = tmp_path / "ws.hdf5", tmp_path / "rm.hdf5"
    workspace(src)
    cameras = [f"--camera={k}={v}" for k, v in CAMERAS.items()]
    assert main(["robomimic", str(src), str(dst), *cameras, "--state-keys", "gripper"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    # qpos was not listed for state: it keeps its own name
    assert report["obs"]["state"] == ["low_dim", [1], "float32"]
    assert report["obs"]["qpos"] == ["low_dim", [3], "float32"]
    assert report["obs"]["base_0_rgb"][0] == "image" and report["episodes"] == 3
    assert main(["robomimic", str(src), str(dst), "--camera", "front"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: --camera 'front'") and "\n" not in err


def test_offline_loader_reads_the_export(exported: tuple[Path, list[dict]]) -> None:
    """The agent's offline prefill (learning.online.chunk_replay) takes the exported file."""
    from learning.online.chunk_replay import ChunkReplay, load_offline_episodes, open_dataset

    path, _ = exported
    reader = open_dataset(path)
    assert isinstance(reader, H5DatasetReader)
    specs = {k: {"shape": list(s.shape), "dtype": s.dtype, "feature_type": s.feature_type}
             for k, s in reader.obs_specs.items()}  # fmt: skip
    reader.close()
    storage = ChunkReplay(specs, 2, 16, 1, 2, 0.9, offline_capacity=32)
    info = load_offline_episodes(storage, path, max_memory_gb=1.0)
    assert info["episodes"] == 3 and info["steps"] == sum(LENGTHS)


@pytest.mark.parametrize("where", ["obs/qpos", "actions", "rewards"])
def test_export_refuses_nan_and_inf_as_validate_does(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    """Before, the export copied NaN/Inf into the robomimic file with exit 0."""
    src, dst = tmp_path / "nan.hdf5", tmp_path / "rm.hdf5"
    specs = {"qpos": SPECS["qpos"], "front": SPECS["front"]}
    with EpisodeWriter(src, specs, KeySpec("float32", (2,)), env_args=ENV_ARGS) as w:
        for i in range(2):
            obs = {"qpos": np.zeros((4, 3)), "front": np.zeros((4, 6, 8, 3), np.uint8)}
            actions, rewards = np.zeros((4, 2)), np.zeros(4)
            if i == 1:  # step 3 of the second episode
                bad = {"obs/qpos": obs["qpos"], "actions": actions, "rewards": rewards}[where]
                bad[3] = np.inf if where == "actions" else np.nan
            w.write_episode(obs=obs, actions=actions, rewards=rewards, dones=[0, 0, 0, 1])
    expected = f"ERROR: {src}: demo_1/{where}: NaN/Inf at step 3"
    assert dataset_cli_error(capsys, "validate", str(src)) == expected
    assert dataset_cli_error(capsys, "robomimic", str(src), str(dst)) == expected
    assert not dst.exists() and not (tmp_path / ".rm.hdf5.tmp").exists()


def test_a_dataset_without_episodes_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: "0 episodes, 0 steps", then "ERROR: rm.hdf5: data: no demo_<i> groups" with the
    file left behind, so a rerun said it exists."""
    src, dst = tmp_path / "empty.hdf5", tmp_path / "rm.hdf5"
    EpisodeWriter(src, SPECS, KeySpec("float32", (2,)), env_args=ENV_ARGS).close()
    for _ in range(2):  # the rerun says the same
        err = dataset_cli_error(capsys, "robomimic", str(src), str(dst))
        assert err == f"ERROR: {src}: no episodes to export"
        assert not dst.exists() and not (tmp_path / ".rm.hdf5.tmp").exists()


def test_outputs_that_are_directories_or_the_input_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: an IsADirectoryError traceback (after the whole export was written)."""
    src, folder = tmp_path / "ws.hdf5", tmp_path / "folder"
    workspace(src)
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    err = dataset_cli_error(capsys, "robomimic", str(src), str(folder), "--overwrite")
    assert err == f"ERROR: {folder}: is a directory; name the output file"
    assert (folder / "mine.txt").read_text() == "keep"
    assert not (tmp_path / ".folder.tmp").exists()
    err = dataset_cli_error(capsys, "robomimic", str(src), str(src), "--overwrite")
    assert err == f"ERROR: {src}: output must differ from input {src}"
    assert validate_file(src).num_episodes == 3


def test_cameras_are_copied_a_slice_at_a_time(tmp_path: Path, obs_reads: list[int]) -> None:
    """A long camera episode is never read whole: 256 steps per read, bytes unchanged."""
    src, dst, n = tmp_path / "long.hdf5", tmp_path / "rm.hdf5", 600
    frames = np.random.default_rng(1).integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    specs = {"front": KeySpec("uint8", (6, 8, 3), encoding="rgb8")}
    with EpisodeWriter(src, specs, KeySpec("float32", (2,)), env_args=ENV_ARGS) as w:
        w.write_episode(
            obs={"front": frames}, actions=np.zeros((n, 2), np.float32),
            rewards=np.zeros(n, np.float32), dones=np.arange(n) == n - 1,
        )  # fmt: skip
    export_robomimic(src, dst, cameras={"front": "base_0_rgb"})
    assert obs_reads == [256, 256, 88]
    with h5py.File(dst) as f:
        np.testing.assert_array_equal(f["data/demo_0/obs/base_0_rgb"][:], frames)
