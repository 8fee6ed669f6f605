"""Training, export and inference of roboloop policies.

Importing this package must stay torch-free: the ROS policy node imports
`learning.onnx_runner` and `learning.policy_interface` on machines without torch.
"""
