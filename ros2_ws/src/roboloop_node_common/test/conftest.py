"""Fixtures of the roboloop_node_common tests (real rclpy)."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture()
def ros(tmp_path, monkeypatch):
    """A private domain on loopback and an rclpy context of this test's own."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_log"))
    if "ROS_DOMAIN_ID" not in os.environ:
        monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randrange(120, 160)))
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)
