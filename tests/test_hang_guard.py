"""roboloop_testing.hang_guard: a test that hangs with the GIL held by another thread ends the
pytest process with every thread's stack (pytest-timeout alone waits forever)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HANGING_TEST = textwrap.dedent(
    """
    import ctypes
    import signal
    import threading
    import time


    def hold_the_gil():
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        ctypes.PyDLL(None).pause()  # a PyDLL call keeps the GIL; no signal ends it here


    def test_hangs_holding_the_gil():
        threading.Thread(target=hold_the_gil, daemon=True).start()
        time.sleep(60)
    """
)


def run_pytest(tmp_path: Path, *plugins: str, wait_s: float) -> subprocess.CompletedProcess:
    """pytest on the hanging test with a 2 s timeout; returncode None: still running after
    `wait_s` (then killed)."""
    (tmp_path / "test_hang.py").write_text(HANGING_TEST)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROBOLOOP_HANG_GUARD_GRACE_S": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"]
    cmd += [arg for plugin in plugins for arg in ("-p", plugin)]
    cmd += ["--timeout=2", "test_hang.py"]
    try:
        return subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=wait_s
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, None, "", "")


def test_a_hang_with_the_gil_held_ends_with_every_stack(tmp_path: Path) -> None:
    guarded = run_pytest(tmp_path, "roboloop_testing.hang_guard", wait_s=60)
    assert guarded.returncode not in (None, 0)
    assert "Timeout (0:00:03)!" in guarded.stderr
    assert "in hold_the_gil" in guarded.stderr  # the thread that holds the GIL
    assert "in test_hangs_holding_the_gil" in guarded.stderr  # the test it keeps waiting


def test_without_the_guard_the_same_test_hangs(tmp_path: Path) -> None:
    """What the guard is for: pytest-timeout's signal handler never gets the GIL."""
    assert run_pytest(tmp_path, wait_s=6).returncode is None
