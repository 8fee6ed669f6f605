"""Small real learning check: 20 expert Reacher-v5 episodes -> FBC -> ONNX policy beats random.

The full check (50 episodes, 20 eval episodes, normalized >= 0.8) is `python -m
learning.check_reacher`; this one trains briefly and asserts a weaker but real bar.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sim.evaluate", reason="sim package (collector/evaluator) not available")

from learning.check_reacher import check  # noqa: E402


def test_exported_fbc_policy_learns_reacher(tmp_path: Path) -> None:
    res = check(
        tmp_path,
        episodes=20,
        eval_episodes=10,
        overrides=[
            "max_epochs=20",
            "batch_size=64",
            "model.network.hidden_dims=[128,128]",
            "~trainer.callbacks.progress_bar",
        ],
    )
    r = res["returns"]
    assert r["expert"] > r["random"] + 10, r  # the expert really is better than random
    assert res["normalized"] >= 0.3, res
