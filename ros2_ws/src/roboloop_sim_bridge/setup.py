from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_sim_bridge"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools", "numpy"],
    zip_safe=True,
    maintainer="roboloop",
    maintainer_email="roboloop@example.com",
    description="Step a sim environment and publish it as ROS 2 topics.",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"sim_bridge = {PACKAGE}.main:sim_bridge"]},
)
