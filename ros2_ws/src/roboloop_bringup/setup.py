from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "roboloop_bringup"

# launch/ is a symlink to the workspace's top-level launch/ directory (one copy of each file).
setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="roboloop",
    maintainer_email="roboloop@example.com",
    description="roboloop launch files.",
    license="Apache-2.0",
)
