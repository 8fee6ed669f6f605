"""Start the world-model node: an exported world model's latent filtered from ROS topics.

    ros2 launch roboloop_bringup world_model.launch.py model_path:=/abs/filter.onnx \
        imagine_path:=/abs/imagine.onnx decode_path:=/abs/decode.onnx \
        actor_path:=/abs/actor.onnx

The node configures and activates itself (autostart); it reads the observations the model
declares from /sim/<key> and the applied actions and episode ends from the sim bridge
(config/world_model.yaml). Topics, parameters, diagnostics: docs/world_model.md.
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

# Parameter values from launch arguments are read as YAML: quotes keep the empty path a string.
NONE = "''"


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution(
        [FindPackageShare("roboloop_world_model"), "config", "world_model.yaml"]
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model_path",
                description="The world model's filter graph (`python -m learning.export "
                "--step filter`, required).",
            ),
            DeclareLaunchArgument(
                "imagine_path",
                default_value=NONE,
                description="Its imagine graph: predicted reward and continue ('' = none).",
            ),
            DeclareLaunchArgument(
                "decode_path",
                default_value=NONE,
                description="Its decode graph: predicted observations ('' = none).",
            ),
            DeclareLaunchArgument(
                "actor_path",
                default_value=NONE,
                description="A Dreamer actor graph of the same latent: actions ('' = none).",
            ),
            DeclareLaunchArgument(
                "publish_prediction",
                default_value="false",
                description="Publish the decoded prediction of every observation.",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="ROS parameters file of the world-model node (topics, real-time "
                "factor, watchdog).",
            ),
            DeclareLaunchArgument(
                "device",
                default_value="auto",
                description="onnxruntime device (what actually runs: /diagnostics).",
                choices=["auto", "cpu", "cuda"],
            ),
            log_level(),
            *loopback_dds(),
            Node(
                package="roboloop_world_model",
                executable="world_model_node",
                name="world_model",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "model_path": LaunchConfiguration("model_path"),
                        "imagine_path": LaunchConfiguration("imagine_path"),
                        "decode_path": LaunchConfiguration("decode_path"),
                        "actor_path": LaunchConfiguration("actor_path"),
                        "publish_prediction": LaunchConfiguration("publish_prediction"),
                        "device": LaunchConfiguration("device"),
                    },
                ],
                ros_arguments=log_level_arguments(),
                on_exit=stop_launch_on_exit(),
            ),
        ]
    )
