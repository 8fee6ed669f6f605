"""The sim layer: registration, dict/camera observations, experts, collection, evaluation."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import av
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from episode_dataset import EpisodeReader, validate_file
from sim.collect import collect
from sim.dmc import DMC_TASKS
from sim.evaluate import RandomPolicy, evaluate_policy, normalized_score
from sim.evaluate import main as evaluate_cli
from sim.experts import make_expert_policy
from sim.ogbench import SPARSE_TASK_IDS, TASK_IDS
from sim.wrappers import CameraObservation, DictObservation

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# The DMC tasks have their own checks (tests/test_sim_dmc.py), skipped without dm_control; the
# OGBench sparse variants are their tasks with another reward (tests/test_sim_ogbench.py).
@pytest.mark.parametrize("env_id", sorted(set(sim.TASKS) - set(DMC_TASKS) - set(SPARSE_TASK_IDS)))
def test_check_env_passes_on_every_registered_task(env_id: str) -> None:
    check_env(sim.make(env_id), skip_render_check=True)
    # An OGBench suite's tasks 2-5 are task 1's env class and wrappers with another goal: the
    # unwrapped and camera checks run on task 1 of each suite (each costs an XML compile).
    if env_id in TASK_IDS and "-task1-" not in env_id:
        return
    check_env(sim.make(env_id).unwrapped, skip_render_check=True)
    if sim.task_spec(env_id).mujoco:
        check_env(sim.make(env_id, camera=(40, 24)), skip_render_check=True)


def test_prefixed_and_plain_ids_are_the_same_task() -> None:
    a, b = sim.make("Reacher-v5"), sim.make("roboloop/Reacher-v5")
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    np.testing.assert_array_equal(oa["state"], ob["state"])
    assert a.spec.max_episode_steps == 50
    with pytest.raises(ValueError, match="unknown task 'Nope-v0'"):
        sim.make("Nope-v0")


def test_camera_image_has_the_asked_size_and_follows_the_arm() -> None:
    env = sim.make("Reacher-v5", camera=(48, 32))
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 48, 3) and obs["image"].dtype == np.uint8
    first = obs["image"].astype(int)
    for _ in range(10):
        obs, *_ = env.step(np.ones(2, np.float32))
    changed = np.abs(obs["image"].astype(int) - first).sum(axis=-1) > 30
    assert changed.mean() > 0.005, "the rendered arm did not move"
    with pytest.raises(ValueError, match="no MuJoCo model"):
        sim.make("Pendulum-v1", camera=32)


def test_bad_env_ids_and_camera_sizes_are_one_line() -> None:
    """Before: (0, 64) rendered an empty image, True a 1x1 one; -5 was numpy's "negative
    dimensions", 2.5 and "big" unpacking errors, 100000 MuJoCo's 6-line framebuffer message, and
    an env id that is no string an AttributeError."""
    for camera in (-5, 2.5, "big", (64,), (0, 64), True):
        with pytest.raises(ValueError, match=r"camera=.*: must be a size or a \(width, height\) "
                           r"pair of integers >= 1 \(None: no camera\)") as err:  # fmt: skip
            sim.make("Reacher-v5", camera=camera)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"camera 100000x100000: Image width 100000 > "
                       r"framebuffer width 640\. Either reduce") as err:  # fmt: skip
        sim.make("Reacher-v5", camera=100000)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="env_id must be a task id string, got NoneType"):
        sim.make(None)  # type: ignore[arg-type]
    assert set(sim.make("Reacher-v5", camera=0).observation_space.spaces) == {"state"}


def test_a_fixed_camera_renders_the_models_own_camera() -> None:
    base = sim.make("HalfCheetah-v5").unwrapped  # the model's camera 0: "track"
    env = CameraObservation(DictObservation(base), width=32, height=24, camera={"fixed": 0})
    obs, _ = env.reset(seed=0)
    with mujoco.Renderer(base.model, height=24, width=32) as renderer:
        renderer.update_scene(base.data, camera="track")
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        expected = renderer.render()
        renderer.update_scene(base.data)  # the default free camera sees another view
        free = renderer.render()
    np.testing.assert_array_equal(obs["image"], expected)
    assert np.abs(free.astype(int) - expected).max() > 50
    env.close()


def test_closing_one_camera_env_leaves_the_others_rendering() -> None:
    # mujoco 3.17's Renderer.close freed its GL objects in the current context (another env's).
    reference = sim.make("Reacher-v5", camera=32)
    expected = reference.reset(seed=1)[0]["image"]
    reference.close()
    first, second = sim.make("Reacher-v5", camera=32), sim.make("Reacher-v5", camera=32)
    first.reset(seed=0)
    second.reset(seed=0)  # the second env's GL context is current now
    first.close()
    first.close()  # closing twice is harmless
    np.testing.assert_array_equal(second.reset(seed=1)[0]["image"], expected)
    second.close()


def test_reacher_expert_reaches_targets_far_better_than_random() -> None:
    expert = evaluate_policy("Reacher-v5", make_expert_policy("Reacher-v5"), 10, seed=100)
    random = evaluate_policy("Reacher-v5", RandomPolicy([-1, -1], [1, 1], 0), 10, seed=100)
    assert expert.success_rate >= 0.9
    assert expert.mean_return > -7.0 and random.mean_return < -25.0
    assert normalized_score(expert.mean_return, random.mean_return, expert.mean_return) == 1.0


def test_pendulum_expert_swings_up() -> None:
    expert = evaluate_policy("Pendulum-v1", make_expert_policy("Pendulum-v1"), 3, seed=0)
    random = evaluate_policy("Pendulum-v1", RandomPolicy([-2], [2], 0), 3, seed=0)
    assert expert.mean_return > -400 > random.mean_return
    with pytest.raises(ValueError, match="no scripted expert"):
        make_expert_policy("HalfCheetah-v5")


def test_normalized_score_maps_random_to_zero_and_expert_to_one() -> None:
    assert normalized_score(-43.0, -43.0, -4.0) == 0.0
    assert normalized_score(-23.5, -43.0, -4.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        normalized_score(1.0, 2.0, 2.0)


def test_vectorized_collection_is_deterministic_and_valid(tmp_path) -> None:
    files = []
    for run in range(2):
        out = tmp_path / f"run{run}.hdf5"
        names = collect(
            "Reacher-v5", "random", 5, seed=7, out=out, num_envs=2, camera=16, progress=False
        )
        assert len(names) == 5
        validate_file(out)
        files.append(EpisodeReader(out))
    a, b = files
    assert [a.episode_metadata(e)["seed"] for e in a.episodes] == [7, 8, 9, 10, 11]
    assert a.env_args["control_rate_hz"] == pytest.approx(50.0)
    assert a.env_args["action_space"] == {"low": [-1.0, -1.0], "high": [1.0, 1.0]}
    for ep in a.episodes:
        np.testing.assert_array_equal(a.read_obs(ep, "image"), b.read_obs(ep, "image"))
        np.testing.assert_array_equal(a.read_actions(ep), b.read_actions(ep))
        assert a.num_steps(ep) == 50 and a.read_dones(ep)[-1] and not a.read_dones(ep)[:-1].any()


def test_collected_episode_replays_to_the_same_rewards(tmp_path) -> None:
    out = tmp_path / "expert.hdf5"
    collect("Reacher-v5", "expert", 2, seed=3, out=out, num_envs=2, progress=False)
    reader = EpisodeReader(out)
    ep = reader.episodes[1]
    env = sim.make("Reacher-v5")
    obs, _ = env.reset(seed=reader.episode_metadata(ep)["seed"])
    np.testing.assert_array_equal(obs["state"], reader.read_obs(ep, "state", 0, 1)[0])
    rewards = [env.step(a)[1] for a in reader.read_actions(ep)]
    np.testing.assert_allclose(rewards, reader.read_rewards(ep), rtol=1e-5)


def test_collect_refuses_an_unknown_policy_as_a_value_error(tmp_path) -> None:
    """Library callers (training/data_collection.py) get a ValueError, never SystemExit."""
    for policy, says in [("greedy", "must be expert, random or a .onnx"), ("no.onnx", "no such")]:
        with pytest.raises(ValueError, match=says):
            collect("Pendulum-v1", policy, 1, 0, tmp_path / "x.hdf5", progress=False)
    assert not (tmp_path / "x.hdf5").exists()


def test_collect_checks_its_arguments_before_any_file(tmp_path) -> None:
    """Before: episodes=0 (or -1) wrote an empty dataset, 1.5 collected 2 episodes, num_envs=0
    was an IndexError inside Gymnasium, seed=-1 numpy's words, and a policy given as a Path
    (or an object that cannot act) an AttributeError after the dataset file was made."""
    out = tmp_path / "x.hdf5"
    for kwargs, says in (
        ({"episodes": 0}, "episodes=0: must be an integer >= 1"),
        ({"episodes": 1.5}, "episodes=1.5: must be an integer >= 1"),
        ({"num_envs": 0}, "num_envs=0: must be an integer >= 1"),
        ({"seed": -1}, "seed=-1: must be an integer in [0, 4294967295]"),
        ({"camera": -1}, "camera=-1: must be an integer >= 1 (or null)"),
        ({"policy": tmp_path / "no.onnx"}, "no.onnx: no such ONNX file"),
        ({"policy": object()}, "a policy object needs reset() and select_action(obs)"),
    ):
        args = {"env_id": "Pendulum-v1", "policy": "random", "episodes": 1, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match=re.escape(says)):
            collect(**args, out=out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_collect_cli_writes_a_dataset_and_reports(tmp_path) -> None:
    out = tmp_path / "cli.hdf5"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim.collect",
            "--env",
            "Reacher-v5",
            "--policy",
            "expert",
            "--episodes",
            "3",
            "--seed",
            "1",
            "--out",
            str(out),
            "--num-envs",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 3 and summary["mean_return"] > -8
    assert len(EpisodeReader(out).episodes) == 3
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim.collect",
            "--env",
            "Reacher-v5",
            "--policy",
            "nope.onnx",
            "--out",
            str(tmp_path / "x.hdf5"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "nope.onnx: no such ONNX file" in bad.stderr
    assert "Traceback" not in bad.stderr  # one line, not a stack
    unknown = subprocess.run(
        [sys.executable, "-m", "sim.collect", "--env", "Nope-v0", "--out", str(tmp_path / "y.h5")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "unknown task 'Nope-v0'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_collect_cli_ctrl_c_keeps_whole_episodes_and_says_how_many(tmp_path) -> None:
    import os
    import signal
    import time

    out = tmp_path / "c.hdf5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.collect", "--env", "Reacher-v5", "--episodes", "100000",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not out.exists():  # the index appears with the first committed episodes
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
    _, err = proc.communicate(timeout=60)
    episodes = len(EpisodeReader(out).episodes)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == (
        f"sim.collect: interrupted: {episodes} episodes written to {out} (seeds 0..{episodes - 1}"
        f" of the 100000 asked), each whole; to go on: --seed {episodes} --episodes "
        f"{100000 - episodes}"
    )  # one env: seeds 0, 1, ... in order
    assert episodes >= 1
    validate_file(out)


def test_env_spec_takes_features_from_the_wrappers_and_the_rate_from_dt() -> None:
    import gymnasium as gym

    from episode_dataset import IMAGE, LOW_DIM
    from sim.spec import env_spec

    class Wrist(gym.Wrapper):
        """A second camera under a name no heuristic knows, declared as an image."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            spaces = {**env.observation_space.spaces, "wrist": gym.spaces.Box(0, 255, (8, 6, 3))}
            self.observation_space = gym.spaces.Dict(spaces)
            self.observation_features = {**env.get_wrapper_attr("observation_features")}
            self.observation_features["wrist"] = IMAGE

    spec = env_spec(Wrist(sim.make("Reacher-v5", camera=16)), "roboloop/Reacher-v5", 16)
    assert {k: s.feature_type for k, s in spec.obs_specs.items()} == {
        "state": LOW_DIM,
        "image": IMAGE,
        "wrist": IMAGE,
    }
    assert spec.obs_specs["wrist"].encoding == "rgb8" and spec.obs_specs["wrist"].shape == (
        8,
        6,
        3,
    )
    assert spec.env_args["env_name"] == "Reacher-v5"
    assert spec.env_args["control_rate_hz"] == 50.0  # 1 / dt of simulated time
    assert env_spec(sim.make("Pendulum-v1"), "Pendulum-v1").env_args["control_rate_hz"] == 20.0


def test_evaluate_cli_scores_a_policy_and_says_bad_input_in_one_line(
    tmp_path, capsys: pytest.CaptureFixture
) -> None:
    """`python -m sim.evaluate`: one JSON line; --baselines scores random and the expert on the
    same seeds (the expert against itself: 1.0); --video films episode 0 (its reset and each
    step); anything it cannot do is one line, before any episode."""
    evaluate_cli(
        ["--env", "Reacher-v5", "--policy", "random", "--episodes", "2", "--baselines",
         "--video", str(tmp_path / "v.mp4"), "--video-size", "32"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["random_return"] == pytest.approx(out["mean_return"], abs=20.0)
    assert out["expert_return"] > out["random_return"] + 20.0
    assert abs(out["normalized_score"]) < 0.5 and out["mean_steps"] == 50.0
    with av.open(out["video"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 51 and frames[0].shape == (32, 32, 3)
    # A write that fails (a folder where its temporary file goes; a full disk fails the same
    # way, as late as the encoder's last packets) leaves no video, whole or half.
    (tmp_path / "w.mp4.tmp").mkdir()
    with pytest.raises(SystemExit):
        evaluate_cli(
            ["--env", "InvertedPendulum-v5", "--policy", "random", "--episodes", "1", "--video",
             str(tmp_path / "w.mp4")]  # a few steps: the encoder writes nothing before its end
        )  # fmt: skip
    assert "Is a directory" in capsys.readouterr().err and not (tmp_path / "w.mp4").exists()
    evaluate_cli(["--env", "Hopper-v5", "--policy", "random", "--episodes", "1", "--baselines"])
    out = json.loads(capsys.readouterr().out)  # no scripted expert: random only, no score
    assert "random_return" in out and "expert_return" not in out and "normalized_score" not in out
    for argv, message in [
        (["--policy", "expert", "--env", "Pendulum-v1", "--video", "x.mp4"],
         "--video: Pendulum-v1 has no MuJoCo model to render"),
        (["--policy", "greedy"], "--policy must be expert, random or a .onnx file, got 'greedy'"),
        (["--policy", str(tmp_path / "none.onnx")], "none.onnx: no such ONNX file"),
        (["--policy", "expert", "--env", "Nope-v0"], "unknown task 'Nope-v0'"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            evaluate_cli(["--env", "Reacher-v5", *argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(SystemExit):
        evaluate_cli(["--env", "Reacher-v5", "--policy", "expert", "--video-size", "33"])
    assert "argument --video-size: must be even, got 33" in capsys.readouterr().err
