"""Console script `sim_bridge`: stop signals are caught before the node's heavy imports.

MuJoCo picks its GL backend when it is imported: EGL unless the caller chose (GLFW needs a
display, and failing to load it surfaced as a misleading configure error).
"""

from __future__ import annotations

from roboloop_node_common.entry import run_console_script


def sim_bridge() -> int:
    return run_console_script("roboloop_sim_bridge.node", environment={"MUJOCO_GL": "egl"})
