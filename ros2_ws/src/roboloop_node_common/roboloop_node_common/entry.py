"""Console scripts of the nodes: stop signals are caught before anything heavy is imported.

Importing rclpy, onnxruntime or mujoco takes 0.2-2.5 s. A Ctrl-C in that time (twice under
`ros2 launch`) used to end the process with KeyboardInterrupt tracebacks, and a SIGTERM (docker
stop, launch's escalation) killed it mid-import. Each package's console script is therefore

    def main() -> int:
        return run_console_script("roboloop_policy.node")

which catches SIGINT/SIGTERM first, into STOP (the flag `runtime.run_node` waits on), then
imports the node module: a stop that came meanwhile ends the process with 0 and one line, as a
stop at any later moment does. Only the standard library is imported here. What comes before
this module cannot be helped: a Ctrl-C in the interpreter's own start-up (about 20 ms for a
pip console script, 40 ms for colcon's, which looks itself up with importlib.metadata) still
ends with Python's KeyboardInterrupt.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType

STOP = threading.Event()  # set by the first SIGINT/SIGTERM, from the first moment of the process
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def catch_stop_signals() -> threading.Event:
    """SIGINT and SIGTERM only set STOP, so a signal never lands inside an import or callback."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    return STOP


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    STOP.set()


def run_console_script(module: str, environment: Mapping[str, str] | None = None) -> int:
    """Catch stop signals, set `environment` defaults, import `module`, return its `main()`.

    `-h`/`--help` before `--ros-args` prints the node's parameter table instead (nodes are
    configured by ROS parameters, so that table is their command line)."""
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args[: args.index("--ros-args")] if "--ros-args" in args else args):
        node = importlib.import_module(module)
        print(node_usage(os.path.basename(sys.argv[0]), node.__doc__ or "", node.PARAMETERS))
        return 0
    catch_stop_signals()
    for name, value in (environment or {}).items():
        os.environ.setdefault(name, value)
    main = importlib.import_module(module).main
    if STOP.is_set():
        name = signal.Signals(_received[0]).name
        print(f"{os.path.basename(sys.argv[0])}: {name} while starting, exiting", file=sys.stderr)
        ignore_stop_signals()
        return 0
    return main()


def node_usage(name: str, doc: str, parameters: Mapping[str, tuple[object, ...]]) -> str:
    """`--help` of a node executable: usage, the module's first doc line, every parameter."""
    lines = [
        f"usage: {name} [-h] [--ros-args [-p NAME:=VALUE ...] [--params-file FILE] "
        "[--log-level LEVEL]]",
        "",
        doc.strip().splitlines()[0] if doc.strip() else name,
        "",
        "ROS parameters (-p NAME:=VALUE or a --params-file):",
    ]
    for param, (default, description, *rule) in parameters.items():
        allowed = f"; {rule[0]}" if rule else ""
        lines.append(f"  {param} (default: {default!r}{allowed})")
        if description:
            lines.append(f"      {description}")
    return "\n".join(lines)


def ignore_stop_signals() -> None:
    """Once the process is done: interpreter teardown resets Python-installed handlers to the
    default, so a late second Ctrl-C would kill the finished process (-2). Ignored signals stay
    ignored."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
