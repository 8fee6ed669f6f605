"""ROS 2 recorder: topics -> aligned episodes in an episode_dataset file."""
