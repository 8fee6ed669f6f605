"""ament_python package: `pip install -e .` (venv) or `colcon build` (ROS workspace)."""

from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_node_common"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # the Fast DDS profile the launch files and docker point FASTDDS_DEFAULT_PROFILES_FILE at
        (f"share/{PACKAGE}/config", sorted(glob("config/*.xml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="roboloop",
    maintainer_email="roboloop@example.com",
    description="What every roboloop node shares: parameters, the lifecycle main, /diagnostics",
    license="Apache-2.0",
)
