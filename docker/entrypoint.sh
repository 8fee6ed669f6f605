#!/bin/bash
# Source ROS and the colcon-built workspace, keep DDS on 127.0.0.1 and shared memory (the
# workspace's Fast DDS profile, which needs SYSTEM_DEFAULT), then run the command.
set -e
source "/opt/ros/${ROS_DISTRO:-kilted}/setup.bash"
source /ws/install/setup.bash
export ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT
export FASTDDS_DEFAULT_PROFILES_FILE=/ws/install/roboloop_node_common/share/roboloop_node_common/config/fastdds_loopback.xml
mkdir -p "${ROS_LOG_DIR:-/tmp/ros_log}"
exec "$@"
