"""NAMO Q-function: data, network, metrics, export, Q-greedy planner, torch scorer.

The torch-free pieces the ROS q_scorer needs (keys, request layout, ONNX scorer) live in
`sim.namo`; importing `learning.namo.planner` registers `learned_q` in the sim's planners.
"""
