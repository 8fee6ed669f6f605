"""ROS 2 bridge that steps a sim environment and publishes it as robot topics."""
