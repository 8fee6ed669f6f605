"""Start the recorder: topics aligned on the control-rate timeline -> an episode_dataset file.

    ros2 launch roboloop_bringup record.launch.py output_path:=/data/reacher.hdf5
    ros2 launch roboloop_bringup record.launch.py params_file:=/path/to/my_recorder.yaml

The default params file takes what to record (keys, shapes, topics, env_args, control rate,
real-time factor) from the spec the sim bridge latches on /sim/spec; recorder_topics.yaml (or
your own file) lists the topics by hand.

Episodes start on activation and after each done; services /recorder/start_episode and
/recorder/stop_episode (std_srvs/Trigger). Parameters: docs/ros_bridge_recorder.md.

The default output_path is relative to the directory `ros2 launch` runs in; the recorder creates
missing directories. The recorder is required: when it exits, the launch shuts down with every
node it started (loop.launch.py included), and exits 1 if the recorder failed, so a loop never
runs unrecorded.
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
        [FindPackageShare("roboloop_recorder"), "config", "recorder.yaml"]
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="ROS parameters file of the recorder node (spec topic, or topics, "
                "keys and shapes by hand: recorder_topics.yaml).",
            ),
            DeclareLaunchArgument(
                "output_path",
                default_value="data/recording.hdf5",
                description="Dataset file to write (appended to when it exists).",
            ),
            DeclareLaunchArgument(
                "max_episodes",
                default_value="0",
                description="Stop recording after this many episodes (0 = unlimited).",
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="true: follow /clock (a sim bridge with use_sim_time:=true) and "
                "acknowledge each step, so a lockstep bridge waits for the recorder.",
                choices=["true", "false"],
            ),
            log_level(),
            *loopback_dds(),
            Node(
                package="roboloop_recorder",
                executable="recorder",
                name="recorder",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "output_path": LaunchConfiguration("output_path"),
                        "max_episodes": LaunchConfiguration("max_episodes"),
                        "use_sim_time": LaunchConfiguration("use_sim_time"),
                        "lockstep_ack": LaunchConfiguration("use_sim_time"),
                    },
                ],
                ros_arguments=log_level_arguments(),
                on_exit=stop_launch_on_exit(),
            ),
        ]
    )
