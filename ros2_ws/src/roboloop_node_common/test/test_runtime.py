"""roboloop_node_common.runtime with real rclpy: parameters, /diagnostics status, process exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from roboloop_node_common.runtime import (  # noqa: E402
    DIAGNOSTICS_QOS,
    EXIT_BAD_PARAMETER,
    declare_parameters,
    publish_status,
    read_parameters,
)

from episode_dataset.ranges import count, number  # noqa: E402

TABLE = {
    "model_path": ("", "a file"),
    "rate_hz": (20.0, "a double"),
    "topics": (["/x"], "a string array"),
    "keys": (["state"], "a string array"),
}


@dataclass(frozen=True)
class Params:
    model_path: str
    rate_hz: float
    topics: list[str]
    keys: list[str]


def test_parameters_declare_with_descriptions_and_read_into_a_dataclass(ros) -> None:
    overrides = [Parameter("topics", value=["/a", "/b"]), Parameter("rate_hz", value=5.0)]
    node = rclpy.create_node("params_probe", context=ros, parameter_overrides=overrides)
    try:
        declare_parameters(node, TABLE)
        params = read_parameters(node, TABLE, Params)
        assert params == Params("", 5.0, ["/a", "/b"], ["state"])
        descriptor = node.describe_parameter("topics")
        assert descriptor.description == TABLE["topics"][1]
        assert descriptor.type == Parameter.Type.STRING_ARRAY.value
        with pytest.raises(ValueError, match="'empty': give a non-empty string list default"):
            declare_parameters(node, {"empty": ([], "rclpy would type this as bytes")})
    finally:
        node.destroy_node()


def test_a_parameter_the_node_does_not_have_is_named_in_a_warning(ros, monkeypatch) -> None:
    """`-p stale_period:=5.0` for `stale_periods`: rclpy keeps it silently; the node says so."""
    overrides = [Parameter("rate_hz", value=5.0), Parameter("rate_hz_typo", value=1.0)]
    node = rclpy.create_node("typo_probe", context=ros, parameter_overrides=overrides)
    warnings: list[str] = []
    monkeypatch.setattr(node.get_logger(), "warning", warnings.append)
    try:
        declare_parameters(node, TABLE)
        assert warnings == [
            "unknown parameters, ignored (not parameters of this node): rate_hz_typo"
        ]
    finally:
        node.destroy_node()


def test_a_range_is_declared_and_enforced_at_start_and_on_set(ros) -> None:
    table = {
        "rate_hz": (20.0, "a double", number(1, 100)),
        "depth": (10, "an int", count(1, high=50)),
    }
    node = rclpy.create_node("range_probe", context=ros)
    try:
        declare_parameters(node, table)
        (fp,) = node.describe_parameter("rate_hz").floating_point_range
        assert (fp.from_value, fp.to_value) == (1.0, 100.0)
        (ir,) = node.describe_parameter("depth").integer_range
        assert (ir.from_value, ir.to_value) == (1, 50)
        # what `ros2 param set` does: refused, the value unchanged
        for name, bad in (("rate_hz", 0.0), ("rate_hz", float("nan")), ("depth", 51)):
            (result,) = node.set_parameters([Parameter(name, value=bad)])
            assert not result.successful and "out of range" in result.reason
        assert node.get_parameter("rate_hz").value == 20.0
        assert node.set_parameters([Parameter("depth", value=50)])[0].successful
        with pytest.raises(ValueError, match="a ROS range is closed at both ends"):
            declare_parameters(node, {"open": (1.0, "x", number(0, low_open=True))})
    finally:
        node.destroy_node()
    overrides = [Parameter("depth", value=0)]  # a value from the command line: refused at start
    node = rclpy.create_node("range_probe2", context=ros, parameter_overrides=overrides)
    try:
        with pytest.raises(InvalidParameterValueException, match="depth out of range"):
            declare_parameters(node, table)
    finally:
        node.destroy_node()


def test_publish_status_names_the_node_and_stringifies_values(ros) -> None:
    node = rclpy.create_node("status_probe", namespace="/robot", context=ros)
    received: list[DiagnosticArray] = []
    executor = SingleThreadedExecutor(context=ros)
    executor.add_node(node)
    try:
        pub = node.create_publisher(DiagnosticArray, "/t_runtime/diagnostics", DIAGNOSTICS_QOS)
        node.create_subscription(
            DiagnosticArray, "/t_runtime/diagnostics", received.append, DIAGNOSTICS_QOS
        )
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            publish_status(
                node, pub, "thing", DiagnosticStatus.WARN, "hot", {"n": 3, "ok": True}, "dev0"
            )
            executor.spin_once(timeout_sec=0.1)
        assert received, "no DiagnosticArray came back"
        (status,) = received[0].status
        assert status.name == "/robot/status_probe: thing"
        assert (status.level, status.message, status.hardware_id) == (
            DiagnosticStatus.WARN,
            "hot",
            "dev0",
        )
        assert {kv.key: kv.value for kv in status.values} == {"n": "3", "ok": "True"}
        assert received[0].header.stamp.sec > 0
    finally:
        executor.shutdown()
        node.destroy_node()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("max_pending:=2.5", "max_pending"),  # a double where an integer is declared
        ("max_pending:=0", "max_pending out of range. Min: 1, Max: 1000, value: 0"),
    ],
    ids=["wrong_type", "out_of_range"],
)
def test_a_bad_parameter_exits_2_with_one_line(ros, setting: str, expected: str) -> None:
    exe = Path(sys.executable).parent / "q_scorer"
    if not exe.exists() and shutil.which("q_scorer") is None:
        pytest.skip("q_scorer is not installed in this environment")
    proc = subprocess.run(
        [str(exe) if exe.exists() else "q_scorer", "--ros-args", "-p", setting],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode == EXIT_BAD_PARAMETER, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "bad parameter" in line]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]


FAILING_NODE = """
import sys
from rclpy.node import Node
from roboloop_node_common.runtime import run_node

class Failing(Node):
    autostart = True

    def __init__(self):
        super().__init__("failing_probe")

    def bring_up(self):
        self.create_timer(0.05, self.tick)

    def tick(self):
        raise RuntimeError("sensor exploded")

sys.exit(run_node(Failing, on_exit=lambda node: print("on_exit ran", flush=True)))
"""


def test_a_failing_callback_ends_the_process_with_1_after_on_exit(ros) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_NODE],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "on_exit ran" in proc.stdout
    assert "callback failed: RuntimeError: sensor exploded" in proc.stderr


def test_discovery_falls_back_to_localhost_unless_the_profile_or_subnet_is_chosen(tmp_path):
    from roboloop_node_common.runtime import keep_discovery_local

    profile = tmp_path / "profile.xml"
    profile.write_text("<dds/>")
    chosen = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}
    assert keep_discovery_local({**chosen, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile)}) is None
    broken = tmp_path / "broken.xml"
    broken.write_text("<dds><profiles>")
    for env in (
        {**chosen, "FASTDDS_DEFAULT_PROFILES_FILE": str(tmp_path / "missing.xml")},
        {**chosen, "FASTDDS_DEFAULT_PROFILES_FILE": str(broken)},
        dict(chosen),
        {},
    ):
        warning = keep_discovery_local(env)
        assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
        assert "using LOCALHOST" in warning
    for kept in ("LOCALHOST", "SUBNET", "OFF"):
        env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": kept}
        assert keep_discovery_local(env) is None and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == kept
