"""MCTS data collection + mask generation CLIs, and the shipped tests/data/namo_tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.namo import mask_generation, render
from sim.namo.episodes import EpisodeFileError, read_episode, solve_episode
from sim.namo.keys import ACTION_KEYS, FILE_RE, STATE_KEYS
from sim.namo.mask_generation import render_episode
from sim.namo.mcts import MCTSConfig

TINY = Path(__file__).parent / "data" / "namo_tiny"
SEED000 = (*STATE_KEYS, *ACTION_KEYS, "goal_q_value", "object_id", "goal_coordinates")
SEED001 = ("robot_image", "goal_image", "movable_objects_image", "static_objects_image")
SEED001 += ("target_object", "target_goal")


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _check_file(path: Path, size: int) -> dict:
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    assert set(SEED000) | set(SEED001) <= set(data), path
    for key in (*STATE_KEYS, *ACTION_KEYS, *SEED001):
        assert data[key].shape == (size, size) and data[key].dtype == np.float32, (path, key)
        assert 0.0 <= data[key].min() and data[key].max() <= 1.0, (path, key)
    assert data["goal_q_value"].dtype == np.float32 and data["goal_q_value"].shape == ()
    assert data["goal_coordinates"].dtype == np.float32 and data["goal_coordinates"].shape == (3,)
    assert data["object_id"].dtype.kind == "U"
    return data


def test_collection_and_mask_clis_end_to_end(tmp_path: Path) -> None:
    episodes, masks = tmp_path / "episodes", tmp_path / "masks"
    out = _run(
        "sim.namo.parallel_data_collection", "--output-dir", str(episodes),
        "--start-idx", "1", "--end-idx", "4", "--mcts-budget", "10", "--workers", "2",
    )  # fmt: skip
    # Off a terminal, progress is plain lines; the run ends with the one-line summary.
    assert "MCTS episodes (easy): 3/3 (100%)" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("3 easy episodes") and "solved 3/3 (1.00)" in summary
    assert "on 2 workers" in summary
    assert sorted(p.name for p in episodes.glob("*.json")) == [
        f"episode_{e}.json" for e in (1, 2, 3)
    ]
    _run(
        "sim.namo.mask_generation", "batch", "--input-dir", str(episodes),
        "--output-dir", str(masks), "--image-size", "32", "--workers", "1",
    )  # fmt: skip
    expected = set()
    for e in (1, 2, 3):
        ep = read_episode(episodes / f"episode_{e}.json")
        assert ep["solved"] and ep["moves"] >= 1  # these scenes start blocked
        for g, d in enumerate(ep["decisions"]):
            for p, (prop, q) in enumerate(zip(d["proposals"], d["q_values"], strict=True)):
                name = f"episode_{e}_goal_{g}_proposal_{p}.npz"
                expected.add(name)
                data = _check_file(masks / name, 32)
                assert data["goal_q_value"] == np.float32(q)
                assert str(data["object_id"]) == prop[0]
                np.testing.assert_allclose(data["goal_coordinates"], prop[1:], atol=1e-5)
                assert int(data["chosen"]) == int(p == d["chosen"])
    assert {p.name for p in masks.glob("*.npz")} == expected


def test_bad_episode_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "episode_9.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="episode_9.json: format"):
        read_episode(bad)


def _corrupt(edit) -> str:  # noqa: ANN001  (edits the shipped episode 4's dict in place)
    episode = json.loads((TINY / "episodes" / "episode_4.json").read_text())
    edit(episode)
    return json.dumps(episode)


CORRUPT = {  # name: (file text, what the one line says)
    "cut": ('{"format": "roboloop.namo.ep', "cannot read episode"),
    "not_utf8": ("\udcff", "cannot read episode"),
    "a_list": ("[1, 2]", "a JSON list, not an episode object"),
    "state_null": (
        _corrupt(lambda e: e["decisions"][0].update(state=None)),
        "decision 0: state unusable",
    ),
    "no_q_values": (
        _corrupt(lambda e: e["decisions"][0].pop("q_values")),
        "decision 0: missing key 'q_values'",
    ),
    "q_short": (
        _corrupt(lambda e: e["decisions"][0]["q_values"].pop()),
        "decision 0: 16 proposals but 15 q_values",
    ),
    "unknown_object": (
        _corrupt(lambda e: e["decisions"][0]["proposals"][0].__setitem__(0, "ghost")),
        "decision 0: proposals move ['ghost']",
    ),
    "scene_width": (
        _corrupt(lambda e: e["scene"].update(width="wide")),
        "scene unusable (could not convert string to float: 'wide')",
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_episode_is_one_line_naming_the_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text, says = CORRUPT[case]
    bad = tmp_path / "in" / "episode_4.json"
    bad.parent.mkdir()
    bad.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(EpisodeFileError, match="episode_4.json: ") as err:
        read_episode(bad)
    assert says in str(err.value) and "\n" not in str(err.value)
    for prog, argv in [
        (mask_generation, ["batch", "--input-dir", str(bad.parent), "--output-dir",
                           str(tmp_path / "out"), "--workers", "1", "--image-size", "32"]),
        (render, [str(bad), "--out", str(tmp_path / "x.png")]),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            prog.main(argv)
        line = capsys.readouterr().err
        assert exit_.value.code == 1 and len(line.splitlines()) == 1, line
        assert f"{bad}: " in line and says in line, line
    assert not list((tmp_path / "out").glob("*.npz")) and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("size", ["3", "31", "513", "100000"])
def test_mask_image_size_out_of_range_is_refused_before_any_work(
    size: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["batch", "--input-dir", str(TINY / "episodes"), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        mask_generation.main([*argv, "--image-size", size])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not (tmp_path / "o").exists()
    assert f"argument --image-size: must be an integer in [32, 512], got '{size}'" in err


def test_shipped_tiny_dataset_is_complete_small_and_reproducible(tmp_path: Path) -> None:
    files = sorted(TINY.glob("*.npz"))
    assert len(files) >= 32
    assert sum(f.stat().st_size for f in TINY.rglob("*")) < 5 * 2**20
    assert all(FILE_RE.match(f.name) for f in files)
    for f in files[::10]:
        _check_file(f, 64)
    # Re-solving one episode with its recorded config gives the same decisions and files.
    shipped = read_episode(TINY / "episodes" / "episode_4.json")
    again = solve_episode(4, MCTSConfig(**shipped["mcts_config"]))
    assert again["decisions"] == [
        {**d, "seconds": again["decisions"][k]["seconds"]}
        for k, d in enumerate(shipped["decisions"])
    ]
    render_episode(TINY / "episodes" / "episode_4.json", tmp_path, size=64)
    for f in tmp_path.glob("*.npz"):
        with np.load(f) as new, np.load(TINY / f.name) as old:
            for key in new.files:
                np.testing.assert_array_equal(new[key], old[key], err_msg=f"{f.name}:{key}")


def test_collection_goes_on_where_it_stopped_and_refuses_other_settings(tmp_path: Path) -> None:
    from sim.namo.parallel_data_collection import collect

    config = MCTSConfig(budget=10)
    rows = collect(tmp_path, 1, 5, config, workers=1, progress=False)
    kept = {e: (tmp_path / f"episode_{e}.json").stat().st_mtime_ns for e in (1, 2, 4)}
    (tmp_path / "episode_3.json").unlink()  # as if the run had stopped before it
    again = collect(tmp_path, 1, 5, config, workers=1, progress=False)
    assert [r[:3] for r in again] == [r[:3] for r in rows]  # episode, solved, moves
    assert {e: (tmp_path / f"episode_{e}.json").stat().st_mtime_ns for e in kept} == kept
    assert read_episode(tmp_path / "episode_3.json")["max_moves"] == 5
    # a file from other settings would mix two datasets: one line, nothing solved
    with pytest.raises(
        EpisodeFileError, match=r"episode_1.json: .*mcts_config.budget 10, this run 20"
    ):
        collect(tmp_path, 1, 6, MCTSConfig(budget=20), workers=1, progress=False)
    with pytest.raises(EpisodeFileError, match="max_moves 5, this run 3"):
        collect(tmp_path, 1, 6, config, max_moves=3, workers=1, progress=False)
    assert not (tmp_path / "episode_5.json").exists()


def _interrupt_when(proc: subprocess.Popen, ready) -> tuple[str, str]:  # noqa: ANN001
    """SIGINT to the process's group (what a terminal's Ctrl-C does) once `ready()`."""
    import os
    import signal
    import time

    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=60)


def _sigterm_ignored() -> None:
    """The command starts with SIGTERM ignored, as a launcher may leave it (inherited across
    exec): the pool still stops its workers with it after a Ctrl-C (before, they went on to
    solve every episode: once all 400 of the 400 asked, on a loaded CI host)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def test_ctrl_c_stops_collection_and_masks_in_one_line_with_whole_files(tmp_path: Path) -> None:
    episodes, masks = tmp_path / "episodes", tmp_path / "masks"
    cmd = [sys.executable, "-m", "sim.namo.parallel_data_collection", "--output-dir"]
    # more episodes than any machine solves before the signal
    cmd += [str(episodes), "--start-idx", "0", "--end-idx", "100000", "--level", "medium"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_sigterm_ignored,
    )  # fmt: skip
    _, err = _interrupt_when(proc, lambda: len(list(episodes.glob("*.json"))) >= 2)
    done = sorted(episodes.glob("episode_*.json"))
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().endswith(
        f"interrupted: {len(done)} of 100000 episodes are in {episodes}; the same command goes on "
        "from there"
    ), err[-3000:]
    assert 2 <= len(done) < 100000 and all(read_episode(p)["solved"] for p in done)

    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.namo.mask_generation", "batch", "--input-dir", str(episodes),
         "--output-dir", str(masks), "--image-size", "224", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    _, err = _interrupt_when(proc, lambda: len(list(masks.glob("*.npz"))) >= 5)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "interrupted: the mask files" in err and len(err.strip().splitlines()) == 1, err
    for path in masks.glob("*.npz"):  # each one whole: renamed into place once written
        _check_file(path, 224)
