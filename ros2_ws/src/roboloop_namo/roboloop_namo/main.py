"""Console script `q_scorer`: stop signals are caught before the node's heavy imports."""

from __future__ import annotations

from roboloop_node_common.entry import run_console_script


def q_scorer() -> int:
    return run_console_script("roboloop_namo.q_scorer")
