"""Data-parallel training for real: 2 CPU processes, gloo backend, over loopback.

`trainer=ddp_cpu` is `trainer=multi_gpu` (the same DDPStrategy and callbacks) with the device
settings of a CPU box; the run goes through `python -m learning.train`, so Lightning's own
launcher starts rank 1 exactly as it would start GPU ranks. Each rank trains on its own shard
of the data; identical weights afterwards prove the gradients were all-reduced.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_learning_data import write_toy_dataset

REPO = Path(__file__).resolve().parents[1]

# Both runs of this file in one xdist worker, one after the other: each takes both cores.
pytestmark = pytest.mark.xdist_group("ddp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env() -> dict[str, str]:
    """Loopback rendezvous on a free port, CPU only, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        GLOO_SOCKET_IFNAME="lo",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    return env


def test_offline_ddp_two_ranks_identical_weights(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy.hdf5", episodes=10)
    ranks = tmp_path / "ranks"
    cmd = [
        sys.executable,
        "-m",
        "learning.train",
        "--config-name=train_fbc",
        f"dataset={data}",
        "trainer=ddp_cpu",
        f"output_root={tmp_path / 'out'}",
        "name=ddp",
        "max_epochs=2",
        "batch_size=16",
        "model.network.hidden_dims=[64,64]",
        "~trainer.callbacks.progress_bar",
        "+trainer.callbacks.rank_state._target_=roboloop_testing.rank_state.SaveRankState",
        f"+trainer.callbacks.rank_state.out_dir={ranks}",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=ddp_env(), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    r0, r1 = (torch.load(ranks / f"rank{i}.pt", weights_only=True) for i in (0, 1))

    # Each rank saw its own shard (DistributedSampler), yet both took the same steps ...
    assert not torch.equal(r0["first_batch"], r1["first_batch"])
    assert r0["steps"] == r1["steps"] > 0
    # ... and ended with the same weights, which training moved: the gradients were averaged.
    assert r0["final"].keys() == r1["final"].keys()
    for key in r0["final"]:
        assert torch.equal(r0["final"][key], r1["final"][key]), key
    moved = [k for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])]
    assert any(k.startswith("network.") for k in moved)
    # Logged metrics are the mean over ranks (sync_dist), so both ranks pick the same best.
    assert r0["metrics"]["val_loss"] == pytest.approx(r1["metrics"]["val_loss"], rel=1e-6)
    # Rank 0 wrote the checkpoints; they hold the weights both ranks ended with.
    (run_dir,) = (tmp_path / "out" / "ddp").iterdir()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in last["state_dict"].items():
        assert torch.equal(value, r0["final"][key]), key
