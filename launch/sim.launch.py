"""Start the sim bridge: a sim env stepped at its control rate x the real-time factor, on ROS.

    ros2 launch roboloop_bringup sim.launch.py action_source:=expert
    ros2 launch roboloop_bringup sim.launch.py params_file:=/path/to/my_sim_bridge.yaml

Topics, services and parameters: docs/ros_bridge_recorder.md.
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare
from roboloop_bringup.launch_common import (
    log_level,
    log_level_arguments,
    loopback_dds,
    stop_launch_on_exit,
)


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("roboloop_sim_bridge"), "config", "sim_bridge.yaml"]
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="ROS parameters file of the sim_bridge node.",
            ),
            DeclareLaunchArgument(
                "action_source",
                default_value="expert",
                description="Where actions come from: topic (a policy node), expert or random.",
                choices=["topic", "expert", "random"],
            ),
            DeclareLaunchArgument(
                "seed", default_value="0", description="Episode i is reset with seed + i."
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="true: the bridge keeps simulated time, publishes it on /clock and "
                "stamps with it (its readers then need use_sim_time:=true).",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "lockstep",
                default_value="false",
                description="With use_sim_time: step as fast as the readers acknowledging on "
                "<namespace>/step_ack keep up (and the policy's action arrives), not at a rate.",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "wait_for_subscribers",
                default_value="0",
                description="Start the first episode once every output topic (observations, "
                "applied action, reward, done) has this many readers, so a recorder that "
                "matches late misses no step.",
            ),
            log_level(),
            *loopback_dds(),
            Node(
                package="roboloop_sim_bridge",
                executable="sim_bridge",
                name="sim_bridge",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "action_source": LaunchConfiguration("action_source"),
                        "seed": LaunchConfiguration("seed"),
                        "publish_clock": LaunchConfiguration("use_sim_time"),
                        "lockstep": LaunchConfiguration("lockstep"),
                        "wait_for_subscribers": LaunchConfiguration("wait_for_subscribers"),
                    },
                ],
                ros_arguments=log_level_arguments(),
                on_exit=stop_launch_on_exit(),
            ),
        ]
    )
