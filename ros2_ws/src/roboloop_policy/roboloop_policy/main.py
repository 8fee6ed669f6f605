"""Console script `policy_node`: stop signals are caught before the node's heavy imports."""

from __future__ import annotations

from roboloop_node_common.entry import run_console_script


def policy_node() -> int:
    return run_console_script("roboloop_policy.node")
