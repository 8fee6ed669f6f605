"""Crash safety: a real writer process is SIGKILLed; completed episodes must survive bit-exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from episode_dataset import EpisodeReader, EpisodeWriter, KeySpec, validate_file

REPO = Path(__file__).resolve().parents[1]
N_COMPLETE = 4

# The child regenerates episodes with this function (imported from this file by path), so the
# parent can compare what it reads back with what the child wrote, from the seed alone.
CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_episode_dataset_crash import make_episode, SPECS, ACTION
    from episode_dataset import EpisodeWriter

    mode, path, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
    w = EpisodeWriter(path, SPECS, ACTION, env_args={{"env_name": "crash"}}, index_every_s=every)
    if mode == "mid_episode":
        for i in range({n}):
            if i % 2:
                w.write_episode(**make_episode(i), metadata={{"seed": i}})
            else:  # half of them through the streaming API
                ep = make_episode(i)
                w.begin_episode({{"seed": i}})
                for t in range(len(ep["actions"])):
                    w.append_step({{k: v[t] for k, v in ep["obs"].items()}}, ep["actions"][t],
                                  ep["rewards"][t], ep["dones"][t])
                w.end_episode()
        ep = make_episode(999, steps=5000)
        w.begin_episode({{"seed": 999}})
        for t in range(5000):
            w.append_step({{k: v[t] for k, v in ep["obs"].items()}}, ep["actions"][t],
                          ep["rewards"][t], ep["dones"][t])
            if t == 300:
                print(f"MID committed={{len(w.episodes)}} steps={{w.current_steps}}", flush=True)
            if t > 300:
                time.sleep(0.0005)
        time.sleep(60)  # never ends on its own before the parent kills it
    else:  # commit_loop: commit short episodes back to back; the kill lands anywhere
        i = 0
        while True:
            w.write_episode(**make_episode(i, steps=3 + i % 5), metadata={{"seed": i}})
            print(f"COMMITTED {{i}}", flush=True)
            i += 1
    """
)

SPECS = {
    "state": KeySpec("float32", (7,)),
    "image": KeySpec("uint8", (24, 32, 3), encoding="rgb8", source_topic="/cam"),
}
ACTION = KeySpec("float32", (3,))


def make_episode(seed: int, steps: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(20, 60)) if steps is None else steps
    return {
        "obs": {
            "state": rng.normal(size=(steps, 7)).astype(np.float32),
            "image": rng.integers(0, 256, size=(steps, 24, 32, 3), dtype=np.uint8),
        },
        "actions": rng.normal(size=(steps, 3)).astype(np.float32),
        "rewards": rng.normal(size=steps).astype(np.float32),
        "dones": np.arange(steps) == steps - 1,
    }


def _start(mode: str, path: Path, index_every_s: float = 0.0) -> subprocess.Popen[str]:
    script = path.parent / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), n=N_COMPLETE))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(path), str(index_every_s)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _assert_bit_exact(path: Path, names: list[str], steps: dict[int, int | None]) -> None:
    with EpisodeReader(path) as r:
        assert r.episodes == names
        for name in names:
            i = int(name.split("_")[1])
            ep = make_episode(i, steps.get(i))
            for key, arr in ep["obs"].items():
                got = r.read_obs(name, key)
                assert got.dtype == arr.dtype and np.array_equal(got, arr), f"{name}/{key}"
            assert np.array_equal(r.read_actions(name), ep["actions"])
            assert np.array_equal(r.read_rewards(name), ep["rewards"])
            assert np.array_equal(r.read_dones(name), ep["dones"])
            assert r.episode_metadata(name)["seed"] == i


def test_sigkill_mid_episode_keeps_completed_episodes(tmp_path: Path) -> None:
    path = tmp_path / "crash.hdf5"
    proc = _start("mid_episode", path)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith(f"MID committed={N_COMPLETE} steps=301"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        time.sleep(0.05)  # let it keep appending so the kill lands inside buffered writes
    finally:
        _kill(proc)
    # The open episode was being staged when the process died.
    shard_dir = path.with_name(path.name + ".episodes")
    assert (shard_dir / f"demo_{N_COMPLETE}.h5.partial").exists()
    summary = validate_file(path)
    assert summary.num_episodes == N_COMPLETE
    names = [f"demo_{i}" for i in range(N_COMPLETE)]
    _assert_bit_exact(path, names, {})
    # A new writer cleans up the dead staging file and continues the numbering.
    with EpisodeWriter(path) as w:
        assert not (shard_dir / f"demo_{N_COMPLETE}.h5.partial").exists()
        assert w.write_episode(**make_episode(N_COMPLETE), metadata={"seed": N_COMPLETE}) == (
            f"demo_{N_COMPLETE}"
        )
    _assert_bit_exact(path, [*names, f"demo_{N_COMPLETE}"], {N_COMPLETE: None})


def _steps(i: int) -> int:
    return 3 + i % 5


def _committed_at_least(proc: subprocess.Popen[str], n: int) -> int:
    """Read the commit loop's lines until it reported episode `n`; the last one reported."""
    assert proc.stdout is not None
    reported = -1
    while reported < n:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "child died"
        reported = int(line.split()[1])
    return reported


def test_sigkill_during_back_to_back_commits(tmp_path: Path) -> None:
    # The kill lands at arbitrary points of the commit sequence (shard write, shard rename,
    # index rewrite, index rename); every state on disk must be a valid dataset.
    rng = np.random.default_rng(0)
    for trial in range(3):
        path = tmp_path / f"loop{trial}.hdf5"
        proc = _start("commit_loop", path)
        try:
            reported = _committed_at_least(proc, 5)
            time.sleep(float(rng.uniform(0, 0.02)))
        finally:
            _kill(proc)
        validate_file(path)
        with EpisodeReader(path) as r:
            names = r.episodes
        assert len(names) >= reported + 1  # everything reported committed is there
        assert names == [f"demo_{i}" for i in range(len(names))]
        _assert_bit_exact(path, names, {i: _steps(i) for i in range(len(names))})


def test_sigkill_during_batch_commits_keeps_listed_episodes(tmp_path: Path) -> None:
    # A batch writer (import-bag) lists its shards in the index every index_every_s: a kill
    # loses the episodes ended since, never the index or a listed episode.
    path = tmp_path / "batch.hdf5"
    proc = _start("commit_loop", path, index_every_s=0.05)
    try:
        reported = _committed_at_least(proc, 40)
        # and go on for a few index periods: 40 commits may take less than one
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            reported = _committed_at_least(proc, reported + 1)
    finally:
        _kill(proc)
    validate_file(path)
    with EpisodeReader(path) as r:
        names = r.episodes
    assert 0 < len(names) <= reported + 1
    assert names == [f"demo_{i}" for i in range(len(names))]
    _assert_bit_exact(path, names, {i: _steps(i) for i in range(len(names))})
    # The next writer numbers on from the index, over shards that were never listed.
    with EpisodeWriter(path) as w:
        assert w.write_episode(**make_episode(7, steps=4), metadata={"seed": 7}) == (
            f"demo_{len(names)}"
        )
    with EpisodeReader(path) as r:
        assert r.num_steps(f"demo_{len(names)}") == 4
