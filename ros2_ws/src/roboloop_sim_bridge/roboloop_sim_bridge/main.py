"""Console script `sim_bridge`: stop signals are caught before the node's heavy imports.

MuJoCo picks its GL backend when it is imported: EGL unless the caller chose (GLFW needs a
display). gymnasium's MuJoCo renderer imports the glfw package all the same, and glfw finds its
library by running a Python subprocess per candidate; a Ctrl-C to the process group kills that
child, and configure then failed with a misleading "Failed to load GLFW3 shared library". Naming
the library glfw bundles (when it loads) skips that search.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

from roboloop_node_common.entry import catch_stop_signals, run_console_script


def _bundled_glfw() -> dict[str, str]:
    spec = importlib.util.find_spec("glfw")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    library = Path(spec.submodule_search_locations[0]) / "x11" / "libglfw.so"
    try:
        ctypes.CDLL(str(library))
    except OSError:
        return {}  # not bundled or not loadable here: leave glfw its own search
    return {"PYGLFW_LIBRARY": str(library)}


def sim_bridge() -> int:
    catch_stop_signals()  # first, as in every node's console script
    return run_console_script(
        "roboloop_sim_bridge.node", environment={"MUJOCO_GL": "egl", **_bundled_glfw()}
    )
