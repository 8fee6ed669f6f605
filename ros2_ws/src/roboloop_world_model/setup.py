"""ament_python package: `pip install -e .` (venv) or `colcon build` (ROS workspace).

Its launch file (world_model.launch.py) lives in the workspace's launch/ directory and is
installed by roboloop_bringup.
"""

from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_world_model"

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
    description="Lifecycle node filtering ROS topics into an exported world model's latent",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"world_model_node = {PACKAGE}.main:world_model_node"]},
)
