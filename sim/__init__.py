"""MuJoCo/Gymnasium layer: tasks behind one `make`, experts, collection, evaluation.

import sim
env = sim.make("Reacher-v5", camera=64)   # obs: {"state": (10,) f32, "image": (64, 64, 3) u8}
envs = sim.make_vec("Reacher-v5", 16)     # sim.vector: obs {"state": (16, 10) f32}, batched

The task names load `sim.envs` (Gymnasium, MuJoCo) on first use, so the torch- and MuJoCo-free
modules below (`sim.namo.layout`, `sim.namo.scoring`, `sim.namo.goal_generator`, ...) stay light
for the ROS nodes that import them.
"""

from __future__ import annotations

import os
from typing import Any

# MuJoCo needs an explicit GL backend on headless machines; EGL is software-available here.
os.environ.setdefault("MUJOCO_GL", "egl")

__all__ = ["TASKS", "TaskSpec", "make", "make_vec", "register_task", "task_spec"]


def __getattr__(name: str) -> Any:
    if name == "make_vec":
        from sim.vector import make_vec

        return make_vec
    if name in __all__:
        from sim import envs

        return getattr(envs, name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
