"""Training and export of roboloop models (PyTorch Lightning + Hydra).

Inference without torch lives in `roboloop_runtime`; this package builds on it.
"""
