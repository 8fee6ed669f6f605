"""Start and stop ROS 2 node processes (console scripts) without importing rclpy.

Every child gets loopback-only discovery, a private ROS_DOMAIN_ID and its own ROS_LOG_DIR (see
/work/shared/ROS2_FROM_PYPI.md). Stopping goes SIGINT -> SIGTERM -> SIGKILL because only SIGINT
and SIGTERM let Fast DDS remove its shared-memory files; after a SIGKILL, `remove_shm_of` cleans
the files the dead process had mapped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_SHM_PREFIXES = ("fastdds_", "fast_datasharing", "sem.fastdds_")


def ros_env(
    domain_id: int | str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a process that touches ROS: LOCALHOST discovery, domain, log dir."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    if "ROS_DOMAIN_ID" not in env:
        raise ValueError("ros_env: no ROS_DOMAIN_ID given or inherited (use a private domain)")
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    if "ROS_LOG_DIR" not in env and "ROS_HOME" not in env:
        raise ValueError("ros_env: no ROS_LOG_DIR given or inherited")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def executable_path(name: str) -> str:
    """The console script `name` next to this interpreter (the venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} not found next to {sys.executable}")
    return found


def node_command(
    executable: str,
    params_file: str | os.PathLike[str] | None = None,
    params: Mapping[str, object] | None = None,
    node_name: str | None = None,
) -> list[str]:
    """`EXE --ros-args [--params-file F] [-r __node:=N] [-p k:=v ...]`."""
    cmd = [executable_path(executable), "--ros-args"]
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise FileNotFoundError(f"params file {path} does not exist")
        cmd += ["--params-file", str(path)]
    if node_name is not None:
        cmd += ["-r", f"__node:={node_name}"]
    for key, value in (params or {}).items():
        cmd += ["-p", f"{key}:={_param_literal(value)}"]
    return cmd


def _param_literal(value: object) -> str:
    # `-p` values are parsed as YAML by rcl.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_param_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


@dataclass
class RosProcess:
    """A running node process whose stdout+stderr go to `log_path`."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    shm_files: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float) -> bool:
        """True once `text` appears in the log; False on timeout or when the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return True
            if not self.alive():
                return text in self.log_text()
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL (each waits up to `timeout`/2). Returns the code."""
        for sig, wait in ((signal.SIGINT, timeout / 2), (signal.SIGTERM, timeout / 2)):
            if not self.alive():
                break
            self.popen.send_signal(sig)
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        if self.alive():
            self.kill()
        return self.popen.returncode

    def cleanup_shm(self) -> list[str]:
        """Retry removing the dead process's shm files (after the peers that shared them exit)."""
        return remove_shm_of(self.shm_files) if not self.alive() else []

    def kill(self) -> int:
        """SIGKILL (like a crash), then remove the shared-memory files only this process held."""
        held = shm_files_of(self.pid) if self.alive() else set()
        self.shm_files |= held
        self.popen.kill()
        self.popen.wait()
        remove_shm_of(self.shm_files)
        return self.popen.returncode


def start_node(
    executable: str,
    *,
    params_file: str | os.PathLike[str] | None = None,
    params: Mapping[str, object] | None = None,
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    domain_id: int | None = None,
    node_name: str | None = None,
    extra_args: Sequence[str] = (),
) -> RosProcess:
    """Start console script `executable` as a child node process (logs to `log_path`)."""
    cmd = node_command(executable, params_file, params, node_name) + list(extra_args)
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    child_env = ros_env(domain_id, base=env)
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
    return RosProcess(name=executable, popen=popen, log_path=log)


def shm_files_of(pid: int) -> set[str]:
    """Fast DDS shared-memory files that process `pid` has mapped or open (/proc)."""
    found: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if path.startswith(str(SHM_DIR)) and _is_fastdds(Path(path).name):
                    found.add(path.removesuffix(" (deleted)"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return found
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(SHM_DIR)) and _is_fastdds(Path(target).name):
                found.add(target)
    except (FileNotFoundError, PermissionError):
        pass
    return found


def _is_fastdds(name: str) -> bool:
    return name.startswith(_SHM_PREFIXES)


def remove_shm_of(paths: set[str]) -> list[str]:
    """Remove the given shm files (and their `_el`/`_sl` lock siblings) that no live process holds.

    Port segments are shared between processes; anything still mapped by a live process stays.
    """
    candidates = set(paths)
    for p in paths:
        for suffix in ("_el", "_sl", ".lock"):
            candidates.add(p + suffix)
    in_use: set[str] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            in_use |= shm_files_of(int(proc.name)) & candidates
    removed = []
    for p in sorted(candidates - in_use):
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


# -- launch files without the `launch` package ---------------------------------------------------
# `launch`/`launch_ros` are not on PyPI. To run (and test) exactly what a launch file starts, it is
# executed against the small stand-ins below, which record the nodes, parameters and arguments it
# declares. Only the constructs our launch files use are supported; anything else fails loudly.


@dataclass
class LaunchArgument:
    name: str
    default: object
    description: str


@dataclass
class LaunchNode:
    package: str
    executable: str
    name: str | None
    params_files: list[Path]
    params: dict[str, object]
    ros_arguments: list[str]


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


def load_launch_file(
    path: str | os.PathLike[str],
    launch_args: Mapping[str, str] | None = None,
    package_share: Callable[[str], Path] | None = None,
) -> LaunchInfo:
    """Evaluate `generate_launch_description()` of `path` with stand-in launch modules.

    `package_share(pkg)` maps FindPackageShare to a directory (default: the package's source
    directory under ros2_ws/src, whose config/ and launch/ mirror the installed share dir).
    """
    import importlib.util
    import types

    import yaml

    path = Path(path)
    launch_args = dict(launch_args or {})
    share = package_share or _source_share
    declared: dict[str, LaunchArgument] = {}

    def evaluate(value: object) -> object:
        if isinstance(value, _Subst):
            return value.evaluate()
        if isinstance(value, (list, tuple)):
            return "".join(str(evaluate(v)) for v in value)
        return value

    class _Subst:
        def evaluate(self) -> object:
            raise NotImplementedError

    class LaunchConfiguration(_Subst):
        def __init__(self, name: str, default: object = None) -> None:
            self.name, self.default = name, default

        def evaluate(self) -> object:
            if self.name in launch_args:
                return launch_args[self.name]
            if self.name in declared:
                return evaluate(declared[self.name].default)
            raise KeyError(f"{path.name}: LaunchConfiguration {self.name!r} is not declared")

    class PathJoinSubstitution(_Subst):
        def __init__(self, parts: list[object]) -> None:
            self.parts = parts

        def evaluate(self) -> object:
            return os.path.join(*(str(evaluate(p)) for p in self.parts))

    class FindPackageShare(_Subst):
        def __init__(self, package: str) -> None:
            self.package = package

        def evaluate(self) -> object:
            return str(share(self.package))

    class DeclareLaunchArgument:
        def __init__(
            self, name: str, default_value: object = None, description: str = "", **kwargs: object
        ) -> None:
            if name in declared:
                raise ValueError(f"{path.name}: launch argument {name!r} declared twice")
            declared[name] = LaunchArgument(name, default_value, description)

    env: dict[str, str] = {}

    class SetEnvironmentVariable:
        def __init__(self, name: str, value: object) -> None:
            self.name, self.value = name, value

    class Node:
        def __init__(
            self,
            *,
            package: str,
            executable: str,
            name: str | None = None,
            parameters: list[object] = (),
            ros_arguments: list[object] = (),
            output: str = "screen",
            **kwargs: object,
        ) -> None:
            if kwargs:
                raise TypeError(f"{path.name}: unsupported Node arguments {sorted(kwargs)}")
            self.package, self.executable, self.name = package, executable, name
            self.parameters, self.ros_arguments = list(parameters), list(ros_arguments)

    class LaunchDescription:
        def __init__(self, entities: list[object]) -> None:
            self.entities = list(entities)

    modules = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {
            "DeclareLaunchArgument": DeclareLaunchArgument,
            "SetEnvironmentVariable": SetEnvironmentVariable,
        },
        "launch.substitutions": {
            "LaunchConfiguration": LaunchConfiguration,
            "PathJoinSubstitution": PathJoinSubstitution,
        },
        "launch_ros.actions": {"Node": Node},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    }
    saved = {name: sys.modules.get(name) for name in [*modules, "launch_ros"]}
    try:
        for name, attrs in {**modules, "launch_ros": {}}.items():
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
        spec = importlib.util.spec_from_file_location(f"_launch_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    unknown = sorted(set(launch_args) - set(declared))
    if unknown:
        raise KeyError(f"{path.name}: unknown launch arguments {unknown}")
    nodes = []
    for entity in description.entities:
        if isinstance(entity, SetEnvironmentVariable):
            env[entity.name] = str(evaluate(entity.value))
        elif isinstance(entity, Node):
            files, params = [], {}
            for p in entity.parameters:
                if isinstance(p, dict):
                    # launch_ros parses substituted values as YAML ("0" -> 0, "true" -> True)
                    params.update({k: yaml.safe_load(str(evaluate(v))) for k, v in p.items()})
                else:
                    files.append(Path(str(evaluate(p))))
            nodes.append(
                LaunchNode(
                    entity.package,
                    entity.executable,
                    entity.name,
                    files,
                    params,
                    [str(evaluate(a)) for a in entity.ros_arguments],
                )
            )
    return LaunchInfo(path, declared, nodes, env)


def _source_share(package: str) -> Path:
    root = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / package
    if not (root / "package.xml").is_file():
        raise FileNotFoundError(f"package {package!r} not found under {root.parent}")
    return root
