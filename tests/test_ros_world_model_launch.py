"""world_model.launch.py and the roboloop_world_model package's install layout, checked as
tests/test_ros_launch_files.py checks the other launch files (the launch stand-in: arguments
described and used, params file installed, parameters declared with their types, the
executable a console script of its package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from roboloop_bringup.launch_standin import load_launch_file
from roboloop_bringup.processes import LOOPBACK_DDS
from test_ros_launch_files import console_scripts, installed_share, node_parameters
from test_ros_launch_files import test_ament_python_package_layout as check_package_layout
from test_ros_launch_files import test_launch_file_shape as check_launch_file_shape

REPO = Path(__file__).resolve().parents[1]
NAME = "world_model.launch.py"


def test_launch_file_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    check_launch_file_shape(NAME)
    info = load_launch_file(REPO / "launch" / NAME, {"model_path": "/m/filter.onnx"})
    assert info.env == LOOPBACK_DDS
    (node,) = info.nodes
    assert node.executable in console_scripts(node.package, monkeypatch)
    declared = node_parameters(node.package)
    (params_file,) = node.params_files
    rel = params_file.relative_to(REPO / "ros2_ws/src" / node.package)
    assert f"share/{node.package}/{rel}" in installed_share(node.package, monkeypatch)
    params = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
    assert set(params) == set(declared)  # the shipped file sets every parameter
    for key, value in {**params, **node.params}.items():
        default = declared[key][0]
        assert isinstance(value, type(default)) or (
            isinstance(default, float) and isinstance(value, int)
        ), f"{key}={value!r}"
    check_package_layout("roboloop_world_model", monkeypatch)
    assert f"share/roboloop_bringup/launch/{NAME}" in installed_share(
        "roboloop_bringup", monkeypatch
    )
    package_xml = (REPO / "ros2_ws/src/roboloop_bringup/package.xml").read_text()
    assert "<exec_depend>roboloop_world_model</exec_depend>" in package_xml


def test_graph_arguments_reach_the_node_as_strings() -> None:
    """Unset graphs stay '' (the node then has no such graph), never YAML's null."""
    args = {"model_path": "/m/filter.onnx", "actor_path": "/m/actor.onnx"}
    node = load_launch_file(REPO / "launch" / NAME, args).nodes[0]
    assert node.params["actor_path"] == "/m/actor.onnx"
    assert node.params["imagine_path"] == "" and node.params["decode_path"] == ""
    assert node.params["publish_prediction"] is False
    args["publish_prediction"] = "true"
    assert load_launch_file(REPO / "launch" / NAME, args).nodes[0].params["publish_prediction"]
