"""rclpy executors under steady traffic: MultiThreadedExecutor vs SingleThreadedExecutor.

    python -m bench.ros_executor [--quick]

Why every node spins single-threaded. Each executor runs one node in its own process: a 100 Hz
timer publishing on a best-effort topic (default callback group), a subscription to that topic
and a 10 Hz timer, each in its own mutually exclusive group (the callback-group layout the
policy and scorer nodes had). Reported per second of wall time: messages delivered, 10 Hz ticks,
CPU seconds of that process, over several fresh processes (worst and median). With rclpy 9.1
(Kilted wheels) the multi-threaded executor, in some runs, falls into a busy loop, burns a whole
core and serves a few callbacks per second; the policy node showed the same in CI (its
observation rate fell to 3-4 Hz and safe actions came 0.4-1.4 s late).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from episode_dataset.ranges import POSITIVE_FLOAT, HelpFormatter

NAME = "ros_executor"
PUBLISH_HZ, TIMER_HZ = 100.0, 10.0
TOPIC = "/bench_executor/x"


def _worker(kind: str, seconds: float) -> None:
    """Runs in a subprocess: spin the node with the `kind` executor, print rates as JSON."""
    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from std_msgs.msg import Float32

    rclpy.init()
    node = rclpy.create_node("bench_executor")
    counts = {"messages": 0, "ticks": 0}
    pub = node.create_publisher(Float32, TOPIC, qos_profile_sensor_data)
    node.create_timer(1.0 / PUBLISH_HZ, lambda: pub.publish(Float32(data=1.0)))

    def on_message(_msg: Float32) -> None:
        counts["messages"] += 1

    def on_tick() -> None:
        counts["ticks"] += 1

    node.create_subscription(
        Float32,
        TOPIC,
        on_message,
        qos_profile_sensor_data,
        callback_group=MutuallyExclusiveCallbackGroup(),
    )
    node.create_timer(1.0 / TIMER_HZ, on_tick, callback_group=MutuallyExclusiveCallbackGroup())
    executor = (
        MultiThreadedExecutor(num_threads=3) if kind == "multi" else SingleThreadedExecutor()
    )
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    time.sleep(1.0)  # start-up
    start, cpu0, before = time.monotonic(), time.process_time(), dict(counts)
    time.sleep(seconds)
    wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    result = {
        "messages_per_s": (counts["messages"] - before["messages"]) / wall,
        "ticks_per_s": (counts["ticks"] - before["ticks"]) / wall,
        "cpu_s_per_s": cpu / wall,
    }
    print(json.dumps(result), flush=True)
    os._exit(0)  # a busy multi-threaded executor does not stop promptly


def _measure(kind: str, seconds: float, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.ros_executor", "--worker", kind, "--seconds", str(seconds)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(quick: bool) -> list[dict[str, Any]]:
    """Several fresh processes per executor: the collapse starts in some runs, not all."""
    from roboloop_bringup.processes import ros_env

    trials, seconds = (4, 3.0) if quick else (8, 5.0)
    with tempfile.TemporaryDirectory(prefix="bench_executor_") as log_dir:
        env = ros_env(domain_id=random.randint(150, 200), log_dir=log_dir)
        results = {
            kind: [_measure(kind, seconds, env) for _ in range(trials)]
            for kind in ("single", "multi")
        }
    ref = float(np.median([r["messages_per_s"] for r in results["single"]]))
    rows = []
    for kind, runs in results.items():
        delivered = np.array([r["messages_per_s"] for r in runs])
        rows.append(
            {
                "executor": f"{kind}_threaded",
                "runs": trials,
                "starved_runs": int((delivered < 0.5 * PUBLISH_HZ).sum()),
                "messages_per_s_median": float(np.median(delivered)),
                "messages_per_s_worst": float(delivered.min()),
                "published_per_s": PUBLISH_HZ,
                "ticks_per_s_worst": min(r["ticks_per_s"] for r in runs),
                "timer_hz": TIMER_HZ,
                "cpu_s_per_s_worst": max(r["cpu_s_per_s"] for r in runs),
                "worst_vs_single": float(delivered.min()) / ref if ref else float("nan"),
            }
        )
    return rows


def run(quick: bool) -> None:
    from bench.report import report

    report(NAME, measure(quick), note="one process per executor: 100 Hz pub/sub + 10 Hz timer")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.ros_executor",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["single", "multi"], help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=POSITIVE_FLOAT, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.seconds)
    else:
        run(args.quick)
