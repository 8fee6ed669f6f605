"""The flow-policy agents (FBC, MFBC, IMFBC, FQL): loss maths, gradient isolation, training
through the Hydra configs, export through learning.export, and the seed config keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from episode_dataset import EpisodeWriter, KeySpec
from learning import export
from learning.algorithms.fql import td_target
from learning.algorithms.mfbc import mean_flow_target
from learning.data.keys import ACTIONS, CHUNK_RETURN, OBS, VALID
from learning.train import compose_config, run
from roboloop_runtime import OnnxPolicy

AGENTS = ("fbc", "mfbc", "imfbc", "fql")
TINY = [
    "model.network.hidden_dims=[32,32]",
    "batch_size=32",
    "horizon_length=4",
    "n_action_steps=2",
    "~trainer.callbacks.progress_bar",
]
TINY_CRITIC = ["model.critic.hidden_dims=[32,32]"]
NETWORK_TYPES = Path(__file__).resolve().parents[1] / "configs" / "network_type"


def tiny(agent: str) -> list[str]:
    return TINY + (TINY_CRITIC if agent == "fql" else [])


def write_reward_dataset(path: Path, episodes: int = 8, seed: int = 0) -> Path:
    """The toy circle task (test_learning_data) with noisy actions and a reward for staying
    near angle 0; every other episode ends terminated."""
    rng = np.random.default_rng(seed)
    space = {"low": [-1.5, -1.5], "high": [1.5, 1.5]}
    env_args = {"env_name": "toy_reward", "control_rate_hz": 20.0, "action_space": space}
    with EpisodeWriter(
        path, {"state": KeySpec("float32", (4,))}, KeySpec("float32", (2,)), env_args, fsync=False
    ) as w:
        for e in range(episodes):
            n = 12 + e % 4
            speed, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi)
            angle = speed * np.arange(n + 1) + phase
            state = np.stack(
                [np.cos(angle[:-1]), np.sin(angle[:-1]), np.full(n, speed), np.ones(n)], 1
            ).astype(np.float32)
            actions = np.stack([np.cos(angle[1:]), np.sin(angle[1:])], 1)
            actions = (actions + 0.1 * rng.standard_normal(actions.shape)).astype(np.float32)
            rewards = np.cos(angle[1:]).astype(np.float32)
            w.write_episode(
                {"state": state},
                actions,
                rewards,
                np.arange(n) == n - 1,
                metadata={"terminated": e % 2 == 0},
            )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reward_dataset(tmp_path_factory.mktemp("agents") / "reward.hdf5")


def build(agent: str, data: Path, *overrides: str) -> tuple[torch.nn.Module, dict, Any]:
    """(model, a validation batch, the datamodule) as learning.train would build them."""
    cfg = compose_config(f"train_{agent}", [f"dataset={data}", *tiny(agent), *overrides])
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    dm.setup("fit")
    return model, next(iter(dm.val_dataloader())), dm


# ---- MFBC / IMFBC: the MeanFlow target -----------------------------------------------------
def test_mean_flow_target_is_exact_on_a_known_flow() -> None:
    # Data N(0, sigma^2), noise N(0, 1): x_t has variance V(t) = (1-t)^2 + t^2 sigma^2 and the
    # flow is x -> x sqrt(V(s)/V(t)), so u(x, t, s) = x (sqrt(V(s)/V(t)) - 1) / (s - t) and
    # v(x, t) = x V'(t) / (2 V(t)). With the true velocity as tangent, u_tgt = u exactly.
    sigma2 = 0.3

    def var(t: torch.Tensor) -> torch.Tensor:
        return ((1 - t) ** 2 + t**2 * sigma2)[:, None, None]

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dvar = (-2 * (1 - t) + 2 * t * sigma2)[:, None, None]
        return x * dvar / (2 * var(t))

    gen = torch.Generator().manual_seed(0)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.5
    s = t + 0.1 + torch.rand(16, generator=gen, dtype=torch.float64) * 0.4
    x = torch.randn(16, 3, 2, generator=gen, dtype=torch.float64)

    def u(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * ((var(s) / var(t)).sqrt() - 1) / (s - t)[:, None, None]

    v = velocity(x, t)
    pred, target = mean_flow_target(u, x, t, s, v, v)
    torch.testing.assert_close(target, pred, rtol=1e-9, atol=1e-12)
    assert (2 * v - target - pred).abs().max() > 1e-2  # the other sign of (t - s) is far off


@pytest.mark.parametrize("agent", ["mfbc", "imfbc"])
def test_jvp_target_matches_finite_differences(agent: str, data: Path) -> None:
    torch.manual_seed(0)
    model, batch, _ = build(agent, data)
    model = model.double()
    gen = torch.Generator().manual_seed(1)
    c = model.condition({k: v.double() for k, v in batch[OBS].items()}).detach()
    b = c.shape[0]
    x1 = model.normalizer.normalize(ACTIONS, batch[ACTIONS].double())
    x0 = torch.randn(x1.shape, generator=gen, dtype=torch.float64)
    t, s = torch.rand(2, b, generator=gen, dtype=torch.float64).sort(dim=0).values
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    v = x1 - x0
    tangent = model.tangent(x_t, t, c, v)
    if agent == "imfbc":  # the model's own instantaneous velocity u(x_t, t, t), not v
        torch.testing.assert_close(tangent, model.network(x_t, t, c, t))
    else:
        assert torch.equal(tangent, v)

    def u(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return model.network(x, tt, c, s)

    _, target = mean_flow_target(u, x_t, t, s, tangent, v)
    eps = 1e-6  # central difference of u along (dx/dt, dt/dt) = (tangent, 1), s held
    with torch.no_grad():
        dudt = (u(x_t + eps * tangent, t + eps) - u(x_t - eps * tangent, t - eps)) / (2 * eps)
    expected = v - (t - s)[:, None, None] * dudt
    torch.testing.assert_close(target, expected, rtol=1e-3, atol=1e-6)
    assert not target.requires_grad


# ---- FQL ------------------------------------------------------------------------------------
def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_fql_actor_loss_leaves_the_critic_and_distillation_leaves_the_flow(data: Path) -> None:
    torch.manual_seed(0)
    model, batch, _ = build("fql", data)
    out = model.losses(batch)
    out["actor_loss"].backward(retain_graph=True)
    assert not _grads(model.critic) and not _grads(model.critic_target)
    assert _grads(model.actor) and _grads(model.network)  # one-step policy and BC flow learn
    model.zero_grad()
    out["distill_loss"].backward(retain_graph=True)
    assert not _grads(model.network) and not _grads(model.encoder)  # the target is detached
    assert _grads(model.actor)
    model.zero_grad()
    out["critic_loss"].backward()
    assert _grads(model.critic)
    assert not _grads(model.actor) and not _grads(model.network)


def test_fql_td_target_comes_from_the_target_critic(data: Path) -> None:
    torch.manual_seed(0)
    model, batch, _ = build("fql", data, "discount=0.9")
    with torch.no_grad():
        # A target critic that outputs 0 everywhere: y = R, whatever the online critic says.
        for p in model.critic_target.parameters():
            p.zero_()
        loss = model.losses(batch)["critic_loss"]
        a = model.normalizer.normalize(ACTIONS, batch[ACTIONS])
        q = model.critic(model.normalize_obs(batch[OBS]), a)
        expected = (batch[VALID] * (q - batch[CHUNK_RETURN]).pow(2)).mean()
        torch.testing.assert_close(loss, expected)
    # y = R + gamma^h bootstrap agg_j Q'_j: Q' = (1, 3) adds 0.9^4 * 2 (mean) or * 1 (min).
    ret, ones = batch[CHUNK_RETURN], torch.ones_like(batch[CHUNK_RETURN])
    next_q = torch.stack([ones, 3 * ones])
    torch.testing.assert_close(td_target(ret, ones, next_q, 0.9, 4, "mean"), ret + 0.9**4 * 2)
    torch.testing.assert_close(td_target(ret, ones, next_q, 0.9, 4, "min"), ret + 0.9**4)
    torch.testing.assert_close(td_target(ret, 0 * ones, next_q, 0.9, 4, "min"), ret)


# ---- every agent ----------------------------------------------------------------------------
@pytest.mark.parametrize("agent", ["mfbc", "imfbc", "fql"])
def test_one_step_policy_learns_the_chunks(agent: str, tmp_path: Path) -> None:
    toy = write_reward_dataset(tmp_path / "toy.hdf5", episodes=10)
    torch.manual_seed(0)
    model, batch, dm = build(agent, toy, "model.network.hidden_dims=[64,64]")
    noise = torch.randn(batch[ACTIONS].shape, generator=torch.Generator().manual_seed(1))

    def action_mse() -> float:
        with torch.no_grad():
            pred = model.predict_action_chunk(batch[OBS], noise)
        return float(((pred - batch[ACTIONS]) ** 2).mean())

    mse0 = action_mse()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    for _ in range(40):
        for b in dm.train_dataloader():
            out = model.losses(b) if agent == "fql" else {"actor_loss": model.loss(b)}
            opt.zero_grad()
            (out["actor_loss"] + out.get("critic_loss", 0)).backward()
            opt.step()
    model.eval()
    mse1 = action_mse()
    assert mse1 < 0.5 * mse0, (mse0, mse1)


@pytest.mark.parametrize("agent", AGENTS)
def test_train_export_and_serve(agent: str, data: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        f"train_{agent}",
        [f"dataset={data}", f"output_root={tmp_path}", "max_epochs=2", *tiny(agent)],
    )
    result = run(cfg)
    assert np.isfinite(result["metrics"]["val_loss"])
    onnx_path = tmp_path / "policy.onnx"
    meta = export.export_checkpoint(result["last_ckpt"], onnx_path)  # load_model's allowlist
    model, _ = export.load_model(result["last_ckpt"])
    assert export.parity(model, onnx_path) <= export.PARITY_TOLERANCE
    nfe = {"fbc": ("euler", 10), "mfbc": ("mean_flow", 1), "imfbc": ("mean_flow", 1)}
    kind, steps = nfe.get(agent, ("one_step", 1))
    assert meta["sampler"] == {"type": kind, "steps": steps}
    assert meta["inputs"]["noise"]["shape"] == [-1, 4, 2]
    policy = OnnxPolicy(onnx_path, device="cpu")  # the runtime serves it unchanged
    action = policy.select_action({"state": np.zeros(4, np.float32)})
    assert action.shape == (2,) and np.isfinite(action).all()
    if agent == "fql":  # the one-step policy is clipped to the env's bounds
        assert (np.abs(action) <= 1.5 + 1e-6).all()


# ---- the seed's config keys -----------------------------------------------------------------
def _network_calls(model: torch.nn.Module, batch: dict) -> int:
    calls = []
    handle = model.network.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.predict_action_chunk(batch[OBS], torch.zeros_like(batch[ACTIONS]))
    handle.remove()
    return len(calls)


def test_seed_keys_reach_the_model_and_data(data: Path) -> None:
    model, batch, _ = build("fbc", data, "horizon_length=2", "obs_steps=3", "flow_steps=3")
    assert batch[ACTIONS].shape[1:] == (2, 2) and batch[OBS]["state"].shape[1:] == (3, 4)
    assert model.network(torch.zeros(1, 2, 2), torch.zeros(1), torch.zeros(1, 12)).shape == (
        1,
        2,
        2,
    )
    assert _network_calls(model, batch) == 3
    model, batch, _ = build("mfbc", data)
    assert _network_calls(model, batch) == 1  # train_mfbc: one flow-map jump
    model, batch, _ = build("mfbc", data, "flow_steps=2")
    assert _network_calls(model, batch) == 2
    # FQL without chunking: policy and critic see the first action, the target the whole chunk.
    model, batch, _ = build("fql", data, "action_chunking=false", "discount=0.5")
    assert batch[ACTIONS].shape[1] == 4
    assert model.actor(torch.zeros(1, 1, 2), torch.zeros(1), torch.zeros(1, 8)).shape == (1, 1, 2)
    assert model.export_metadata()["horizon"] == 1
    rewards = batch["rewards"]
    expected = (rewards * 0.5 ** torch.arange(4)).sum(1)
    torch.testing.assert_close(batch[CHUNK_RETURN], expected)


@pytest.mark.parametrize("name", sorted(p.stem for p in NETWORK_TYPES.glob("*.yaml")))
def test_network_type_picks_the_network_group(name: str) -> None:
    by_type = compose_config("train_fbc", ["dataset=x.hdf5", f"network_type={name}"])
    by_group = compose_config("train_fbc", ["dataset=x.hdf5", f"network={name}"])
    assert by_type.model.network == by_group.model.network
    default = compose_config("train_fbc", ["dataset=x.hdf5"])
    assert (by_type.model.network == default.model.network) == (name == "mlp")
