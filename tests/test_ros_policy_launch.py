"""Static checks of policy.launch.py / loop.launch.py and of the policy package's install.

`launch` and `launch_ros` are not on PyPI, so the launch files run here against a stand-in that
records every call (only names the real API has exist in it). That catches what `ros2 launch`
would: typos in argument names, missing descriptions, params files that are not installed,
executables that no package provides.
"""

from __future__ import annotations

import ast
import runpy
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import setuptools
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "ros2_ws/src"
LAUNCH_DIR = REPO / "launch"
MINE = ["policy.launch.py", "loop.launch.py"]

# The real launch / launch_ros API names these files may use (launch 3.x, launch_ros 0.2x).
LAUNCH_API = {
    "launch": ["LaunchDescription"],
    "launch.actions": [
        "DeclareLaunchArgument",
        "IncludeLaunchDescription",
        "SetEnvironmentVariable",
        "Shutdown",
        "GroupAction",
        "LogInfo",
        "OpaqueFunction",
        "ExecuteProcess",
        "TimerAction",
    ],
    "launch.conditions": ["IfCondition", "UnlessCondition"],
    "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
    "launch.substitutions": [
        "LaunchConfiguration",
        "PathJoinSubstitution",
        "TextSubstitution",
        "EnvironmentVariable",
        "PythonExpression",
    ],
    "launch_ros.actions": ["Node", "LifecycleNode", "PushRosNamespace"],
    "launch_ros.substitutions": ["FindPackageShare"],
}


class Call:
    """A recorded constructor call of a launch API class."""

    kind = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def walk(obj: Any):
    """Every Call reachable from `obj` (through args, kwargs, lists, dicts, items())."""
    if isinstance(obj, Call):
        yield obj
        for child in (*obj.args, *obj.kwargs.values()):
            yield from walk(child)
    elif isinstance(obj, (list, tuple)):
        for child in obj:
            yield from walk(child)
    elif isinstance(obj, dict):
        for child in obj.values():
            yield from walk(child)
    elif isinstance(obj, types.GeneratorType | type({}.items())):
        yield from walk(list(obj))


@pytest.fixture
def fake_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    for module_name in ("launch", "launch_ros"):
        monkeypatch.setitem(sys.modules, module_name, types.ModuleType(module_name))
    for module_name, names in LAUNCH_API.items():
        module = sys.modules.get(module_name) or types.ModuleType(module_name)
        for name in names:
            setattr(module, name, type(name, (Call,), {"kind": name}))
        monkeypatch.setitem(sys.modules, module_name, module)


def describe(path: Path) -> list[Call]:
    """Run generate_launch_description() of `path` against the stand-in; all calls made."""
    namespace = runpy.run_path(str(path))
    return list(walk(namespace["generate_launch_description"]()))


def of_kind(calls: list[Call], kind: str) -> list[Call]:
    return [c for c in calls if c.kind == kind]


def share_path(call: Call) -> tuple[str, ...] | None:
    """PathJoinSubstitution([FindPackageShare(pkg), 'a', 'b']) -> (pkg, 'a', 'b')."""
    parts = call.args[0]
    if not (parts and isinstance(parts[0], Call) and parts[0].kind == "FindPackageShare"):
        return None
    return (parts[0].args[0], *parts[1:])


def package_setup(package: str) -> dict[str, Any]:
    """The keyword arguments ros2_ws/src/<package>/setup.py passes to setup()."""
    captured: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
        patch.chdir(SRC / package)  # setup.py globs relative to its directory (as colcon)
        runpy.run_path("setup.py")
    return captured


def installed_files(setup_kwargs: dict[str, Any]) -> set[str]:
    return {
        f"{dest}/{Path(src).name}" for dest, files in setup_kwargs["data_files"] for src in files
    }


def console_scripts(setup_kwargs: dict[str, Any]) -> dict[str, str]:
    entries = setup_kwargs.get("entry_points", {}).get("console_scripts", [])
    return dict(tuple(part.strip() for part in e.split("=", 1)) for e in entries)


@pytest.mark.parametrize("name", MINE)
def test_launch_file_shape(name: str) -> None:
    tree = ast.parse((LAUNCH_DIR / name).read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "generate_launch_description" in functions
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            assert not node.value.startswith("/"), f"{name}: absolute path {node.value!r}"


@pytest.mark.parametrize("name", MINE)
def test_arguments_described_and_used_consistently(name: str, fake_launch) -> None:
    calls = describe(LAUNCH_DIR / name)
    declared = {c.args[0]: c for c in of_kind(calls, "DeclareLaunchArgument")}
    assert declared, f"{name} declares no arguments"
    for arg, call in declared.items():
        assert len(call.kwargs.get("description", "")) > 10, f"{name}: {arg} has no description"
    used = {c.args[0] for c in of_kind(calls, "LaunchConfiguration")}
    assert used <= set(declared), f"{name}: undeclared {sorted(used - set(declared))}"
    assert set(declared) <= used, f"{name}: declared but unused {sorted(set(declared) - used)}"
    env = {c.args[0]: c.args[1] for c in of_kind(calls, "SetEnvironmentVariable")}
    assert env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "SYSTEM_DEFAULT"  # with the profile:
    profile = share_path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile == ("roboloop_node_common", "config", "fastdds_loopback.xml")


def test_policy_launch_starts_the_installed_node_with_known_parameters(fake_launch) -> None:
    from roboloop_policy.node import PARAMETERS

    calls = describe(LAUNCH_DIR / "policy.launch.py")
    (node,) = of_kind(calls, "Node")
    setup_kwargs = package_setup(node.kwargs["package"])
    scripts = console_scripts(setup_kwargs)
    assert scripts[node.kwargs["executable"]] == "roboloop_policy.main:policy_node"
    overrides = [p for p in node.kwargs["parameters"] if isinstance(p, dict)]
    assert set().union(*overrides) <= {*PARAMETERS, "use_sim_time"}  # rclpy declares that one
    required = [
        c.args[0]
        for c in of_kind(calls, "DeclareLaunchArgument")
        if "default_value" not in c.kwargs
    ]
    assert required == ["model_path"]


@pytest.mark.parametrize("name", MINE)
def test_params_files_exist_and_are_installed(name: str, fake_launch) -> None:
    calls = describe(LAUNCH_DIR / name)
    configs = [
        p
        for c in of_kind(calls, "PathJoinSubstitution")
        if (p := share_path(c)) and p[1] == "config"
    ]
    assert configs, f"{name} references no params file"
    for package, _, filename in configs:
        assert (SRC / package / "config" / filename).is_file(), f"{package}/config/{filename}"
        installed = installed_files(package_setup(package))
        assert f"share/{package}/config/{filename}" in installed, (package, filename)


def test_loop_includes_installed_launch_files_with_their_own_arguments(fake_launch) -> None:
    calls = describe(LAUNCH_DIR / "loop.launch.py")
    includes = of_kind(calls, "IncludeLaunchDescription")
    bringup = installed_files(package_setup("roboloop_bringup"))
    included = {}
    for include in includes:
        package, folder, filename = share_path(include.args[0].args[0])
        assert (package, folder) == ("roboloop_bringup", "launch")
        assert f"share/roboloop_bringup/launch/{filename}" in bringup, filename
        included[filename] = dict(include.kwargs["launch_arguments"])
    assert set(included) == {"sim.launch.py", "policy.launch.py", "record.launch.py"}
    assert included["sim.launch.py"]["action_source"] == "topic"  # the bridge obeys the policy
    for filename, passed in included.items():
        inner = describe(LAUNCH_DIR / filename)
        declared = {c.args[0]: c for c in of_kind(inner, "DeclareLaunchArgument")}
        assert set(passed) <= set(declared), f"{filename}: unknown {set(passed) - set(declared)}"
        missing = [
            a for a, c in declared.items() if "default_value" not in c.kwargs and a not in passed
        ]
        assert not missing, f"{filename}: required argument(s) {missing} not passed"
    (record,) = [i for i in includes if "record" in str(share_path(i.args[0].args[0]))]
    assert record.kwargs["condition"].kind == "IfCondition"


def test_bridge_and_recorder_nodes_have_console_scripts(fake_launch) -> None:
    for filename in ("sim.launch.py", "record.launch.py"):
        for node in of_kind(describe(LAUNCH_DIR / filename), "Node"):
            scripts = console_scripts(package_setup(node.kwargs["package"]))
            assert node.kwargs["executable"] in scripts, (filename, node.kwargs["executable"])


def test_policy_package_installs_marker_manifest_and_configs() -> None:
    installed = installed_files(package_setup("roboloop_policy"))
    assert {
        "share/ament_index/resource_index/packages/roboloop_policy",
        "share/roboloop_policy/package.xml",
        "share/roboloop_policy/config/policy.yaml",
        "share/roboloop_policy/config/policy_image.yaml",
    } <= installed
    # colcon puts console scripts where `ros2 run` / launch_ros look for them.
    cfg = (SRC / "roboloop_policy/setup.cfg").read_text()
    assert "install_scripts=$base/lib/roboloop_policy" in cfg


@pytest.mark.parametrize("filename", ["policy.yaml", "policy_image.yaml"])
def test_params_files_set_exactly_the_declared_parameters_with_their_types(
    filename: str,
) -> None:
    from roboloop_policy.node import PARAMETERS

    doc = yaml.safe_load((SRC / "roboloop_policy/config" / filename).read_text())
    params = doc["/**"]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    for name, value in params.items():
        default = PARAMETERS[name][0]
        # rclpy rejects e.g. an integer for a double parameter at start-up.
        assert type(value) is type(default), f"{filename}: {name}={value!r}"
