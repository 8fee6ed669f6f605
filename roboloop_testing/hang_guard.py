"""pytest plugin (registered by tests/conftest.py): a test that hangs while a thread holds the
GIL ends the run with every thread's stack instead of hanging it.

pytest-timeout's handler is Python code and needs the GIL: once (2026-12-07) a test worker
waited past its timeout with a SAC update thread spinning in native code, and the timeout never
fired. faulthandler's watchdog is a C thread that needs no GIL: `GRACE_S` seconds (env
`ROBOLOOP_HANG_GUARD_GRACE_S`, default 30) after a test's own timeout (its `timeout` mark, else
`--timeout`) it writes every thread's Python stack to stderr and exits the process (under xdist
the worker is reported crashed and replaced). Off for a test without a timeout, and when
`faulthandler_timeout` is set (one watchdog each).
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Generator

import pytest

_FD = pytest.StashKey[int]()
GRACE_S = float(os.environ.get("ROBOLOOP_HANG_GUARD_GRACE_S", "30"))


def pytest_configure(config: pytest.Config) -> None:
    # stderr as it is now (pytest's faulthandler plugin does the same): capture may swap it later
    config.stash[_FD] = os.dup(sys.__stderr__.fileno())


def pytest_unconfigure(config: pytest.Config) -> None:
    os.close(config.stash[_FD])


def _timeout_s(item: pytest.Item) -> float:
    mark = item.get_closest_marker("timeout")
    if mark is not None:
        value = mark.args[0] if mark.args else mark.kwargs.get("timeout")
    else:
        value = item.config.getoption("timeout", None) or item.config.getini("timeout")
    return float(value or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    config = item.config
    limit = _timeout_s(item)
    armed = limit > 0 and not float(config.getini("faulthandler_timeout") or 0)
    if armed:
        faulthandler.dump_traceback_later(limit + GRACE_S, exit=True, file=config.stash[_FD])
    try:
        yield
    finally:
        if armed:
            faulthandler.cancel_dump_traceback_later()
