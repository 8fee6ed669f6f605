"""`ros2 launch PKG FILE name:=value ...` for an install without `launch` (the PyPI ROS wheels).

    python -m roboloop_bringup.launch_cli roboloop_bringup sim.launch.py action_source:=expert

Runs every node of the launch file, each node's output prefixed with its name (see
`launch_runner`). SIGINT, SIGTERM or SIGHUP (a closed terminal) stops the nodes, at any moment:
like the node console scripts (`roboloop_node_common.entry`), this entry catches them before it
imports anything else (the stand-in and the launch file load in about 0.1 s, in which a Ctrl-C
was a KeyboardInterrupt traceback); a stop before the nodes start exits 0 starting none. Only the
standard library is imported here; the interpreter's own start-up (20-40 ms) cannot be helped.
A closed stdout (`| head`) stops the nodes and exits 1.
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed


def main() -> int:
    argv = sys.argv[1:]
    stop: list[int] = []
    if not {"-h", "--help"} & set(argv):  # help starts nothing, so there is nothing to stop
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda received, _frame: stop.append(received))
    from roboloop_bringup.launch_runner import run  # after the handlers (see the docstring)

    try:
        return run(argv, stop=stop)
    except BrokenPipeError:
        # run() has stopped the nodes. Python's convention (docs: "Note on SIGPIPE"): stdout to
        # devnull, so that the flush at exit does not fail again, and exit 1 without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
