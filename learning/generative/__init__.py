"""Generative goal-mask models for NAMO: DiT network, flow matching, diffusion, export.

The torch-free pieces (mask-file loading, the ONNX `GoalGenerator` the ROS node serves) live
in `sim.namo`; importing `planner` registers `dit_q` in the sim's planners. The torch pieces live
in their own modules: `dit`, `schedulers`, `paths`, `samplers`, `module`, `data`,
`export`, `quality`, `synthetic` and the optional `fm_library` adapter to Meta's flow_matching.
Guide: docs/generative.md.

Time convention everywhere: noise at t=0, data at t=1, x_t = alpha_t x1 + sigma_t x0
(cond-OT: x_t = (1-t) x0 + t x1, velocity x1 - x0). Other libraries are converted at their edge.
"""
