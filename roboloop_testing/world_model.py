"""A tiny world model (or Dreamer) trained in seconds and exported, for the runner and node
tests.

    graphs = tiny_world_model(tmp_path, "Reacher-v5", camera=16)   # {"filter": path, ...}
    graphs = shared_tiny_world_model(tmp_path_factory, "Reacher-v5", 16)  # once per process
    graphs = tiny_dreamer(tmp_path, "Reacher-v5")                  # + "actor"

`tiny_world_model`: random-action episodes of `env_id` recorded with a `camera` x `camera`
image and the state (sim.collect, the dataset format a ROS recording has too), one epoch of the
`tiny` preset (learning.train). `tiny_dreamer`: the train_dreamer config's smoke run on the
task's state, 200 env steps. Each exports the steps asked for (learning.export).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from learning.export import export_checkpoint
from learning.train import compose_config, run
from sim.collect import collect

TINY = [
    "world_model=tiny",
    "world_model.sequence_length=10",
    "world_model.batch_size=16",
    "world_model.learning_rate=1e-3",
    "max_epochs=1",
    "~trainer.callbacks.progress_bar",
    "~trainer.callbacks.lr_monitor",
    "~logger",
]


def tiny_world_model(
    out: Path,
    env_id: str,
    camera: int,
    episodes: int = 3,
    steps: Sequence[str] = ("filter", "imagine", "decode"),
    overrides: Sequence[str] = (),
) -> dict[str, Path]:
    """Train and export; step name -> ONNX file under `out`."""
    dataset = out / "episodes.hdf5"
    collect(env_id, "random", episodes, seed=0, out=dataset, camera=camera, progress=False)
    cfg = compose_config(
        "train_world_model",
        [f"dataset={dataset}", f"output_root={out / 'runs'}", *TINY, *overrides],
    )
    return _export(run(cfg)["last_ckpt"], out, steps)


_SHARED: dict[tuple[str, int], dict[str, Path]] = {}


def shared_tiny_world_model(tmp_path_factory, env_id: str, camera: int) -> dict[str, Path]:  # noqa: ANN001
    """`tiny_world_model` built once per test process and (env_id, camera), under a session
    temp dir: the test modules that only read the graphs (the runner's and the belief's, one
    xdist group) share one build instead of one per module (~9 s each)."""
    key = (env_id, camera)
    if key not in _SHARED:
        _SHARED[key] = tiny_world_model(tmp_path_factory.mktemp("wm"), env_id, camera=camera)
    return _SHARED[key]


def tiny_dreamer(
    out: Path, env_id: str, steps: Sequence[str] = ("filter", "imagine", "actor")
) -> dict[str, Path]:
    """Train Dreamer (tiny, 200 env steps, 50 updates) on `env_id` and export; step -> file."""
    cfg = compose_config(
        "train_dreamer",
        [
            f"env_id={env_id}", f"output_root={out / 'runs'}", "world_model=tiny",
            "world_model.batch_size=4", "world_model.sequence_length=16",
            "dreamer.learning_starts=100", "dreamer.imagine_horizon=5",
            "training.num_iterations=1", "training.steps_per_iteration=200",
            "online.eval_every=0", "online.eval_episodes=1", "online.progress_bar=false",
        ],
    )  # fmt: skip
    return _export(run(cfg)["last_ckpt"], out, steps)


def _export(ckpt: str, out: Path, steps: Sequence[str]) -> dict[str, Path]:
    graphs = {step: out / f"{step}.onnx" for step in steps}
    for step, path in graphs.items():
        export_checkpoint(ckpt, path, step=step)
    return graphs
