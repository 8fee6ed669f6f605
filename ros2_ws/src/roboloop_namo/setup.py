"""ament_python package: `pip install -e .` (venv) or `colcon build` (ROS workspace)."""

from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_namo"

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
    description="NAMO nodes: q_scorer (Q-function) and namo_planner (dit_q over ROS)",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"q_scorer = {PACKAGE}.main:q_scorer",
            f"namo_planner = {PACKAGE}.main:namo_planner",
        ]
    },
)
