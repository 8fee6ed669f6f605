"""SAC and the replay buffer: the maths against torch.distributions and hand-written targets,
the buffer's memory bound and bootstrapping flags, and SAC on the shared online loop."""

from __future__ import annotations

import gc
import logging
import math
import shutil
import threading
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from hydra.utils import instantiate
from lightning.fabric import Fabric
from torch import nn

from learning.algorithms.sac import (
    SAC,
    EnsembleLinear,
    SquashedGaussianActor,
    TwinQ,
    polyak_update,
    squashed_gaussian,
    td_target,
    temperature_loss,
)
from learning.checkpoint import CheckpointError
from learning.data.spec import env_model_dims
from learning.errors import ConfigError
from learning.online.algorithm import AlgorithmError, Transition
from learning.online.loop import ONLINE_KEY, STORAGE_STEP_KEY, storage_path
from learning.online.replay import ReplayBuffer, ReplayMemoryError
from learning.train import compose_config, run
from roboloop_testing.online import export_and_serve, register_discrete_task

OBS = {"state": {"shape": [3], "dtype": "float32", "feature_type": "low_dim"}}
BOUNDS = {"low": [-2.0, -0.5], "high": [2.0, 1.5], "source": "env"}


def test_squashed_log_prob_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g) * 0.5
    noise = torch.randn(64, 2, generator=g)
    scale, bias = torch.tensor([2.0, 1.0]), torch.tensor([0.0, 0.5])
    squashed, log_prob = squashed_gaussian(mean, log_std, noise, scale)

    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [
            torch.distributions.TanhTransform(),
            torch.distributions.AffineTransform(bias, scale),
        ],
    )
    action = squashed * scale + bias
    expected = dist.log_prob(action).sum(-1)
    torch.testing.assert_close(
        action, dist.transforms[1](torch.tanh(mean + log_std.exp() * noise))
    )
    torch.testing.assert_close(log_prob, expected, atol=1e-4, rtol=1e-4)


def test_td_target_bootstraps_unless_terminated() -> None:
    rewards = torch.tensor([1.0, 1.0])
    next_q = torch.tensor([[5.0, 3.0], [4.0, 6.0]])  # heads x batch: min is 4, 3
    next_log_prob = torch.tensor([-1.0, -1.0])
    y = td_target(rewards, torch.tensor([0.0, 1.0]), next_q, next_log_prob, torch.tensor(0.5), 0.9)
    # row 0: 1 + 0.9 * (4 + 0.5); row 1 terminated: the reward alone
    torch.testing.assert_close(y, torch.tensor([1 + 0.9 * 4.5, 1.0]))


def test_temperature_loss_raises_alpha_when_entropy_is_below_target() -> None:
    log_alpha = torch.zeros((), requires_grad=True)
    log_prob = torch.full((8,), 2.0)  # entropy -2 < target -1: α must grow
    temperature_loss(log_alpha, log_prob, target_entropy=-1.0).backward()
    assert log_alpha.grad < 0  # gradient descent increases log α
    torch.testing.assert_close(log_alpha.grad, torch.tensor(-(2.0 - 1.0)))


def test_polyak_moves_targets_by_tau() -> None:
    target, online = [torch.zeros(3), torch.ones(2)], [torch.ones(3), torch.full((2,), 3.0)]
    polyak_update(target, online, 0.1)
    torch.testing.assert_close(target[0], torch.full((3,), 0.1))
    torch.testing.assert_close(target[1], torch.full((2,), 1.0 * 0.9 + 3.0 * 0.1))


def test_twin_q_heads_are_independent_networks_in_one_pass() -> None:
    torch.manual_seed(0)
    q = TwinQ(3, 2, [16, 16])
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    out = q(obs, act)
    assert out.shape == (2, 5)
    # head j equals a plain MLP with the j-th slice of every stacked weight, in value and in
    # every parameter's gradient (the one-output layer is a product and a sum, not a bmm)
    plain = []
    for j in range(2):
        x = torch.cat([obs, act], -1)
        for layer in q.net:
            x = x @ layer.weight[j] + layer.bias[j] if hasattr(layer, "weight") else layer(x)
        plain.append(x.squeeze(-1))
    torch.testing.assert_close(out, torch.stack(plain))
    params = list(q.parameters())
    weights = torch.randn(2, 5)
    grads = torch.autograd.grad((out * weights).sum(), params)
    wanted = torch.autograd.grad((torch.stack(plain) * weights).sum(), params)
    for got, want in zip(grads, wanted, strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(out[0], out[1])
    # the frozen pass (the actor's Q): the same values, gradients reach the inputs only
    act.requires_grad_(True)
    frozen = q(obs, act, frozen=True)
    assert torch.equal(frozen, out)
    frozen.sum().backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    assert all(p.grad is None for p in q.parameters())


def test_actor_mean_action_stays_in_bounds() -> None:
    actor = SquashedGaussianActor(3, 2, [8], BOUNDS["low"], BOUNDS["high"])
    with torch.no_grad():
        for layer in (actor.mean,):
            layer.weight.mul_(100)  # saturate tanh
        a = actor.deterministic(torch.randn(256, 3) * 10)
    assert (a >= torch.tensor(BOUNDS["low"])).all() and (a <= torch.tensor(BOUNDS["high"])).all()


def _buffer(capacity: int = 4, **kw) -> ReplayBuffer:
    return ReplayBuffer(OBS, 2, capacity, **kw)


def _step(buf: ReplayBuffer, value: float, n: int = 1, terminated: bool = False) -> None:
    buf.add(
        {"state": torch.full((n, 3), value)},
        torch.full((n, 2), value),
        torch.full((n,), value),
        {"state": torch.full((n, 3), value + 0.5)},
        torch.full((n,), terminated),
        torch.full((n,), not terminated),
    )


def test_replay_memory_bound_is_enforced_and_reported() -> None:
    row = (3 + 3 + 2 + 1) * 4 + 2  # obs, next_obs, actions, reward float32 + two bool flags
    buf = _buffer(10, max_bytes=10 * row)
    assert buf.nbytes == 10 * row and "10 transitions" in buf.describe()
    with pytest.raises(ReplayMemoryError, match=r"capacity 11 x 38 B.*exceeds max_bytes"):
        _buffer(11, max_bytes=10 * row)


def test_replay_ring_flags_and_seeded_sampling() -> None:
    buf = _buffer(4, seed=3)
    for v in range(3):
        _step(buf, float(v))
    _step(buf, 10.0, n=2, terminated=True)  # wraps: overwrites row 0
    assert len(buf) == 4
    batch = buf.sample(64)
    rewards = batch["rewards"]
    assert set(rewards.tolist()) == {1.0, 2.0, 10.0}  # row 0 (reward 0) was overwritten
    # terminated and truncated are stored apart and travel with their row
    torch.testing.assert_close(batch["terminated"], (rewards == 10.0).float())
    torch.testing.assert_close(batch["truncated"], (rewards != 10.0).float())
    torch.testing.assert_close(batch["next_obs"]["state"][:, 0], rewards + 0.5)

    again = _buffer(4, seed=3)
    again.load_state_dict(buf.state_dict())
    torch.testing.assert_close(again.sample(16)["rewards"], buf.sample(16)["rewards"])


def _sac(**kw) -> SAC:
    return SAC(OBS, 2, 20.0, BOUNDS, hidden_dims=(32, 32), batch_size=16, **kw)


def test_sac_refuses_discrete_actions_and_images() -> None:
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (3,))})
    with pytest.raises(AlgorithmError, match=r"^CartPole-v1: SAC needs continuous \(Box\)"):
        SAC.check_spaces(obs_space, gym.spaces.Discrete(2), "CartPole-v1")
    with pytest.raises(AlgorithmError, match="bounded 1-D Box"):
        SAC.check_spaces(obs_space, gym.spaces.Box(-float("inf"), float("inf"), (2,)), "x")
    SAC.check_spaces(obs_space, gym.spaces.Box(-1, 1, (2,)), "ok")
    image = {"rgb": {"shape": [8, 8, 3], "dtype": "uint8", "feature_type": "image"}}
    with pytest.raises(AlgorithmError, match="'rgb' is an image"):
        SAC(image, 2, 20.0, BOUNDS)


def test_sac_update_learns_a_one_step_reward() -> None:
    """Terminal one-step task, reward = -|a - target|²: the critic fits it and the actor's mean
    action moves to the target (the whole update path, losses and temperature together)."""
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1)
    sac = _sac(learning_starts=0, learning_rate=3e-3)
    learner, *optims = fabric.setup(sac, *sac.configure_optimizers())
    for name in sac.forward_methods:
        fabric.mark_forward_method(learner, name) if hasattr(
            fabric, "mark_forward_method"
        ) else None
    buf = sac.make_storage(1, torch.device("cpu"))
    target = torch.tensor([1.0, 1.0])  # both away from the box centre (0, 0.5)
    for _ in range(8):
        obs = {"state": torch.randn(64, 3)}
        actions = torch.rand(64, 2) * 4 - 2
        actions[:, 1] = actions[:, 1] / 2 + 0.5
        rewards = -(actions - target).pow(2).sum(-1)
        done = torch.ones(64, dtype=torch.bool)
        sac.observe(buf, Transition(obs, actions, {}, rewards, done, ~done, obs))
    alpha0 = sac.log_alpha.exp().item()
    for _ in range(300):
        scalars = sac.update(fabric, learner, optims, buf, 0.0)
    assert set(scalars) >= {"loss/critic", "loss/actor", "temperature", "entropy"}
    assert all(v.dim() == 0 for v in scalars.values())  # tensors: the loop syncs when it logs
    assert scalars["temperature"].item() < alpha0  # entropy above -|A|: α shrinks
    # The policy's expected action moved from the box centre to the target (within 0.2: the
    # entropy bonus keeps σ > 0 and pulls a little towards the centre).
    with torch.no_grad():
        sampled = sac.act({"state": torch.randn(4096, 3)})[0]
    torch.testing.assert_close(sampled.mean(0), target, atol=0.2, rtol=0)


def test_each_loss_reaches_only_its_own_parameters() -> None:
    """One backward of the sum is the three separate SAC steps: the critic loss moves only the
    critics, the actor loss only the actor, the temperature loss only log α."""
    torch.manual_seed(0)
    sac = _sac()
    b = 8
    out = sac.losses(
        torch.randn(b, 3),
        torch.rand(b, 2),
        torch.randn(b),
        torch.randn(b, 3),
        torch.zeros(b),
        torch.randn(b, 2),
        torch.randn(b, 2),
    )
    groups = {
        "loss/critic": list(sac.critic.parameters()),
        "loss/actor": list(sac.actor.parameters()),
        "loss/temperature": [sac.log_alpha],
    }
    every = [p for ps in groups.values() for p in ps]
    for name, own in groups.items():
        grads = torch.autograd.grad(out[name], every, retain_graph=True, allow_unused=True)
        reached = {id(p) for p, g in zip(every, grads, strict=True) if g is not None and g.any()}
        assert reached == {id(p) for p in own}, name
    assert not any(p.requires_grad for p in sac.critic_target.parameters())


def _on_a_buffer(precision: str = "32-true", **kw) -> tuple:
    """(SAC, fabric, learner, optimizers, buffer of 64 fixed transitions), seeded."""
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    sac = _sac(learning_starts=0, **kw)
    learner, *optims = fabric.setup(sac, *sac.configure_optimizers())
    buf = sac.make_storage(1, torch.device("cpu"))
    data = torch.Generator().manual_seed(1)
    obs = {"state": torch.randn(64, 3, generator=data)}
    done = torch.zeros(64, dtype=torch.bool)
    actions, rewards = torch.rand(64, 2, generator=data), torch.randn(64, generator=data)
    sac.observe(buf, Transition(obs, actions, {}, rewards, done, done, obs))
    return sac, fabric, learner, optims, buf


def _updated(precision: str, update_threads: int) -> tuple[SAC, dict]:
    """A SAC after 20 updates on a fixed buffer, and the last update's scalars."""
    sac, fabric, learner, optims, buf = _on_a_buffer(precision, update_threads=update_threads)
    for _ in range(20):
        scalars = sac.update(fabric, learner, optims, buf, 0.0)
    return sac, scalars


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_two_thread_update_equals_the_joint_step(precision: str) -> None:
    """update_threads=2 runs the critic's half on a second thread; the steps' order (the actor
    reads a copy of the critic from before its step, the actor steps after the target read it)
    keeps every parameter equal to the one-thread joint step's, to the bit, and the copy stays
    out of the checkpoint."""
    joint, joint_scalars = _updated(precision, update_threads=1)
    threaded, threaded_scalars = _updated(precision, update_threads=2)
    assert joint._critic_thread is None and threaded._critic_thread is not None
    expected = joint.state_dict()
    assert threaded.state_dict().keys() == expected.keys()
    for name, value in threaded.state_dict().items():
        assert torch.equal(value, expected[name]), name
    for name, value in threaded_scalars.items():
        assert torch.equal(value, joint_scalars[name]), name


def test_the_critic_thread_outlives_each_instance() -> None:
    """A thread that exits runs MKL's per-thread cleanup, which once spun for 8 minutes against
    the next run's matmuls: every SAC shares one critic thread, which an instance collected by
    the garbage collector leaves running, and the next instance uses again."""

    def critic_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("sac-critic")]

    first, _ = _updated("32-true", update_threads=2)
    (thread,) = critic_threads()
    del first
    gc.collect()
    thread.join(timeout=1.0)
    assert thread.is_alive()
    second, _ = _updated("32-true", update_threads=2)
    assert second._critic_thread is not None and critic_threads() == [thread]


@pytest.mark.parametrize("where", ["soft_target", "critic_loss"])
def test_an_error_in_the_critic_thread_reaches_the_caller(monkeypatch, where: str) -> None:
    """The critic's half fails on its thread, before or after the TD target the caller waits
    for: update raises that error instead of hanging, and the next update runs."""
    sac, fabric, learner, optims, buf = _on_a_buffer(update_threads=2)

    def broken(*args):
        raise RuntimeError("critic half failed")

    monkeypatch.setattr(sac, where, broken)
    with pytest.raises(RuntimeError, match="critic half failed"):
        sac.update(fabric, learner, optims, buf, 0.0)
    monkeypatch.undo()
    scalars = sac.update(fabric, learner, optims, buf, 0.0)
    assert torch.isfinite(scalars["loss/critic"])
    with pytest.raises(AlgorithmError, match="update_threads is 1 or 2, got 3"):
        _sac(update_threads=3)


def test_bf16_mixed_keeps_the_actor_and_the_critics_outer_layers_in_fp32() -> None:
    """bf16-mixed: only the critics' hidden layers take bf16 (docs/online.md: a bf16 actor cost
    HalfCheetah's return; a bf16 input layer blurred one state's candidate actions)."""
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    sac = _sac(learning_starts=0)
    learner, *optims = fabric.setup(sac, *sac.configure_optimizers())
    dtypes: dict[str, torch.dtype] = {}
    for name, module in sac.named_modules():
        if isinstance(module, (nn.Linear, EnsembleLinear)):
            module.register_forward_hook(lambda m, i, y, n=name: dtypes.__setitem__(n, y.dtype))
    obs = torch.randn(4, 3)
    act = torch.full((4, 2), 230 / 256)
    act[1:, 0] += torch.tensor([1e-3, 2e-3, 3e-3])  # below bf16's step (2^-9) at 0.9
    with fabric.autocast():
        q, (mean, log_std) = sac.critic(obs, act), sac.actor.distribution(obs)
    assert dtypes.pop("critic.net.2") == torch.bfloat16
    assert set(dtypes.values()) == {torch.float32}, dtypes
    assert {"critic.net.0", "critic.net.4", "actor.mean", "actor.log_std"} <= set(dtypes)
    assert q.dtype == mean.dtype == log_std.dtype == torch.float32
    exact_mean, exact_log_std = sac.actor.distribution(obs)
    assert torch.equal(mean, exact_mean) and torch.equal(log_std, exact_log_std)
    # the fp32 input layer keeps actions bf16 would round together apart
    assert len(set(act.bfloat16()[:, 0].tolist())) < 4
    assert len(set(q[0].tolist())) == 4
    buf = sac.make_storage(1, torch.device("cpu"))
    done = torch.zeros(32, dtype=torch.bool)
    step = {"state": torch.randn(32, 3)}
    sac.observe(buf, Transition(step, torch.zeros(32, 2), {}, torch.ones(32), done, done, step))
    scalars = sac.update(fabric, learner, optims, buf, 0.0)
    assert all(torch.isfinite(v) for v in scalars.values())


def test_each_rank_samples_its_replay_buffer_with_its_own_seed() -> None:
    """Data-parallel ranks hold different data; equal sampling seeds would still pick the same
    rows of it in lockstep."""
    sac, cpu = _sac(), torch.device("cpu")
    done = torch.zeros(64, dtype=torch.bool)
    step = {"state": torch.arange(64.0)[:, None].expand(64, 3)}
    picks = []
    for rank in (0, 0, 1):
        buf = sac.make_storage(1, cpu, rank=rank)
        rows = Transition(step, torch.zeros(64, 2), {}, torch.ones(64), done, done, step)
        sac.observe(buf, rows)
        picks.append(buf.sample(16)["obs"]["state"][:, 0])
    assert torch.equal(picks[0], picks[1])  # seeded: the same rank repeats itself
    assert not torch.equal(picks[0], picks[2])


def test_sac_exported_graph_is_the_mean_action() -> None:
    sac = _sac()
    module, example, names = sac.export_graph()
    obs = torch.randn(4, 1, 3)
    with torch.no_grad():
        out = module(obs)
        expected = sac.act({"state": obs[:, 0]}, deterministic=True)[0]
    assert names == ["actions"] and out.shape == (4, 1, 2)
    torch.testing.assert_close(out[:, 0], expected)
    meta = sac.export_metadata()
    assert (meta["model_type"], meta["horizon"], meta["obs_steps"]) == ("actor", 1, 1)
    assert math.isclose(meta["control_rate_hz"], 20.0)


# ---- SAC on the shared loop -------------------------------------------------------------
TINY = [
    "training.steps_per_iteration=150",
    "policy.hidden_dim=32",
    "model.batch_size=32",
    "model.learning_starts=100",
    "online.eval_episodes=1",
    "online.progress_bar=false",
]


def train(tmp_path: Path, *overrides: str) -> dict:
    return run(compose_config("train_sac", [f"output_root={tmp_path}", *TINY, *overrides]))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sac")
    return train(tmp, "env_id=Pendulum-v1", "training.num_iterations=2", f"run_dir={tmp}/a")


def _logged_steps(run_dir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_updates_are_logged_once_per_log_every(first_run: dict, tmp_path: Path) -> None:
    """SAC updates every env step; its scalars (one host sync) go out every log_every steps."""
    assert _logged_steps(first_run["run_dir"], "loss/critic") == [100]  # log_every 1000
    each = train(
        tmp_path,
        "env_id=Pendulum-v1",
        "training.num_iterations=2",
        "online.log_every=100",
        f"run_dir={tmp_path}/b",
    )
    assert _logged_steps(each["run_dir"], "loss/critic") == [100, 200, 300]


def test_train_checkpoint_resume(first_run: dict, tmp_path: Path) -> None:
    ckpt = torch.load(first_run["last_ckpt"], weights_only=True)  # plain data only
    assert ckpt[ONLINE_KEY]["algorithm"] == "sac" and first_run["env_steps"] == 300
    # one gradient step per env step once the buffer holds learning_starts transitions
    critic_steps = ckpt["optimizer_states"][0]["state"][0]["step"].item()
    assert critic_steps == 300 - 100 + 1
    assert {"temperature", "entropy", "loss/critic"} <= set(first_run["metrics"])

    resumed = train(
        tmp_path,
        "env_id=Pendulum-v1",
        "training.num_iterations=3",
        f"ckpt_path={first_run['last_ckpt']}",
    )
    after = torch.load(resumed["last_ckpt"], weights_only=True)
    assert resumed["env_steps"] == 450
    # weights, optimizers and the replay buffer went on from the checkpoint: a gradient step
    # for every new env step, no refill of learning_starts transitions
    assert after["optimizer_states"][0]["state"][0]["step"].item() == critic_steps + 150
    assert not torch.equal(after["state_dict"]["log_alpha"], ckpt["state_dict"]["log_alpha"])
    buffer = torch.load(storage_path(Path(resumed["last_ckpt"]), 0), weights_only=True)
    assert buffer["size"] == 450 and buffer["storage"]["rewards"].shape == (450,)
    saved = torch.load(storage_path(Path(first_run["last_ckpt"]), 0), weights_only=True)
    torch.testing.assert_close(buffer["storage"]["obs.state"][:300], saved["storage"]["obs.state"])


def test_resume_without_the_buffer_file_says_so_and_refills(
    first_run: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "copy.ckpt"
    shutil.copy(first_run["last_ckpt"], ckpt)  # without its .storage.rank0.pt beside it
    critic_steps = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"][0]["step"]
    with caplog.at_level(logging.WARNING, logger="learning.online.loop"):
        resumed = train(
            tmp_path, "env_id=Pendulum-v1", "training.num_iterations=3", f"ckpt_path={ckpt}"
        )
    assert "copy.storage.rank0.pt is missing: the replay buffer starts empty" in caplog.text
    after = torch.load(resumed["last_ckpt"], weights_only=True)
    # refills learning_starts transitions before updating again
    assert after["optimizer_states"][0]["state"][0]["step"].item() == critic_steps + 150 - 100 + 1


def test_resume_with_a_buffer_of_another_step_says_so_and_refills(
    first_run: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The buffer and the checkpoint are two files written one after the other: a run killed
    between the two leaves a buffer newer than last.ckpt, which a resume must not take for
    the checkpoint's."""
    ckpt = tmp_path / "last.ckpt"
    shutil.copy(first_run["last_ckpt"], ckpt)
    buffer = torch.load(storage_path(Path(first_run["last_ckpt"]), 0), weights_only=True)
    at = torch.load(ckpt, weights_only=True)[ONLINE_KEY]["env_steps"]
    assert buffer.pop(STORAGE_STEP_KEY) == at
    torch.save({**buffer, STORAGE_STEP_KEY: at + 50}, storage_path(ckpt, 0))  # the next one's
    critic_steps = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"][0]["step"]
    with caplog.at_level(logging.WARNING, logger="learning.online.loop"):
        resumed = train(
            tmp_path, "env_id=Pendulum-v1", "training.num_iterations=3", f"ckpt_path={ckpt}"
        )
    assert (
        f"was written at step {at + 50}, the checkpoint at step {at}: the replay buffer starts "
        "empty" in caplog.text
    )
    after = torch.load(resumed["last_ckpt"], weights_only=True)
    assert after["optimizer_states"][0]["state"][0]["step"].item() == critic_steps + 150 - 100 + 1


def test_export_parity_and_served_return(first_run: dict, tmp_path: Path) -> None:
    meta = export_and_serve(first_run["last_ckpt"], tmp_path / "sac.onnx", "Pendulum-v1")
    assert list(meta["inputs"]) == ["obs.state"] and meta["action_bounds"]["low"] == [-2.0]


def test_seed_config_keys_reach_sac() -> None:
    cfg = compose_config(
        "train_sac",
        [
            "env_id=Pendulum-v1",
            "policy.hidden_dim=48",
            "policy.gamma=0.9",
            "policy.learning_rate=1e-3",
        ],
    )
    sac = instantiate(cfg.model, _convert_="all", **env_model_dims("Pendulum-v1"))
    assert sac.actor.trunk[0].out_features == sac.critic.net[0].weight.shape[-1] == 48
    assert sac.critic.net[2].weight.shape[1:] == (48, 48)  # two hidden layers of hidden_dim
    assert all(o.param_groups[0]["lr"] == 1e-3 for o in sac.configure_optimizers())
    assert sac.hparams.gamma == 0.9
    assert sac.target_entropy == -1.0  # -|A| for Pendulum's one action


def test_bad_input_one_line(first_run: dict, tmp_path: Path, monkeypatch) -> None:
    discrete = register_discrete_task(monkeypatch)
    with pytest.raises(AlgorithmError, match=rf"^{discrete}: SAC needs continuous") as err:
        train(tmp_path, f"env_id={discrete}", "training.num_iterations=1")
    assert "\n" not in str(err.value)

    ckpt = torch.load(first_run["last_ckpt"], weights_only=True)
    ckpt[ONLINE_KEY]["algorithm"] = "ppo"
    torch.save(ckpt, tmp_path / "ppo.ckpt")
    with pytest.raises(CheckpointError, match=r"a 'ppo' checkpoint; this run trains 'sac'"):
        train(tmp_path, "env_id=Pendulum-v1", f"ckpt_path={tmp_path / 'ppo.ckpt'}")

    # a buffer that cannot hold one batch, or the rows learning waits for (it would never learn)
    for small in ("model.buffer_size=10", "model.buffer_size=64"):
        with pytest.raises(ConfigError, match=r"it must hold 100 rows$"):
            train(tmp_path, "env_id=Pendulum-v1", small)

    # through learning.train: Pendulum's 3 float32 obs (twice), 1 action, reward, 2 flags
    big = r"capacity 1000000 x 34 B/transition = 32.4 MiB exceeds max_bytes 1000 B"
    with pytest.raises(ReplayMemoryError, match=big):
        train(tmp_path, "env_id=Pendulum-v1", "model.buffer_max_bytes=1000")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 4-7 min, more on a loaded machine
def test_sac_solves_pendulum(tmp_path: Path) -> None:
    """SB3-default SAC swings up Pendulum-v1 within 20k env steps on seed 42 (return >= -200;
    SB3 itself: -143 median of 3 seeds)."""
    result = run(
        compose_config(
            "train_sac",
            [f"output_root={tmp_path}", "env_id=Pendulum-v1", "online.progress_bar=false"],
        )
    )
    assert result["env_steps"] == 20000
    assert result["metrics"]["eval/return"] >= -200
