"""What `python -m roboloop_bringup.launch_cli` runs, once its entry has caught the stop signals.

Runs every node the launch file declares through the stand-in (`launch_standin`), prints each
node's output prefixed with its name as `output="screen"` does, and applies the nodes' on_exit
(each stops the launch when its node exits). A stop signal (`stop`, filled by the entry's
handlers) stops the nodes with SIGINT first. Exit code: what `ros2 launch` returns after a
Shutdown or an on_exit failure (0 / 1); when every node exits on its own, 0 if all exited with
0, else 1. The Docker image built from docker/Dockerfile.pypi runs its compose services with it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from roboloop_bringup.launch_standin import LaunchedNodes, LaunchError, load_launch_file
from roboloop_bringup.processes import SRC, ros_env

POLL_S = 0.1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m roboloop_bringup.launch_cli",
        description="Run a launch file's nodes as `ros2 launch PKG FILE name:=value` would.",
    )
    parser.add_argument("package", help="ROS package that holds the launch file")
    parser.add_argument("launch_file", help="file name under the package's launch/")
    # A default, or argparse (3.11) lists "arguments" among the missing required ones.
    parser.add_argument(
        "arguments",
        nargs="*",
        default=[],
        help="launch arguments, name:=value (default: the launch file's defaults)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[Path, dict[str, str]]:
    """`PKG FILE a:=b ...` -> (the launch file in PKG's source share, launch arguments)."""
    ns = build_parser().parse_args(argv)
    path = SRC / ns.package / "launch" / ns.launch_file
    if not path.is_file():
        raise SystemExit(
            f"launch_cli: no launch file {ns.launch_file!r} in {ns.package!r} ({path})"
        )
    args = {}
    for item in ns.arguments:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise SystemExit(f"launch_cli: launch argument {item!r} is not name:=value")
        args[name] = value
    return path, args


class _LogRelay:
    """Copies new complete lines of each node's log file to `out`, prefixed `[name] `."""

    def __init__(self, launched: LaunchedNodes, out: TextIO) -> None:
        self.launched, self.out = launched, out
        self.offsets = [0] * len(launched.procs)

    def pump(self) -> None:
        for i, proc in enumerate(self.launched.procs):
            try:
                with open(proc.log_path, "rb") as f:
                    f.seek(self.offsets[i])
                    data = f.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[i] += len(complete)
            name = self.launched.info.nodes[i].name or proc.name
            for line in complete.decode(errors="replace").splitlines():
                self.out.write(f"[{name}] {line}\n")
        self.out.flush()


def run(argv: Sequence[str], out: TextIO = sys.stdout, stop: Sequence[int] = ()) -> int:
    """Launch and relay until a node ends the launch, every node exits, or `stop` (the stop
    signals received so far, appended to by the caller's handlers) is no longer empty."""
    path, args = parse_args(argv)
    try:
        info = load_launch_file(path, args)
    except (LaunchError, KeyError) as err:  # refused before any node starts, as launch does
        raise SystemExit(f"launch_cli: {err.args[0]}") from None
    try:  # checked before any node starts (no ROS_DOMAIN_ID: every node would refuse to start)
        env = ros_env()
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"launch_cli: {err}") from None
    if stop:  # a stop while the imports and the launch file loaded: start nothing
        name = signal.Signals(stop[0]).name
        out.write(f"[launch_cli] stopped (signal {name}) before any node started; exit 0\n")
        return 0
    log_root = Path(os.environ.get("ROS_LOG_DIR", "/tmp/ros_log"))
    log_dir = log_root / f"launch_{path.stem.split('.')[0]}_{time.strftime('%Y%m%d-%H%M%S')}"
    launched = info.launch(log_dir, env)
    try:
        relay = _LogRelay(launched, out)
        out.write(f"[launch_cli] {path.name}: {len(info.nodes)} node(s), logs in {log_dir}\n")
        code: int | None = None
        while code is None:
            relay.pump()
            if stop:
                launched.shutdown(0, f"signal {signal.Signals(stop[0]).name}")
                code = 0
            elif (code := launched.poll()) is None and not any(p.alive() for p in launched.procs):
                code = int(any(p.popen.returncode != 0 for p in launched.procs))
            time.sleep(POLL_S)
        relay.pump()
    finally:
        # Each node runs in its own session: if this loop fails (stdout closed under `| head`),
        # nothing else would stop them.
        launched.shutdown()
    reason = launched.reason or "every node exited"
    out.write(f"[launch_cli] stopped ({reason}); exit {code}\n")
    return code
