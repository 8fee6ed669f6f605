"""What the online-algorithm tests share: one exported actor served against the in-process
return, and a discrete-action task to refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from learning.checkpoint import load_model
from learning.export import export_checkpoint, parity
from learning.online.loop import evaluate
from roboloop_runtime import OnnxPolicy
from sim.envs import TASKS, TaskSpec, register_task
from sim.evaluate import evaluate_policy


def export_and_serve(ckpt: str, out: Path, env_id: str, episodes: int = 2) -> dict[str, Any]:
    """Export `ckpt` to `out` as a deterministic actor, check ONNX parity (<= 1e-4), and check
    that the served actor (roboloop_runtime.OnnxPolicy) earns the in-process deterministic
    return on the same seeds. Returns the metadata."""
    meta = export_checkpoint(ckpt, out)
    model, _ = load_model(ckpt)
    assert meta["model_type"] == "actor" and "noise" not in meta["inputs"]
    assert parity(model, out) <= 1e-4
    served = evaluate_policy(env_id, OnnxPolicy(str(out), seed=0), episodes=episodes, seed=123)
    in_process = evaluate(model, env_id, episodes=episodes, seed=123, device=torch.device("cpu"))
    assert np.mean(served.returns) == pytest.approx(in_process["eval/return"], rel=1e-3)
    return meta


def register_discrete_task(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register CartPole-v1 (discrete actions) as a sim task for this test; returns its id."""
    monkeypatch.setitem(TASKS, "CartPole-v1", TaskSpec("CartPole-v1", mujoco=False))
    register_task("CartPole-v1", TASKS["CartPole-v1"])
    return "CartPole-v1"
