"""Close the loop: sim bridge <- policy node, with the recorder saving the rollouts.

    ros2 launch roboloop_bringup loop.launch.py model_path:=/abs/path/policy.onnx
    ros2 launch roboloop_bringup loop.launch.py model_path:=/abs/policy.onnx record:=false

Includes sim.launch.py (action_source:=topic, so the bridge applies /sim/action),
policy.launch.py and, unless record:=false, record.launch.py. Nothing is typed twice: the bridge
publishes every observation key of its env on /sim/<key> and latches its spec on /sim/spec; the
recorder takes keys, shapes, env_args and rates from that spec, the policy node reads the
observations its model declares from /sim/<key> (state and state+camera models alike). The
bridge and the policy share one real-time factor (0.4 in both params files: Reacher-v5's 50 Hz
control rate at 20 steps per wall-clock second). Any node that exits stops the whole loop (exit 1
if it failed): the sim never runs unrecorded, nor is it recorded without its policy.
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare
from roboloop_bringup.launch_common import log_level, loopback_dds


def _include(name: str, arguments: dict[str, object], **kwargs) -> IncludeLaunchDescription:
    """Include one of roboloop_bringup's launch files with these arguments."""
    source = PathJoinSubstitution([FindPackageShare("roboloop_bringup"), "launch", name])
    return IncludeLaunchDescription(
        PythonLaunchDescriptionSource(source), launch_arguments=arguments.items(), **kwargs
    )


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    share = FindPackageShare
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model_path",
                description="ONNX policy written by `python -m learning.export` (required).",
            ),
            DeclareLaunchArgument(
                "policy_params_file",
                default_value=PathJoinSubstitution(
                    [share("roboloop_policy"), "config", "policy.yaml"]
                ),
                description="policy_node parameters (observation topics from the model metadata).",
            ),
            DeclareLaunchArgument(
                "sim_params_file",
                default_value=PathJoinSubstitution(
                    [share("roboloop_sim_bridge"), "config", "sim_bridge.yaml"]
                ),
                description="sim_bridge parameters (environment, camera, real-time factor).",
            ),
            DeclareLaunchArgument(
                "recorder_params_file",
                default_value=PathJoinSubstitution(
                    [share("roboloop_recorder"), "config", "recorder.yaml"]
                ),
                description="recorder parameters (default: the topic map from the bridge's spec).",
            ),
            DeclareLaunchArgument(
                "record",
                default_value="true",
                description="Record the policy's rollouts with the recorder.",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "output_path",
                default_value="data/policy_rollouts.hdf5",
                description="Dataset file the recorder writes (appended to when it exists).",
            ),
            DeclareLaunchArgument(
                "device",
                default_value="auto",
                description="onnxruntime device of the policy.",
                choices=["auto", "cpu", "cuda"],
            ),
            DeclareLaunchArgument(
                "seed", default_value="0", description="Sim episode i is reset with seed + i."
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="true: the whole loop runs on the bridge's /clock.",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "lockstep",
                default_value="false",
                description="With use_sim_time: the bridge steps as soon as the recorder and the "
                "policy's action keep up (use trigger:=observation).",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "trigger",
                default_value="timer",
                description="policy_node trigger: timer or observation.",
                choices=["timer", "observation"],
            ),
            log_level("Logging level of all nodes."),
            *loopback_dds(),
            _include(
                "sim.launch.py",
                {
                    "params_file": arg("sim_params_file"),
                    "action_source": "topic",
                    "seed": arg("seed"),
                    "use_sim_time": arg("use_sim_time"),
                    "lockstep": arg("lockstep"),
                    "log_level": arg("log_level"),
                },
            ),
            _include(
                "policy.launch.py",
                {
                    "model_path": arg("model_path"),
                    "params_file": arg("policy_params_file"),
                    "device": arg("device"),
                    "trigger": arg("trigger"),
                    "use_sim_time": arg("use_sim_time"),
                    "log_level": arg("log_level"),
                },
            ),
            _include(
                "record.launch.py",
                {
                    "params_file": arg("recorder_params_file"),
                    "output_path": arg("output_path"),
                    "use_sim_time": arg("use_sim_time"),
                    "log_level": arg("log_level"),
                },
                condition=IfCondition(arg("record")),
            ),
        ]
    )
