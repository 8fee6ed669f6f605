"""Data-parallel training for real: 2 CPU processes, gloo backend, over loopback.

Offline: `trainer=ddp_cpu` is `trainer=multi_gpu` (the same DDPStrategy and callbacks) with the
device settings of a CPU box. Online: the shared loop with `online.devices=2` (Lightning Fabric,
DDP). Both go through `python -m learning.train`, so Lightning's own launcher starts rank 1
exactly as it would start GPU ranks. Each rank trains on its own data (offline: its shard of the
dataset; online: its own envs and seeds); identical weights afterwards, moved by training,
prove the gradients were all-reduced.
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


def train(args: list[str], cwd: Path) -> str:
    """`python -m learning.train *args` as 2 ranks; its output (the test fails on an error)."""
    cmd = [sys.executable, "-m", "learning.train", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ddp_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_offline_ddp_two_ranks_identical_weights(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy.hdf5", episodes=10)
    ranks = tmp_path / "ranks"
    args = [
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
    train(args, tmp_path)
    r0, r1 = (torch.load(ranks / f"rank{i}.pt", weights_only=True) for i in (0, 1))

    # Each rank saw its own shard (DistributedSampler), yet both took the same steps ...
    assert not torch.equal(r0["first_batch"], r1["first_batch"])
    assert r0["steps"] == r1["steps"] > 0
    # ... and ended with the same weights, which training moved: the gradients were averaged.
    assert_same(r0["final"], r1["final"])
    moved = [k for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])]
    assert any(k.startswith("network.") for k in moved)
    # Logged metrics are the mean over ranks (sync_dist), so both ranks pick the same best.
    assert r0["metrics"]["val_loss"] == pytest.approx(r1["metrics"]["val_loss"], rel=1e-6)
    # Rank 0 wrote the checkpoints; they hold the weights both ranks ended with.
    (run_dir,) = (tmp_path / "out" / "ddp").iterdir()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in last["state_dict"].items():
        assert torch.equal(value, r0["final"][key]), key


def test_online_ppo_two_ranks_identical_weights(tmp_path: Path) -> None:
    """One PPO update on 2 ranks: each collects its own rollout (own envs, own seeds), the
    minibatch gradients are all-reduced, both hold the same weights after the step."""
    records = tmp_path / "records"
    args = [
        "--config-name=train_ppo",
        "env_id=Pendulum-v1",
        f"output_root={tmp_path / 'out'}",
        "training.num_iterations=2",
        "training.steps_per_iteration=64",
        "online.devices=2",
        "online.accelerator=cpu",
        "online.strategy=ddp",
        "online.progress_bar=false",
        "online.eval_episodes=1",
        "model._target_=roboloop_testing.rank_state.RecordingPPO",
        f"+model.record_dir={records}",
    ]
    train(args, tmp_path)
    r0, r1 = (torch.load(records / f"rank{i}_update1.pt", weights_only=True) for i in (0, 1))
    # Different envs and seeds per rank: different observations from the first step on.
    assert not torch.equal(r0["first_obs"]["state"], r1["first_obs"]["state"])
    assert_same(r0["initial"], r1["initial"])  # DDP starts every rank from rank 0's weights
    assert_same(r0["state_dict"], r1["state_dict"])
    moved = [k for k in r0["state_dict"] if not torch.equal(r0["state_dict"][k], r0["initial"][k])]
    assert {"actor_mean.0.weight", "critic.0.weight"} <= set(moved)
