"""What every roboloop node shares: its parameter table, the process main, its /diagnostics.

    PARAMETERS = {"model_path": ("", "ONNX file"), "rate": (20.0, "Hz", number(1, 1000))}
    declare_parameters(node, PARAMETERS)             # in the node's __init__
    params = read_parameters(node, PARAMETERS, MyParams)
    class MyNode(TableParameters, LifecycleNode): ...  # the same, re-read at each configure
    publish_status(node, pub, "policy", DiagnosticStatus.OK, "active", {"rate_hz": "20"})

    def main(args=None) -> int:
        return run_node(MyNode, args)

`run_node` spins single-threaded on purpose: rclpy 9's MultiThreadedExecutor can fall into a
busy loop under steady traffic and then serve a few callbacks per second
(`python -m bench ros_executor`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, ClassVar, Protocol, TypeVar
from xml.etree import ElementTree

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import InvalidTopicNameException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from rclpy.validate_topic_name import validate_topic_name

from episode_dataset.ranges import Range
from roboloop_node_common.entry import catch_stop_signals, ignore_stop_signals

DIAGNOSTICS_TOPIC = "/diagnostics"
DIAGNOSTICS_QOS = QoSProfile(depth=10)  # the /diagnostics convention: reliable, volatile
EXIT_BAD_PARAMETER = 2
SIGNAL_POLL_S = 0.2  # the main thread's wake-ups while it waits for a stop signal
# rclpy executors a node may spin on. "events" is rclpy.experimental.EventsExecutor: less
# latency per message, but no guard conditions (the sim bridge's lockstep needs them) and some
# nodes fail on it (docs/ros_policy_node.md), so only a node that opts in runs on it.
EXECUTORS = ("single_threaded", "events")

# name -> (default, description) or (default, description, Range): a number's range is declared
# in its descriptor, so rclpy refuses a value outside it at start (exit 2, one line) and on
# `ros2 param set`, and `ros2 param describe` shows it. ROS ranges are closed: both ends given.
ParameterTable = Mapping[str, tuple[Any, str] | tuple[Any, str, Range]]
P = TypeVar("P")


class RoboloopNode(Protocol):
    """What `run_node` needs: the autostart flag and how to come up without a manager."""

    autostart: bool

    def bring_up(self) -> None: ...

    def destroy_node(self) -> None: ...


def declare_parameters(node: Node, parameters: ParameterTable) -> None:
    """Declare every parameter with its description and range (list defaults are string
    arrays)."""
    for name, (default, description, *rule) in parameters.items():
        descriptor = ParameterDescriptor(description=description)
        if rule:
            set_range(descriptor, name, rule[0])
        if isinstance(default, list):
            if not default:  # rclpy would type `[]` as a byte array
                raise ValueError(f"parameter {name!r}: give a non-empty string list default")
            descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
        node.declare_parameter(name, default, descriptor)
    warn_unknown_parameters(node)


def warn_unknown_parameters(node: Node) -> None:
    """One WARN line naming the parameters given to the node (`-p`, a params file) that it does
    not declare: rclpy keeps them silently, so `-p stale_period:=5.0` (for stale_periods) would
    otherwise leave the default in force without a word."""
    given = getattr(node, "_parameter_overrides", {})  # rclpy keeps no public view of them
    unknown = sorted(
        name for name in given if not node.has_parameter(name) and not name.startswith("qos_")
    )
    if unknown:
        node.get_logger().warning(
            f"unknown parameters, ignored (not parameters of this node): {', '.join(unknown)}"
        )


def set_range(descriptor: ParameterDescriptor, name: str, rule: Range) -> None:
    """`rule` as the descriptor's integer_range or floating_point_range (closed, no step)."""
    if rule.low is None or rule.high is None or rule.low_open or rule.high_open or rule.also:
        raise ValueError(f"parameter {name!r}: a ROS range is closed at both ends, not {rule}")
    if rule.integer:
        low, high = int(rule.low), int(rule.high)
        descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    else:
        low_f, high_f = float(rule.low), float(rule.high)
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=low_f, to_value=high_f, step=0.0)
        ]


def read_parameters(node: Node, parameters: ParameterTable, into: Callable[..., P]) -> P:
    """The current values of the table's parameters, as `into(**values)` (e.g. a dataclass)."""
    return into(**{name: node.get_parameter(name).value for name in parameters})


class TableParameters:
    """Mixin of a lifecycle node whose parameters come from one table, read into one dataclass.

    `declare_params()` (in `__init__`) declares `PARAMETERS` and reads them into `self.params`
    (a `Params`); `reload_params()` at the start of each configure reads them again, so a
    parameter set while the node is unconfigured (a corrected path) takes effect at the next
    configure. Between configures the node uses only `self.params`, never a parameter itself.
    """

    PARAMETERS: ClassVar[ParameterTable]
    Params: ClassVar[Callable[..., Any]]
    params: Any

    def declare_params(self) -> None:
        declare_parameters(self, self.PARAMETERS)  # type: ignore[arg-type]
        self.reload_params()
        self.add_on_set_parameters_callback(self._refuse_while_in_use)  # type: ignore[attr-defined]

    def _refuse_while_in_use(self, parameters: list[Parameter]) -> SetParametersResult:
        """`ros2 param set` of a table parameter would change nothing while the node runs on
        the values it read (a lifecycle node between configure and cleanup; a plain node from
        its start), so it is refused with the reason instead of reported as set."""
        names = [p.name for p in parameters if p.name in self.PARAMETERS]
        machine = getattr(self, "_state_machine", None)  # rclpy keeps no public state getter
        if not names or (machine is not None and machine.current_state[1] == "unconfigured"):
            return SetParametersResult(successful=True)
        when = (
            "at configure: deactivate and clean up the node, set it, then configure"
            if machine is not None
            else "at start: restart the node with it"
        )
        return SetParametersResult(successful=False, reason=f"{', '.join(names)}: read {when}")

    def reload_params(self) -> Any:
        self.params = read_parameters(self, self.PARAMETERS, self.Params)  # type: ignore[arg-type]
        return self.params


def topic_name_problem(topic: str) -> str | None:
    """Why `topic` is not a valid ROS topic name (rclpy's rule, its first line), or None."""
    try:
        validate_topic_name(topic)
    except InvalidTopicNameException as err:
        return str(err).splitlines()[0].removeprefix("Invalid topic name: ").rstrip(":")
    return None


def check_topic_parameters(params: object) -> None:
    """ValueError naming the first parameter (`*_topic` or `*_topics`; '' = unused) that holds
    an invalid topic name: said at configure, before the node subscribes or blames its model."""
    for name, value in vars(params).items():
        if not name.endswith(("_topic", "_topics")):
            continue
        for topic in [value] if isinstance(value, str) else value:
            if topic and (problem := topic_name_problem(topic)):
                raise ValueError(f"parameter {name}: {topic!r} is not a topic name: {problem}")


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


def keep_discovery_local(environ: MutableMapping[str, str]) -> str | None:
    """Fall back to LOCALHOST discovery where the environment would let DDS leave this machine.

    SYSTEM_DEFAULT leaves discovery to the Fast DDS profile (the workspace's binds 127.0.0.1
    only, docs/topics.md); without a profile file that parses it means multicast on every
    interface, and so does an unset range. Both become LOCALHOST, with the returned warning.
    An explicit SUBNET (a robot network, with SROS2) is respected.
    """
    current = environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
    if current == "SYSTEM_DEFAULT":
        profile = environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
        try:
            ElementTree.parse(profile)  # Fast DDS ignores a file it cannot parse
            return None
        except (OSError, ElementTree.ParseError) as err:
            why = f"SYSTEM_DEFAULT without a readable Fast DDS profile ({profile!r}: {err})"
    elif current == "":
        why = "ROS_AUTOMATIC_DISCOVERY_RANGE unset"
    else:
        return None
    environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return f"{why}: using LOCALHOST so that discovery stays on this machine"


def command_line_parameters(argv: list[str], node: Node) -> dict[str, str]:
    """The `-p [node:]name:=value` rules of `argv`'s `--ros-args` that apply to `node`
    (the last one per name wins): name -> value text."""
    rules: dict[str, str] = {}
    in_ros_args, taking = False, False
    for arg in argv:
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg in ("-p", "--param"):
            taking = True
            continue
        elif taking and ":=" in arg:
            target, text = arg.split(":=", 1)
            node_name, _, name = target.rpartition(":")
            if node_name in ("", "/**", node.get_name(), node.get_fully_qualified_name()):
                rules[name] = text
        taking = False
    return rules


def _same_value(text: str, value: Any) -> bool:
    """Whether the `-p` text `text` reads as `value` (YAML, as rcl reads it, or its spelling)."""
    if text == str(value):
        return True
    try:
        given = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if isinstance(value, bool) or isinstance(given, bool):
        return given is value
    if isinstance(value, int | float) and isinstance(given, int | float | str):
        try:
            return float(given) == float(value)
        except ValueError:
            return False
    return bool(given == value)


class DroppedParameterError(ValueError):
    """A `-p` value that rcl did not apply."""


def check_command_line_parameters(node: Node, argv: list[str]) -> None:
    """DroppedParameterError for a `-p` value the node does not hold. rcl drops, without a word, a
    `-p` value of another type than a params file gives the same parameter (`-p
    stale_periods:=abc` beside a file's `stale_periods: 3.0` leaves 3.0), where the same `-p`
    alone is refused."""
    for name, text in command_line_parameters(argv, node).items():
        if not node.has_parameter(name):
            continue  # warn_unknown_parameters says so
        current = node.get_parameter(name)
        if not _same_value(text, current.value):
            raise DroppedParameterError(
                f"-p {name}:={text} was not applied: {name} is of type "
                f"{current.type_.name.lower()} and stays {current.value!r} from the params "
                "file (rcl drops a value of another type)"
            )


def run_node(
    make_node: Callable[[], RoboloopNode],
    args: list[str] | None = None,
    on_exit: Callable[[Any], None] | None = None,
    executor_of: Callable[[Any], str] | None = None,
) -> int:
    """The process main of a node: init, build, autostart, spin until SIGINT/SIGTERM, close.

    Bad ROS arguments (e.g. `--log-level loud`) or a parameter of the wrong type (e.g. `rate: 20`
    where a double is declared) exit 2 with a one-line error; `bring_up` may raise SystemExit to
    end the process with its code. `on_exit`
    runs on the node's thread once callbacks have stopped, before the node is destroyed (flush
    files, stop threads, free a renderer). `executor_of(node)` names the executor (EXECUTORS;
    default single_threaded), e.g. from a parameter; another name exits 2.

    The node comes up and spins on a worker thread; SIGINT/SIGTERM only set a flag the main
    thread waits on. A KeyboardInterrupt raised inside a callback (mid-render it surfaces from
    ctypes as an ArgumentError), or rclpy invalidating the context under a running callback,
    would end the process with a traceback. `ros2 launch` sends SIGINT twice on Ctrl-C. The
    console scripts catch these signals before their imports (`roboloop_node_common.entry`).
    """
    stop = catch_stop_signals()
    dds_warning = keep_discovery_local(os.environ)
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except _rclpy.RCLError as err:  # rcl's message, without its C source locations
        reason = str(err).split(", at /")[0]
        rclpy.logging.get_logger(os.path.basename(sys.argv[0])).fatal(f"bad arguments: {reason}")
        return EXIT_BAD_PARAMETER
    try:
        node = make_node()
        check_command_line_parameters(node, sys.argv if args is None else args)
    except (ParameterException, DroppedParameterError) as err:
        rclpy.logging.get_logger("roboloop").fatal(f"bad parameter: {err}")
        rclpy.try_shutdown(uninstall_handlers=False)
        return EXIT_BAD_PARAMETER
    if dds_warning:
        node.get_logger().warning(dds_warning)
    kind = executor_of(node) if executor_of is not None else "single_threaded"
    if kind not in EXECUTORS:
        node.get_logger().fatal(f"bad parameter: executor {kind!r} is not one of {EXECUTORS}")
        node.destroy_node()
        rclpy.try_shutdown(uninstall_handlers=False)
        return EXIT_BAD_PARAMETER
    events = kind == "events"
    if events:
        from rclpy.experimental import EventsExecutor  # rclpy 9: experimental

        executor: Any = EventsExecutor()
    else:
        executor = SingleThreadedExecutor()
    executor.add_node(node)
    exit_code: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        # Everything the node does happens on this one thread (an EGL context, e.g. the sim
        # bridge's renderer, works only on the thread that made it current).
        try:
            if node.autostart and not stop.is_set():
                node.bring_up()
            if events:  # its spin() fires no timers on a worker thread here: spin_once does
                while not stop.is_set():
                    executor.spin_once(timeout_sec=SIGNAL_POLL_S)
            else:
                executor.spin()
        except ExternalShutdownException:
            pass
        except SystemExit as exit_:
            exit_code.append(int(exit_.code or 0))
        except BaseException as err:  # a callback raised: end the process, report it
            failure.append(err)
        finally:
            stop.set()
            if on_exit is not None:
                on_exit(node)

    worker = threading.Thread(target=run, name="node", daemon=True)
    worker.start()
    while not stop.wait(SIGNAL_POLL_S):
        pass
    if not events:
        executor.shutdown()  # lets a running callback finish, then spin() returns
    worker.join()
    if events:
        executor.shutdown()  # after its last spin_once returned, on this thread
    node.destroy_node()
    rclpy.try_shutdown(uninstall_handlers=False)
    ignore_stop_signals()  # done: a late second Ctrl-C must not kill the finished process
    if failure:
        err = failure[0]
        rclpy.logging.get_logger("roboloop").fatal(f"callback failed: {type(err).__name__}: {err}")
        return 1
    return exit_code[0] if exit_code else 0
