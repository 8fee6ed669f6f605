"""Seed 002's data-collection API, a thin layer over the workspace dataset format (HDF5,
docs/dataset_format.md): trajectories are saved as episodes, never as pickles.

    from training.data_collection import DataCollector, ROSDataCollector, create_synthetic_dataset

    collector = DataCollector("Reacher-v5")             # a sim task id, or a callable -> gym.Env
    trajectories = collector.collect_episodes(num_episodes=100, policy=None)  # None: random
    collector.save_trajectories("data/reacher.hdf5")    # -> python -m learning.train ... dataset=

    collector = ROSDataCollector()                       # the running recorder node (/recorder)
    collector.start_recording()
    ...                                                  # run the robot
    episode = collector.stop_recording()                 # the Trajectory it wrote

    save_trajectories(create_synthetic_dataset(num_episodes=100, observation_dim=64,
                                               action_dim=4), "data/synthetic.hdf5")
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from episode_dataset import IMAGE, LOW_DIM, DatasetError, EpisodeReader, EpisodeWriter, KeySpec
from episode_dataset.ranges import SEED, checked, count

DATASET_SUFFIXES = (".hdf5", ".h5")
POLICY_NAMES = ("random", "expert")  # or None (random), a .onnx path, or a policy object


def _policy(policy: Any) -> Any:
    """`policy` as sim.collect takes it (None: "random"; a path: a str), or ValueError."""
    if policy is None:
        return "random"
    if isinstance(policy, str | os.PathLike):
        name = os.fspath(policy)
        if name in POLICY_NAMES:
            return name
        if name.endswith(".onnx"):
            if not Path(name).is_file():
                raise ValueError(f"policy {name!r}: no such ONNX file")
            return name
    elif callable(getattr(policy, "reset", None)) and callable(
        getattr(policy, "select_action", None)
    ):
        return policy
    raise ValueError(
        f"policy must be None, 'random', 'expert', a .onnx file or an object with reset() and "
        f"select_action(obs), got {policy!r}"
    )


@dataclass
class Trajectory:
    """One episode: obs {key: (T, *shape)}, actions (T, A), rewards (T,), dones (T,)."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


def _key_spec(steps: np.ndarray) -> KeySpec:
    """The per-step spec of a (T, *shape) array: uint8 (H, W, C) is an image, else low-dim."""
    image = steps.dtype == np.uint8 and steps.ndim == 4
    return KeySpec(
        dtype=steps.dtype.name,
        shape=tuple(steps.shape[1:]),
        feature_type=IMAGE if image else LOW_DIM,
    )


def save_trajectories(
    trajectories: Sequence[Trajectory], path: str | os.PathLike[str], env_args: dict | None = None
) -> Path:
    """Append `trajectories` to the dataset at `path` (created if new); returns the path."""
    path = Path(path)
    if path.suffix not in DATASET_SUFFIXES:
        raise ValueError(
            f"{path}: trajectories are saved in the workspace dataset format: give a .hdf5 path "
            "(never a pickle)"
        )
    if not trajectories:
        raise ValueError(f"{path}: no trajectories to save")
    first = trajectories[0]
    writer = EpisodeWriter(
        path,
        obs_specs={k: _key_spec(v) for k, v in first.obs.items()},
        action_spec=_key_spec(np.asarray(first.actions, np.float32)),
        env_args=env_args,
    )
    try:
        for t in trajectories:
            writer.write_episode(
                obs=t.obs,
                actions=np.asarray(t.actions, np.float32),
                rewards=np.asarray(t.rewards, np.float32),
                dones=np.asarray(t.dones, bool),
                metadata=t.metadata,
            )
    finally:
        writer.close()
    return path


def load_trajectories(path: str | os.PathLike[str]) -> list[Trajectory]:
    """Every episode of the dataset at `path`, in order."""
    reader = EpisodeReader(path)
    try:
        return [_trajectory(reader, ep) for ep in reader.episodes]
    finally:
        reader.close()


def _trajectory(reader: EpisodeReader, ep: str) -> Trajectory:
    data = reader.read_episode(ep)
    return Trajectory(
        obs=data["obs"],
        actions=data["actions"],
        rewards=data["rewards"],
        dones=data["dones"],
        metadata=reader.episode_metadata(ep),
    )


class DataCollector:
    """Episodes of a sim task. `env_factory`: a registered task id (sim.envs.TASKS), or a
    callable returning a Gymnasium env (flat Box observation, a `dt`), registered for this
    process as learning.online.api.train_policy does."""

    def __init__(
        self,
        env_factory: str | Callable[[], gym.Env],
        seed: int = 0,
        camera: int | None = None,
        num_envs: int = 1,
    ) -> None:
        from learning.online.api import env_id_of

        seed = checked("seed", seed, SEED)
        camera = checked("camera", camera, count(1, nullable=True))
        num_envs = checked("num_envs", num_envs, count(1))
        self.env_id = env_id_of(env_factory)
        self.seed, self.camera, self.num_envs = seed, camera, num_envs
        self.trajectories: list[Trajectory] = []
        self._env_args: dict | None = None

    def collect_episodes(self, num_episodes: int, policy: Any = None) -> list[Trajectory]:
        """`num_episodes` episodes (episode i reset with seed `seed + i`) with `policy`: None
        or "random" (uniform), "expert" (the task's scripted expert), an exported `.onnx`
        policy, or an object with `reset()` and `select_action(obs) -> action`. ValueError for
        a count below 1 or another policy, before anything runs."""
        from sim.collect import collect

        num_episodes = checked("num_episodes", num_episodes, count(1))
        policy = _policy(policy)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "episodes.hdf5"
            collect(
                self.env_id,
                policy,
                num_episodes,
                self.seed,
                out,
                num_envs=self.num_envs,
                camera=self.camera,
                progress=False,
            )
            reader = EpisodeReader(out)
            try:
                self._env_args = reader.env_args
                self.trajectories = [_trajectory(reader, ep) for ep in reader.episodes]
            finally:
                reader.close()
        self.seed += num_episodes  # the next call collects new episodes
        return self.trajectories

    def save_trajectories(self, path: str | os.PathLike[str]) -> Path:
        """The last `collect_episodes` result, appended to the dataset at `path`."""
        return save_trajectories(self.trajectories, path, self._env_args)


def create_synthetic_dataset(
    num_episodes: int,
    observation_dim: int,
    action_dim: int,
    episode_length: int = 50,
    seed: int = 0,
) -> list[Trajectory]:
    """Episodes of a random stable linear system  s' = A s + B a + noise,  r = -|s|^2 / dim,
    actions uniform in [-1, 1]: data with dynamics to learn (a world model, BC), not noise.
    ValueError for a count or dimension below 1."""
    num_episodes = checked("num_episodes", num_episodes, count(1))
    observation_dim = checked("observation_dim", observation_dim, count(1))
    action_dim = checked("action_dim", action_dim, count(1))
    episode_length = checked("episode_length", episode_length, count(1))
    seed = checked("seed", seed, SEED)
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(observation_dim, observation_dim))
    a *= 0.9 / max(np.abs(np.linalg.eigvals(a)).max(), 1e-6)  # spectral radius 0.9: stable
    b = rng.normal(size=(observation_dim, action_dim)) / np.sqrt(action_dim)
    trajectories = []
    for i in range(num_episodes):
        s = rng.normal(size=observation_dim)
        obs, actions, rewards = [], [], []
        for _ in range(episode_length):
            u = rng.uniform(-1.0, 1.0, size=action_dim)
            obs.append(s)
            actions.append(u)
            s = a @ s + b @ u + 0.05 * rng.normal(size=observation_dim)
            rewards.append(-float(s @ s) / observation_dim)
        dones = np.zeros(episode_length, bool)
        dones[-1] = True
        trajectories.append(
            Trajectory(
                obs={"state": np.asarray(obs, np.float32)},
                actions=np.asarray(actions, np.float32),
                rewards=np.asarray(rewards, np.float32),
                dones=dones,
                metadata={"synthetic": True, "seed": seed, "episode": i},
            )
        )
    return trajectories


class RecordingError(RuntimeError):
    """The recorder refused or did not answer (one line: service and reason)."""


class ROSDataCollector:
    """Start and stop episodes of a running recorder node (`ros2 launch ... recorder`) through
    its `~/start_episode` / `~/stop_episode` services; `stop_recording` returns the episode
    the recorder wrote, read back from its dataset. The process must be set up for ROS as every
    workspace process is (private ROS_DOMAIN_ID, ROS_LOG_DIR, discovery kept on this machine)."""

    def __init__(self, recorder: str = "/recorder", timeout_s: float = 10.0) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions
        from roboloop_node_common.runtime import keep_discovery_local

        warning = keep_discovery_local(os.environ)
        if warning:
            print(f"ROSDataCollector: {warning}")
        self.recorder, self.timeout_s = recorder.rstrip("/"), timeout_s
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node("ros_data_collector", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _call(self, srv_type: Any, service: str, request: Any = None) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            deadline = time.monotonic() + self.timeout_s
            while not client.service_is_ready():
                if time.monotonic() > deadline:
                    raise RecordingError(f"{service}: no such service after {self.timeout_s} s")
                self.executor.spin_once(timeout_sec=0.05)
            future = client.call_async(srv_type.Request() if request is None else request)
            while not future.done():
                if time.monotonic() > deadline:
                    raise RecordingError(f"{service}: no answer after {self.timeout_s} s")
                self.executor.spin_once(timeout_sec=0.05)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def start_recording(self) -> str:
        """Begin an episode; returns the recorder's message."""
        from std_srvs.srv import Trigger

        response = self._call(Trigger, f"{self.recorder}/start_episode")
        if not response.success:
            raise RecordingError(f"{self.recorder}/start_episode: {response.message}")
        return response.message

    def stop_recording(self) -> Trajectory:
        """End the episode and return it as written (waits for the recorder's commit)."""
        from std_srvs.srv import Trigger

        response = self._call(Trigger, f"{self.recorder}/stop_episode")
        written = re.match(r"episode (\S+) written", response.message)
        if not response.success or written is None:
            raise RecordingError(f"{self.recorder}/stop_episode: {response.message}")
        reader = EpisodeReader(self.dataset_path())
        try:
            return _trajectory(reader, written.group(1))
        except DatasetError as err:
            raise RecordingError(f"{self.recorder}: {err}") from None
        finally:
            reader.close()

    def dataset_path(self) -> str:
        """The recorder's `output_path` parameter."""
        from rcl_interfaces.srv import GetParameters

        request = GetParameters.Request(names=["output_path"])
        response = self._call(GetParameters, f"{self.recorder}/get_parameters", request)
        if not response.values or not response.values[0].string_value:
            raise RecordingError(f"{self.recorder}: has no output_path parameter")
        return response.values[0].string_value

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> ROSDataCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
