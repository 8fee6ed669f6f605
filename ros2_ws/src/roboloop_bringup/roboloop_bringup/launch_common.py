"""What every roboloop launch file declares: the `log_level` argument, loopback-only DDS and
nodes the launch stops with.

    from roboloop_bringup.launch_common import log_level, loopback_dds, stop_launch_on_exit
    LaunchDescription([..., log_level(), *loopback_dds(),
                       Node(..., ros_arguments=LOG_LEVEL, on_exit=stop_launch_on_exit())])

`launch` is imported inside the functions: under `launch_standin` its stand-in modules exist only
while a file is being visited, and under `ros2 launch` the real ones are there either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]


def log_level(description: str = "Logging level of the node.") -> Any:
    """The `log_level` launch argument (info by default)."""
    from launch.actions import DeclareLaunchArgument

    return DeclareLaunchArgument(
        "log_level", default_value="info", description=description, choices=LOG_LEVELS
    )


def log_level_arguments() -> list[Any]:
    """A Node's `ros_arguments` applying the `log_level` launch argument."""
    from launch.substitutions import LaunchConfiguration

    return ["--log-level", LaunchConfiguration("log_level")]


def loopback_dds() -> list[Any]:
    """DDS on 127.0.0.1 and shared memory only, for every node the file starts (the profile's
    comment says why the discovery range is SYSTEM_DEFAULT, not LOCALHOST)."""
    from launch.actions import SetEnvironmentVariable
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    profile = PathJoinSubstitution(
        [FindPackageShare("roboloop_node_common"), "config", "fastdds_loopback.xml"]
    )
    return [
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "SYSTEM_DEFAULT"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
    ]


def stop_launch_on_exit() -> Callable[[Any, Any], list[Any]]:
    """A Node's `on_exit`: when the node exits, launch stops every node it started, and exits 1
    if the node failed (an exception raised in on_exit is how `ros2 launch` exits 1). Without
    it, loop.launch.py went on after its bridge or policy node died: the recorder saved
    episodes of zero actions as policy rollouts, and nothing said so."""
    from launch.actions import Shutdown  # now: the stand-in's modules are gone when nodes exit

    def exited(event: Any, context: Any) -> list[Any]:
        if event.returncode != 0:
            raise RuntimeError(
                f"{event.process_name} exited with code {event.returncode}: stopping the launch"
            )
        return [Shutdown(reason=f"{event.process_name} exited")]

    return exited
