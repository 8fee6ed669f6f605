"""An in-process ROS node in its own context, for tests and benchmarks that talk to node processes.

    with RosProbe(domain_id=int(os.environ["ROS_DOMAIN_ID"])) as probe:
        pub = probe.node.create_publisher(JointState, "/t/state", 10)
        probe.wait_for(lambda: pub.get_subscription_count() > 0, 10, "recorder subscribed")

Waits are always on a condition with a timeout (spinning meanwhile), never a fixed sleep.
The context is shut down on exit so no Fast DDS shared memory is left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class RosProbe:
    def __init__(self, domain_id: int | None = None, name: str = "probe") -> None:
        local = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
        profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
        if not (local or os.path.isfile(profile)):
            raise RuntimeError(
                "RosProbe: keep DDS on this machine first: set FASTDDS_DEFAULT_PROFILES_FILE to "
                "the workspace's loopback profile, or ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
            )
        domain = int(os.environ["ROS_DOMAIN_ID"]) if domain_id is None else domain_id
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=min(0.02, max(0.0, deadline - time.monotonic())))

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until `condition()`; TimeoutError naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.02)

    def call(self, srv_type: Any, name: str, timeout: float = 10.0) -> Any:
        """Call a service (waits for it to appear) and return the response."""
        client = self.node.create_client(srv_type, name)
        try:
            self.wait_for(client.service_is_ready, timeout, f"service {name}")
            future = client.call_async(srv_type.Request())
            self.wait_for(future.done, timeout, f"response of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> RosProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
