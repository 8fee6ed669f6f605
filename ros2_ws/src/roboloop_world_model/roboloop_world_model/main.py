"""Console script `world_model_node`: stop signals are caught before the node's heavy imports."""

from __future__ import annotations

from roboloop_node_common.entry import run_console_script


def world_model_node() -> int:
    return run_console_script("roboloop_world_model.node")
