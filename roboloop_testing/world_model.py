"""A tiny world model trained in seconds and exported, for the runner and node tests.

    graphs = tiny_world_model(tmp_path, "Reacher-v5", camera=16)   # {"filter": path, ...}

Random-action episodes of `env_id` recorded with a `camera` x `camera` image and the state
(sim.collect, the dataset format a ROS recording has too), one epoch of the `tiny` preset
(learning.train), every world-model step the checkpoint has exported (learning.export).
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
    "~trainer.logger",
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
    ckpt = run(cfg)["last_ckpt"]
    graphs = {step: out / f"{step}.onnx" for step in steps}
    for step, path in graphs.items():
        export_checkpoint(ckpt, path, step=step)
    return graphs
