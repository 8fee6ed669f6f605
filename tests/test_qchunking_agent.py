"""Q-chunking's agents (learning/algorithms/qchunking.py): the chunked TD target by hand, the
loss that is one mean over critics, gradients that stay in their part, the Polyak step,
best-of-N under a known critic, a bimodal bandit learned offline, acting open-loop, export."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.fabric import Fabric
from test_learning_windows import IMG, write_counting

from learning.algorithms.qchunking import (
    ACRLPD,
    QCFQL,
    VAR_FLOOR,
    CriticEnsemble,
    gaussian_entropy,
)
from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY
from learning.data.keys import ACTIONS, BOOTSTRAP, CHUNK_RETURN, NEXT_OBS, OBS, VALID
from learning.export import main as export_main
from learning.networks.encoders import ObservationEncoder
from learning.networks.flow_policy import EncoderFlowPolicy, FlowPolicy, euler_chunks
from learning.networks.mlp import MLPVelocityNet
from learning.online.algorithm import AlgorithmError, Transition
from learning.online.chunk_replay import ChunkReplay
from roboloop_runtime import OnnxModel, OnnxPolicy

SPECS = {"state": {"shape": [3], "dtype": "float32", "feature_type": "low_dim"}}
BOUNDS = {"low": [-2.0, -1.0], "high": [2.0, 1.0], "source": "env"}
H, A = 3, 2


def encoder(**kwargs):
    return ObservationEncoder(**kwargs)


def policy(hidden=(32, 32), **kwargs):
    network = functools.partial(MLPVelocityNet, hidden_dims=hidden, time_embed_dim=16)
    return EncoderFlowPolicy(encoder=encoder, network=network, **kwargs)


def make(cls=ACRLPD, specs=SPECS, bounds=BOUNDS, horizon=H, hidden=(32, 32), **kwargs):
    torch.manual_seed(0)
    defaults = dict(
        num_critics=3,
        critic_hidden_dims=(16, 16),
        best_of_n_samples=4,
        flow_steps=3,
        batch_size=8,
        entropy_samples=4,
    )
    return cls(
        obs_specs=specs,
        action_dim=len(bounds["low"]),
        action_bounds=bounds,
        policy=functools.partial(policy, hidden=hidden),
        critic_encoder=encoder,
        horizon_length=horizon,
        **{**defaults, **kwargs},
    )


def batch(rows: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        OBS: {"state": torch.randn(rows, 1, 3, generator=g)},
        NEXT_OBS: {"state": torch.randn(rows, 1, 3, generator=g)},
        ACTIONS: torch.rand(rows, H, A, generator=g) * 2 - 1,
        CHUNK_RETURN: torch.tensor([0.5, -1.0, 2.0])[:rows],
        BOOTSTRAP: torch.tensor([0.0, 1.0, 1.0])[:rows],  # a termination inside the chunk
        VALID: torch.tensor([1.0, 0.0, 1.0])[:rows],  # a time limit before the chunk's end
    }


class Fixed:
    """A storage that always gives the same batch (the agent's hooks without a replay)."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def sample(self, n: int) -> dict:
        return self.data

    def __len__(self) -> int:
        return 10**6


def member_q(ens: CriticEnsemble, j: int, x: torch.Tensor) -> torch.Tensor:
    """Critic j by hand: Linear -> LayerNorm(affine j) -> GELU ..., its own weight slices."""
    layers = list(ens.hidden)
    for i in range(0, len(layers), 3):
        lin, norm = layers[i], layers[i + 1]
        x = x @ lin.weight[j] + lin.bias[j, 0]
        x = F.layer_norm(x, x.shape[-1:]) * norm.weight[j, 0] + norm.bias[j, 0]
        x = F.gelu(x)
    return (x @ ens.head.weight[j] + ens.head.bias[j, 0]).squeeze(-1)


def next_q_by_hand(agent: ACRLPD, s: dict, noise: torch.Tensor) -> torch.Tensor:
    """agg_j Qbar_j(s', a'), a' the argmax of the ONLINE critics' mean over the Euler samples of
    `noise` (N, h, A) at one next state s' {key: (1, 1, *shape)}: loops and plain ops."""
    pol, k, n = agent.policy, agent.hparams.num_critics, noise.shape[0]
    steps = agent.hparams.flow_steps
    x, ctx = noise, pol.prefix(s).expand(n, -1)
    for step in range(steps):
        x = x + pol.velocity(x, torch.full((n,), step / steps), ctx) / steps
    cand = x.clamp(-1, 1)
    feats = torch.cat([agent.critic.features(s).expand(n, -1), cand.flatten(1)], 1)
    q_online = torch.stack([member_q(agent.critic.ensemble, j, feats) for j in range(k)])
    best = cand[q_online.mean(0).argmax()]
    tf = torch.cat([agent.critic_target.features(s), best.flatten()[None]], 1)
    q_next = torch.stack([member_q(agent.critic_target.ensemble, j, tf) for j in range(k)])
    return q_next.mean() if agent.hparams.q_agg == "mean" else q_next.min()


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_chunked_target_and_critic_loss_by_hand(q_agg: str) -> None:
    agent = make(q_agg=q_agg, discount=0.9)
    b = batch()
    noise = torch.randn(3, 4, H, A, generator=torch.Generator().manual_seed(5))
    y = agent.td_targets(b, noise)

    expected = []
    for row in range(3):
        s = {"state": b[NEXT_OBS]["state"][row : row + 1]}
        agg = next_q_by_hand(agent, s, noise[row])
        expected.append(b[CHUNK_RETURN][row] + 0.9**H * b[BOOTSTRAP][row] * agg)
    expected = torch.stack(expected)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert y[0] == pytest.approx(0.5, abs=1e-6)  # terminated: the chunk's return alone

    # L_Q = mean over critics and rows of VALID (Q_j - y)^2: not summed over the K critics
    loss, _ = agent.critic_loss(b, agent.normalize_obs(b[OBS]), agent.to_normalized(b[ACTIONS]), y)
    a = agent.to_normalized(b[ACTIONS])
    feats = torch.cat([b[OBS]["state"][:, 0], a.flatten(1)], 1)
    k = agent.hparams.num_critics
    q = torch.stack([member_q(agent.critic.ensemble, j, feats) for j in range(k)])
    manual = sum((b[VALID] * (q[j] - expected) ** 2).sum() for j in range(k)) / (k * 3)
    torch.testing.assert_close(loss, manual, rtol=1e-6, atol=1e-7)
    assert loss > 0


def test_targets_from_the_chunk_replay_across_termination_timeout_and_crossing() -> None:
    """Offline episodes (h 3, gamma 0.9; state[0] = 100 e + t, r = 10 e + t + 1): e0 ends
    terminated at t=1 (a chunk from 0 crosses it: return alone), e1 stops by a time limit at
    t=1 (no next observation: VALID 0), e2 runs 5 steps without an end inside the first two
    chunks (bootstrap from s_{t+3}); the target of every sampled row equals the hand value."""
    agent = make(discount=0.9, q_agg="min")
    replay = ChunkReplay(SPECS, A, capacity=8, num_envs=1, horizon=H, discount=0.9)
    replay.reserve_offline(9)
    for e, (n, term) in enumerate([(2, True), (2, False), (5, False)]):
        t = np.arange(n, dtype=np.float32)
        obs = np.zeros((n, 3), np.float32)
        obs[:, 0] = 100 * e + t
        replay.add_episode({"state": obs}, np.zeros((n, A), np.float32), 10 * e + t + 1, term)
    r = {e: [10 * e + t + 1 for t in range(5)] for e in range(3)}
    hand = {  # state -> (chunk return, bootstrap, valid, next state)
        0: (r[0][0] + 0.9 * r[0][1], 0, 1, None),
        1: (r[0][1], 0, 1, None),
        100: (r[1][0] + 0.9 * r[1][1], 1, 0, None),
        101: (r[1][1], 1, 0, None),
        200: (r[2][0] + 0.9 * r[2][1] + 0.81 * r[2][2], 1, 1, 203),
        201: (r[2][1] + 0.9 * r[2][2] + 0.81 * r[2][3], 1, 1, 204),
    }
    b = replay.sample(64)
    noise = torch.randn(64, 4, H, A, generator=torch.Generator().manual_seed(2))
    y = agent.td_targets(b, noise)
    seen = set()
    for row in range(64):
        state = int(b[OBS]["state"][row, 0, 0])
        if state not in hand:
            continue  # e2's chunks from t >= 2: cut at the dataset's end (VALID 0)
        ret, boot, valid, nxt = hand[state]
        seen.add(state)
        assert (float(b[BOOTSTRAP][row]), float(b[VALID][row])) == (boot, valid)
        expected = torch.tensor(ret, dtype=torch.float32)
        if boot and valid:
            s = {"state": b[NEXT_OBS]["state"][row : row + 1]}
            assert int(s["state"][0, 0, 0]) == nxt
            expected = expected + 0.9**H * next_q_by_hand(agent, s, noise[row])
        if valid:
            torch.testing.assert_close(y[row], expected, rtol=0, atol=1e-6)
    assert seen == set(hand)


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


@pytest.mark.parametrize("cls", [ACRLPD, QCFQL])
def test_actor_loss_leaves_the_critics_and_critic_loss_leaves_the_policy(cls) -> None:
    agent = make(cls, use_adaptive_temperature=True)
    out = agent.losses(batch())
    (out["loss/actor"] + out["loss/temperature"]).backward(retain_graph=True)
    assert not _grads(agent.critic) and not _grads(agent.critic_target)
    assert _grads(agent.policy) and agent.log_alpha.grad is not None
    if cls is QCFQL:
        assert _grads(agent.one_step_policy)
    agent.zero_grad()
    out["loss/critic"].backward()
    assert _grads(agent.critic) and not _grads(agent.policy)


def test_target_critics_follow_by_polyak_after_one_gradient_step() -> None:
    agent = make(use_adaptive_temperature=True)
    old = [p.detach().clone() for p in agent.critic_target.parameters()]
    before = [p.detach().clone() for p in agent.critic.parameters()]
    fabric = Fabric(accelerator="cpu", devices=1)
    scalars = agent.gradient_step(fabric, agent, agent.configure_optimizers(), Fixed(batch()))
    assert math.isfinite(float(scalars["loss/total"]))
    new = list(agent.critic.parameters())
    assert any(not torch.equal(n, b) for n, b in zip(new, before, strict=True))
    for target, o, n in zip(agent.critic_target.parameters(), old, new, strict=True):
        torch.testing.assert_close(target, 0.995 * o + 0.005 * n, rtol=0, atol=1e-7)


class Analytic(torch.nn.Module):
    """Q_j(feat, chunk) = -j' ||chunk - c||^2 for every member: best is the closest to c."""

    def __init__(self, k: int, target: torch.Tensor) -> None:
        super().__init__()
        self.k, self.target = k, target

    def forward(self, features: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        d = -(chunk - self.target).pow(2).flatten(1).sum(1)
        return torch.stack([d * (j + 1) for j in range(self.k)])


def test_best_of_n_picks_the_argmax_chunk_under_an_analytic_critic() -> None:
    agent = make(best_of_n_samples=16)
    c = torch.tensor([[0.3, -0.2]] * H)
    agent.critic.ensemble = Analytic(3, c)
    obs = {"state": torch.randn(5, 1, 3)}
    noise = torch.randn(5, 16, H, A)
    chunk, q, index = agent.select_chunk(obs, noise)
    cand = agent.candidates(agent.normalize_obs(obs), noise).unflatten(0, (5, 16))
    dist = (cand - c).pow(2).flatten(2).sum(2)  # (5, 16)
    torch.testing.assert_close(index, dist.argmin(1))
    best = cand[torch.arange(5), dist.argmin(1)]
    torch.testing.assert_close(chunk, agent.to_env(best))
    torch.testing.assert_close(q, -2 * dist.min(1).values)  # mean over members of -(j+1) d
    assert (chunk[..., 0].abs() <= 2).all() and index.unique().numel() > 1


def test_chunks_run_open_loop_and_restart_at_episode_ends() -> None:
    agent = make(best_of_n_samples=2)
    obs = {"state": torch.randn(2, 3)}
    calls = []
    select = agent.select_chunk
    modes = []
    agent.select_chunk = lambda o, n: (
        modes.append(agent.policy.training) or calls.append(len(n)) or select(o, n)
    )
    with torch.inference_mode():
        first, _ = agent.act(obs)
        second, _ = agent.act(obs)
        assert calls == [2]  # one chunk per env, executed over h steps
        assert not torch.equal(first, second)
        step = Transition(
            obs,
            first,
            {},
            torch.zeros(2),
            torch.tensor([True, False]),
            torch.tensor([False, False]),
            obs,
        )
        agent.observe(type("S", (), {"add": lambda *a: None})(), step)
        with agent.acting_context():
            agent.act({"state": torch.randn(3, 3)})  # evaluation: queues of its own
        agent.act(obs)
        assert calls == [2, 3, 1]  # only env 0, whose episode ended, drew a new chunk
        agent.act(obs)
        assert calls == [2, 3, 1, 1]  # env 1's chunk (h=3) ran out
    assert modes == [False] * 4 and agent.training  # chunks in eval mode (crops, dropout)


def test_flow_policy_protocol_and_euler_reuse_the_prefix() -> None:
    pol = policy(obs_specs=SPECS, action_dim=A, horizon=H)
    assert isinstance(pol, FlowPolicy) and list(pol.backbone_parameters()) == []
    calls = []
    pol.encoder.register_forward_hook(lambda *a: calls.append(1))
    ctx = pol.prefix({"state": torch.randn(4, 1, 3)})
    out = euler_chunks(pol, ctx, torch.randn(4, H, A), steps=5)
    assert out.shape == (4, H, A) and calls == [1]


# ---- a bimodal bandit learned offline ----------------------------------------------------
def bandit_replay(horizon: int, episodes: int = 400, seed: int = 0) -> ChunkReplay:
    """One decision: at obs 0 a chunk from one of two modes, +0.5 (reward 1) or -0.5 (0),
    half each; then an episode end. Obs 1 marks the steps inside a chunk."""
    specs = {"state": {"shape": [1], "dtype": "float32", "feature_type": "low_dim"}}
    replay = ChunkReplay(specs, 1, capacity=8, num_envs=1, horizon=horizon, discount=0.99)
    replay.reserve_offline(episodes * horizon)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        mode = 0.5 if i % 2 else -0.5
        actions = mode + 0.05 * rng.standard_normal((horizon, 1))
        obs = np.ones((horizon, 1), np.float32)
        obs[0] = 0.0
        rewards = np.zeros(horizon, np.float32)
        rewards[0] = float(mode > 0)
        replay.add_episode({"state": obs}, actions.astype(np.float32), rewards, True)
    return replay


def bandit_success(cls, horizon: int, steps: int, **kwargs) -> float:
    specs = {"state": {"shape": [1], "dtype": "float32", "feature_type": "low_dim"}}
    bounds = {"low": [-1.0], "high": [1.0], "source": "env"}
    agent = make(
        cls,
        specs,
        bounds,
        horizon,
        hidden=(64, 64),
        critic_hidden_dims=(64, 64),
        batch_size=64,
        flow_steps=5,
        actor_lr=3e-3,
        critic_lr=3e-3,
        num_critics=2,
        **kwargs,
    )
    replay = bandit_replay(horizon)
    fabric = Fabric(accelerator="cpu", devices=1)
    optimizers = agent.configure_optimizers()
    for _ in range(steps):
        agent.gradient_step(fabric, agent, optimizers, replay)
    with torch.inference_mode():
        actions, _ = agent.act({"state": torch.zeros(200, 1)})
    return float((actions[:, 0] > 0).float().mean())


@pytest.mark.slow
def test_bimodal_bandit_best_of_n_and_fql_pick_the_rewarded_mode() -> None:
    torch.manual_seed(0)
    bc = bandit_success(ACRLPD, 2, 300, best_of_n_samples=1, use_adaptive_temperature=False)
    qc = bandit_success(ACRLPD, 2, 300, best_of_n_samples=16)
    qc_fql = bandit_success(QCFQL, 2, 300, alpha=10.0)
    fql = bandit_success(QCFQL, 1, 300, alpha=10.0)
    print(f"bandit success: BC {bc:.2f} QC {qc:.2f} QC-FQL {qc_fql:.2f} FQL {fql:.2f}")
    assert qc >= 0.90 and qc_fql >= 0.50 and fql >= 0.50 and bc <= 0.65


# ---- the loop's hooks on the real chunk replay -------------------------------------------
def test_offline_data_normalizes_observations_and_the_hooks_run_on_chunk_replay(
    tmp_path: Path,
) -> None:
    path = write_counting(tmp_path / "count.hdf5", (6, 5, 2), (True, False, False))
    specs = {
        "state": {"shape": [1], "dtype": "float32", "feature_type": "low_dim"},
        "image": {"shape": list(IMG), "dtype": "uint8", "feature_type": "image"},
    }
    bounds = {"low": [-6.0, -6.0], "high": [6.0, 6.0], "source": "env"}
    agent = make(specs=specs, bounds=bounds, normalize_observations=True, start_training=10)
    storage = agent.make_storage(num_envs=2, device=torch.device("cpu"))
    info = agent.load_offline(storage, str(path))
    assert info["steps"] == 13
    states = np.concatenate([100 * e + np.arange(n) for e, n in enumerate((6, 5, 2))])
    stats = agent.observation_stats()
    assert stats["state"]["mean"] == pytest.approx([states.mean()], rel=1e-6)
    assert stats["state"]["std"] == pytest.approx([states.std()], rel=1e-6)
    assert stats["image"] == {"mode": "image"}
    image = torch.full((1, *IMG), 255, dtype=torch.uint8)
    normalized = agent.normalize_obs({"state": torch.tensor([[states.mean()]]), "image": image})
    assert float(normalized["state"]) == pytest.approx(0.0, abs=1e-5)
    assert normalized["image"].max() == 1.0

    fabric = Fabric(accelerator="cpu", devices=1)
    optimizers = agent.configure_optimizers()
    ready_at = []
    for i in range(8):  # act, observe, update as the loop does
        obs = {"state": torch.randn(2, 1) * 100, "image": torch.zeros(2, *IMG, dtype=torch.uint8)}
        with torch.inference_mode():
            actions, _ = agent.act(obs)
            step = Transition(
                obs,
                actions,
                {},
                torch.ones(2),
                torch.zeros(2, dtype=torch.bool),
                torch.zeros(2, dtype=torch.bool),
                obs,
            )
            agent.observe(storage, step)
        assert actions.shape == (2, 2) and (actions.abs() <= 6).all()
        if agent.ready(storage, 0):
            ready_at.append(i)
            scalars = agent.update(fabric, agent, optimizers, storage, 0.0)
    assert len(storage) == 13 + 16 and math.isfinite(float(scalars["loss/total"]))
    assert ready_at[0] == 4  # start_training counts online steps (2 envs x 5), not the 13 offline
    state = agent.storage_state(storage)
    again = agent.make_storage(num_envs=2, device=torch.device("cpu"))
    agent.load_storage_state(again, state)
    assert len(again) == len(storage)


# ---- export through learning.export --------------------------------------------------------
def model_config(cls: type, **kwargs) -> dict:
    """The model config a run records (what configs/model/acrlpd.yaml and policy/mlp give)."""
    enc = {"_target_": "learning.networks.encoders.ObservationEncoder", "_partial_": True}
    net = {
        "_target_": "learning.networks.mlp.MLPVelocityNet",
        "_partial_": True,
        "hidden_dims": [32, 32],
        "time_embed_dim": 16,
    }
    return {
        "_target_": f"learning.algorithms.qchunking.{cls.__name__}",
        "policy": {
            "_target_": "learning.networks.flow_policy.EncoderFlowPolicy",
            "_partial_": True,
            "encoder": enc,
            "network": net,
        },
        "critic_encoder": enc,
        "horizon_length": H,
        "num_critics": 2,
        "critic_hidden_dims": [16, 16],
        "flow_steps": 3,
        **kwargs,
    }


@pytest.mark.parametrize(
    ("cls", "kwargs", "model_type"),
    [(ACRLPD, {"best_of_n_samples": 8}, "best_of_n"), (QCFQL, {}, "policy")],
)
def test_export_from_a_checkpoint_matches_select_chunk(
    cls: type, kwargs: dict, model_type: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    dims = {"obs_specs": SPECS, "action_dim": A, "control_rate_hz": 20.0, "action_bounds": BOUNDS}
    cfg = model_config(cls, **kwargs)
    agent = instantiate(cfg, _convert_="all", **dims)
    agent.set_observation_stats({"state": torch.randn(50, 3) * 3 + 1})
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {CONFIG_KEY: {"model": cfg}, MODEL_KWARGS_KEY: dims, "state_dict": agent.state_dict()},
        ckpt,
    )
    out = tmp_path / "agent.onnx"
    export_main(["--ckpt", str(ckpt), "--out", str(out)])  # parity checked inside (1e-4)
    runner = OnnxPolicy(out, device="cpu", seed=0)
    meta = runner.metadata
    assert meta.model_type == model_type and meta.n_action_steps == H
    assert meta.num_samples == (8 if model_type == "best_of_n" else None)
    obs = torch.randn(4, 1, 3) * 3
    n = meta.num_samples or 1
    noise = torch.randn(4, n, H, A)
    with torch.no_grad():
        chunk, q, _ = agent.eval().select_chunk({"state": obs}, noise)
    feeds = {"obs.state": obs.numpy(), "noise": (noise if n > 1 else noise[:, 0]).numpy()}
    got = OnnxModel(out, device="cpu").run(feeds)
    np.testing.assert_allclose(got["actions"], chunk.numpy(), atol=1e-5)
    if n > 1:
        np.testing.assert_allclose(got["q"], q.numpy(), atol=1e-5)


def test_entropy_estimate_is_the_gaussian_entropy_and_floored() -> None:
    sigma = torch.tensor([0.5, 2.0])
    samples = torch.randn(1, 200_000, 2, generator=torch.Generator().manual_seed(0)) * sigma
    exact = (0.5 * torch.log(2 * math.pi * math.e * sigma**2)).sum()
    assert float(gaussian_entropy(samples)) == pytest.approx(float(exact), abs=1e-2)
    collapsed = torch.zeros(1, 8, 3)  # a flow that lost its spread: finite, at the floor
    assert float(gaussian_entropy(collapsed)) == pytest.approx(
        1.5 * math.log(2 * math.pi * math.e * VAR_FLOOR)
    )


def test_freeze_backbone_freezes_the_image_encoders_only() -> None:
    specs = {**SPECS, "cam": {"shape": [8, 8, 3], "dtype": "uint8", "feature_type": "image"}}
    agent = make(specs=specs, freeze_backbone=True)
    frozen = {id(p) for p in agent.policy.backbone_parameters()}
    assert frozen == {id(p) for p in agent.policy.encoder.image_encoders.parameters()}
    trained = {id(p) for p in agent.configure_optimizers()[1].param_groups[0]["params"]}
    assert trained and not trained & frozen
    assert all(not p.requires_grad for p in agent.policy.backbone_parameters())


def test_unbounded_or_discrete_actions_are_refused_in_one_line() -> None:
    obs = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (3,))})
    for space in (gym.spaces.Discrete(3), gym.spaces.Box(-np.inf, np.inf, (2,))):
        with pytest.raises(AlgorithmError, match="^Env-v0: acrlpd needs a bounded") as err:
            ACRLPD.check_spaces(obs, space, "Env-v0")
        assert "\n" not in str(err.value)


class Alternating(Fixed):
    """Batch 1, batch 2, batch 1, ...: the micro-batches of one accumulated step."""

    def __init__(self, *batches: dict) -> None:
        self.batches, self.calls = batches, 0

    def sample(self, n: int) -> dict:
        self.calls += 1
        return self.batches[(self.calls - 1) % len(self.batches)]


def test_gradient_accumulation_steps_with_the_mean_gradient_of_its_batches() -> None:
    agent = make(gradient_accumulation_steps=2)
    reference = make(gradient_accumulation_steps=2)
    b1, b2 = batch(seed=1), batch(seed=2)
    learned = [p for n, p in agent.named_parameters() if not n.startswith("critic_target")]
    before = [p.detach().clone() for p in learned]
    sgd = torch.optim.SGD(learned, lr=1.0)  # step = -gradient
    torch.manual_seed(7)
    fabric = Fabric(accelerator="cpu", devices=1)
    agent.gradient_step(fabric, agent, [sgd], Alternating(b1, b2))
    torch.manual_seed(7)  # the same noise draws, in the same order
    total = reference.losses(b1)["loss/total"] + reference.losses(b2)["loss/total"]
    (total / 2).backward()
    moved = 0
    refs = [p for n, p in reference.named_parameters() if not n.startswith("critic_target")]
    for p0, p1, ref in zip(before, learned, refs, strict=True):
        grad = torch.zeros_like(p0) if ref.grad is None else ref.grad
        torch.testing.assert_close(p0 - p1, grad, rtol=1e-4, atol=1e-6)
        moved += int(grad.abs().sum() > 0)
    assert moved > 10
