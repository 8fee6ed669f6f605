"""sim.make_vec: N envs as one batch, step for step equal to N `sim.make` envs."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from sim.dmc import DMC_TASKS
from sim.ogbench import SPARSE_TASK_IDS, TASK_IDS
from sim.spec import env_spec
from sim.vector import BATCHED_STEPS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Short time limits so a few hundred steps cross several episode ends.
# Hopper-v5 terminates on its own (random actions fall within ~20-60 steps).
LIMITS = {"Reacher-v5": None, "HalfCheetah-v5": 40, "Hopper-v5": None, "Pendulum-v1": 30}
TERMINATING = {"Hopper-v5", "InvertedPendulum-v5"}


def _reference(env_id: str, num_envs: int, seed: int, actions: np.ndarray, **kwargs):
    """The same rollout through single `sim.make` envs with same-step autoreset by hand."""
    envs = [sim.make(env_id, **kwargs) for _ in range(num_envs)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    steps = []
    for batch in actions:
        row = []
        for i, (env, action) in enumerate(zip(envs, batch, strict=True)):
            final, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                obs[i], _ = env.reset()
            else:
                obs[i] = final
            row.append((obs[i], final, reward, terminated, truncated, info))
        steps.append(row)
    return steps


# The DMC tasks have their own checks (tests/test_sim_dmc.py), skipped without dm_control; the
# OGBench tasks theirs (tests/test_sim_ogbench.py: their contact-rich resets agree between two
# envs to 1e-9, not bit for bit).
@pytest.mark.parametrize(
    "env_id", sorted(set(sim.TASKS) - set(DMC_TASKS) - {*TASK_IDS, *SPARSE_TASK_IDS})
)
def test_vector_env_matches_single_envs_step_for_step(env_id: str) -> None:
    num_envs, seed, num_steps = 3, 11, 130
    limit = LIMITS.get(env_id, 40)
    kwargs = {} if limit is None else {"max_episode_steps": limit}
    envs = sim.make_vec(env_id, num_envs, **kwargs)
    rng = np.random.default_rng(0)
    space = envs.action_space
    actions = rng.uniform(space.low, space.high, (num_steps, *space.shape)).astype(np.float32)
    expected = _reference(env_id, num_envs, seed, actions, **kwargs)

    obs, infos = envs.reset(seed=seed)
    assert envs.observation_space.contains(obs)
    returns = np.zeros(num_envs)
    ends = terminations = 0
    for batch, row in zip(actions, expected, strict=True):
        obs, reward, terminated, truncated, infos = envs.step(batch)
        returns += [r[2] for r in row]
        for i, (next_obs, final, rew, term, trunc, info) in enumerate(row):
            np.testing.assert_array_equal(obs["state"][i], next_obs["state"])
            np.testing.assert_array_equal(infos["final_obs"]["state"][i], final["state"])
            assert reward[i] == pytest.approx(rew, rel=1e-12, abs=1e-12)
            assert (terminated[i], truncated[i]) == (term, trunc)
            assert infos["_final_obs"][i] == (term or trunc) == infos["_episode"][i]
            if "is_success" in info:
                assert infos["is_success"][i] == info["is_success"]
            if term or trunc:
                ends += 1
                terminations += term
                assert infos["episode"]["r"][i] == pytest.approx(returns[i], rel=1e-9)
                returns[i] = 0.0
        assert reward.shape == (num_envs,) and terminated.dtype == bool
    assert ends >= num_envs * 2, "the rollout crossed too few episode ends to test autoreset"
    assert (terminations > 0) == (env_id in TERMINATING)
    envs.close()


def test_mujoco_tasks_step_through_a_batched_kernel() -> None:
    # The fast path covers the MuJoCo tasks the online loop trains on.
    assert {"HalfCheetah-v5", "Hopper-v5", "Reacher-v5"} <= set(BATCHED_STEPS)
    for name in BATCHED_STEPS:
        assert sim.task_spec(name).mujoco


def test_dataset_spec_reads_the_vector_env_like_the_single_env() -> None:
    vector = env_spec(sim.make_vec("HalfCheetah-v5", 2), "HalfCheetah-v5")
    single = env_spec(sim.make("HalfCheetah-v5"), "HalfCheetah-v5")
    assert vector == single and vector.env_args["control_rate_hz"] == 20.0


def test_camera_images_match_the_single_env() -> None:
    envs = sim.make_vec("Reacher-v5", 2, camera=(40, 24))
    single = sim.make("Reacher-v5", camera=(40, 24))
    obs, _ = envs.reset(seed=5)
    ref, _ = single.reset(seed=6)
    assert obs["image"].shape == (2, 24, 40, 3) and obs["image"].dtype == np.uint8
    for _ in range(5):
        obs, *_ = envs.step(np.ones((2, 2), np.float32))
        ref, *_ = single.step(np.ones(2, np.float32))
    np.testing.assert_array_equal(obs["image"][1], ref["image"])
    assert envs.observation_features == {"state": "low_dim", "image": "image"}


def test_bad_input_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="unknown task 'Nope-v0'"):
        sim.make_vec("Nope-v0", 2)
    # Before: 2.7 made 2 envs; a numpy seed was "'numpy.int64' object is not iterable".
    for num_envs in (0, 2.7):
        with pytest.raises(ValueError, match=rf"num_envs={num_envs}: must be an integer >= 1"):
            sim.make_vec("Reacher-v5", num_envs)
    envs = sim.make_vec("Reacher-v5", 2)
    for seed in (-1, 1.5):
        with pytest.raises(ValueError, match=rf"seed={seed}: must be an integer >= 0"):
            envs.reset(seed=seed)
    np.testing.assert_array_equal(
        envs.reset(seed=np.int64(3))[0]["state"], envs.reset(seed=3)[0]["state"]
    )
    envs.close()
    envs = sim.make_vec("Reacher-v5", 2)
    with pytest.raises(RuntimeError, match="step before reset"):
        envs.step(np.zeros((2, 2)))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions of shape \(2,\), expected \(2, 2\)"):
        envs.step(np.zeros(2))


def test_hopper_clips_fast_velocities_like_the_single_env() -> None:
    # Random actions never push Hopper's qvel past its observation clip (10): kick it there.
    envs, single = sim.make_vec("Hopper-v5", 1), sim.make("Hopper-v5")
    envs.reset(seed=2)
    single.reset(seed=2)
    for env in (envs.envs[0], single):
        env.unwrapped.data.qvel[:] = 30.0
    action = np.full(3, 0.5, np.float32)
    obs, reward, terminated, *_ = envs.step(action[None])
    ref, ref_reward, ref_terminated, *_ = single.step(action)
    assert np.abs(ref["state"]).max() == 10.0
    np.testing.assert_array_equal(obs["state"][0], ref["state"])
    assert (reward[0], terminated[0]) == (pytest.approx(ref_reward, rel=1e-12), ref_terminated)
