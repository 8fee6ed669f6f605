"""roboloop_runtime.WorldModelRunner on real exported graphs (a tiny world model trained on
recorded Reacher-v5 episodes): the held latent, reset, the filter/imagine/decode steps as
the graphs compute them, seeded sampling, and graphs that do not belong together refused in
one line naming both files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from episode_dataset import EpisodeReader
from roboloop_runtime import (
    ModelInputError,
    ModelLoadError,
    OnnxModel,
    WorldModelRunner,
    load_runner,
)
from roboloop_testing.world_model import shared_tiny_world_model, tiny_world_model

pytestmark = pytest.mark.xdist_group("world_model")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared_tiny_world_model(tmp_path_factory, "Reacher-v5", 16)


@pytest.fixture(scope="module")
def episode(graphs: dict[str, Path]) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    reader = EpisodeReader(graphs["filter"].parent / "episodes.hdf5")
    ep = reader.episodes[0]
    obs = {k: reader.read_obs(ep, k) for k in ("image", "state")}
    frames = [{k: v[t] for k, v in obs.items()} for t in range(len(obs["state"]))]
    return frames, reader.read_actions(ep).astype(np.float32)


def runner(graphs: dict[str, Path], **kwargs: object) -> WorldModelRunner:
    return WorldModelRunner(
        graphs["filter"], imagine=graphs["imagine"], decode=graphs["decode"], device="cpu",
        **kwargs,
    )  # fmt: skip


def test_step_filters_from_the_initial_latent_like_the_graph(graphs, episode) -> None:
    frames, actions = episode
    world = runner(graphs)
    assert all(not v.any() for v in world.latent.values())  # initial: zeros
    first = world.step(frames[0], None)
    direct = OnnxModel(graphs["filter"], device="cpu").run(
        {
            "obs.image": frames[0]["image"][None],
            "obs.state": frames[0]["state"][None].astype(np.float32),
            "prev_action": np.zeros((1, 2), np.float32),
            "noise": np.zeros((1, first["stoch"].size), np.float32),
            "state_in.deter": np.zeros((1, first["deter"].size), np.float32),
            "state_in.stoch": np.zeros((1, first["stoch"].size), np.float32),
        }
    )
    np.testing.assert_array_equal(first["deter"], direct["state_out.deter"][0])
    second = world.step(frames[1], actions[0])
    assert not np.allclose(second["deter"], first["deter"])  # the belief moves on
    world.reset()
    np.testing.assert_array_equal(world.step(frames[0], None)["deter"], first["deter"])


def test_predict_imagines_the_next_latent_without_moving_the_held_one(graphs, episode) -> None:
    frames, actions = episode
    world = runner(graphs)
    held = world.step(frames[0], None)
    reward, cont, nxt = world.predict(actions[0])
    assert np.isfinite(reward) and 0.0 <= cont <= 1.0
    np.testing.assert_array_equal(world.latent["deter"], held["deter"])  # predict kept it
    # The deterministic state after a_0 is the same whether o_1 is seen (filter) or not (prior).
    seen = world.step(frames[1], actions[0])
    np.testing.assert_allclose(nxt["deter"], seen["deter"], atol=1e-6)
    frames_out = world.decode(nxt)
    assert frames_out["image"].shape == (16, 16, 3) and frames_out["state"].shape == (10,)
    assert 0.0 <= frames_out["image"].min() and frames_out["image"].max() <= 255.0
    assert frames_out["image"].mean() > 5.0  # raw pixels, not [0, 1]


def test_sampling_is_seeded_and_the_default_is_the_mode(graphs, episode) -> None:
    frames, _ = episode
    mode = runner(graphs).step(frames[0], None)["stoch"]
    sampled = runner(graphs, sample=True, seed=3)
    a = sampled.step(frames[0], None)["stoch"]
    sampled.reset(seed=3)
    np.testing.assert_array_equal(sampled.step(frames[0], None)["stoch"], a)
    sampled.reset(seed=4)
    other = sampled.step(frames[0], None)["stoch"]
    assert not np.array_equal(a, mode) or not np.array_equal(other, mode)


def test_graphs_of_another_model_are_refused_in_one_line(graphs, tmp_path: Path) -> None:
    wider = tiny_world_model(
        tmp_path, "Reacher-v5", camera=16, episodes=2, steps=("imagine",),
        overrides=["world_model.state_dim=48"],
    )  # fmt: skip
    with pytest.raises(ModelLoadError) as err:
        WorldModelRunner(graphs["filter"], imagine=wider["imagine"], device="cpu")
    text = str(err.value)
    assert "\n" not in text and str(wider["imagine"]) in text and str(graphs["filter"]) in text
    assert "latent 'deter' size [48] disagrees" in text and "[32]" in text
    with pytest.raises(ModelLoadError, match="step 'imagine' where the world model's filter"):
        WorldModelRunner(graphs["imagine"], device="cpu")
    with pytest.raises(ModelLoadError, match="step 'decode' where the world model's imagine"):
        WorldModelRunner(graphs["filter"], imagine=graphs["decode"], device="cpu")


def test_bad_input_is_one_line(graphs, episode) -> None:
    frames, _ = episode
    world = WorldModelRunner(graphs["filter"], device="cpu")  # filter only
    with pytest.raises(ModelInputError, match=r"latent 'deter' of shape \(48,\) fed to"):
        world.set_latent({"deter": np.zeros(48), "stoch": np.zeros(16)})
    with pytest.raises(ModelInputError, match=r"prev_action has shape \(3,\), expected \(2,\)"):
        world.step(frames[0], np.zeros(3))
    with pytest.raises(ModelInputError, match="observation 'state' missing"):
        world.step({"image": frames[0]["image"]}, None)
    with pytest.raises(ModelLoadError, match="no actor graph given"):
        world.act()
    with pytest.raises(ValueError, match=re.escape("seed=-1: must be an integer in [0,")):
        world.reset(seed=-1)
    assert isinstance(load_runner(graphs["filter"], device="cpu"), WorldModelRunner)


def test_seed_and_sample_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    """Before: seed=-1 was numpy's error from reset(), naming no argument; sample="no"
    sampled. Checked first, as OnnxPolicy's seed: no file is read (this one does not exist)."""
    absent = tmp_path / "absent.onnx"
    for kwargs, says in (
        ({"seed": -1}, "seed=-1: must be an integer in [0, 4294967295]"),
        ({"seed": 1.5}, "seed=1.5: must be an integer in [0, 4294967295]"),
        ({"sample": "no"}, "sample='no': must be True or False"),
        ({"sample": 1}, "sample=1: must be True or False"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)) as err:
            WorldModelRunner(absent, device="cpu", **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="no such model file"):
        WorldModelRunner(absent, device="cpu", sample=np.bool_(True), seed=np.int64(3))


def test_act_is_the_actor_on_the_held_latent(tmp_path: Path) -> None:
    """A Dreamer export (tiny_dreamer): act() is the actor graph on the filtered latent, noise
    0 by default (the mode, repeatable), seeded noise when sampling."""
    from roboloop_testing.world_model import tiny_dreamer

    graphs = tiny_dreamer(tmp_path, "Pendulum-v1", steps=("filter", "actor"))
    world = WorldModelRunner(graphs["filter"], actor=graphs["actor"], device="cpu")
    latent = world.step({"state": np.array([1.0, 0.0, 0.5], np.float32)}, None)
    action = world.act()
    direct = OnnxModel(graphs["actor"], device="cpu").run(
        {
            "state_in.deter": latent["deter"][None],
            "state_in.stoch": latent["stoch"][None],
            "noise": np.zeros((1, 1), np.float32),
        }
    )["actions"][0]
    np.testing.assert_array_equal(action, direct)
    np.testing.assert_array_equal(world.act(), action)  # the mode, again
    sampling = WorldModelRunner(graphs["filter"], actor=graphs["actor"], sample=True, seed=1)
    sampling.set_latent(latent)
    assert not np.array_equal(sampling.act(), action)
