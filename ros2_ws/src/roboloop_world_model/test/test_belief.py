"""The world-model node's ROS-free loop on real graphs (a tiny world model trained on recorded
Reacher-v5 episodes): each new observation filtered once with the action applied before it,
the latent equal to the runner's own, episode starts and stale spells restart it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from roboloop_world_model.belief import STALE, WAITING, BeliefLoop

from episode_dataset import EpisodeReader
from roboloop_runtime import WorldModelRunner
from roboloop_testing.world_model import shared_tiny_world_model

pytestmark = pytest.mark.xdist_group("world_model")
PERIOD_NS = 50_000_000  # 20 ticks per second
T0 = 1_000_000_000_000


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared_tiny_world_model(tmp_path_factory, "Reacher-v5", 16)


@pytest.fixture(scope="module")
def episode(graphs: dict[str, Path]) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    reader = EpisodeReader(graphs["filter"].parent / "episodes.hdf5")
    ep = reader.episodes[0]
    obs = {k: reader.read_obs(ep, k) for k in ("image", "state")}
    return [{k: v[t] for k, v in obs.items()} for t in range(20)], reader.read_actions(ep)


def world(graphs: dict[str, Path]) -> WorldModelRunner:
    return WorldModelRunner(
        graphs["filter"], imagine=graphs["imagine"], decode=graphs["decode"], device="cpu"
    )


def feed(loop: BeliefLoop, frame: dict[str, np.ndarray], stamp: int) -> None:
    for key, value in frame.items():
        loop.observe(key, value, stamp, stamp)


def test_each_observation_is_filtered_once_after_its_applied_action(graphs, episode) -> None:
    frames, actions = episode
    loop = BeliefLoop(world(graphs), PERIOD_NS * 1e-9, predict_observations=True)
    loop.warm_up()
    ref = world(graphs)
    loop.observe("state", frames[0]["state"], T0, T0)
    assert loop.step(T0, T0) is None and loop.state == WAITING  # no image yet
    loop.observe("image", frames[0]["image"], T0, T0)
    first = loop.step(T0, T0)
    assert first.episode_start and first.reward is None and first.action is None
    np.testing.assert_array_equal(loop.world.latent["deter"], ref.step(frames[0], None)["deter"])
    assert loop.step(T0 + 1, T0 + 1) is None  # nothing new: nothing filtered twice
    for t in range(1, 6):
        stamp = T0 + t * PERIOD_NS
        loop.applied(actions[t - 1].astype(np.float32), stamp - PERIOD_NS)  # applied at o_{t-1}
        loop.applied(np.full(2, 9.0, np.float32), stamp)  # one stamped o_t belongs to o_t
        feed(loop, frames[t], stamp)
        belief = loop.step(stamp, stamp)
        expect_r, expect_c, prior = ref.predict(actions[t - 1])
        np.testing.assert_array_equal(
            loop.world.latent["deter"], ref.step(frames[t], actions[t - 1])["deter"]
        )
        assert not belief.episode_start and (belief.reward, belief.cont) == (expect_r, expect_c)
        np.testing.assert_array_equal(belief.prediction["image"], ref.decode(prior)["image"])
    assert loop.counts["steps"] == 6 and loop.counts["missing_applied_actions"] == 0


def test_episode_end_and_stale_spells_restart_the_latent(graphs, episode) -> None:
    frames, actions = episode
    loop = BeliefLoop(world(graphs), PERIOD_NS * 1e-9, stale_periods=3.0)
    start = world(graphs).step(frames[0], None)["deter"]
    feed(loop, frames[0], T0)
    loop.step(T0, T0)
    loop.applied(actions[0].astype(np.float32), T0)
    feed(loop, frames[1], T0 + PERIOD_NS)
    assert loop.step(T0 + PERIOD_NS, T0 + PERIOD_NS).reward is not None
    loop.episode_end()
    stamp = T0 + 2 * PERIOD_NS
    feed(loop, frames[0], stamp)
    belief = loop.step(stamp, stamp)
    assert belief.episode_start and belief.reward is None
    np.testing.assert_array_equal(loop.world.latent["deter"], start)
    assert (loop.counts["episode_starts"], loop.counts["latent_resets"]) == (2, 2)
    late = stamp + 4 * PERIOD_NS  # older than 3 periods: stale, nothing to publish (no actor)
    assert loop.step(late, late) is None and loop.state == STALE
    assert loop.counts["stale_events"] == 1 and loop.last_stale_keys == ("image", "state")
    feed(loop, frames[0], late)
    again = loop.step(late, late)
    assert not again.episode_start and again.reward is None  # a restart, not an episode start
    np.testing.assert_array_equal(loop.world.latent["deter"], start)
    assert (loop.counts["episode_starts"], loop.counts["latent_resets"]) == (2, 3)


def test_predictions_need_their_graphs(graphs) -> None:
    only_filter = WorldModelRunner(graphs["filter"], device="cpu")
    with pytest.raises(ValueError, match="needs the imagine and decode graphs"):
        BeliefLoop(only_filter, 0.05, predict_observations=True)
