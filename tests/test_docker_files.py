"""docker/: what can be checked without a Docker engine (and without the compose plugin).

Referenced files exist, the default compose file needs no GPU and no network, its services run
real launch files with declared arguments through the launch stand-in's command line, and the
sim + recorder commands that compose runs are run here outside Docker (same command lines).
`make docker-check` (docker/check.sh, minutes, needs root or an engine) runs the stack for real.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from roboloop_bringup.launch_runner import parse_args, run
from roboloop_bringup.launch_standin import load_launch_file

from episode_dataset import EpisodeReader, validate_file

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
SRC = REPO / "ros2_ws" / "src"
ROS_SERVICES = ["sim", "recorder", "policy"]
LAUNCH_CLI = ["python", "-m", "roboloop_bringup.launch_cli"]
# Where colcon (--install-base /ws/install) puts the Fast DDS profile of roboloop_node_common.
INSTALLED_PROFILE = (
    "/ws/install/roboloop_node_common/share/roboloop_node_common/config/fastdds_loopback.xml"
)
# The same profile in the image installed as `make venv` does (source tree in /ws).
SOURCE_PROFILE = "/ws/ros2_ws/src/roboloop_node_common/config/fastdds_loopback.xml"


def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose variables: ${NAME:-default} and ${NAME-default} -> env's value or the default."""
    env = env or {}

    def value(m: re.Match) -> str:
        name, colon, default = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or not colon):
            return env[name]
        return default

    return re.sub(r"\$\{([A-Z_]+)(:?)-([^}]*)\}", value, text)


def command_of(service: dict, env: dict[str, str] | None = None) -> list[str]:
    return [interpolate(str(c), env) for c in service["command"]]


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    text = (DOCKER / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def launch_of(service: dict) -> tuple[Path, dict[str, str]]:
    """`python -m roboloop_bringup.launch_cli PKG FILE a:=b ...` or `ros2 launch PKG FILE ...`
    -> (the launch file's source, args)."""
    cmd = command_of(service)
    if cmd[:3] == LAUNCH_CLI:
        return parse_args(cmd[3:])  # exits on a missing file or a malformed argument
    assert cmd[:2] == ["ros2", "launch"], cmd
    path = SRC / cmd[2] / "launch" / cmd[3]
    assert path.is_file(), f"{cmd[2]}/{cmd[3]}: no such launch file"
    return path, dict(a.split(":=", 1) for a in cmd[4:])


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.pypi"])
def test_dockerfile_base_is_a_build_argument_and_copies_exist(name):
    ins = dockerfile_instructions(name)
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for op, rest in ins if op == "ARG"}
    froms = [rest for op, rest in ins if op == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms
    default = {
        "Dockerfile": "ros:kilted",
        "Dockerfile.gpu": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
        "Dockerfile.pypi": "debian:bookworm-slim",
    }[name]
    assert args["BASE_IMAGE"] == default
    assert ins[0] == ("ARG", f"BASE_IMAGE={default}")  # global: usable in FROM
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from="):
            *sources, _dest = shlex.split(rest)
            for s in sources:
                assert (REPO / s).exists(), f"{name}: COPY source {s} missing"
        if op == "RUN":
            for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", rest):
                assert (REPO / source).is_dir(), f"{name}: bind mount source {source} missing"
    assert (DOCKER / f"{name}.dockerignore").is_file()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_apt_ros_dockerfiles_build_with_colcon(name):
    text = (DOCKER / name).read_text()
    assert "colcon build --base-paths ros2_ws/src" in text
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT" in text
    assert f"FASTDDS_DEFAULT_PROFILES_FILE={INSTALLED_PROFILE}" in text
    assert "torch==2.13.0" in text
    if name == "Dockerfile":
        assert "download.pytorch.org/whl/cpu" in text
    else:
        assert "onnxruntime-gpu" in text and "ros-kilted-ros-base" in text
    # the ros-* wheels are filtered out (apt provides ROS); requirements must have some
    assert any(line.startswith("ros-") for line in (REPO / "requirements.txt").read_text().split())
    entry = DOCKER / "entrypoint.sh"
    assert os.access(entry, os.X_OK)
    assert "/ws/install/setup.bash" in entry.read_text()
    assert f"FASTDDS_DEFAULT_PROFILES_FILE={INSTALLED_PROFILE}" in entry.read_text()


def test_pypi_dockerfile_installs_as_make_venv_does():
    """The image runs the Makefile's own venv recipe; its cache layer installs the same pins."""
    text = (DOCKER / "Dockerfile.pypi").read_text()
    assert not text.startswith("# syntax"), "a frontend image would need Docker Hub"
    assert re.search(r"make venv VENV=\"\$VIRTUAL_ENV\" PY=python3", text)
    assert "pip install -c constraints.txt -r requirements.txt" in text
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -c constraints.txt -r requirements.txt -e ." in makefile
    assert f"FASTDDS_DEFAULT_PROFILES_FILE={SOURCE_PROFILE}" in text
    assert (REPO / SOURCE_PROFILE.removeprefix("/ws/")).is_file()
    # the image's default command is a real launch file
    cmd = [c.strip('" ') for c in text.split("CMD [", 1)[1].split("]", 1)[0].split(",")]
    assert cmd[:3] == LAUNCH_CLI
    assert load_launch_file(*parse_args(cmd[3:])).nodes


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.pypi"])
def test_dockerignore_covers_what_git_ignores(name):
    """The build context (repository root) leaves out what git ignores: venvs alone are GBs."""
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!")) and not line.startswith("docker/local")
    }
    patterns = {
        line.strip() for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    }
    missing = sorted(p for p in ignored if p not in patterns and f"**/{p}" not in patterns)
    assert not missing, f"{name}.dockerignore lacks {missing}"
    # docker/local reaches Dockerfile.pypi's install steps by bind mount, nothing else
    assert ("docker/local" in patterns) == (name != "Dockerfile.pypi")


def test_compose_is_cpu_first_and_keeps_everything_on_the_host():
    c = compose()
    assert set(c["services"]) == {"sim", "recorder", "policy", "train"}
    assert "deploy" not in (DOCKER / "compose.yaml").read_text()  # no GPU reservation
    assert "data" in c["volumes"]
    for name, svc in c["services"].items():
        assert any(v.startswith("data:") for v in svc["volumes"]), name
        assert svc["image"] == "roboloop:cpu"
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.pypi"
        assert (DOCKER / svc["build"]["context"]).resolve() == REPO
        assert interpolate(svc["build"]["args"]["BASE_IMAGE"]) == "debian:bookworm-slim"
        # no network but loopback: own (none) or sim's
        assert svc["network_mode"] in ("none", "service:sim"), name
    assert c["services"]["sim"]["network_mode"] == "none"
    assert c["services"]["train"]["network_mode"] == "none"
    for name in ROS_SERVICES:
        env = c["services"][name]["environment"]
        assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"
        assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == SOURCE_PROFILE
        assert env["ROS_LOG_DIR"].startswith("/data")
        if name != "sim":
            assert c["services"][name]["network_mode"] == "service:sim"
            assert c["services"][name]["ipc"] == "service:sim"


def test_compose_gpu_override_reserves_a_gpu_for_the_model_services():
    gpu = compose("compose.gpu.yaml")["services"]
    assert set(gpu) == {"policy", "train"}
    for name, svc in gpu.items():
        assert svc["image"] == "roboloop:gpu"
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
    # the CUDA image has ROS from apt (colcon install, `ros2 launch`)
    assert gpu["policy"]["environment"]["FASTDDS_DEFAULT_PROFILES_FILE"] == INSTALLED_PROFILE
    path, args = launch_of(gpu["policy"])
    assert load_launch_file(path, args).nodes


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_merges_the_gpu_override(tmp_path):
    """compose's own merge (no engine needed): GPU on policy and train only."""
    out = subprocess.run(
        ["docker-compose", "-p", "t", "-f", "docker/compose.yaml", "-f", "docker/compose.gpu.yaml"]
        + ["config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    services = yaml.safe_load(out)["services"]
    assert {n for n, s in services.items() if "deploy" in s} == {"policy", "train"}
    assert services["sim"]["image"] == services["recorder"]["image"] == "roboloop:cpu"
    assert services["policy"]["network_mode"] == "service:sim"
    assert services["policy"]["command"][:2] == ["ros2", "launch"]


def _seconds(duration: str) -> float:
    """A compose duration ("20s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


@pytest.mark.parametrize("service", ROS_SERVICES)
def test_compose_stops_ros_services_with_sigint_and_time_to_close(service):
    """Launch stops its nodes cleanly on SIGINT (the recorder closes the open episode); the
    stand-in escalates to SIGTERM and SIGKILL after 5 s each. An init process forwards the
    signal and reaps what is left."""
    svc = compose()["services"][service]
    assert svc.get("stop_signal") == "SIGINT", service
    assert _seconds(svc.get("stop_grace_period", "10s")) >= 15, service
    assert svc.get("init") is True, service


@pytest.mark.parametrize("service", ROS_SERVICES)
def test_compose_launch_commands_are_real(service):
    path, args = launch_of(compose()["services"][service])
    info = load_launch_file(path, args)  # raises on unknown arguments
    assert info.nodes


def test_compose_sim_time_reaches_every_ros_service():
    """SIM_TIME=true: the bridge publishes /clock and every reader follows it (a recorder on
    wall time beside a sim-time bridge would reject every stamp)."""
    env = {"SIM_TIME": "true", "LOCKSTEP": "true"}
    for name in ROS_SERVICES:
        cmd = command_of(compose()["services"][name], env)
        path, args = parse_args(cmd[3:])
        assert args["use_sim_time"] == "true", name
        assert load_launch_file(path, args).nodes, name  # the launch file declares it
        assert parse_args(command_of(compose()["services"][name])[3:])[1]["use_sim_time"] == (
            "false"
        )
    gpu_policy = command_of(compose("compose.gpu.yaml")["services"]["policy"], env)
    assert "use_sim_time:=true" in gpu_policy


def test_compose_train_command_targets_a_real_config():
    cmd = command_of(compose()["services"]["train"])
    assert cmd[:3] == ["python", "-m", "learning.train"]
    name = cmd[3].removeprefix("--config-name=")
    from learning.train import compose_config

    cfg = compose_config(name, cmd[4:])  # Hydra refuses an override of an unknown key
    assert cfg.dataset == "/data/recording.hdf5"
    assert str(cfg.run_dir).startswith("/data/outputs/"), "runs must land on the shared volume"
    # EPOCHS unset trains as the config says; make docker-check sets EPOCHS=1
    assert cfg.max_epochs == compose_config(name, ["dataset=x"]).max_epochs
    one = compose_config(name, command_of(compose()["services"]["train"], {"EPOCHS": "1"})[4:])
    assert one.max_epochs == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["roboloop_bringup", "nope.launch.py"], "no launch file 'nope.launch.py' in 'roboloop_"),
        (["roboloop_bringup", "sim.launch.py", "seed=3"], "'seed=3' is not name:=value"),
    ],
)
def test_launch_cli_refuses_bad_command_lines(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        parse_args(argv)


def test_launch_cli_usage_error_names_only_the_required_arguments(capsys):
    """Launch arguments are optional: argparse listed `arguments` among the missing ones."""
    with pytest.raises(SystemExit):
        parse_args([])
    err = capsys.readouterr().err
    assert "[arguments ...]" in err
    assert err.endswith("the following arguments are required: package, launch_file\n"), err


@pytest.mark.parametrize(
    "launch_file, arg, message",
    [
        ("sim.launch.py", "log_level:=loud", "log_level"),  # not one of the argument's choices
        ("sim.launch.py", "speed:=2", "unknown launch arguments ['speed']"),
        # a typo of a declared argument: the close name is suggested
        ("sim.launch.py", "lockstpe:=true", "['lockstpe']; did you mean lockstep?"),
        ("policy.launch.py", "modle_path:=x", "given: [modle_path]; did you mean model_path?"),
    ],
)
def test_launch_cli_refuses_bad_launch_arguments_in_one_line(launch_file, arg, message):
    with pytest.raises(SystemExit) as exc:
        run(["roboloop_bringup", launch_file, arg])
    text = str(exc.value)
    assert text.startswith(f"launch_cli: {launch_file}") and message in text and "\n" not in text


@pytest.mark.parametrize("variable", ["ROS_DOMAIN_ID", "ROS_LOG_DIR"])
def test_launch_cli_without_a_domain_or_log_dir_says_so_in_one_line(variable, monkeypatch):
    """A shell without the exports of docs/ros_bridge_recorder.md was a ValueError traceback
    from the first node's start."""
    monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("ROS_HOME", raising=False)
    with pytest.raises(SystemExit) as exc:
        run(["roboloop_bringup", "sim.launch.py"])
    assert str(exc.value).startswith(f"launch_cli: ros_env: no {variable} given or inherited")


@pytest.mark.ros
@pytest.mark.xdist_group("ros")
def test_launch_cli_exits_1_when_the_recorder_fails(tmp_path, ros_env):
    """The recorder's on_exit stops the launch with exit 1 (a loop never runs unrecorded)."""
    topics = SRC / "roboloop_recorder" / "config" / "recorder_topics.yaml"
    cmd = [*LAUNCH_CLI, "roboloop_bringup", "record.launch.py", f"params_file:={topics}"]
    cmd.append(f"output_path:={tmp_path / 'not_a_dir'}/r.hdf5")
    (tmp_path / "not_a_dir").write_text("a file where the recorder needs a directory")
    env = {**ros_env, "ROS_LOG_DIR": str(tmp_path / "ros_log")}
    proc = _start(cmd, env, tmp_path / "out.txt")
    try:
        proc.wait(60)
    finally:
        _stop(proc)
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 1, out
    assert "[recorder] " in out and "recorder exited with code 1" in out


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable if c == "python" else c for c in cmd]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _stop(proc: subprocess.Popen) -> int:
    """SIGINT as `compose stop` sends it (launch_cli stops its nodes in up to 10 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.mark.ros
@pytest.mark.xdist_group("ros")
def test_compose_sim_and_recorder_commands_record_outside_docker(tmp_path, ros_env):
    """Run the command lines `compose up sim recorder` runs (launch_cli), /data -> a temp dir."""
    c = compose()
    env = {**ros_env, "MUJOCO_GL": ros_env.get("MUJOCO_GL", "egl")}
    env["ROS_LOG_DIR"] = str(tmp_path / "ros_log")
    cmds = {
        name: [a.replace("/data", str(tmp_path)) for a in command_of(c["services"][name], env)]
        for name in ("recorder", "sim")
    }
    logs = {name: tmp_path / f"{name}.out" for name in cmds}
    procs = {}
    try:
        for name, cmd in cmds.items():
            procs[name] = _start(cmd, env, logs[name])
        # the stand-in relays each node's output, prefixed as launch's output="screen" does
        deadline = time.monotonic() + 90
        while "[recorder] " not in (text := logs["recorder"].read_text(errors="replace")) or (
            "episode demo_0 written" not in text
        ):
            assert all(p.poll() is None for p in procs.values()), {
                n: f.read_text(errors="replace")[-2000:] for n, f in logs.items()
            }
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.1)
    finally:
        codes = {name: _stop(p) for name, p in procs.items()}
    assert codes == {"recorder": 0, "sim": 0}, {n: f.read_text()[-2000:] for n, f in logs.items()}
    assert "[launch_cli] stopped (signal SIGINT); exit 0" in logs["recorder"].read_text()
    out = tmp_path / "recording.hdf5"
    validate_file(out)
    with EpisodeReader(out) as r:
        first = r.episodes[0]
        steps = r.num_steps(first)
        counts = r.episode_metadata(first)["recorder_counts"]
        # 50 steps unless the shared machine delayed some beyond max_age (counted, not written)
        assert steps + counts["stale_steps"] == 50 and steps >= 40, counts
        assert r.read_dones(first)[-1] and not r.read_dones(first)[:-1].any()
        assert r.read_obs(first, "image").shape == (steps, 64, 64, 3)
        assert r.env_args["env_name"] == "Reacher-v5" and r.env_args["control_rate_hz"] == 50.0


@pytest.mark.parametrize("script", ["check.sh", "make_base.sh"])
def test_docker_scripts_parse_and_make_runs_the_check(script):
    """The scripts `make docker-check` runs parse (bash -n); the check itself needs an engine."""
    path = DOCKER / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docker-check:\n\tbash docker/check\.sh$", makefile, re.M)
    assert "docker-check" not in makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
