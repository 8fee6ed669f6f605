"""An in-process ROS node in its own context, for tests and benchmarks that talk to node processes.

    with RosProbe(domain_id=int(os.environ["ROS_DOMAIN_ID"])) as probe:
        pub = probe.node.create_publisher(JointState, "/t/state", 10)
        probe.wait_for(lambda: pub.get_subscription_count() > 0, 10, "recorder subscribed")
        probe.set_parameters("/policy_node", model_path="good.onnx")
        assert probe.change_state("/policy_node", Transition.TRANSITION_CONFIGURE)

The probe spins only inside its waits, or, after `spin_in_background()`, on a thread of its
own (a stand-in robot whose timers publish while the test thread waits; its callbacks then run
on that thread, so shared state needs a lock). `watch_diagnostics()` keeps the newest
/diagnostics status of each name for `status()`.
Waits are always on a condition with a timeout, never a fixed sleep.
The context is shut down on exit so no Fast DDS shared memory is left behind.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions


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
        # Ctrl-C stays with the test runner, not with this context.
        rclpy.init(
            context=self.context,
            domain_id=domain,
            signal_handler_options=SignalHandlerOptions.NO,
        )
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread: threading.Thread | None = None
        self._clients: dict[tuple[Any, str], Any] = {}  # (service type, name) -> client
        self._lock = threading.Lock()
        self._statuses: dict[str, Any] = {}

    def spin_in_background(self) -> None:
        """From now on the executor spins on a daemon thread; waits only poll."""
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._pass(min(0.02, left))

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Spin until `condition()`; TimeoutError naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self._pass(0.02)

    def _pass(self, seconds: float) -> None:
        if self._thread is None:
            self.executor.spin_once(timeout_sec=seconds)
        else:
            time.sleep(min(seconds, 0.01))

    def call(
        self,
        srv_type: Any,
        name: str,
        request: Any = None,
        timeout: float = 10.0,
        resend_s: float | None = None,
    ) -> Any:
        """Call a service (waits for it to appear) and return the response.

        `resend_s`, for queries only (calling twice changes nothing): send the request again
        when no response came within that many seconds. A client is ready once it has matched
        the server, but the server may not have matched the client's response reader yet; a
        response sent then is lost (seen once in CI: a lifecycle get_state never answered).
        Clients are kept per service, so only a probe's first call to a service meets that.
        """
        client = self._clients.get((srv_type, name))
        if client is None:
            client = self._clients[(srv_type, name)] = self.node.create_client(srv_type, name)
        self.wait_for(client.service_is_ready, timeout, f"service {name}")
        message = srv_type.Request() if request is None else request
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(message)
            left = deadline - time.monotonic()
            try:
                self.wait_for(future.done, left if resend_s is None else min(resend_s, left), "")
                return future.result()
            except TimeoutError:
                client.remove_pending_request(future)
                if resend_s is None or time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"timed out after {timeout} s waiting for response of {name}"
                    ) from None

    # -- a node's parameter and lifecycle services ----------------------------------------
    def set_parameters(self, node: str, timeout: float = 10.0, **values: Any) -> None:
        """Set parameters of `node` (e.g. "/policy_node"); AssertionError with its reason."""
        msgs = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        request = SetParameters.Request(parameters=msgs)
        reply = self.call(SetParameters, f"{node}/set_parameters", request, timeout)
        for name, result in zip(values, reply.results, strict=True):
            assert result.successful, f"{node}: parameter {name}: {result.reason}"

    def change_state(self, node: str, transition_id: int, timeout: float = 10.0) -> bool:
        """Trigger a lifecycle transition (lifecycle_msgs Transition id); its success."""
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, f"{node}/change_state", request, timeout).success

    def lifecycle_state(self, node: str, timeout: float = 10.0) -> str:
        """The lifecycle state label of `node` ("unconfigured", "inactive", "active", ...)."""
        reply = self.call(GetState, f"{node}/get_state", None, timeout, resend_s=2.0)
        return reply.current_state.label

    # -- /diagnostics ---------------------------------------------------------------------
    def watch_diagnostics(self) -> None:
        """Keep the newest /diagnostics status of each name from now on."""
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50)
        )

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self._lock:
            self._statuses.update((s.name, s) for s in msg.status)

    def status(self, name: str) -> dict[str, Any] | None:
        """The newest status `name` ("/policy_node: policy"): its values, `_level` (bytes) and
        `_message`; None before the first."""
        with self._lock:
            status = self._statuses.get(name)
        if status is None:
            return None
        values = {kv.key: kv.value for kv in status.values}
        return values | {"_level": status.level, "_message": status.message}

    def close(self) -> None:
        self.executor.shutdown()
        if self._thread is not None:
            self._thread.join(5)
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> RosProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
