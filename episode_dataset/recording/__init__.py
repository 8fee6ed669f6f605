"""Recording ROS messages into episodes, without rclpy: one implementation for the live
recorder node (`roboloop_recorder`) and for bag import (`episode_dataset.bag_import`).

`topics`: what to record (the recorder's parameter lists -> TopicSpecs); `convert`: a message
-> (header stamp, array) through `episode_dataset.codecs`; `alignment`: samples -> fixed-rate
steps by stamp; `session`: the state machine (validation counts, headerless stamps, episodes
ended by done or on request); `sink`: where the steps go.
"""
