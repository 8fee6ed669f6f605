"""Run one job per item on every core with visible progress (the NAMO CLIs share this).

On a terminal, progress is a rich bar; anywhere else (a log file, a pipe, CI) rich would draw
nothing until the end, so a plain line ``label: done/total (pct), elapsed, eta`` is printed
at most every ``every_s`` seconds and once at the end.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, TextIO

from rich.progress import Progress


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LineProgress:
    """Progress as plain lines for non-terminals (same ``advance`` as the bar's task)."""

    def __init__(self, label: str, total: int, stream: TextIO, every_s: float = 10.0):
        self.label, self.total, self.stream, self.every_s = label, total, stream, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def advance(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            print(
                f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{elapsed:.0f} s elapsed, eta {eta:.0f} s",
                file=self.stream,
                flush=True,
            )


@contextmanager
def progress_steps(
    label: str, total: int, enabled: bool = True, stream: TextIO | None = None
) -> Iterator[Callable[[], None]]:
    """``with progress_steps("episodes", n) as advance:`` call ``advance()`` per finished item:
    a rich bar on a terminal, plain lines (``LineProgress``) anywhere else."""
    stream = stream or sys.stdout
    terminal = stream.isatty()
    with Progress(disable=not (enabled and terminal)) as bar:
        task = bar.add_task(label, total=total)
        lines = LineProgress(label, total, stream) if enabled and not terminal else None

        def advance() -> None:
            bar.advance(task)
            if lines is not None:
                lines.advance()

        yield advance


def _leave_ctrl_c_to_the_parent() -> None:
    # A Ctrl-C reaches every process of the terminal's group: the parent stops the pool, so
    # its workers need not print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pool stops its workers with SIGTERM: one ignored by whoever started the command (it is
    # inherited across exec) left them solving every episode after a Ctrl-C.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def imap_progress(
    job: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int | None = None,
    label: str = "items",
    progress: bool = True,
    stream: TextIO | None = None,
) -> Iterator[Any]:
    """Yield ``job(item)`` for every item, in completion order, from ``workers`` spawned
    processes (default: every usable core; 1 runs in this process)."""
    items = list(items)
    workers = max(1, min(workers or usable_cores(), len(items) or 1))
    with progress_steps(label, len(items), progress, stream) as advance:
        if workers == 1:
            results: Iterable[Any] = map(job, items)
        else:
            # spawn: workers do not inherit the parent's threads/locks (safe under pytest, ROS).
            pool = get_context("spawn").Pool(workers, initializer=_leave_ctrl_c_to_the_parent)
            results = pool.imap_unordered(job, items)
        try:
            for result in results:
                advance()
                yield result
        except BaseException:  # a failed job or a consumer that stops early: stop the workers
            if workers > 1:
                pool.terminate()
            raise
        if workers > 1:
            pool.close()
            pool.join()
