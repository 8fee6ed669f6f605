"""Start the policy node: an exported ONNX policy acting on observation topics.

    ros2 launch roboloop_bringup policy.launch.py model_path:=/abs/path/policy.onnx
    ros2 launch roboloop_bringup policy.launch.py model_path:=/abs/policy.onnx \
        params_file:=/path/to/my_policy.yaml device:=cuda

The node configures and activates itself (autostart); it reads the observations the model
declares from /sim/<key> (config/policy.yaml; policy_image.yaml maps topics by hand), and the
real-time factor and watchdog live in the params file. Topics, parameters, diagnostics:
docs/ros_policy_node.md.
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
        [FindPackageShare("roboloop_policy"), "config", "policy.yaml"]
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model_path",
                description="ONNX policy written by `python -m learning.export` (required).",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="ROS parameters file of the policy_node (observation topic "
                "namespace or topics/keys, action topic, real-time factor, watchdog).",
            ),
            DeclareLaunchArgument(
                "device",
                default_value="auto",
                description="onnxruntime device (what actually runs: /diagnostics).",
                choices=["auto", "cpu", "cuda"],
            ),
            DeclareLaunchArgument(
                "trigger",
                default_value="timer",
                description="timer: act on the control timer; observation: act as soon as a "
                "control step's observations arrive (lowest latency; needed by a lockstep sim).",
                choices=["timer", "observation"],
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="true: follow /clock (a sim bridge with use_sim_time:=true).",
                choices=["true", "false"],
            ),
            log_level(),
            *loopback_dds(),
            Node(
                package="roboloop_policy",
                executable="policy_node",
                name="policy_node",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "model_path": LaunchConfiguration("model_path"),
                        "device": LaunchConfiguration("device"),
                        "trigger": LaunchConfiguration("trigger"),
                        "use_sim_time": LaunchConfiguration("use_sim_time"),
                    },
                ],
                ros_arguments=log_level_arguments(),
                on_exit=stop_launch_on_exit(),
            ),
        ]
    )
