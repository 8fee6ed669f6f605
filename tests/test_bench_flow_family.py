"""bench.flow_family end to end at a smoke budget: data, training, export, onnxruntime
evaluation and the table for two agents (a deterministic actor and a one-step flow policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import flow_family, report


def test_quick_run_reports_success_nfe_and_latency_per_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)  # never the committed-to results folder
    rows = flow_family.run(
        quick=True, tasks=["reacher"], agents=["BC", "FQL"], steps=20, episodes=3, eval_episodes=1
    )
    assert [r["agent"] for r in rows] == ["BC", "FQL"]
    assert [r["nfe"] for r in rows] == [1, 1]  # FQL's one-step policy, not its 10-step flow
    for row in rows:
        assert 0.0 <= row["success"] <= 1.0 and row["latency_ms"] > 0
        assert row["return"] < 0  # Reacher's distance and control costs
    saved = json.loads((tmp_path / "flow_family.json").read_text())
    assert [r["agent"] for r in saved["rows"]] == ["BC", "FQL"]
