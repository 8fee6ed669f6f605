"""Console scripts `q_scorer`, `namo_planner`: stop signals are caught before heavy imports."""

from __future__ import annotations

from roboloop_node_common.entry import run_console_script


def q_scorer() -> int:
    return run_console_script("roboloop_namo.q_scorer")


def namo_planner() -> int:
    return run_console_script("roboloop_namo.planner_node")
