"""OGBench manipulation tasks in the workspace (sim/ogbench.py): the env contract, the camera,
dataset generation (reproducible, rewards labelled for the named task) and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from episode_dataset import IMAGE, LOW_DIM, EpisodeReader
from sim.ogbench import generate, main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CUBE = "cube-single-singletask-task1-v0"
CENTER, SCALE = np.array([0.425, 0.0, 0.0]), 10.0  # OGBench's state scaling of positions


def test_env_checker_passes_and_the_state_is_ogbenchs() -> None:
    env = sim.make(CUBE)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (28,) and obs["state"].dtype == np.float32
    assert env.get_wrapper_attr("observation_features") == {"state": LOW_DIM}
    assert env.spec.max_episode_steps == 200
    env.close()


@pytest.mark.parametrize("env_id", ["puzzle-3x3-singletask-task2-v0", "scene-singletask-task2-v0"])
def test_same_seed_same_episode_start_in_two_envs(env_id: str) -> None:
    """Their resets take random settling steps: with one seed, two envs start (and restart
    without a seed) in the same state."""
    first, second = sim.make(env_id), sim.make(env_id)
    hold = np.zeros(first.action_space.shape, np.float32)
    for seed in (5, None, None, 6, None, None):
        a, _ = first.reset(seed=seed)
        b, _ = second.reset(seed=seed)
        for _ in range(3):  # the settling steps' controls act on
            # 1e-9: scene's contacts have given -4e-23 against 0 between two such envs; an
            # unseeded settling step moved a reading by 0.03
            np.testing.assert_allclose(a["state"], b["state"], rtol=0, atol=1e-9)
            a, b = first.step(hold)[0], second.step(hold)[0]
    first.close()
    second.close()


def test_the_camera_renders_the_scene_and_follows_the_arm() -> None:
    env = sim.make(CUBE, camera=32)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert env.get_wrapper_attr("observation_features")["image"] == IMAGE
    assert obs["image"].std() > 5  # a scene, not a blank frame
    first = obs["image"].astype(int)
    for _ in range(10):
        obs, *_ = env.step(np.array([1.0, 1.0, 1.0, 0.0, 0.0], np.float32))
    assert np.abs(obs["image"].astype(int) - first).mean() > 0.5  # the arm moved in view
    env.close()


def _episode(path, name: str) -> dict[str, np.ndarray]:
    reader = EpisodeReader(path)
    return {
        "state": reader.read_obs(name, "state"),
        "actions": reader.read_actions(name),
        "rewards": reader.read_rewards(name),
    }


def test_generation_is_reproducible_with_a_seed(tmp_path) -> None:
    runs = {}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        path = tmp_path / f"{tag}.hdf5"
        (name,) = generate(CUBE, "play", 1, seed, path, episode_steps=40, progress=False)
        runs[tag] = _episode(path, name)
    for key in runs["a"]:
        np.testing.assert_array_equal(runs["a"][key], runs["b"][key])
    assert not np.allclose(runs["a"]["actions"], runs["c"]["actions"])


def test_noisy_rewards_mark_the_steps_where_the_cube_is_on_the_tasks_target(tmp_path) -> None:
    path = tmp_path / "noisy.hdf5"
    (name,) = generate(CUBE, "noisy", 1, 0, path, episode_steps=1000, progress=False)
    ep = _episode(path, name)
    reader = EpisodeReader(path)
    assert reader.env_args["env_name"] == CUBE  # evaluation builds the labelled task
    assert set(np.unique(ep["rewards"])) <= {-1.0, 0.0}
    task = sim.make(CUBE)
    task.reset(seed=0)
    target = task.unwrapped.env._data.mocap_pos[0].copy()  # task 1's goal for the cube
    task.close()
    cube = ep["state"][:, 19:22] / SCALE + CENTER
    on_target = np.linalg.norm(cube - target, axis=-1) <= 0.04
    assert on_target.any() and not on_target.all()  # the oracle visits it and leaves
    np.testing.assert_array_equal(ep["rewards"] == 0.0, on_target)
    assert np.abs(ep["actions"]).max() <= 1.0


def test_the_sparse_variant_and_episodes_split_at_success(tmp_path) -> None:
    """`-sparse-v0`: -1 until solved, 0 then (env and data); `split_at_success` ends each
    episode, terminated, at its first solved step and keeps the steps and actions in order."""
    sparse = CUBE.replace("-v0", "-sparse-v0")
    env = sim.make(sparse)
    env.reset(seed=0)
    assert env.step(np.zeros(5, np.float32))[1] == -1.0  # the cube starts off its target
    env.close()
    (dense,) = generate(CUBE, "noisy", 1, 0, tmp_path / "d.hdf5", 1000, progress=False)
    whole = _episode(tmp_path / "d.hdf5", dense)
    solved = whole["rewards"] == 0.0
    path = tmp_path / "s.hdf5"
    names = generate(sparse, "noisy", 1, 0, path, 1000, progress=False, split_at_success=True)
    reader = EpisodeReader(path)
    assert reader.env_args["env_name"] == sparse
    ended = 0
    for name in names:
        first, ep = reader.episode_metadata(name)["first_step"], _episode(path, name)
        rows = slice(first, first + len(ep["rewards"]))
        np.testing.assert_array_equal(ep["actions"], whole["actions"][rows])
        np.testing.assert_array_equal(ep["rewards"], np.where(solved[rows], 0.0, -1.0))
        if reader.episode_metadata(name)["terminated"]:
            ended += 1
            assert ep["rewards"][-1] == 0.0 and (ep["rewards"][:-1] == -1.0).all()
    assert ended >= 1 and len(names) > ended  # solved at least once, and a run went on after


def test_the_cli_writes_a_summary_and_bad_input_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "cli.hdf5"
    main(
        ["--env", CUBE, "--kind", "play", "--episodes", "2", "--episode-steps", "20"]
        + ["--out", str(out)]
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["steps"] == 40
    with pytest.raises(SystemExit):
        main(["--env", "Reacher-v5", "--out", str(tmp_path / "x.hdf5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'Reacher-v5' is not an OGBench single-task" in err[0]
    with pytest.raises(ValueError, match="episode_steps >= 2"):
        generate(CUBE, "play", 1, 0, tmp_path / "y.hdf5", episode_steps=1)


def test_ctrl_c_keeps_the_whole_episodes_and_says_how_many(tmp_path, capsys, monkeypatch) -> None:
    """A Ctrl-C after the 2 episodes of the first call: the line counts what was committed."""
    import sim.ogbench as ogbench

    out = tmp_path / "c.hdf5"
    ogbench.generate(CUBE, "play", 1, 7, out, episode_steps=20)  # already there: not counted

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        generate(CUBE, "play", 2, 0, out, episode_steps=20)  # seeds 0 and 1
        raise KeyboardInterrupt

    monkeypatch.setattr(ogbench, "generate", interrupted)
    with pytest.raises(SystemExit) as exit_:
        main(["--env", CUBE, "--kind", "play", "--episodes", "50", "--out", str(out)])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sim.ogbench: interrupted: 2 episodes written to {out} (seeds 0..1 of the 50 asked), "
        "each whole; to go on: --seed 2 --episodes 48"
    )


def test_an_image_policy_trains_on_a_generated_camera_dataset(tmp_path) -> None:
    """The visual route headless: OGBench frames from the workspace camera -> dataset -> an
    image FBC (the camera alone) whose loss falls on a fixed batch."""
    import torch
    from hydra.utils import instantiate
    from test_flow_family_grid import assert_a_step_learns

    from learning.train import compose_config

    path = tmp_path / "visual.hdf5"
    generate(CUBE, "play", 2, 0, path, episode_steps=30, camera=32, progress=False)
    assert EpisodeReader(path).obs_specs["image"].shape == (32, 32, 3)
    cfg = compose_config(
        "train_fbc",
        [f"dataset={path}", "data.obs_keys=[image]", "obs_type=image", "crop_shape=[28,28]"]
        + ["batch_size=16", "model.network.hidden_dims=[32]", "flow_steps=2"],
    )
    dm = instantiate(cfg.data)
    dm.setup("fit")
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    assert model.obs_keys == ["image"]
    assert_a_step_learns(model, next(iter(dm.train_dataloader())))
