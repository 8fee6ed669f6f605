"""bench.world_model --quick: both tables come out as JSON rows of finite, positive numbers, and
the onnxruntime side runs the exported filter graph without torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import report, world_model


def test_quick_run_reports_latency_and_training_throughput(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)  # never the committed-to results folder
    world_model.run(quick=True, batch=4, length=8)
    latency = json.loads((tmp_path / "world_model_latency.json").read_text())["rows"]
    train = json.loads((tmp_path / "world_model_train.json").read_text())["rows"]
    assert [r["size"] for r in latency] == [r["size"] for r in train] == ["tiny"]
    (lat,), (tr,) = latency, train
    for key in ("onnxruntime_ms", "onnxruntime_p90_ms", "torch_ms", "torch_p90_ms"):
        assert math.isfinite(lat[key]) and lat[key] > 0, (key, lat)
    assert lat["onnxruntime_p90_ms"] >= lat["onnxruntime_ms"]
    assert lat["torch/onnxruntime"] == pytest.approx(lat["torch_ms"] / lat["onnxruntime_ms"], 0.02)
    for key in ("update_s", "sequences_per_s", "env_steps_per_s"):
        assert math.isfinite(tr[key]) and tr[key] > 0, (key, tr)
    assert tr["batch x seq"] == "4 x 8"
    assert tr["env_steps_per_s"] == pytest.approx(tr["sequences_per_s"] * 8, rel=0.02)
    assert tr["params_M"] == pytest.approx(0.08, abs=0.01)  # the tiny preset's world model
