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
from collections.abc import Callable
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


ONLINE = {
    "ppo": ["training.num_iterations=2", "training.steps_per_iteration=64"],
    "sac": [  # 32 steps per rank, updates from the 16th on: batches differ per rank
        "training.num_iterations=1",
        "training.steps_per_iteration=32",
        "model.learning_starts=16",
        "model.batch_size=16",
        "model.buffer_size=1000",
        "policy.hidden_dim=32",
    ],
    "dreamer": [  # 40 steps per rank, 10 gradient steps from the 20th on
        "training.num_iterations=1",
        "training.steps_per_iteration=40",
        "world_model=tiny",
        "world_model.batch_size=4",
        "world_model.sequence_length=8",
        "dreamer.imagine_horizon=3",
        "dreamer.learning_starts=20",
        "model.buffer_size=1000",
    ],
}


@pytest.fixture(scope="module")
def online_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[dict, dict]]:
    """The shipped train_<algorithm> config with online.devices=2 (strategy auto: DDP, gloo)
    on Pendulum-v1; (rank 0, rank 1) records after their last update (one run each)."""
    done: dict[str, tuple[dict, dict]] = {}

    def get(algorithm: str) -> tuple[dict, dict]:
        if algorithm not in done:
            tmp = tmp_path_factory.mktemp(algorithm)
            records = tmp / "records"
            args = [
                f"--config-name=train_{algorithm}",
                "env_id=Pendulum-v1",
                f"output_root={tmp / 'out'}",
                *ONLINE[algorithm],
                "online.devices=2",
                "online.accelerator=cpu",
                "online.progress_bar=false",
                "online.eval_episodes=1",
                f"model._target_=roboloop_testing.rank_state.Recording{algorithm.upper()}",
                f"+model.record_dir={records}",
            ]
            train(args, tmp)
            last = max(
                records.glob("rank0_update*.pt"),
                key=lambda p: int(p.stem.removeprefix("rank0_update")),
            )
            done[algorithm] = tuple(  # type: ignore[assignment]
                torch.load(records / last.name.replace("rank0", f"rank{r}"), weights_only=True)
                for r in (0, 1)
            )
        return done[algorithm]

    return get


@pytest.mark.parametrize("algorithm", ["ppo", "sac", "dreamer"])
def test_online_two_ranks_identical_weights(
    algorithm: str, online_run: Callable[[str], tuple[dict, dict]]
) -> None:
    """Each rank collects with its own envs and seeds, the gradients are all-reduced, and both
    ranks hold the same parameters after their last update (PPO: rollout 2; SAC: step 32)."""
    r0, r1 = online_run(algorithm)
    # Different envs and seeds per rank: different observations from the first step on.
    assert not torch.equal(r0["first_obs"]["state"], r1["first_obs"]["state"])
    assert_same(r0["initial"], r1["initial"])  # DDP starts every rank from rank 0's weights
    params = r0["parameters"]
    assert_same(*({k: r["state_dict"][k] for k in params} for r in (r0, r1)))
    moved = [k for k in params if not torch.equal(r0["state_dict"][k], r0["initial"][k])]
    assert len(moved) > len(params) // 2, moved


def test_online_ppo_two_ranks_identical_statistics(
    online_run: Callable[[str], tuple[dict, dict]],
) -> None:
    """The normalization statistics (buffers) agree across ranks too: the actor each rank acts
    with, and the one rank 0 checkpoints and exports, saw every rank's data."""
    r0, r1 = online_run("ppo")
    assert_same(r0["state_dict"], r1["state_dict"])


def test_sigterm_to_rank_0_stops_both_ranks_at_one_update(tmp_path: Path) -> None:
    """A scheduler signals rank 0 only: the ranks agree (an all-reduce every 10 loop steps),
    stop after the same PPO update, write one checkpoint and both exit."""
    import signal
    import time

    from learning.online.loop import ONLINE_KEY

    rollout = 64  # per rank
    cmd = [sys.executable, "-m", "learning.train", "--config-name=train_ppo"]
    cmd += ["env_id=Pendulum-v1", f"run_dir={tmp_path}/run", "online.devices=2"]
    cmd += ["online.accelerator=cpu", "online.progress_bar=false", "online.eval_episodes=0"]
    cmd += ["online.num_envs=2", f"training.steps_per_iteration={rollout}"]
    cmd += ["training.num_iterations=100000", "model.minibatch_size=32"]
    cmd += ["model.update_epochs=1", "online.checkpoint_every=2"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ddp_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # rank 0 alone
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    online = torch.load(last, weights_only=True)[ONLINE_KEY]
    assert online["env_steps"] % (2 * rollout) == 0 and online["iteration"] >= 2
    assert f"stopped by SIGTERM at env step {online['env_steps']}" in out, out[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # rank 1 ends too (and its zombie is reaped by init)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("rank 1 still runs")
