"""Static checks of launch/*.launch.py and the ROS packages' install layout.

`launch`/`launch_ros` are not on PyPI, so the launch files cannot run here under `ros2 launch`.
They are parsed (ast) and evaluated against stand-ins
(roboloop_bringup.launch_standin.load_launch_file):
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
from roboloop_bringup.launch_standin import load_launch_file
from roboloop_bringup.processes import LOOPBACK_DDS

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "ros2_ws" / "src"
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
MY_LAUNCH = ["sim.launch.py", "record.launch.py"]
MY_PACKAGES = [
    "roboloop_sim_bridge",
    "roboloop_recorder",
    "roboloop_bringup",
    "roboloop_node_common",
]


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


RCLPY_PARAMETERS = {"use_sim_time": (False, "follow /clock")}  # rclpy declares it on every node


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
    assert funcs[-1] == "generate_launch_description"
    assert all(f.startswith("_") for f in funcs[:-1]), funcs  # private helpers only
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
    assert info.env == LOOPBACK_DDS  # every node gets the shipped loopback Fast DDS profile
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
        declared = {**declared, **RCLPY_PARAMETERS}
        for key, value in node.params.items():
            assert key in declared, f"{name}: override of undeclared parameter {key}"
            assert isinstance(value, type(declared[key][0])), f"{name}: {key}={value!r}"


def test_launch_arguments_override_parameters():
    info = load_launch_file(
        REPO / "launch/sim.launch.py",
        {"action_source": "topic", "seed": "7", "wait_for_subscribers": "1"},
    )
    assert info.nodes[0].params == {
        "action_source": "topic",
        "seed": 7,
        "publish_clock": False,
        "lockstep": False,
        "wait_for_subscribers": 1,
    }
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
    configs = (root / "config").glob("*.[yx]ml") if (root / "config").is_dir() else []
    for cfg_file in configs:
        assert f"share/{package}/config/{cfg_file.name}" in share


# -- arguments with a fixed vocabulary (issue 8: `record:=maybe` left two nodes orphaned) ------
def _vocabularies() -> dict[str, set[str]]:
    """The values each node (or launch's IfCondition) accepts, read from the code that decides."""
    from rclpy.logging import LoggingSeverity
    from roboloop_sim_bridge.runner import ACTION_SOURCES

    return {
        "record": {"true", "false"},  # IfCondition also takes 1/0; the launch files say true/false
        "device": {"auto", "cpu", "cuda"},  # roboloop_runtime.OnnxModel (checked below)
        "log_level": {s.name.lower() for s in LoggingSeverity if s is not LoggingSeverity.UNSET},
        "action_source": set(ACTION_SOURCES),
    }


def _vocabulary_arguments() -> list[tuple[str, str]]:
    """(launch file, argument) for every argument named like one with a fixed vocabulary."""
    found = []
    for path in LAUNCH_FILES:
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument":
                if n.args[0].value in VOCABULARY_ARGUMENTS:
                    found.append((path.name, n.args[0].value))
    return found


VOCABULARY_ARGUMENTS = ("record", "device", "log_level", "action_source")


def _required(name: str) -> dict[str, str]:
    needs_model = name in ("policy.launch.py", "loop.launch.py", "world_model.launch.py")
    return {"model_path": "/models/policy.onnx"} if needs_model else {}


@pytest.mark.parametrize(("name", "argument"), _vocabulary_arguments())
def test_fixed_vocabulary_argument_declares_its_choices(name, argument):
    info = load_launch_file(REPO / "launch" / name, _required(name))
    declared = info.arguments[argument]
    assert declared.choices is not None, f"{name}: {argument} declares no choices"
    assert set(declared.choices) == _vocabularies()[argument], (name, argument)
    assert f"Valid choices are: {declared.choices}" in declared.description


@pytest.mark.parametrize(("name", "argument"), _vocabulary_arguments())
def test_bad_value_is_refused_before_any_node_starts(name, argument):
    from roboloop_bringup.launch_standin import LaunchError

    args = {**_required(name), argument: "maybe"}
    with pytest.raises(LaunchError) as refused:
        load_launch_file(REPO / "launch" / name, args)
    assert f'Argument "{argument}" provided value "maybe" is not valid' in str(refused.value)
    assert refused.value.started == [], f"{name}: started {refused.value.started} first"


def test_device_choices_are_what_the_runner_accepts(tmp_path):
    from roboloop_runtime import OnnxModel

    for device in _vocabularies()["device"]:
        with pytest.raises(Exception) as err:  # a missing file, after the device was accepted
            OnnxModel(tmp_path / "missing.onnx", device=device)
        assert "device must be" not in str(err.value)
    with pytest.raises(ValueError, match="device must be"):
        OnnxModel(tmp_path / "missing.onnx", device="maybe")


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ('"a", default_value="c", choices=[]', "Provided choices arg is empty"),
        ('"a", default_value="c", choices=["b"]', 'Provided default_value "c" is not in'),
        ('"a", choices=["b"]', "Included launch description missing required argument 'a'"),
    ],
)
def test_stand_in_checks_choices_with_launchs_messages(tmp_path, declaration, message):
    """launch 3.4.3 (launch/actions/declare_launch_argument.py) raises these, in these words."""
    from roboloop_bringup.launch_standin import LaunchError

    path = tmp_path / "bad.launch.py"
    path.write_text(
        "from launch import LaunchDescription\n"
        "from launch.actions import DeclareLaunchArgument\n"
        "def generate_launch_description():\n"
        f"    return LaunchDescription([DeclareLaunchArgument({declaration})])\n"
    )
    with pytest.raises(LaunchError, match=message):
        load_launch_file(path)


def test_a_missing_params_file_is_refused_before_any_node_starts(tmp_path):
    """`recorder_params_file:=` a path that is not there (a typo, a relative path from another
    directory) was a FileNotFoundError traceback from launch_cli once the bridge and the policy
    node had started, which it then left running."""
    from roboloop_bringup.launch_standin import LaunchError

    missing = tmp_path / "my_recorder.yaml"
    args = {"model_path": "/models/policy.onnx", "recorder_params_file": str(missing)}
    with pytest.raises(LaunchError) as refused:
        load_launch_file(REPO / "launch/loop.launch.py", args)
    assert str(refused.value) == f"loop.launch.py: recorder: params file {missing} does not exist"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "recorder: parameter output_path:='' is not a value launch_ros accepts"),
        ("{a: 1}", "recorder: parameter output_path:='{a: 1}' is not a value launch_ros accepts"),
        ("[", "recorder: parameter output_path:='[' is not YAML: expected the node content"),
    ],
    ids=["empty", "mapping", "broken-yaml"],
)
def test_a_value_launch_ros_cannot_pass_as_a_parameter_is_refused(value, message):
    """launch_ros reads a parameter's substituted value as YAML and refuses what is not a
    scalar or a list (Node: evaluate_parameter_dict). The stand-in passed `output_path:=` on as
    the string "None", so the recorder wrote ./None; broken YAML was a traceback."""
    from roboloop_bringup.launch_standin import LaunchError

    with pytest.raises(LaunchError) as refused:
        load_launch_file(REPO / "launch/record.launch.py", {"output_path": value})
    assert str(refused.value).startswith(f"record.launch.py: {message}")
    assert "\n" not in str(refused.value) and refused.value.started == []
