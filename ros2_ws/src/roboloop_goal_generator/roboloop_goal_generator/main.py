"""Console script `goal_generator`: stop signals are caught before the node's heavy imports."""

from __future__ import annotations

from roboloop_node_common.entry import run_console_script


def goal_generator() -> int:
    return run_console_script("roboloop_goal_generator.node")
