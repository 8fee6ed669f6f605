"""Training stopped from outside (real `python -m learning.train` processes). Ctrl-C or SIGTERM:
an online run stops at a whole step, writes last.ckpt (and SAC's replay buffer); an offline run
keeps its last finished epoch; both say where to go on and exit as the signal would (130, 143);
an online run resumes from its checkpoint. A full disk (a file-size limit stands in for it): one
line, exit 1, no half-written file."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from learning.online.loop import ONLINE_KEY, _StopRequest, storage_path

REPO = Path(__file__).resolve().parents[1]
BOUND = 10**6  # env steps no run here reaches: only the signal ends it


ONLINE = ("env_id=Pendulum-v1", "online.progress_bar=false", "online.eval_episodes=0")


def start(tmp_path: Path, config: str, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "learning.train", f"--config-name={config}"]
    cmd += [f"run_dir={tmp_path}/run", *overrides]
    # start_new_session: the process's own SIGINT handling, as in a terminal, not the test's
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def signal_after_first_checkpoint(proc: subprocess.Popen, last: Path, signum: int) -> str:
    """Send `signum` once the periodic checkpoint exists; the process's output."""
    deadline = time.monotonic() + 240
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no periodic checkpoint"
        time.sleep(0.1)
    proc.send_signal(signum)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return out


def test_ctrl_c_writes_the_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        "train_sac",
        *ONLINE,
        "training.num_iterations=1",
        f"training.steps_per_iteration={BOUND}",
        "online.checkpoint_every=150",  # first periodic checkpoint at env step 249
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = signal_after_first_checkpoint(proc, last, signal.SIGINT)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ckpt = torch.load(last, weights_only=True)
    steps = ckpt[ONLINE_KEY]["env_steps"]
    assert 249 <= steps < BOUND
    assert f"stopped by SIGINT at env step {steps}" in out and f"ckpt_path={last}" in out
    # the replay buffer as it was at that step: one row per env step
    buffer = torch.load(storage_path(last, 0), weights_only=True)
    assert buffer["size"] == steps
    critic_steps = ckpt["optimizer_states"][0]["state"][0]["step"].item()
    assert critic_steps == steps - 100 + 1  # one update per env step after learning_starts

    resumed = subprocess.run(
        [
            sys.executable, "-m", "learning.train", "--config-name=train_sac",
            "env_id=Pendulum-v1", f"run_dir={tmp_path}/resumed", "online.progress_bar=false",
            "online.eval_episodes=0", "training.num_iterations=1",
            f"training.steps_per_iteration={steps + 20}", f"ckpt_path={last}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after[ONLINE_KEY]["env_steps"] == steps + 20
    assert after["optimizer_states"][0]["state"][0]["step"].item() == critic_steps + 20


def test_sigterm_stops_ppo_after_an_update(tmp_path: Path) -> None:
    """PPO keeps no rollout in its checkpoints, so it stops at an update: the checkpoint's env
    steps are whole rollouts and resuming collects a fresh one."""
    rollout = 64
    proc = start(
        tmp_path,
        "train_ppo",
        *ONLINE,
        "online.num_envs=2",
        f"training.steps_per_iteration={rollout}",
        f"training.num_iterations={BOUND // rollout}",
        "model.minibatch_size=32",
        "model.update_epochs=1",
        "online.checkpoint_every=3",
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = signal_after_first_checkpoint(proc, last, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    online = torch.load(last, weights_only=True)[ONLINE_KEY]
    assert online["env_steps"] >= 3 * rollout and online["env_steps"] % rollout == 0
    assert online["iteration"] == online["env_steps"] // rollout
    assert f"stopped by SIGTERM at env step {online['env_steps']}" in out


def test_sigterm_and_ctrl_c_end_offline_training_as_the_signals_do(tmp_path: Path) -> None:
    """Lightning ended a SIGTERM'd fit with exit 0, as if it had finished, and a Ctrl-C with 1."""
    from sim.collect import collect

    dataset = tmp_path / "d.hdf5"
    collect("Reacher-v5", "expert", 4, 0, str(dataset))
    fbc = (f"dataset={dataset}", "max_epochs=100000", "batch_size=32")
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        run = tmp_path / signal.Signals(signum).name
        proc = start(run, "train_fbc", *fbc)
        last = run / "run" / "checkpoints" / "last.ckpt"
        out = signal_after_first_checkpoint(proc, last, signum)
        assert proc.returncode == code, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        match = re.search(rf"stopped by {signal.Signals(signum).name} in epoch (\d+)", out)
        assert match, out[-3000:]
        assert f"go on from the last finished epoch with ckpt_path={last}" in out
        # the checkpoint of the last epoch that finished (the current one may have, too)
        assert int(match[1]) - 1 <= torch.load(last, weights_only=True)["epoch"] <= int(match[1])


def run_with_file_limit(tmp_path: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "learning.train", *args, f"run_dir={tmp_path}/run"]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limited
    )  # fmt: skip


def test_a_full_disk_is_one_line_and_leaves_no_half_checkpoint(tmp_path: Path) -> None:
    from sim.collect import collect

    # online: the first periodic checkpoint (~3 MB with Adam's moments) does not fit
    online = run_with_file_limit(
        tmp_path / "online", 500_000, "--config-name=train_sac", *ONLINE,
        "training.num_iterations=1", "training.steps_per_iteration=400",
        "online.checkpoint_every=150",
    )  # fmt: skip
    checkpoints = tmp_path / "online" / "run" / "checkpoints"
    assert online.returncode == 1, online.stderr[-3000:]
    assert online.stderr.strip().splitlines()[-1] == (
        f"learning.train: {checkpoints / 'last.ckpt'}: cannot write it (File too large); "
        "none was written before"
    )
    assert not (checkpoints / "last.ckpt").exists() and not list(checkpoints.glob("*.tmp"))

    dataset = tmp_path / "d.hdf5"
    collect("Reacher-v5", "expert", 4, 0, str(dataset))
    offline = run_with_file_limit(
        tmp_path / "offline", 200_000, "--config-name=train_fbc", f"dataset={dataset}",
        "max_epochs=2",
    )  # fmt: skip
    assert offline.returncode == 1, offline.stderr[-3000:]
    assert offline.stderr.strip().splitlines()[-1] == (
        f"learning.train: {tmp_path / 'offline' / 'run'}: writing the run failed (File too "
        "large); what it wrote before is kept"
    )
    assert not list((tmp_path / "offline" / "run").rglob("*.ckpt"))


def test_a_second_signal_acts_at_once_and_ignored_signals_stay_ignored() -> None:
    from lightning.fabric import Fabric

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Python's own SIGINT handler, whatever the test runner put there (xdist workers differ)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _StopRequest(Fabric(accelerator="cpu", devices=1)) as stop:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # nohup'd: not taken over
            assert not stop.requested(0)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between bytecodes
            assert stop.requested(1) and stop.agreed == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):  # Python's own handler is back
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            stop.end()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
