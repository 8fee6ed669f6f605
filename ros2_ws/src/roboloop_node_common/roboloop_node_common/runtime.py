"""What every roboloop node shares: its parameter table, the process main, its /diagnostics.

    PARAMETERS = {"model_path": ("", "ONNX file"), "autostart": (True, "configure + activate")}
    declare_parameters(node, PARAMETERS)             # in the node's __init__
    params = read_parameters(node, PARAMETERS, MyParams)
    publish_status(node, pub, "policy", DiagnosticStatus.OK, "active", {"rate_hz": "20"})

    def main(args=None) -> int:
        return run_node(MyNode, args)

`run_node` spins single-threaded on purpose: rclpy 9's MultiThreadedExecutor can fall into a
busy loop under steady traffic and then serve a few callbacks per second
(`python -m bench ros_executor`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

DIAGNOSTICS_TOPIC = "/diagnostics"
DIAGNOSTICS_QOS = QoSProfile(depth=10)  # the /diagnostics convention: reliable, volatile
EXIT_BAD_PARAMETER = 2

# name -> (default, description)
ParameterTable = Mapping[str, tuple[Any, str]]
P = TypeVar("P")


class RoboloopNode(Protocol):
    """What `run_node` needs: the autostart flag and how to come up without a manager."""

    autostart: bool

    def bring_up(self) -> None: ...

    def destroy_node(self) -> None: ...


def declare_parameters(node: Node, parameters: ParameterTable) -> None:
    """Declare every parameter with its description (list defaults are string arrays)."""
    for name, (default, description) in parameters.items():
        descriptor = ParameterDescriptor(description=description)
        if isinstance(default, list):
            if not default:  # rclpy would type `[]` as a byte array
                raise ValueError(f"parameter {name!r}: give a non-empty string list default")
            descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
        node.declare_parameter(name, default, descriptor)


def read_parameters(node: Node, parameters: ParameterTable, into: Callable[..., P]) -> P:
    """The current values of the table's parameters, as `into(**values)` (e.g. a dataclass)."""
    return into(**{name: node.get_parameter(name).value for name in parameters})


def publish_status(
    node: Node,
    publisher: Any,
    what: str,
    level: bytes,
    message: str,
    values: Mapping[str, Any],
    hardware_id: str = "",
) -> None:
    """One DiagnosticStatus named `<fully qualified node name>: <what>` on `publisher`."""
    status = DiagnosticStatus(
        level=level,
        name=f"{node.get_fully_qualified_name()}: {what}",
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(array)


def run_node(
    make_node: Callable[[], RoboloopNode],
    args: list[str] | None = None,
    on_exit: Callable[[Any], None] | None = None,
) -> int:
    """The process main of a node: init, build, autostart, spin until Ctrl-C, close.

    A parameter of the wrong type (e.g. `rate: 20` where a double is declared) exits 2 with a
    one-line error; `bring_up` may raise SystemExit to end the process with its code. `on_exit`
    runs before the node is destroyed (flush files, stop threads).
    """
    rclpy.init(args=args)
    try:
        node = make_node()
    except ParameterException as err:
        rclpy.logging.get_logger("roboloop").fatal(f"bad parameter: {err}")
        rclpy.try_shutdown()
        return EXIT_BAD_PARAMETER
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.autostart:
            node.bring_up()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        # Ctrl-C under `ros2 launch` reaches a node twice (terminal + launch): let it close.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if on_exit is not None:
            on_exit(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code
