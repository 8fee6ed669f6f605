"""The ROS 2 packages build with colcon against the pip-installed ROS (`ros2 launch` layout)."""

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
    "roboloop_namo": ["q_scorer"],
    "roboloop_goal_generator": ["goal_generator"],
    "roboloop_bringup": [],
}


def test_colcon_builds_every_package_into_the_ros_layout(tmp_path: Path) -> None:
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
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
