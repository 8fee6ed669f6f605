"""The demos' recorder totals over served episodes (demo/loop.py)."""

from __future__ import annotations

from demo.loop import recorder_totals


def test_recorder_totals_sum_episodes_and_invalid_reasons_over_topics() -> None:
    counts = [
        {
            "dropped_steps": 1,
            "stale_steps": 2,
            "invalid_total": 3,
            "topics": {
                "/sim/applied_action": {"invalid": {"late": 2}},
                "/sim/state": {"invalid": {"nonfinite": 1}},
            },
        },
        {
            "stale_steps": 1,
            "invalid_total": 1,
            "topics": {"/sim/reward": {"invalid": {"late": 1}}},
        },
        {},  # an episode recorded before the counts existed
    ]
    assert recorder_totals(counts) == (1, 3, 4, {"late": 3, "nonfinite": 1})
    assert recorder_totals([]) == (0, 0, 0, {})
