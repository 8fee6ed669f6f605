"""ROS 2 nodes for NAMO (q_scorer). Logic lives in rclpy-free modules (`core`, learning.namo)."""
