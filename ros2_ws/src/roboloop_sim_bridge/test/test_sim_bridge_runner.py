"""SimRunner (ROS-free): seeds, auto-restart, action sources, action checks. Real MuJoCo."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from roboloop_sim_bridge.node import SENSOR_QOS, sensor_qos_profile
from roboloop_sim_bridge.runner import BadAction, SimRunner

from episode_dataset.recording.params import json_object_parameter

ENV = "Reacher-v5"


def run_episode(runner: SimRunner, action=None):
    """Tick until done; restart like the node does (after the step was published)."""
    results = []
    while True:
        r = runner.tick(action)
        if r is None:
            return results
        results.append(r)
        if r.done:
            if runner.restart_pending:
                runner.reset()
            return results


def test_random_source_restarts_with_next_seed():
    runner = SimRunner(ENV, seed=7, action_source="random", max_episodes=2)
    obs0, oid = runner.reset()
    assert oid == 0 and obs0["state"].shape == (10,)
    ep0 = run_episode(runner)
    assert len(ep0) == 50 and ep0[-1].done and ep0[-1].truncated
    assert ep0[-1].obs is None and ep0[-1].episode == 0
    # applied action k is applied to observation k
    assert [r.applied_to for r in ep0] == list(range(50))
    first_obs_ep1 = runner.obs
    assert runner.episode == 1 and runner.running
    ep1 = run_episode(runner)
    assert ep1[-1].done and not runner.restart_pending  # max_episodes reached
    assert runner.tick() is None and runner.finished
    # same seeds -> same initial observations
    again = SimRunner(ENV, seed=8, action_source="random")
    np.testing.assert_allclose(again.reset()[0]["state"], first_obs_ep1["state"])
    low, high = runner.low, runner.high
    for r in ep0:
        assert np.all(r.applied_action >= low) and np.all(r.applied_action <= high)
    runner.close()
    again.close()


def test_topic_source_applies_clipped_external_action_and_zero_without_one():
    runner = SimRunner(ENV, seed=0, action_source="topic")
    assert runner.uses_external_actions
    runner.reset()
    r = runner.tick(np.array([5.0, -5.0], np.float32))
    np.testing.assert_allclose(r.applied_action, [runner.high[0], runner.low[1]])
    assert runner.tick(None).applied_action.tolist() == [0.0, 0.0]
    with pytest.raises(BadAction, match="expects 2"):
        runner.tick(np.zeros(3))
    with pytest.raises(BadAction, match="non-finite"):
        runner.check_action([np.nan, 0.0])
    runner.close()


def test_no_auto_restart_pauses_after_done():
    runner = SimRunner(ENV, seed=0, action_source="random", auto_restart=False)
    runner.reset()
    ep = run_episode(runner)
    assert ep[-1].done and not runner.restart_pending and not runner.running
    runner.reset()
    assert runner.episode == 1 and runner.tick() is not None
    runner.close()


def test_expert_source_and_camera():
    runner = SimRunner(ENV, seed=0, action_source="expert", camera=32)
    obs, _ = runner.reset()
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    ep = run_episode(runner)
    assert len(ep) == 50
    runner.close()


def test_unknown_action_source():
    with pytest.raises(ValueError, match="action_source"):
        SimRunner(ENV, action_source="joystick")


def test_truncate_ends_the_episode_with_a_done_step_then_reset_starts_the_next():
    # ~/reset mid-episode: the node ticks once with truncate=True (a done every consumer sees)
    runner = SimRunner(ENV, seed=3, action_source="random", auto_restart=False)
    runner.reset()
    for _ in range(10):
        assert not runner.tick().done
    r = runner.tick(truncate=True)
    assert r.done and r.truncated and not r.terminated and r.obs is None
    assert (r.episode, r.episode_steps, r.applied_to) == (0, 11, 10)
    assert not runner.running and runner.tick() is None
    runner.reset()
    assert runner.episode == 1 and runner.running and runner.episode_steps == 0
    runner.close()


def test_env_kwargs_json_is_a_json_object_or_one_line_naming_the_parameter() -> None:
    env_kwargs = partial(json_object_parameter, "env_kwargs_json")
    assert env_kwargs('{"camera_id": 0}') == {"camera_id": 0}
    for text, says in (("[1", "not JSON"), ("[1, 2]", "not a JSON object")):
        with pytest.raises(ValueError, match=f"parameter env_kwargs_json .*{says}") as err:
            env_kwargs(text)
        assert "\n" not in str(err.value)


def test_sensor_qos_names_its_choices() -> None:
    assert sensor_qos_profile("reliable") is SENSOR_QOS["reliable"]
    with pytest.raises(ValueError, match=r"sensor_qos 'bogus' is not one of \['reliable', "):
        sensor_qos_profile("bogus")
