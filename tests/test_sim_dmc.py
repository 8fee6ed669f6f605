"""DeepMind Control tasks (sim/dmc.py): Gymnasium's env checker, dict observations with 64x64
pixels, seeding, action repeat against dm_control itself, episode ends, the vector env, the pixel
rate, and clear errors. Skipped where dm_control does not import (it needs mujoco 3.17.0)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from episode_dataset import IMAGE, LOW_DIM
from sim.dmc import ACTION_REPEAT, DMC_TASKS
from sim.spec import env_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

try:  # dm_control installs beside mujoco 4.0.0 (OGBench needs its mjcf) but loads no task
    from dm_control import suite

    suite.load("cartpole", "swingup")
except (ImportError, AttributeError) as error:
    suite, WHY_NOT = None, f"dm_control cannot load a task ({error}): needs mujoco 3.17"
else:
    WHY_NOT = ""
needs_dm_control = pytest.mark.skipif(suite is None, reason=WHY_NOT)

REQUIRED = ["dmc_cartpole_swingup", "dmc_walker_walk", "dmc_cheetah_run"]
PIXELS = 64


@pytest.fixture
def make() -> Iterator[Callable[..., gym.Env]]:
    """`sim.make` that closes what it built: under mujoco 3.17 a renderer left to the garbage
    collector frees its GL objects in whichever context is current (another env's)."""
    envs: list[gym.Env] = []

    def _make(name: str, **kwargs) -> gym.Env:
        envs.append(sim.make(name, **kwargs))
        return envs[-1]

    yield _make
    for env in envs:
        env.close()


@needs_dm_control
@pytest.mark.parametrize("name", REQUIRED)
def test_env_checker_passes_on_the_base_the_state_and_the_pixel_env(name: str, make) -> None:
    check_env(make(name).unwrapped)
    check_env(make(name))
    check_env(make(name, camera=PIXELS))


@needs_dm_control
@pytest.mark.parametrize("name", REQUIRED)
def test_observations_are_the_flat_dmc_state_and_a_64px_image(name: str, make) -> None:
    env = make(name, camera=PIXELS)
    obs, _ = env.reset(seed=0)
    domain, task, _ = DMC_TASKS[name]
    dmc_obs = suite.load(domain, task).observation_spec()
    assert obs["state"].shape == (sum(int(np.prod(s.shape)) for s in dmc_obs.values()),)
    assert obs["state"].dtype == np.float32
    assert obs["image"].shape == (PIXELS, PIXELS, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 5, "the camera sees a flat image"
    spec = env_spec(env, name, PIXELS)
    assert {k: s.feature_type for k, s in spec.obs_specs.items()} == {
        "state": LOW_DIM,
        "image": IMAGE,
    }
    assert spec.obs_specs["image"].shape == (PIXELS, PIXELS, 3)
    assert spec.action_spec.shape == env.action_space.shape


@needs_dm_control
@pytest.mark.parametrize("name", REQUIRED)
def test_same_seed_same_first_frame_in_two_envs_other_seed_other_state(name: str, make) -> None:
    first = [make(name, camera=PIXELS).reset(seed=seed)[0] for seed in (5, 5, 6)]
    np.testing.assert_array_equal(first[0]["image"], first[1]["image"])
    np.testing.assert_array_equal(first[0]["state"], first[1]["state"])
    assert not np.array_equal(first[0]["state"], first[2]["state"])


@needs_dm_control
@pytest.mark.parametrize("name", REQUIRED)
def test_a_step_repeats_the_action_like_dm_control_and_sums_its_rewards(name: str, make) -> None:
    env = make(name)
    obs, _ = env.reset(seed=3)
    domain, task, _ = DMC_TASKS[name]
    reference = suite.load(domain, task, task_kwargs={"random": 3})
    reference.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, *_ = env.step(action)
        steps = [reference.step(action) for _ in range(ACTION_REPEAT)]
        assert reward == pytest.approx(sum(s.reward for s in steps), abs=1e-12)
    expected = np.concatenate([np.ravel(v) for v in steps[-1].observation.values()])
    np.testing.assert_allclose(obs["state"], expected.astype(np.float32))
    control_dt = reference.control_timestep()
    assert env.unwrapped.data.time == pytest.approx(5 * ACTION_REPEAT * control_dt)
    assert env_spec(env, name).env_args["control_rate_hz"] == pytest.approx(
        1 / (ACTION_REPEAT * control_dt)
    )


@needs_dm_control
@pytest.mark.parametrize("repeat", [ACTION_REPEAT, 8])
def test_episodes_end_truncated_after_dm_controls_1000_control_steps(repeat: int, make) -> None:
    env = make("dmc_cartpole_swingup", action_repeat=repeat)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated) and steps < 1000:
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
    assert (steps, terminated, truncated) == (1000 // repeat, False, True)


@needs_dm_control
def test_the_vector_env_batches_pixels_and_matches_the_single_env(make) -> None:
    envs = sim.make_vec("dmc_walker_walk", 2, camera=PIXELS)
    try:
        obs, _ = envs.reset(seed=4)
        single = make("dmc_walker_walk", camera=PIXELS)
        first, _ = single.reset(seed=5)
        assert obs["image"].shape == (2, PIXELS, PIXELS, 3)
        np.testing.assert_array_equal(obs["image"][1], first["image"])
        actions = np.full((2, *single.action_space.shape), 0.5, np.float32)
        obs, reward, *_ = envs.step(actions)
        expected, expected_reward, *_ = single.step(actions[1])
        np.testing.assert_array_equal(obs["image"][1], expected["image"])
        assert reward[1] == expected_reward
    finally:
        envs.close()


@needs_dm_control
def test_pixel_steps_per_second(make) -> None:
    env = make("dmc_walker_walk", camera=PIXELS)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    steps, start = 200, time.perf_counter()
    for _ in range(steps):
        env.step(action)
    rate = steps / (time.perf_counter() - start)
    print(f"dmc_walker_walk {PIXELS}x{PIXELS} pixels: {rate:.0f} agent steps/s (repeat 2)")
    assert rate > 50, f"{rate:.0f} pixel steps/s"


def test_bad_action_repeat_and_missing_dm_control_are_one_clear_line(monkeypatch) -> None:
    with pytest.raises(ValueError, match="dmc_walker_walk: action_repeat must be >= 1, got 0"):
        sim.make("dmc_walker_walk", action_repeat=0)
    monkeypatch.setitem(sys.modules, "dm_control", None)  # as in a venv without it
    with pytest.raises(ImportError, match=r"dmc_cheetah_run needs dm_control .*1\.0\.50"):
        sim.make("dmc_cheetah_run")
    # ...and learning.train says the same in its one line (was a RuntimeError traceback)
    from learning.errors import ConfigError
    from learning.online.loop import make_env

    with pytest.raises(ConfigError, match=r"^env_id=dmc_cheetah_run: task dmc_cheetah_run needs"):
        make_env("dmc_cheetah_run", 1)


@needs_dm_control
@pytest.mark.parametrize("name", sorted(set(DMC_TASKS) - set(REQUIRED)))
def test_every_other_dmc_task_builds_steps_and_sees_its_scene(name: str, make) -> None:
    env = make(name, camera=PIXELS)
    env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and 0.0 <= reward <= ACTION_REPEAT
    assert obs["image"].std() > 5, "the camera sees a flat image"
    assert not (terminated or truncated)
