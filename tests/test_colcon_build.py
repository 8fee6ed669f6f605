"""The ROS 2 packages build with colcon against the pip-installed ROS (`ros2 launch` layout).

The launch files are resolved against what `colcon build --packages-up-to roboloop_bringup`
installs, through the launch stand-in: every package they find and every executable they start
must be there, so roboloop_bringup's exec_depends are complete (issue 8, defect 9).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXECUTABLES = {
    "roboloop_sim_bridge": ["sim_bridge"],
    "roboloop_recorder": ["recorder"],
    "roboloop_policy": ["policy_node"],
    "roboloop_namo": ["q_scorer", "namo_planner"],
    "roboloop_goal_generator": ["goal_generator"],
    "roboloop_world_model": ["world_model_node"],
    "roboloop_bringup": [],
}


def colcon_build(tmp_path: Path, *selection: str) -> Path:
    """`colcon build [selection]` of ros2_ws/src into tmp_path; the install base."""
    bin_dir = Path(sys.executable).parent
    colcon = bin_dir / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment")
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["AMENT_PREFIX_PATH"] = str(bin_dir.parent)  # the venv is the ROS underlay
    env["COLCON_HOME"] = str(tmp_path / "colcon_home")
    proc = subprocess.run(
        [str(colcon), "--log-base", str(tmp_path / "log"), "build",
         "--base-paths", str(REPO / "ros2_ws" / "src"),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         *selection],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "install"


def test_colcon_builds_every_package_into_the_ros_layout(tmp_path: Path) -> None:
    install = colcon_build(tmp_path)
    install = tmp_path / "install"
    for package, executables in EXECUTABLES.items():
        prefix = install / package
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / package
        assert marker.exists(), f"{package}: ament index marker missing"
        assert (prefix / "share" / package / "package.xml").exists()
        for exe in executables:
            assert (prefix / "lib" / package / exe).exists(), f"{package}: lib/{package}/{exe}"
    launch_dir = install / "roboloop_bringup" / "share" / "roboloop_bringup" / "launch"
    assert {p.name for p in launch_dir.glob("*.launch.py")} >= {
        "sim.launch.py", "record.launch.py", "policy.launch.py", "loop.launch.py"
    }  # fmt: skip
    for package in ("roboloop_sim_bridge", "roboloop_recorder", "roboloop_policy"):
        assert list((install / package / "share" / package / "config").glob("*.yaml")), package


def test_bringup_build_resolves_every_package_and_executable_its_launch_files_name(
    tmp_path: Path,
) -> None:
    from roboloop_bringup.launch_standin import load_launch_file

    install = colcon_build(tmp_path, "--packages-up-to", "roboloop_bringup")

    def installed_share(package: str) -> Path:  # what FindPackageShare finds (ament index)
        prefix = install / package
        if not (prefix / "share/ament_index/resource_index/packages" / package).is_file():
            raise FileNotFoundError(f"package '{package}' not found in {install}")
        return prefix / "share" / package

    launch_dir = installed_share("roboloop_bringup") / "launch"
    launch_files = sorted(launch_dir.glob("*.launch.py"))
    assert {p.name for p in launch_files} == {p.name for p in (REPO / "launch").glob("*.py")}
    for path in launch_files:
        args = {"model_path": "/models/policy.onnx"} if path.name in MODEL_LAUNCH else {}
        info = load_launch_file(path, args, package_share=installed_share)
        assert info.nodes, path.name
        profile = Path(info.env["FASTDDS_DEFAULT_PROFILES_FILE"])  # the installed DDS profile
        assert profile.is_relative_to(install) and profile.is_file(), profile
        for node in info.nodes:
            exe = install / node.package / "lib" / node.package / node.executable
            assert os.access(exe, os.X_OK), f"{path.name}: {node.package}/{node.executable}"
            for params_file in node.params_files:
                assert params_file.is_relative_to(install) and params_file.is_file(), params_file


MODEL_LAUNCH = ("policy.launch.py", "loop.launch.py", "world_model.launch.py")
