"""bench.rl_vs_sb3 compares like with like: every shared hyperparameter reaches roboloop's
algorithm (through the train_* overrides the bench writes) and the SB3 model it builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from bench.rl_vs_sb3 import CASES, Case, make_sb3, roboloop_overrides
from learning.data.spec import env_model_dims
from learning.train import compose_config

PPO_CASE = next(c for c in CASES if c.name == "ppo_halfcheetah")


def ours(case: Case, tmp_path: Path) -> tuple[Any, DictConfig]:
    """roboloop's algorithm module as the bench configures it, and the config."""
    cfg = compose_config(
        f"train_{case.algorithm}", roboloop_overrides(case, 3, case.steps, str(tmp_path))
    )
    return instantiate(cfg.model, _convert_="all", **env_model_dims(case.env_id)), cfg


def test_ppo_hyperparameters_reach_both_sides(tmp_path: Path) -> None:
    h = PPO_CASE.hyper
    algo, cfg = ours(PPO_CASE, tmp_path)
    hp = algo.hparams
    assert (cfg.seed, cfg.env_id) == (3, "HalfCheetah-v5")
    # roboloop steps 8 batched envs for SB3's 1 env x 2048 steps: the same rollout size
    assert (cfg.online.num_envs, h["num_envs"], hp.compile) == (8, 1, True)
    # Whole rollouts until the budget is reached, as SB3's learn(total_timesteps) does.
    rollout = cfg.training.steps_per_iteration
    assert rollout == hp.rollout_steps == h["n_steps"] * h["num_envs"]
    assert rollout % cfg.online.num_envs == 0
    assert (cfg.training.num_iterations - 1) * rollout < PPO_CASE.steps
    assert cfg.training.num_iterations * rollout >= PPO_CASE.steps
    assert (hp.minibatch_size, hp.update_epochs) == (h["batch_size"], h["n_epochs"])
    assert (hp.learning_rate, hp.gamma, hp.gae_lambda) == (
        h["learning_rate"],
        h["gamma"],
        h["gae_lambda"],
    )
    assert (hp.clip_coef, hp.ent_coef, hp.vf_coef, hp.max_grad_norm) == (
        h["clip_range"],
        h["ent_coef"],
        h["vf_coef"],
        h["max_grad_norm"],
    )
    assert (hp.normalize_obs, hp.normalize_reward, hp.anneal_lr) == (
        h["normalize_obs"],
        h["normalize_reward"],
        h["anneal_lr"],
    )
    widths = [m.out_features for m in algo.actor_mean if isinstance(m, nn.Linear)]
    assert widths[:-1] == h["hidden"]
    assert cfg.online.eval_episodes == 0  # evaluated by the bench, outside the timing

    pytest.importorskip("stable_baselines3")
    model, vec_normalize = make_sb3(PPO_CASE, 3)
    assert (model.n_steps, model.batch_size, model.n_epochs) == (
        h["n_steps"],
        h["batch_size"],
        h["n_epochs"],
    )
    assert (model.gamma, model.gae_lambda, model.ent_coef, model.vf_coef) == (
        h["gamma"],
        h["gae_lambda"],
        h["ent_coef"],
        h["vf_coef"],
    )
    assert model.clip_range(1.0) == h["clip_range"] and model.max_grad_norm == h["max_grad_norm"]
    assert model.lr_schedule(0.5) == pytest.approx(h["learning_rate"] * 0.5)  # annealed
    assert (vec_normalize.norm_obs, vec_normalize.norm_reward) == (True, True)
    assert model.policy.net_arch == {"pi": h["hidden"], "vf": h["hidden"]}
    model.get_env().close()


def test_quick_budgets_keep_the_rollout_size_across_env_layouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quick shrinks every PPO rollout to 512 steps in all, whatever each side's n_envs."""
    from bench import rl_vs_sb3

    pytest.importorskip("stable_baselines3")
    seen = []
    monkeypatch.setattr(
        rl_vs_sb3, "_run_isolated", lambda side, case, *rest: seen.append((side, case)) or {}
    )
    monkeypatch.setattr(rl_vs_sb3, "report", lambda *args, **kwargs: None)
    rl_vs_sb3.run(quick=True, cases=["ppo_halfcheetah", "ppo_halfcheetah_8envs"])
    for side, case in seen:
        h = case.hyper
        assert h["n_steps"] * h["num_envs"] == 512, (side, case.name)
        assert case.ours["compile"] is False  # compiling would outlast the quick run
        cfg = compose_config("train_ppo", roboloop_overrides(case, 0, case.steps, str(tmp_path)))
        assert cfg.training.steps_per_iteration == 512 and cfg.online.num_envs == 8
    assert len(seen) == 4  # both sides of both cases


def test_sac_hyperparameters_reach_both_sides(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "sac_pendulum")
    h = case.hyper
    algo, cfg = ours(case, tmp_path)
    hp = algo.hparams
    assert cfg.online.num_envs == h["num_envs"]
    assert cfg.training.num_iterations * cfg.training.steps_per_iteration == case.steps
    assert list(hp.hidden_dims) == h["hidden"]
    assert (hp.learning_rate, hp.gamma, hp.tau, hp.batch_size) == (
        h["learning_rate"],
        h["gamma"],
        h["tau"],
        h["batch_size"],
    )
    assert (hp.buffer_size, hp.learning_starts, hp.gradient_steps) == (
        h["buffer_size"],
        h["learning_starts"],
        h["gradient_steps"],
    )

    pytest.importorskip("stable_baselines3")
    model, vec_normalize = make_sb3(case, 3)
    assert vec_normalize is None
    assert (model.buffer_size, model.learning_starts, model.batch_size) == (
        h["buffer_size"],
        h["learning_starts"],
        h["batch_size"],
    )
    assert (model.tau, model.gamma, model.gradient_steps) == (
        h["tau"],
        h["gamma"],
        h["gradient_steps"],
    )
    assert model.train_freq.frequency == h["train_freq"]
    assert model.lr_schedule(0.5) == h["learning_rate"]  # constant
    assert model.policy.actor.net_arch == h["hidden"]
    model.get_env().close()
