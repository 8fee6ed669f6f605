"""Readers never print a traceback for a bad file (issue 8, defect 7).

Fuzz: truncations and 4-byte flips at random offsets (fixed seed) of a small real dataset, both
layouts: a packed file, and a linked one (the index file or one episode shard). For each damaged
copy `validate`, `info` and the learning DataModule (setup plus one batch) must either raise one
DatasetError line naming the file, or give exactly the original's data. Most cases run
in-process; a handful go through the real `python -m episode_dataset` CLI.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from rich.console import Console

from episode_dataset import DatasetError, EpisodeReader, EpisodeWriter, KeySpec, pack
from episode_dataset.cli import info
from episode_dataset.validate import validate_file
from learning.data.episode_datamodule import EpisodeDataModule
from roboloop_testing.damage import damage

REPO = Path(__file__).resolve().parents[1]
SEED, CASES = 8, 300
# (layout, file to damage relative to the dataset dir); the dataset is always read via its file.
TARGETS = [
    ("packed.hdf5", "packed.hdf5"),
    ("linked.hdf5", "linked.hdf5"),
    ("linked.hdf5", "linked.hdf5.episodes/demo_1.h5"),
]


def write_dataset(path: Path) -> Path:
    """3 episodes with noisy images (a regular pattern makes checksum collisions likely), low-dim
    state, per-episode metadata and a filter mask."""
    rng = np.random.default_rng(0)
    specs = {
        "state": KeySpec("float32", (4,)),
        "image": KeySpec("uint8", (8, 8, 3), encoding="rgb8", source_topic="/cam"),
    }
    env_args = {"env_name": "toy", "control_rate_hz": 20.0}
    with EpisodeWriter(path, specs, KeySpec("float32", (2,)), env_args, fsync=False) as w:
        for e in range(3):
            n = 10 + e
            obs = {
                "state": rng.standard_normal((n, 4)).astype(np.float32),
                "image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            }
            actions = rng.standard_normal((n, 2)).astype(np.float32)
            rewards = rng.standard_normal(n).astype(np.float32)
            w.write_episode(obs, actions, rewards, np.arange(n) == n - 1, metadata={"seed": e})
        w.add_filter("train", ["demo_0", "demo_2"])
    return path


def snapshot(path: Path) -> dict[str, Any]:
    """Everything a reader returns about the dataset, arrays included."""
    validate_file(path)
    with EpisodeReader(path) as r:
        out: dict[str, Any] = {
            "header": (r.env_args, r.obs_specs, r.action_spec, r.episodes, r.total_steps),
            "filters": {name: r.filter(name) for name in r.filters},
        }
        for ep in r.episodes:
            out[ep] = (r.read_episode(ep), r.episode_metadata(ep), r.num_steps(ep))
    return out


def info_text(path: Path) -> str:
    buf = io.StringIO()
    info(path, 50, Console(file=buf, width=160))
    return buf.getvalue()


def datamodule_batches(path: Path) -> dict[str, Any]:
    dm = EpisodeDataModule(str(path), obs_steps=2, horizon=3, batch_size=64, val_fraction=0.34)
    dm.setup("fit")
    torch.manual_seed(0)
    return {
        "kwargs": dm.model_kwargs(),
        "val": next(iter(dm.val_dataloader())),
        "train": next(iter(dm.train_dataloader())),
    }


READERS: dict[str, Callable[[Path], Any]] = {
    "validate": snapshot,
    "info": info_text,
    "datamodule": datamodule_batches,
}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    pack(write_dataset(root / "linked.hdf5"), root / "packed.hdf5")
    return root


def cases(root: Path) -> list[tuple[str, str, str, bytes]]:
    """(dataset file, damaged file, what was done, its bytes): the same cases on every run."""
    rng = np.random.default_rng(SEED)
    out = []
    for i in range(CASES):
        layout, target = TARGETS[i % len(TARGETS)]
        label, data = damage((root / target).read_bytes(), rng)
        out.append((layout, target, label, data))
    return out


def test_fuzzed_files_give_one_line_errors_or_identical_data(dataset: Path) -> None:
    expected = {
        layout: {n: read(dataset / layout) for n, read in READERS.items()} for layout, _ in TARGETS
    }
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    for layout, target, label, data in cases(dataset):
        pristine = (dataset / target).read_bytes()
        (dataset / target).write_bytes(data)
        try:
            for name, read in READERS.items():
                try:
                    got = read(dataset / layout)
                except DatasetError as err:
                    outcomes[f"{name}: DatasetError"] += 1
                    text = str(err)
                    if "\n" in text or str(dataset) not in text:
                        problems.append(f"{target} {label}: {name}: unclear error {text!r}")
                    continue
                except Exception as err:  # the defect: any other exception is a traceback
                    problems.append(f"{target} {label}: {name}: {type(err).__name__}: {err}")
                    continue
                outcomes[f"{name}: identical"] += 1
                if not same(got, expected[layout][name]):
                    problems.append(f"{target} {label}: {name}: returned different data")
        finally:
            (dataset / target).write_bytes(pristine)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    # Not vacuous: many cases are caught, others hit bytes no reader depends on (free space,
    # padding; the format's checksums leave few such bytes: 48 of 300 for validate).
    for name in READERS:
        assert outcomes[f"{name}: DatasetError"] > CASES // 5, outcomes
        assert outcomes[f"{name}: identical"] > CASES // 10, outcomes


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "episode_dataset", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_cli_on_fuzzed_files(dataset: Path, tmp_path: Path) -> None:
    """A handful of the damaged files through the real CLI: exit 1 with one stderr line, or 0."""
    caught = 0
    for layout, target, label, data in cases(dataset)[:6]:
        case = tmp_path / "case"
        shutil.copytree(dataset, case)
        (case / target).write_bytes(data)
        for command in ("validate", "info"):
            proc = cli(command, str(case / layout))
            if proc.returncode == 0:
                assert not proc.stderr.strip(), (target, label, proc.stderr)
            else:
                assert_one_line_error(proc, str(case / layout))
                caught += 1
        shutil.rmtree(case)
    assert caught >= 4


def test_cli_names_a_deleted_key(dataset: Path, tmp_path: Path) -> None:
    case = tmp_path / "case"
    shutil.copytree(dataset, case)
    with h5py.File(case / "linked.hdf5.episodes/demo_1.h5", "r+") as f:
        del f["demo_1/obs/state"]
    for command in ("info", "validate"):
        line = assert_one_line_error(cli(command, str(case / "linked.hdf5")), "demo_1/obs/state")
        assert "missing" in line, line


@pytest.mark.parametrize(
    ("layout", "target", "text", "edit", "where"),
    [
        ("linked.hdf5", "linked.hdf5.episodes/demo_1.h5", b'"seed": 1', b'"seed": 7', "'/demo_1'"),
        ("linked.hdf5", "linked.hdf5", b'"toy"', b'"tox"', "'data'"),
        ("packed.hdf5", "packed.hdf5", b'"seed": 1', b'"seed": 7', "'demo_1'"),
    ],
)
def test_edited_attribute_text_is_an_error_not_another_value(
    dataset: Path, tmp_path: Path, layout: str, target: str, text: bytes, edit: bytes, where: str
) -> None:
    """Attribute text (metadata, env_args) lives in checksummed object headers: an edit that
    keeps valid JSON fails the checksum, and the reader names the object instead of calling it
    missing. Strings stay out of HDF5's global heap, whose damaged bytes made HDF5 loop forever
    (found by this fuzzing over ~5,700 cases before the format changed)."""
    case = tmp_path / "case"
    shutil.copytree(dataset, case)
    for path in case.rglob("*.h*5"):
        assert b"GCOL" not in path.read_bytes(), path  # no global heap collection
    data = (case / target).read_bytes()
    assert data.count(text) == 1
    (case / target).write_bytes(data.replace(text, edit))
    for read in (snapshot, info_text):
        with pytest.raises(DatasetError, match=f"{where}: unreadable.*checksum"):
            read(case / layout)
