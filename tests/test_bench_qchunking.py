"""bench.qchunking end to end at a smoke budget: the sparse scene dataset made when absent, one
`learning.train` process per (agent, seed) through the offline and online phases, success read
back at the phase boundary and at the end, the exported graph timed, the table and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import qchunking, report
from episode_dataset import EpisodeReader

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~1 min: two agents, each a train process, two scene evaluations, an export
def test_quick_run_reports_both_phases_per_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)  # never the committed-to results folder
    dataset = tmp_path / "data" / "scene.hdf5"
    rows = qchunking.run(
        quick=True, agents=["QC", "FQL"], dataset=dataset, episodes=1, offline_steps=4,
        online_steps=10, extra=("best_of_n_samples=4",), runs_dir=tmp_path / "runs",
    )  # fmt: skip
    reader = EpisodeReader(dataset)  # made here, sparse: -1 until solved, then 0
    assert len(reader.episodes) >= 1 and reader.env_args["env_name"] == qchunking.ENV_ID
    assert set(reader.read_rewards(reader.episodes[0]).tolist()) <= {-1.0, 0.0}
    assert [r["agent"] for r in rows] == ["QC", "FQL"]
    qc, fql = rows
    assert (qc["model_type"], qc["horizon"], qc["num_samples"]) == ("best_of_n", 5, 4)
    assert (fql["model_type"], fql["horizon"], fql["num_samples"]) == ("policy", 1, 1)
    for row in rows:
        assert 0.0 <= row["success_offline"] <= 1.0 and 0.0 <= row["success_final"] <= 1.0
        assert row["offline_s_per_seed"] > 0 and row["online_s_per_seed"] > 0
        assert row["latency_ms"] > 0 and (row["offline_steps"], row["online_steps"]) == (4, 10)
    (kept,) = (tmp_path / "runs").iterdir()  # runs kept per date: checkpoints, TensorBoard
    assert sorted(p.name for p in kept.iterdir()) == ["FQL_0", "QC_0"]
    saved = json.loads((tmp_path / "qchunking.json").read_text())
    assert [r["agent"] for r in saved["rows"]] == ["QC", "FQL"]
    assert "QC 97 -> 100" in saved["note"] and "best_of_n_samples=4" in saved["note"]


def test_phase_results_read_the_boundary_and_the_end() -> None:
    scalars = {
        "eval/success": [(110.0, 4, 0.25), (130.0, 14, 0.5)],
        "time/offline_s": [(110.0, 14, 7.0)],
        "time/online_s": [(130.0, 14, 9.0)],
    }
    got = qchunking.phase_results(scalars, offline_steps=4)
    assert got == {
        "success_offline": 0.25,
        "success_final": 0.5,
        "offline_s": 7.0,
        "online_s": 9.0,
    }
    with pytest.raises(RuntimeError, match="no eval/success at the phase boundary 6: at"):
        qchunking.phase_results(scalars, offline_steps=6)
    with pytest.raises(RuntimeError, match="the run logged no time/online_s"):
        qchunking.phase_results({**scalars, "time/online_s": []}, offline_steps=4)


def test_the_agents_own_keys_beat_the_shared_overrides() -> None:
    """`--overrides best_of_n_samples=8` sizes QC; BC stays the flow alone (N = 1)."""
    from hydra import compose, initialize_config_dir

    def composed(agent: str) -> object:
        cmd = qchunking.train_command(
            qchunking.AGENTS[agent], 0, Path("d.hdf5"), 10, 10, Path("run"),
            ("best_of_n_samples=8", "horizon_length=3"),
        )  # fmt: skip
        overrides = [a for a in cmd[4:] if not a.startswith(("dataset=", "run_dir="))]
        with initialize_config_dir(str(REPO / "configs"), version_base=None):
            return compose("train_acrlpd", overrides)

    assert (composed("BC").best_of_n_samples, composed("BC").horizon_length) == (1, 3)
    assert (composed("QC").best_of_n_samples, composed("QC").horizon_length) == (8, 5)
    assert composed("FQL").horizon_length == 1
