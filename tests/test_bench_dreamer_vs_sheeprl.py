"""bench.dreamer_vs_sheeprl compares like with like: our size preset, batch, sequence length,
replay ratio and step budget reach our train_dreamer config and SheepRL's dreamer_v3 config
(the latter composed in the SheepRL bench venv when it exists)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench import dreamer_vs_sheeprl as bench
from bench import report
from learning.train import compose_config

CASE = next(c for c in bench.CASES if c.size == "xs")
needs_venv = pytest.mark.skipif(
    not (bench.VENV / "bin" / "python").exists(),
    reason="the SheepRL bench venv: bash bench/sheeprl_venv.sh",
)


def test_shared_settings_reach_our_dreamer(tmp_path: Path) -> None:
    cfg = compose_config("train_dreamer", bench.roboloop_overrides(CASE, str(tmp_path)))
    m, sizes = cfg.model, bench.preset("xs")
    assert (m.deter_dim, m.hidden_dim, m.stoch, m.classes, m.cnn_depth, m.mlp_layers) == (
        sizes["state_dim"],
        sizes["hidden_dim"],
        sizes["stoch"],
        sizes["classes"],
        sizes["cnn_depth"],
        sizes["mlp_layers"],
    )
    assert (m.batch_size, m.sequence_length) == (CASE.batch_size, CASE.sequence_length)
    assert (m.replay_ratio, m.learning_starts) == (CASE.replay_ratio, CASE.learning_starts)
    assert cfg.training.num_iterations * cfg.training.steps_per_iteration == CASE.total_steps
    assert list(m.obs_keys) == ["image"] and cfg.online.camera == 64  # pixels only, 64x64
    assert (cfg.online.num_envs, cfg.torch_threads, cfg.online.eval_episodes) == (1, 1, 0)


@needs_venv
def test_shared_settings_reach_sheeprl(tmp_path: Path) -> None:
    """SheepRL composes our overrides (a misspelt key fails) into the same sizes and budget;
    xs is exactly its own dreamer_v3_XS preset."""
    script = (
        "import json, sys\n"
        "from hydra import compose, initialize_config_module\n"
        "from omegaconf import OmegaConf\n"
        "with initialize_config_module('sheeprl.configs', version_base='1.3'):\n"
        "    cfg = compose('config', overrides=json.loads(sys.argv[1]))\n"
        "    xs = compose('config', overrides=['exp=dreamer_v3', 'algo=dreamer_v3_XS'])\n"
        "print(json.dumps([OmegaConf.to_container(c.algo) for c in (cfg, xs)] + "
        "[OmegaConf.to_container(cfg.env)]))\n"
    )
    overrides = bench.sheeprl_overrides(CASE, str(tmp_path))
    out = subprocess.run(
        [str(bench.VENV / "bin" / "python"), "-c", script, json.dumps(overrides)],
        capture_output=True,
        text=True,
        check=True,
    )
    algo, xs, env = json.loads(out.stdout.strip().splitlines()[-1])
    wm = algo["world_model"]
    assert wm["recurrent_model"]["recurrent_state_size"] == 256
    assert algo["dense_units"] == wm["transition_model"]["hidden_size"] == 256
    assert (wm["stochastic_size"], wm["discrete_size"]) == (32, 32)
    assert (wm["encoder"]["cnn_channels_multiplier"], algo["mlp_layers"]) == (24, 1)
    for key in ("dense_units", "mlp_layers"):
        assert algo[key] == xs[key]
    for key in ("recurrent_model", "transition_model", "representation_model", "encoder"):
        assert wm[key] == xs["world_model"][key]
    assert (algo["per_rank_batch_size"], algo["per_rank_sequence_length"]) == (16, 64)
    assert (algo["replay_ratio"], algo["learning_starts"]) == (0.5, CASE.learning_starts)
    assert algo["total_steps"] == CASE.total_steps
    assert (algo["cnn_keys"]["encoder"], algo["mlp_keys"]["encoder"]) == (["rgb"], [])
    assert (env["action_repeat"], env["num_envs"], env["screen_size"]) == (2, 1, 64)
    assert env["wrapper"]["domain_name"] == "cartpole" and env["wrapper"]["task_name"] == "swingup"


@needs_venv
def test_quick_run_measures_both_sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    bench.run(quick=True, cases=["cartpole_swingup_tiny"])
    (row,) = json.loads((tmp_path / "dreamer_vs_sheeprl.json").read_text())["rows"]
    assert row["grad_steps"] == int(0.5 * (bench.QUICK["total_steps"] - 64))
    for side in ("sheeprl", "ours"):
        for what in ("env_steps_per_s", "grad_steps_per_s", "wall_s"):
            value = row[f"{side}_{what}"]
            assert value is not None and math.isfinite(value) and value > 0, (side, what, row)
