"""ROS 2 goal generator: NAMO scene masks in, K goal-mask proposals out (docs/generative.md)."""
