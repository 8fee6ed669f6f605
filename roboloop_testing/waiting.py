"""Waiting on a condition in tests that drive node processes: never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


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
