"""Run launch files without the `launch` package (not on PyPI): a stand-in for `ros2 launch`.

    info = load_launch_file("launch/sim.launch.py", {"camera": "0"})   # visits, starts nothing
    info.nodes, info.arguments, info.env                               # what launch would run
    launched = info.launch(log_dir, env)                               # start them (processes)

Used by `make demo` (demo/loop.py), the launch-file tests and the docker tests.
"""

from __future__ import annotations

import difflib
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from roboloop_bringup.processes import SRC, RosProcess, start_node

# `launch`/`launch_ros` are not on PyPI. To run (and test) exactly what a launch file starts, it is
# executed against the stand-ins below and its entities are visited in order as launch 3.x visits
# them: arguments (defaults, `choices`), includes with their arguments and conditions, environment
# variables, nodes. Failures raise launch's own messages. Only the constructs our launch files use
# exist; anything else fails loudly.

_VALID_CONDITIONS = {"true": True, "1": True, "false": False, "0": False}  # launch.conditions


class LaunchError(RuntimeError):
    """What `ros2 launch` reports as "Caught exception in launch" before it exits 1.

    `started` lists the nodes real launch had started before the failure: it starts each node as
    it reaches it, and leaves those running as orphans when a later entity fails.
    """

    def __init__(self, message: str, started: Sequence[LaunchNode] = ()) -> None:
        super().__init__(message)
        self.started = list(started)


@dataclass
class LaunchArgument:
    name: str
    default: object
    description: str
    choices: list[str] | None = None


@dataclass
class LaunchNode:
    package: str
    executable: str
    name: str | None
    params_files: list[Path]
    params: dict[str, object]
    ros_arguments: list[str]
    on_exit: object = None  # the Node's on_exit: actions, or a callable(event, context)


@dataclass
class _Context:
    """The launch context: launch configurations and environment, both global as in launch."""

    share: Callable[[str], Path]
    configurations: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[LaunchNode] = field(default_factory=list)
    declared: dict[str, LaunchArgument] = field(default_factory=dict)
    root: dict[str, LaunchArgument] | None = None  # arguments of the file given to `ros2 launch`


class _Substitution:
    def perform(self, context: _Context) -> str:
        raise NotImplementedError


def _perform(value: object, context: _Context) -> str:
    if isinstance(value, _Substitution):
        return value.perform(context)
    if isinstance(value, (list, tuple)):
        return "".join(_perform(v, context) for v in value)
    return str(value)


class _LaunchConfiguration(_Substitution):
    def __init__(self, variable_name: str, *, default: object = None) -> None:
        self.name, self.default = variable_name, default

    def perform(self, context: _Context) -> str:
        if self.name in context.configurations:
            return context.configurations[self.name]
        if self.default is not None:
            return _perform(self.default, context)
        raise RuntimeError(f"launch configuration '{self.name}' does not exist")

    def __str__(self) -> str:
        return f"LaunchConfiguration('{self.name}')"


class _PathJoinSubstitution(_Substitution):
    def __init__(self, substitutions: list[object]) -> None:
        self.parts = substitutions

    def perform(self, context: _Context) -> str:
        return os.path.join(*(_perform(p, context) for p in self.parts))


class _FindPackageShare(_Substitution):
    def __init__(self, package: str) -> None:
        self.package = package

    def perform(self, context: _Context) -> str:
        return str(context.share(self.package))


class _Condition:
    def __init__(self, predicate_expression: object) -> None:
        self.expression = predicate_expression

    def holds(self, context: _Context) -> bool:
        text = _perform(self.expression, context).strip().lower()
        if text not in _VALID_CONDITIONS:
            raise ValueError(
                "invalid condition expression, expected one of [true, 1, false, 0] but got "
                f"'{text}', expanded from '{self.expression}'"
            )
        return _VALID_CONDITIONS[text] is self.expected

    expected = True


class _UnlessCondition(_Condition):
    expected = False


class _DeclareLaunchArgument:
    def __init__(
        self,
        name: str,
        *,
        default_value: object = None,
        description: str | None = None,
        choices: list[str] | None = None,
    ) -> None:
        # launch's constructor checks, with its messages
        if choices is not None:
            if len(choices) == 0:
                raise RuntimeError(
                    "Provided choices arg is empty. Use None to ignore the choice list."
                )
            plain = default_value is not None and not isinstance(
                default_value, (_Substitution, list)
            )
            if plain and default_value not in choices:
                raise RuntimeError(
                    f'Provided default_value "{default_value}" is not in provided choices '
                    f'"{choices}".'
                )
        if description is None:
            description = "no description given" if choices is None else f"One of: {choices}"
        elif choices is not None:
            description = description if description.endswith(".") else description + "."
            description += f" Valid choices are: {choices}"
        self.argument = LaunchArgument(name, default_value, description, choices)

    def visit(self, context: _Context) -> None:
        arg = self.argument
        if arg.name not in context.configurations:
            if arg.default is None:
                raise RuntimeError(f'Required launch argument "{arg.name}" was not provided.')
            context.configurations[arg.name] = _perform(arg.default, context)
        value = context.configurations[arg.name]
        if arg.choices is not None and value not in arg.choices:
            raise RuntimeError(
                f'Argument "{arg.name}" provided value "{value}" is not valid. Valid options '
                f"are: {arg.choices}"
            )


class _SetEnvironmentVariable:
    def __init__(self, name: str, value: object) -> None:
        self.name, self.value = name, value

    def visit(self, context: _Context) -> None:
        context.env[self.name] = _perform(self.value, context)


class _Shutdown:
    def __init__(self, *, reason: str = "reason not given") -> None:
        self.reason = reason


class _PythonLaunchDescriptionSource:
    def __init__(self, launch_file_path: object) -> None:
        self.path = launch_file_path


class _IncludeLaunchDescription:
    def __init__(
        self,
        launch_description_source: _PythonLaunchDescriptionSource,
        *,
        launch_arguments: object = (),
        condition: _Condition | None = None,
    ) -> None:
        self.source, self.condition = launch_description_source, condition
        self.arguments = list(launch_arguments)

    def visit(self, context: _Context) -> None:
        if self.condition is not None and not self.condition.holds(context):
            return
        path = Path(_perform(self.source.path, context))
        description = _describe(path)
        declared = [
            e.argument for e in description.entities if isinstance(e, _DeclareLaunchArgument)
        ]
        given = [name for name, _ in self.arguments]
        names = [a.name for a in declared]
        for arg in declared:
            if arg.default is None and arg.name not in given:
                raise RuntimeError(
                    f"Included launch description missing required argument '{arg.name}' "
                    f"(description: '{arg.description}'), given: [{', '.join(given)}]"
                    + did_you_mean([g for g in given if g not in names], names)
                )
        if len(set(names)) != len(names):
            raise ValueError(f"{path.name}: a launch argument is declared twice: {names}")
        if context.root is None:
            context.root = {a.name: a for a in declared}
        context.declared.update({a.name: a for a in declared})
        for name, value in self.arguments:  # launch sets them in order, then visits the file
            context.configurations[name] = _perform(value, context)
        description.visit(context)


class _Node:
    def __init__(
        self,
        *,
        package: str,
        executable: str,
        name: str | None = None,
        parameters: Sequence[object] = (),
        ros_arguments: Sequence[object] = (),
        output: str = "screen",
        on_exit: object = None,
        **kwargs: object,
    ) -> None:
        if kwargs:
            raise TypeError(f"unsupported Node arguments {sorted(kwargs)}")
        self.package, self.executable, self.name = package, executable, name
        self.parameters, self.ros_arguments = list(parameters), list(ros_arguments)
        self.on_exit = on_exit

    def visit(self, context: _Context) -> None:
        files, params = [], {}
        for p in self.parameters:
            if isinstance(p, dict):
                for k, v in p.items():
                    params[k] = _parameter_value(self.executable, k, _perform(v, context))
            else:
                path = Path(_perform(p, context))
                if not path.is_file():  # launch_ros asserts this before it starts the node
                    raise RuntimeError(f"{self.executable}: params file {path} does not exist")
                files.append(path)
        arguments = [_perform(a, context) for a in self.ros_arguments]
        context.nodes.append(
            LaunchNode(
                self.package, self.executable, self.name, files, params, arguments, self.on_exit
            )
        )


def _parameter_value(executable: str, name: str, text: str) -> object:
    """A substituted parameter value as launch_ros reads it: YAML ("0" -> 0, "true" -> True), a
    scalar or a non-empty list of one type; anything else fails the launch, as launch_ros does.
    (`output_path:=` was passed on as the string "None": the recorder wrote ./None.)"""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or err
        message = f"{executable}: parameter {name}:={text!r} is not YAML: {problem}"
        raise RuntimeError(message) from None
    types = {type(v) for v in (value if isinstance(value, list) else [value])}
    if len(types) != 1 or not types <= {bool, int, float, str}:
        raise RuntimeError(
            f"{executable}: parameter {name}:={text!r} is not a value launch_ros accepts (a bool, "
            "int, float or string, or a non-empty list of one of them; '' for an empty string)"
        )
    return value


class _LaunchDescription:
    def __init__(self, initial_entities: Sequence[object]) -> None:
        self.entities = list(initial_entities)

    def visit(self, context: _Context) -> None:
        for entity in self.entities:
            entity.visit(context)


_STAND_INS = {
    "launch": {"LaunchDescription": _LaunchDescription},
    "launch.actions": {
        "DeclareLaunchArgument": _DeclareLaunchArgument,
        "IncludeLaunchDescription": _IncludeLaunchDescription,
        "SetEnvironmentVariable": _SetEnvironmentVariable,
        "Shutdown": _Shutdown,
    },
    "launch.conditions": {"IfCondition": _Condition, "UnlessCondition": _UnlessCondition},
    "launch.launch_description_sources": {
        "PythonLaunchDescriptionSource": _PythonLaunchDescriptionSource
    },
    "launch.substitutions": {
        "LaunchConfiguration": _LaunchConfiguration,
        "PathJoinSubstitution": _PathJoinSubstitution,
    },
    "launch_ros": {},
    "launch_ros.actions": {"Node": _Node},
    "launch_ros.substitutions": {"FindPackageShare": _FindPackageShare},
}


def _describe(path: Path) -> _LaunchDescription:
    """`generate_launch_description()` of `path`, run against the stand-ins (installed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_launch_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"launch file {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@dataclass
class ProcessExited:
    """The event launch hands a Node's `on_exit` callable."""

    process_name: str
    pid: int
    returncode: int


@dataclass
class LaunchInfo:
    path: Path
    arguments: dict[str, LaunchArgument]
    nodes: list[LaunchNode]
    env: dict[str, str]

    def start(
        self, node_index: int, *, log_path: str | os.PathLike[str], env: Mapping[str, str]
    ) -> RosProcess:
        """Start one node of the launch file as `ros2 launch` would (console script + params)."""
        n = self.nodes[node_index]
        child_env = {**env, **self.env}
        params_file = n.params_files[0] if n.params_files else None
        extra: list[str] = []
        for f in n.params_files[1:]:
            extra += ["--params-file", str(f)]
        extra += n.ros_arguments
        return start_node(
            n.executable,
            params_file=params_file,
            params=n.params,
            log_path=log_path,
            env=child_env,
            node_name=n.name,
            extra_args=extra,
        )

    def launch(self, log_dir: str | os.PathLike[str], env: Mapping[str, str]) -> LaunchedNodes:
        """Start every node in order; `LaunchedNodes.poll` then applies their on_exit."""
        procs = [
            self.start(i, log_path=Path(log_dir) / f"{n.executable}.log", env=env)
            for i, n in enumerate(self.nodes)
        ]
        return LaunchedNodes(self, procs)


@dataclass
class LaunchedNodes:
    """The running nodes of one launch file, with launch's reaction to a node's exit."""

    info: LaunchInfo
    procs: list[RosProcess]
    returncode: int | None = None  # what `ros2 launch` exits with, once it has shut down
    reason: str = ""

    def poll(self) -> int | None:
        """Run the on_exit of nodes that exited: a Shutdown stops all nodes (launch exits 0);
        an exception raised there stops them too, and launch exits 1."""
        for node, proc in zip(self.info.nodes, self.procs, strict=True):
            if self.returncode is not None:
                break
            if proc.alive() or node.on_exit is None:
                continue
            action = node.on_exit
            try:
                if callable(action):
                    name = node.name or node.executable
                    action = action(ProcessExited(name, proc.pid, proc.popen.returncode), None)
            except Exception as err:
                self.shutdown(1, f"Caught exception in launch (see debug for traceback): {err}")
                break
            actions = action if isinstance(action, (list, tuple)) else [action]
            for a in actions:
                if isinstance(a, _Shutdown):
                    self.shutdown(0, a.reason)
                    break
        return self.returncode

    def shutdown(self, returncode: int = 0, reason: str = "") -> list[int]:
        """Stop every node (SIGINT first, as launch does); the nodes' exit codes."""
        if self.returncode is None:
            self.returncode, self.reason = returncode, reason
        return [p.stop() for p in reversed(self.procs)][::-1]


def load_launch_file(
    path: str | os.PathLike[str],
    launch_args: Mapping[str, str] | None = None,
    package_share: Callable[[str], Path] | None = None,
) -> LaunchInfo:
    """Visit the launch file as `ros2 launch path name:=value ...` would, without starting nodes.

    `package_share(pkg)` maps FindPackageShare to a directory (default: the package's source
    directory under ros2_ws/src, whose config/ and launch/ mirror the installed share dir).
    Raises LaunchError where launch fails, KeyError for arguments no file declares.
    """
    path = Path(path)
    launch_args = {k: str(v) for k, v in (launch_args or {}).items()}
    context = _Context(package_share or _source_share, dict(launch_args))
    root = _IncludeLaunchDescription(
        _PythonLaunchDescriptionSource(str(path)), launch_arguments=launch_args.items()
    )
    saved = {name: sys.modules.get(name) for name in _STAND_INS}
    try:
        for name, attrs in _STAND_INS.items():
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
        root.visit(context)
    except (RuntimeError, ValueError) as err:
        raise LaunchError(f"{path.name}: {err}", context.nodes) from err
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    unknown = sorted(set(launch_args) - set(context.declared))
    if unknown:
        hint = did_you_mean(unknown, context.declared)
        raise KeyError(f"{path.name}: unknown launch arguments {unknown}{hint}")
    return LaunchInfo(path, context.root or {}, context.nodes, context.env)


def did_you_mean(names: Iterable[str], declared: Iterable[str]) -> str:
    """`; did you mean model_path?` for the names that look like typos of declared arguments
    (the stand-in's addition to launch's messages), else ""."""
    declared = list(declared)
    close = [m[0] for name in names if (m := difflib.get_close_matches(name, declared, n=1))]
    return f"; did you mean {', '.join(close)}?" if close else ""


def _source_share(package: str) -> Path:
    root = SRC / package
    if not (root / "package.xml").is_file():
        raise FileNotFoundError(f"package {package!r} not found under {root.parent}")
    return root
