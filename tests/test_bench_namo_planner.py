"""bench.namo_planner: per level, MCTS, random and learned Q on the same scenes, the speed ratio
computed from the same run's seconds; without a Q model it times an untrained net and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import namo_planner, report


def test_one_medium_scene_reports_every_planner_and_the_ratio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)  # never the committed-to results folder
    monkeypatch.delenv(namo_planner.Q_MODEL_ENV, raising=False)
    namo_planner.run(seeds=1, levels=["medium"])
    rows = json.loads((tmp_path / "namo_planner.json").read_text())["rows"]
    by = {r["planner"]: r for r in rows}
    assert [r["level"] for r in rows] == ["medium"] * 3
    assert set(by) == {"mcts", "random", "learned_q"}
    mcts, learned = by["mcts"], by["learned_q"]
    assert mcts["episodes"] == learned["episodes"] == 1 and mcts["decisions"] >= 2  # 2-move chain
    assert mcts["mcts_speed_ratio"] == 1.0
    ratio = mcts["s_per_decision"] / learned["s_per_decision"]
    assert learned["mcts_speed_ratio"] == pytest.approx(ratio, rel=0.05, abs=0.1)
    medians = mcts["median_s"] / learned["median_s"]
    assert learned["median_ratio"] == pytest.approx(medians, rel=0.05, abs=0.1)
    assert 0 < learned["network_s"] < learned["s_per_decision"]
    # The learned planner's per-scene mask work runs at reset, reported beside the decisions.
    assert learned["setup_s"] > 0
    spread = learned["s_per_decision"] + learned["setup_s"] / learned["decisions"]
    with_setup = (mcts["s_per_decision"] + mcts["setup_s"] / mcts["decisions"]) / spread
    assert learned["ratio_with_setup"] == pytest.approx(with_setup, rel=0.05, abs=0.1)
    assert learned["ratio_with_setup"] <= learned["mcts_speed_ratio"] + 0.1
    assert learned["weights"].startswith("untrained") and learned["mask_px"] == 56
    assert mcts["network_s"] is None and by["random"]["network_s"] is None
