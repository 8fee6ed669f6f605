"""How node processes start and stop, and how the launch files react (issue 8, defect 9).

Real console scripts and launch files (through roboloop_bringup.launch_standin): a stop
signal at any moment of start-up, bad ROS arguments, a recorder that cannot record in
loop.launch.py. The default output path and SIGTERM while recording: test_ros_dds_loopback.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from roboloop_bringup.launch_standin import load_launch_file
from roboloop_bringup.processes import RosProcess, start_node

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
NODES = ["sim_bridge", "recorder", "policy_node", "q_scorer", "goal_generator", "namo_planner"]


def _no_traceback(proc: RosProcess) -> None:
    text = proc.log_text()
    for bad in ("Traceback", "KeyboardInterrupt", "GLFW"):
        assert bad not in text, f"{proc.name}:\n{text[-3000:]}"


def _wait(cond, timeout: float, what: str, procs: list[RosProcess]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log_text()[-2000:]}" for p in procs)
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.05)


def _mapped(proc: RosProcess | subprocess.Popen, library: str) -> bool:
    """True once the process has loaded `library` (its imports are under way)."""
    try:
        return library in Path(f"/proc/{proc.pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True  # it already exited: signal it anyway, the exit code tells


def _has_child(proc: RosProcess) -> bool:
    """True while the process runs a child process (glfw's library probe, at configure)."""
    tasks = Path(f"/proc/{proc.pid}/task")
    try:
        return any((task / "children").read_text().strip() for task in tasks.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return True


UP = (": active", "configure failed")  # what each node logs once it has come up

# When each node's process group gets the signal (as from a terminal's Ctrl-C): once rclpy's C
# library is loaded (mid-import, before the original run_node installed its handlers), after a
# fixed delay, while it runs a child process or once it is up.
MOMENTS = {
    "sigint-importing-rclpy": (signal.SIGINT, lambda p, age: _mapped(p, "librcl.so")),
    "sigterm-importing-rclpy": (signal.SIGTERM, lambda p, age: _mapped(p, "librcl.so")),
    "sigint-at-0.3s": (signal.SIGINT, lambda p, age: age > 0.3),
    "sigint-child-or-up": (
        signal.SIGINT,
        lambda p, age: _has_child(p) or any(u in p.log_text() for u in UP),
    ),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_stop_signal_at_any_moment_of_start_up_exits_cleanly(
    tmp_path, ros_env, monkeypatch, moment
):
    """Every node, started together, gets a stop signal at `moment` and another one 0.2 s later:
    exit 0, no traceback, at most one line while importing. MUJOCO_GL is unset: the sim bridge
    must choose EGL itself before mujoco loads (it renders a camera here)."""
    signum, ready = MOMENTS[moment]
    monkeypatch.chdir(tmp_path)  # the recorder writes its default output path here
    env = {k: v for k, v in ros_env.items() if k != "MUJOCO_GL"}
    procs, started = [], {}
    for name in NODES:
        params = {"camera": 32} if name == "sim_bridge" else None
        procs.append(start_node(name, params=params, log_path=tmp_path / f"{name}.log", env=env))
        started[procs[-1].pid] = time.monotonic()
    try:
        waiting = list(procs)
        deadline = time.monotonic() + 60
        while waiting:
            assert time.monotonic() < deadline, [p.log_text()[-1000:] for p in waiting]
            for p in [p for p in waiting if ready(p, time.monotonic() - started[p.pid])]:
                os.killpg(p.pid, signum)  # each node leads its own process group
                waiting.remove(p)
            time.sleep(0.002)
        time.sleep(0.2)
        for p in procs:  # Ctrl-C under `ros2 launch` reaches each node twice
            if p.alive():
                os.killpg(p.pid, signum)
        codes = [p.popen.wait(30) for p in procs]
    finally:
        for p in procs:
            p.stop()
    for p, code in zip(procs, codes, strict=True):
        _no_traceback(p)
        assert code == 0, f"{p.name} exited {code}:\n{p.log_text()[-2000:]}"
        if "importing" in moment:
            assert len(p.log_text().splitlines()) <= 1, p.log_text()


def test_bad_ros_arguments_are_one_line_and_exit_2(tmp_path, ros_env):
    args = ["--log-level", "loud"]
    procs = [
        start_node(name, log_path=tmp_path / f"{name}.log", env=ros_env, extra_args=args)
        for name in NODES
    ]
    codes = [p.popen.wait(60) for p in procs]
    for p, code in zip(procs, codes, strict=True):
        _no_traceback(p)
        assert code == 2, f"{p.name} exited {code}:\n{p.log_text()}"
        errors = [line for line in p.log_text().splitlines() if "loud" in line]
        assert len(errors) == 1 and "log level" in errors[0], p.log_text()


def test_a_command_line_value_the_params_file_would_override_is_refused(tmp_path, ros_env):
    """rcl drops, without a word, a `-p` value of another type than the params file gives the
    same parameter (alone, the same `-p` is refused): the node says so and exits 2. A `-p` of
    the right type, and one for another node, are applied or left alone as usual."""
    params = REPO / "ros2_ws/src/roboloop_policy/config/policy.yaml"
    cases = {
        "dropped": ["-p", "stale_periods:=abc"],
        "applied": ["-p", "stale_periods:=1e2", "-p", "other_node:stale_periods:=abc"],
    }
    procs = {
        case: start_node(
            "policy_node",
            params_file=params,
            params={"model_path": str(tmp_path / "none.onnx")},
            log_path=tmp_path / f"{case}.log",
            env=ros_env,
            extra_args=args,
        )
        for case, args in cases.items()
    }
    try:
        assert procs["dropped"].popen.wait(60) == 2
        _wait(lambda: "configure failed" in procs["applied"].log_text(), 60, "configure", [])
        assert procs["applied"].alive()
    finally:
        procs["applied"].stop()
    lines = [ln for ln in procs["dropped"].log_text().splitlines() if "stale_periods" in ln]
    assert len(lines) == 1 and lines[0].endswith(
        "bad parameter: -p stale_periods:=abc was not applied: stale_periods is of type double "
        "and stays 3.0 from the params file (rcl drops a value of another type)"
    ), procs["dropped"].log_text()
    _no_traceback(procs["dropped"])


@pytest.fixture
def reacher_model(tmp_path: Path) -> Path:
    from roboloop_policy.reference_model import make_reference_policy

    path = tmp_path / "reacher_reference.onnx"
    make_reference_policy(path, state_dim=10, action_dim=2)  # Reacher-v5 state, policy.yaml
    return path


def test_loop_stops_when_the_recorder_cannot_record(tmp_path, ros_env, reacher_model):
    """A recorder that fails to configure ends the launch with an error (exit 1): the loop
    never runs unrecorded."""
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    info = load_launch_file(
        REPO / "launch/loop.launch.py",
        {"model_path": str(reacher_model), "output_path": str(blocker / "rollouts.hdf5")},
    )
    launched = info.launch(tmp_path, ros_env)
    try:
        _wait(lambda: launched.poll() is not None, 60, "launch to shut down", launched.procs)
        codes = [p.popen.wait(30) for p in launched.procs]
    finally:
        launched.shutdown()
    assert launched.returncode == 1 and "recorder exited with code 1" in launched.reason
    assert [n.executable for n in info.nodes] == ["sim_bridge", "policy_node", "recorder"]
    assert codes == [0, 0, 1], [p.log_text()[-1500:] for p in launched.procs]
    for p in launched.procs:
        _no_traceback(p)


def _killed_once_active(proc: RosProcess) -> bool:
    """SIGKILL the node once it is up (a crash mid-run); False until then."""
    if ": active" not in proc.log_text():
        return False
    proc.kill()  # and remove the shared-memory files only it held
    return True


@pytest.mark.parametrize(
    ("args", "failing", "fail", "code"),
    [
        ({"seed": "abc"}, "sim_bridge", None, 2),  # a bad launch argument: the bridge exits 2
        ({}, "policy_node", _killed_once_active, -9),
    ],
    ids=["bridge-bad-seed", "policy-killed-while-acting"],
)
def test_loop_stops_when_any_of_its_nodes_exits(
    tmp_path, ros_env, reacher_model, args, failing, fail, code
):
    """Every node of loop.launch.py is required, as the recorder is. Before, a bridge that
    refused its seed left the policy and recorder waiting with no word from launch, and a
    policy node that died mid-run left the bridge stepping on zero actions while the recorder
    saved those episodes as policy rollouts."""
    args = {"model_path": str(reacher_model), "output_path": str(tmp_path / "r.hdf5"), **args}
    info = load_launch_file(REPO / "launch/loop.launch.py", args)
    launched = info.launch(tmp_path, ros_env)
    proc = dict(zip([n.executable for n in info.nodes], launched.procs, strict=True))[failing]
    try:
        if fail is not None:
            _wait(lambda: fail(proc), 60, f"{failing} to come up", launched.procs)
        _wait(lambda: launched.poll() is not None, 60, "launch to shut down", launched.procs)
        codes = [p.popen.wait(30) for p in launched.procs]
    finally:
        launched.shutdown()
    assert launched.returncode == 1, launched.reason
    assert f"{failing} exited with code {code}: stopping the launch" in launched.reason
    assert sorted(codes) == sorted([code, 0, 0]), [p.log_text()[-1500:] for p in launched.procs]


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


LAUNCH_CLI = [sys.executable, "-m", "roboloop_bringup.launch_cli", "roboloop_bringup"]


@pytest.mark.parametrize("end", ["sighup", "stdout-closed"])
def test_launch_cli_leaves_no_node_running_when_its_terminal_goes(tmp_path, ros_env, end):
    """Closing the terminal (SIGHUP) killed launch_cli, and a write to a closed stdout (`| head`)
    ended it with BrokenPipeError; either way the nodes, each in its own session, ran on. Then
    the closed stdout stopped them, but still printed the BrokenPipeError traceback."""
    env = {**ros_env, "ROS_LOG_DIR": str(tmp_path)}
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        cli = subprocess.Popen(
            [*LAUNCH_CLI, "sim.launch.py"], stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    nodes = []
    try:
        while b"[sim_bridge]: active" not in (line := cli.stdout.readline()):
            assert line, "launch_cli ended before the bridge came up"
        nodes = _children(cli.pid)
        if end == "sighup":
            cli.send_signal(signal.SIGHUP)
            assert cli.stdout.read().endswith(b"stopped (signal SIGHUP); exit 0\n")
        else:
            cli.stdout.close()
        cli.wait(30)
        _wait(lambda: not any(_running(pid) for pid in nodes), 5, "the nodes to stop", [])
    finally:
        for pid in filter(_running, nodes):  # left running: stop it as launch_cli should have
            os.kill(pid, signal.SIGINT)
        _wait(lambda: not any(_running(pid) for pid in nodes), 30, "the nodes to stop", [])
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert nodes, "launch_cli started no node"
    assert cli.returncode == (0 if end == "sighup" else 1)
    assert (tmp_path / "stderr.txt").read_text() == ""  # no traceback, nor any other word


# When launch_cli gets the signal: importing the stand-in (processes.py imports subprocess, which
# loads select) or loading the launch file (PyYAML's C loader). Once it is up: the test above.
CLI_MOMENTS = {
    "sigint-importing": (signal.SIGINT, "select.cpython"),
    "sigterm-importing": (signal.SIGTERM, "select.cpython"),
    "sigint-loading-the-launch-file": (signal.SIGINT, "_yaml"),
}


@pytest.mark.parametrize("moment", list(CLI_MOMENTS))
def test_launch_cli_stopped_while_starting_exits_0_without_a_traceback(tmp_path, ros_env, moment):
    """A Ctrl-C in launch_cli's first ~0.1 s (its imports, the launch file) was a
    KeyboardInterrupt traceback (exit -2, or the signal was lost and the launch ran on), and a
    SIGTERM killed it (-15); its entry now catches them first, as the node console scripts do."""
    signum, library = CLI_MOMENTS[moment]
    env = {**ros_env, "ROS_LOG_DIR": str(tmp_path)}
    cli = subprocess.Popen(
        [*LAUNCH_CLI, "sim.launch.py"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + 30
        while not _mapped(cli, library):  # polled closely: the window is a few ms long
            assert time.monotonic() < deadline, f"launch_cli never loaded {library}"
            time.sleep(0.001)
        cli.send_signal(signum)
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:  # still running: stop it (and its nodes) as a signal should have
            cli.send_signal(signal.SIGINT)
            cli.wait(30)
    assert cli.returncode == 0 and not err, err.decode()[-2000:]
    last = out.decode().splitlines()[-1]
    assert last.startswith(f"[launch_cli] stopped (signal {signal.Signals(signum).name})")
    assert last.endswith("; exit 0"), out.decode()[-2000:]


def _recorder_case(tmp_path: Path):  # noqa: ANN202
    from roboloop_recorder.node import RecorderNode

    out = tmp_path / "rec.hdf5"
    overrides = {"output_path": str(out), "env_args_json": "[1]"}  # not a JSON object
    return RecorderNode, overrides, ("env_args_json", '{"env_name": "x"}'), out.exists


def _bridge_case(tmp_path: Path):  # noqa: ANN202
    from roboloop_sim_bridge.node import SimBridgeNode

    return SimBridgeNode, {"env_id": "NoSuchEnv-v0"}, ("env_id", "Reacher-v5"), lambda: True


@pytest.mark.parametrize("case", [_recorder_case, _bridge_case], ids=["recorder", "sim_bridge"])
def test_a_parameter_set_while_unconfigured_counts_at_the_next_configure(tmp_path, case) -> None:
    """The recorder and the bridge read their parameters at each configure, like the model
    nodes: a failed configure, a corrected parameter, and the next configure uses it."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node_class, overrides, (name, fixed), made_output = case(tmp_path)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = node_class(
        context=context,
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert not (tmp_path / "rec.hdf5").exists()  # nothing touched the disk
        node.set_parameters([Parameter(name, value=fixed)])
        assert getattr(node.params, name) != fixed  # read at configure, not on the fly
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert getattr(node.params, name) == fixed and made_output()
        # configured, it runs on what it read: a set is refused with the reason, not ignored
        (refused,) = node.set_parameters([Parameter(name, value=overrides[name])])
        assert not refused.successful and refused.reason == (
            f"{name}: read at configure: deactivate and clean up the node, set it, then configure"
        )
        assert node.get_parameter(name).value == fixed
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        (accepted,) = node.set_parameters([Parameter(name, value=overrides[name])])
        assert accepted.successful  # unconfigured again: it counts at the next configure
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


BAD_PARAMETERS = {
    "action_topic": (
        {"action_topic": "bad topic!"},
        "parameter action_topic: 'bad topic!' is not a topic name: topic name must not "
        "contain characters other than alphanumerics, '_', '~', '{', or '}'",
    ),
    "observation_topics": (
        {"observation_namespace": "", "observation_topics": ["/sim/state/"]},
        "parameter observation_topics: '/sim/state/' is not a topic name: topic name must "
        "not end with a forward slash",
    ),
    "rate": (
        {"control_rate_hz": 500.0, "real_time_factor": 10.0},
        "control rate 500 Hz (parameter) x real_time_factor 10 (parameter) = 5000 Hz is "
        "outside (0, 1000] Hz",
    ),
    "fine": ({}, None),
}


def test_a_bad_parameter_is_named_not_blamed_on_the_model(tmp_path, ros_env, reacher_model):
    """Configure names the parameter at fault in one line; the model file, which is fine,
    is not in it (it used to prefix a topic or rate error as if the model were broken)."""
    base = {"model_path": str(reacher_model), "spec_topic": ""}
    procs = {
        case: start_node(
            "policy_node",
            params={**base, **overrides},
            log_path=tmp_path / f"{case}.log",
            env=ros_env,
        )
        for case, (overrides, _) in BAD_PARAMETERS.items()
    }
    try:
        for case, (_, error) in BAD_PARAMETERS.items():
            proc, want = procs[case], "configure failed: " if error else "configured "
            _wait(lambda p=proc, w=want: w in p.log_text(), 60, f"{case}: {want}", [proc])
            if error:
                lines = [ln for ln in proc.log_text().splitlines() if "configure failed" in ln]
                assert len(lines) == 1 and lines[0].endswith(f"configure failed: {error}")
                assert str(reacher_model) not in lines[0]
    finally:
        for proc in procs.values():
            proc.stop()


def test_a_plain_node_refuses_a_parameter_set_after_its_start() -> None:
    """The NAMO planner (no lifecycle) reads its parameters once: a later set is refused with
    the reason, not reported as set while nothing changes."""
    import rclpy
    from rclpy.parameter import Parameter
    from roboloop_namo.planner_node import NamoPlannerNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = NamoPlannerNode(context=context)
    try:
        before = node.get_parameter("max_moves").value
        (refused,) = node.set_parameters([Parameter("max_moves", value=before + 1)])
        assert not refused.successful
        assert refused.reason == "max_moves: read at start: restart the node with it"
        assert node.get_parameter("max_moves").value == before == node.params.max_moves
        (other,) = node.set_parameters([Parameter("use_sim_time", value=False)])
        assert other.successful  # rclpy's own parameters are not the table's
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
