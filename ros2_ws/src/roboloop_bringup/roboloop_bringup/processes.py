"""Start and stop ROS 2 node processes (console scripts) without importing rclpy.

Used by `make demo`, the tests and the benchmarks, with `launch_standin` for launch files.

Every child gets DDS on loopback only (LOOPBACK_DDS), a private ROS_DOMAIN_ID and its own
ROS_LOG_DIR (see /work/shared/ROS2_FROM_PYPI.md). Stopping goes SIGINT -> SIGTERM -> SIGKILL
because only SIGINT and SIGTERM let Fast DDS remove its shared-memory files; after a SIGKILL,
`remove_shm_of` cleans the files the dead process had mapped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The workspace's ROS packages (ros2_ws/src): this module runs from the source tree (the
# editable install of `make venv`), never from a colcon install.
SRC = Path(__file__).resolve().parents[2]
# Fast DDS on 127.0.0.1 and shared memory only; the profile's comment says why it goes with
# SYSTEM_DEFAULT (rmw_fastrtps' LOCALHOST adds a transport bound to every interface).
DDS_PROFILE = SRC / "roboloop_node_common/config/fastdds_loopback.xml"
LOOPBACK_DDS = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT",
    "FASTDDS_DEFAULT_PROFILES_FILE": str(DDS_PROFILE),
}
SHM_DIR = Path("/dev/shm")
_SHM_PREFIXES = ("fastdds_", "fast_datasharing", "sem.fastdds_")
# Shared-memory files of every process this interpreter SIGKILLed that a live peer still held
# then; `remove_killed_shm` retries them once the peers have exited.
_KILLED_SHM: set[str] = set()
# Every node process `start_node` started in this interpreter (the test suite checks that none
# is left running).
STARTED: list[RosProcess] = []


def ros_env(
    domain_id: int | str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a process that touches ROS: DDS on loopback, domain, log dir."""
    if not DDS_PROFILE.is_file():  # without it Fast DDS would fall back to network multicast
        raise FileNotFoundError(f"ros_env: Fast DDS profile {DDS_PROFILE} is missing")
    env = dict(os.environ if base is None else base)
    env.update(LOOPBACK_DDS)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    if "ROS_DOMAIN_ID" not in env:
        raise ValueError("ros_env: no ROS_DOMAIN_ID given or inherited (use a private domain)")
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    if "ROS_LOG_DIR" not in env and "ROS_HOME" not in env:
        raise ValueError("ros_env: no ROS_LOG_DIR given or inherited")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def executable_path(name: str) -> str:
    """The console script `name` next to this interpreter (the venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} not found next to {sys.executable}")
    return found


def node_command(
    executable: str,
    params_file: str | os.PathLike[str] | None = None,
    params: Mapping[str, object] | None = None,
    node_name: str | None = None,
) -> list[str]:
    """`EXE --ros-args [--params-file F] [-r __node:=N] [-p k:=v ...]`."""
    cmd = [executable_path(executable), "--ros-args"]
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise FileNotFoundError(f"params file {path} does not exist")
        cmd += ["--params-file", str(path)]
    if node_name is not None:
        cmd += ["-r", f"__node:={node_name}"]
    for key, value in (params or {}).items():
        cmd += ["-p", f"{key}:={_param_literal(value)}"]
    return cmd


def _param_literal(value: object) -> str:
    # `-p` values are parsed as YAML by rcl.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_param_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


@dataclass
class RosProcess:
    """A running node process whose stdout+stderr go to `log_path`."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    shm_files: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float) -> bool:
        """True once `text` appears in the log; False on timeout or when the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return True
            if not self.alive():
                return text in self.log_text()
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL (each waits up to `timeout`/2). Returns the code."""
        for sig, wait in ((signal.SIGINT, timeout / 2), (signal.SIGTERM, timeout / 2)):
            if not self.alive():
                break
            self.popen.send_signal(sig)
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        if self.alive():
            self.kill()
        return self.popen.returncode

    def cleanup_shm(self) -> list[str]:
        """Retry removing the dead process's shm files (after the peers that shared them exit)."""
        return remove_shm_of(self.shm_files) if not self.alive() else []

    def kill(self) -> int:
        """SIGKILL (like a crash), then remove the shared-memory files only this process held."""
        held = shm_files_of(self.pid) if self.alive() else set()
        self.shm_files |= held
        self.popen.kill()
        self.popen.wait()
        removed = remove_shm_of(self.shm_files)
        _KILLED_SHM.update(self.shm_files - set(removed))
        return self.popen.returncode


def start_node(
    executable: str,
    *,
    params_file: str | os.PathLike[str] | None = None,
    params: Mapping[str, object] | None = None,
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    domain_id: int | None = None,
    node_name: str | None = None,
    extra_args: Sequence[str] = (),
) -> RosProcess:
    """Start console script `executable` as a child node process (logs to `log_path`)."""
    cmd = node_command(executable, params_file, params, node_name) + list(extra_args)
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    child_env = ros_env(domain_id, base=env)
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
    proc = RosProcess(name=executable, popen=popen, log_path=log)
    STARTED.append(proc)
    return proc


def shm_files_of(pid: int) -> set[str]:
    """Fast DDS shared-memory files that process `pid` has mapped or open (/proc)."""
    found: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if path.startswith(str(SHM_DIR)) and _is_fastdds(Path(path).name):
                    found.add(path.removesuffix(" (deleted)"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return found
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(SHM_DIR)) and _is_fastdds(Path(target).name):
                found.add(target)
    except (FileNotFoundError, PermissionError):
        pass
    return found


def remove_killed_shm() -> list[str]:
    """Remove what SIGKILLed processes left in /dev/shm that no live process holds any more."""
    removed = remove_shm_of(_KILLED_SHM)
    _KILLED_SHM.difference_update(p for p in list(_KILLED_SHM) if not os.path.exists(p))
    return removed


def _is_fastdds(name: str) -> bool:
    return name.startswith(_SHM_PREFIXES)


def remove_shm_of(paths: set[str]) -> list[str]:
    """Remove the given shm files (and their `_el`/`_sl` lock siblings) that no live process holds.

    Port segments are shared between processes; anything still mapped by a live process stays.
    """
    candidates = set(paths)
    for p in paths:
        for suffix in ("_el", "_sl", ".lock"):
            candidates.add(p + suffix)
    in_use: set[str] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            in_use |= shm_files_of(int(proc.name)) & candidates
    removed = []
    for p in sorted(candidates - in_use):
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, procs: Any | Sequence[Any] = ()
) -> None:
    """Poll `condition` until it holds. Fails at once if a watched process (a RosProcess, or a
    sequence of them) has exited, and after `timeout` s, with the processes' log tails."""
    watched = list(procs) if isinstance(procs, (list, tuple)) else [procs]
    deadline = time.monotonic() + timeout
    while not condition():
        for p in watched:
            if not p.alive():
                raise AssertionError(f"{p.name} exited early:\n{p.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {p.name} log ---\n{p.log_text()[-2000:]}" for p in watched)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{logs}")
        time.sleep(0.02)
