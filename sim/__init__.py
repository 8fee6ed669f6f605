"""MuJoCo/Gymnasium layer: tasks behind one `make`, experts, collection, evaluation.

import sim
env = sim.make("Reacher-v5", camera=64)   # obs: {"state": (10,) f32, "image": (64, 64, 3) u8}
"""

from __future__ import annotations

import os

# MuJoCo needs an explicit GL backend on headless machines; EGL is software-available here.
os.environ.setdefault("MUJOCO_GL", "egl")

from sim.envs import TASKS, TaskSpec, make, register_task, task_spec  # noqa: E402

__all__ = ["TASKS", "TaskSpec", "make", "register_task", "task_spec"]
