"""Static checks of launch/*.launch.py and the ROS packages' install layout.

`launch`/`launch_ros` are not on PyPI, so the launch files cannot run here under `ros2 launch`.
They are parsed (ast) and evaluated against stand-ins (demo.ros_processes.load_launch_file):
every argument is described, every params file exists and is installed, every executable is a
console script of its package, every parameter set in a params file or launch file is declared.
"""

from __future__ import annotations

import ast
import os
import runpy
from pathlib import Path

import pytest
import setuptools
import yaml

from demo.ros_processes import load_launch_file

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "ros2_ws" / "src"
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
MY_LAUNCH = ["sim.launch.py", "record.launch.py"]
MY_PACKAGES = ["roboloop_sim_bridge", "roboloop_recorder", "roboloop_bringup"]


def setup_kwargs(package: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """What the package's setup.py passes to setup() (run in its directory, like pip/colcon)."""
    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(SRC / package)
    runpy.run_path(str(SRC / package / "setup.py"))
    monkeypatch.undo()
    return captured


def installed_share(package: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Installed path (relative to the prefix) -> source file, from data_files."""
    out = {}
    for dest, files in setup_kwargs(package, monkeypatch)["data_files"]:
        for f in files:
            out[f"{dest}/{os.path.basename(f)}"] = SRC / package / f
    return out


def console_scripts(package: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    scripts = setup_kwargs(package, monkeypatch).get("entry_points", {}).get("console_scripts", [])
    return {s.split("=")[0].strip() for s in scripts}


def node_parameters(package: str) -> dict[str, tuple]:
    import importlib

    return importlib.import_module(f"{package}.node").PARAMETERS


def test_my_launch_files_exist():
    assert [p.name for p in LAUNCH_FILES if p.name in MY_LAUNCH] == sorted(MY_LAUNCH)


@pytest.mark.parametrize("name", MY_LAUNCH)
def test_launch_file_shape(name):
    path = REPO / "launch" / name
    tree = ast.parse(path.read_text())
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert funcs == ["generate_launch_description"]
    declared, used = set(), set()
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef)) and ast.get_docstring(n) is not None
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "DeclareLaunchArgument"
        ):
            kw = {k.arg: k.value for k in node.keywords}
            arg = node.args[0].value
            assert "description" in kw, f"{name}: argument {arg} has no description"
            desc = kw["description"]
            assert isinstance(desc, ast.Constant) and desc.value.strip(), f"{name}: {arg}"
            declared.add(arg)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LaunchConfiguration":
            used.add(node.args[0].value)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            assert not node.value.startswith(
                ("/home", "/work", "/opt", "/tmp", "/usr", "/data")
            ), f"{name}: absolute path {node.value!r}"
    assert used <= declared, f"{name}: undeclared {used - declared}"
    assert used == declared, f"{name}: declared but unused {declared - used}"


@pytest.mark.parametrize("name", MY_LAUNCH)
def test_launch_nodes_match_packages(name, monkeypatch):
    info = load_launch_file(REPO / "launch" / name)
    assert info.env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert all(a.description for a in info.arguments.values())
    assert info.nodes, f"{name} starts no node"
    for node in info.nodes:
        assert node.executable in console_scripts(node.package, monkeypatch)
        share = installed_share(node.package, monkeypatch)
        declared = node_parameters(node.package)
        for f in node.params_files:
            assert f.is_file(), f"{name}: params file {f} missing"
            rel = f.relative_to(SRC / node.package)
            assert f"share/{node.package}/{rel}" in share, f"{rel} not installed by data_files"
            params = yaml.safe_load(f.read_text())["/**"]["ros__parameters"]
            assert set(params) <= set(declared), (
                f"{f.name}: undeclared {set(params) - set(declared)}"
            )
            for key, value in params.items():
                assert isinstance(value, type(declared[key][0])) or (
                    isinstance(declared[key][0], float) and isinstance(value, int)
                ), f"{f.name}: {key}={value!r} has the wrong type"
        for key, value in node.params.items():
            assert key in declared, f"{name}: override of undeclared parameter {key}"
            assert isinstance(value, type(declared[key][0])), f"{name}: {key}={value!r}"


def test_launch_arguments_override_parameters():
    info = load_launch_file(REPO / "launch/sim.launch.py", {"action_source": "topic", "seed": "7"})
    assert info.nodes[0].params == {"action_source": "topic", "seed": 7}
    with pytest.raises(KeyError, match="unknown launch arguments"):
        load_launch_file(REPO / "launch/sim.launch.py", {"camera": "64"})


def test_launch_files_installed_by_bringup(monkeypatch):
    link = SRC / "roboloop_bringup" / "launch"
    assert link.is_symlink() and link.resolve() == (REPO / "launch").resolve()
    share = installed_share("roboloop_bringup", monkeypatch)
    for name in MY_LAUNCH:
        assert f"share/roboloop_bringup/launch/{name}" in share


@pytest.mark.parametrize("package", MY_PACKAGES)
def test_ament_python_package_layout(package, monkeypatch):
    root = SRC / package
    assert (root / "resource" / package).is_file()
    assert f"<name>{package}</name>" in (root / "package.xml").read_text()
    assert "<build_type>ament_python</build_type>" in (root / "package.xml").read_text()
    cfg = (root / "setup.cfg").read_text()
    assert f"$base/lib/{package}" in cfg  # where ros2 run / launch look for executables
    share = installed_share(package, monkeypatch)
    assert f"share/ament_index/resource_index/packages/{package}" in share
    assert f"share/{package}/package.xml" in share
    for cfg_file in (root / "config").glob("*.yaml") if (root / "config").is_dir() else []:
        assert f"share/{package}/config/{cfg_file.name}" in share
