#!/bin/bash
# Source ROS and the colcon-built workspace, keep discovery on this host, then run the command.
set -e
source "/opt/ros/${ROS_DISTRO:-kilted}/setup.bash"
source /ws/install/setup.bash
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
mkdir -p "${ROS_LOG_DIR:-/tmp/ros_log}"
exec "$@"
