"""NAMO Q-function: data, network, metrics, export, Q-greedy planner and ROS-free scoring.

Importing this package stays torch-free (the ROS q_scorer imports `learning.namo.layout` and
`learning.namo.scoring` on machines that only have onnxruntime); torch lives in `data`, `model`,
`export` and the torch backend of `scoring`.
"""
