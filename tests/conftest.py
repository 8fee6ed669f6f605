"""Suite-wide environment: a private ROS domain per xdist worker, DDS on loopback only, EGL."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import tempfile

import pytest
from roboloop_bringup.processes import LOOPBACK_DDS, STARTED, remove_killed_shm
from roboloop_bringup.processes import ros_env as _ros_env

from roboloop_testing import hang_guard

_SHM_BEFORE: set[str] = set()
# test id -> Fast DDS files that appeared during the test and no live process held after it
_SHM_LEFT_BY: dict[str, list[str]] = {}
_STARTED_IN: dict[int, str] = {}  # pid of a node process -> the test that started it
_SHM_PATTERNS = ("/dev/shm/fastdds_*", "/dev/shm/fast_datasharing*", "/dev/shm/sem.fastdds_*")


def _shm_files() -> set[str]:
    return {f for pattern in _SHM_PATTERNS for f in glob.glob(pattern)}


def _mapped_shm_files() -> set[str]:
    """/dev/shm files mapped by any live process (from /proc/<pid>/maps)."""
    mapped: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                mapped.update(line.split()[-1] for line in f if "/dev/shm/" in line)
        except OSError:
            continue  # the process ended while we looked
    return mapped


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(hang_guard, "roboloop_hang_guard")
    # Runs in the controller before xdist workers spawn, so workers inherit these.
    os.environ.update(LOOPBACK_DDS)  # the shipped Fast DDS profile: 127.0.0.1 + shared memory
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="roboloop_roslog_"))
    if "ROBOLOOP_TEST_DOMAIN_BASE" not in os.environ:
        # A random even base in [2, 100) (Linux-safe domain ids) keeps concurrent runs apart.
        os.environ["ROBOLOOP_TEST_DOMAIN_BASE"] = str(random.randrange(2, 100, 2))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") else 0
    os.environ["ROS_DOMAIN_ID"] = str(int(os.environ["ROBOLOOP_TEST_DOMAIN_BASE"]) + index)
    _SHM_BEFORE.update(_shm_files())
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite must leave no node process running and no Fast DDS shared-memory files
    behind (checked once, by the controller, after every worker and node process has exited)."""
    if hasattr(session.config, "workerinput") or session.config.getoption("collectonly"):
        return
    running = [p for p in STARTED if p.alive()]
    for proc in running:  # a test that failed before stopping its nodes: stop them here
        proc.stop()
    remove_killed_shm()
    new = _shm_files() - _SHM_BEFORE
    # Processes the suite SIGKILLs on purpose (crash tests) cannot release Fast DDS's named port
    # mutexes; once no live process maps one, it is stale and the suite removes it. Anything
    # else (shared-memory segments, mutexes still mapped) is a leak and fails the run.
    mapped = _mapped_shm_files()
    for path in sorted(new):
        if "sem.fastdds_port" in path and path not in mapped:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    leftovers = sorted(_shm_files() - _SHM_BEFORE)
    if running:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            names = ", ".join(
                f"{p.name} (pid {p.pid}, from {_STARTED_IN.get(p.pid, '?')})" for p in running
            )
            reporter.write_line(f"ERROR: node processes left running: {names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"ERROR: the suite left {len(leftovers)} files in /dev/shm: "
                f"{', '.join(leftovers[:10])}",
                red=True,
            )
            for test, files in _SHM_LEFT_BY.items():
                reporter.write_line(f"  left after {test}: {', '.join(files[:10])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _attribute_shm_leaks(request: pytest.FixtureRequest):
    """Name the ROS test after which unheld Fast DDS files appeared (for the session's check)."""
    if request.node.get_closest_marker("ros") is None:
        yield
        return
    before, started = _shm_files(), len(STARTED)
    yield
    _STARTED_IN.update((p.pid, request.node.nodeid) for p in STARTED[started:])
    remove_killed_shm()
    mapped = _mapped_shm_files()
    left = sorted(f for f in _shm_files() - before if f not in mapped and "sem.fastdds" not in f)
    if left:
        _SHM_LEFT_BY[request.node.nodeid] = left


@pytest.fixture(scope="session")
def ros_env() -> dict[str, str]:
    """Environment for child processes that touch ROS (inherits the worker's private domain)."""
    return _ros_env()


@pytest.fixture
def obs_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of steps of every `EpisodeReader.read_obs` call the test makes, in order."""
    from episode_dataset.reader import EpisodeReader

    reads: list[int] = []
    read_obs = EpisodeReader.read_obs

    def counted(self, ep, key, start=0, stop=None):  # noqa: ANN001, ANN202
        values = read_obs(self, ep, key, start, stop)
        reads.append(len(values))
        return values

    monkeypatch.setattr(EpisodeReader, "read_obs", counted)
    return reads
