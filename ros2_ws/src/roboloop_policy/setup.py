"""ament_python package: `pip install -e .` (venv) or `colcon build` (ROS workspace).

The launch files (policy.launch.py, loop.launch.py) live in the workspace's launch/ directory
and are installed by roboloop_bringup, next to sim.launch.py and record.launch.py.
"""

from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="roboloop",
    maintainer_email="roboloop@example.com",
    description="Lifecycle node running an exported roboloop ONNX policy on ROS 2 topics",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"policy_node = {PACKAGE}.main:policy_node"]},
)
