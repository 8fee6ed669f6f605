"""ROS 2 world-model node: an exported world model's latent belief filtered from ROS topics.

ROS-free logic (new observations, applied actions, episode starts, watchdog) lives in `belief`;
`node` is the thin lifecycle adapter over it (docs/world_model.md).
"""
