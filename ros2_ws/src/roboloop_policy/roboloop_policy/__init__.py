"""ROS 2 policy node: runs an exported roboloop ONNX policy on observation topics.

ROS-free logic (decoding, binding topics to model keys, the control loop with its watchdog)
lives in `observations` and `control`; `node` is the thin lifecycle adapter over them.
"""
