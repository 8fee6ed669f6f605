from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_recorder"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools", "numpy", "h5py"],
    zip_safe=True,
    maintainer="roboloop",
    maintainer_email="roboloop@example.com",
    description="Record ROS 2 topics into episode_dataset files (aligned by header stamp).",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"recorder = {PACKAGE}.main:recorder"]},
)
