"""Test support, not product: helpers the tests and benchmarks share.

`ros_probe.RosProbe` (an in-process rclpy node that talks to node processes), `namo_masks`
(synthetic NAMO Q-function mask files, no MCTS), `rank_state.SaveRankState` (a callback that
writes each DDP rank's data and weights for comparison), `damage` (a damaged copy of a file's
bytes, for the fuzz tests), `hang_guard` (a pytest plugin: a test hung with the GIL held ends
with every thread's stack). Not installed (pyproject's package
list leaves it out): it is imported from the repository root (pytest's pythonpath,
`python -m bench`). It sits on the top layer with demo and bench; no product package imports it.
"""
