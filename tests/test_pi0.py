"""The pi0-style backbone (learning/networks/pi0.py): prefix once, attention structure, pi0's
time distribution, learning, frozen backbone, local weights, ONNX parity."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from hydra.utils import instantiate
from lightning.fabric import Fabric
from omegaconf import OmegaConf
from safetensors.torch import save_file

from learning.algorithms.qchunking import ACRLPD, QCFQL
from learning.data.keys import ACTIONS, BOOTSTRAP, CHUNK_RETURN, NEXT_OBS, OBS, VALID
from learning.errors import ConfigError
from learning.export import export_model
from learning.networks.encoders import ObservationEncoder
from learning.networks.flow_policy import (
    FlowPolicy,
    euler_chunks,
    flow_matching_loss,
    repeat_rows,
)
from learning.networks.pi0 import Pi0Policy

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb")
SPECS = {
    **{k: {"shape": [16, 16, 3], "dtype": "uint8", "feature_type": "image"} for k in CAMERAS},
    "state": {"shape": [5], "dtype": "float32", "feature_type": "low_dim"},
}
H, A = 4, 3


def tiny(seed: int = 0, **kwargs) -> Pi0Policy:
    torch.manual_seed(seed)
    args = dict(emb_dim=32, n_heads=4, num_layers=2, patch_size=8, prompt="pick the cube")
    return Pi0Policy(SPECS, action_dim=A, horizon=H, **(args | kwargs))


def observations(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.rand(batch, 1, 16, 16, 3, generator=g) for k in CAMERAS}
    return obs | {"state": torch.randn(batch, 1, 5, generator=g)}


def test_shapes_and_the_prefix_holds_every_layers_keys_and_values() -> None:
    policy = tiny()
    assert isinstance(policy, FlowPolicy)
    keys, values, mask = policy.prefix(observations(3))
    # 2 cameras x (16/8)^2 patches + 1 state token + 32 prompt tokens ("pick the cube": 13 bytes)
    assert keys.shape == values.shape == (3, 2, 4, 2 * 4 + 1 + 32, 8)
    assert mask.shape == (3, 41) and mask.sum(dim=1).tolist() == [9 + 13] * 3
    v = policy.velocity(torch.randn(3, H, A), torch.rand(3), (keys, values, mask))
    assert v.shape == (3, H, A)


def test_prefix_is_computed_once_and_caching_it_is_exact() -> None:
    policy = tiny().eval()
    calls = {"backbone": 0, "expert": 0}
    for name in calls:
        getattr(policy, name).register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    obs, noise = observations(2), torch.randn(2, H, A)
    with torch.no_grad():
        cached = euler_chunks(policy, policy.prefix(obs), noise, 10)
    assert calls == {"backbone": 1, "expert": 10}
    x = noise  # the same integration, the prefix recomputed at every step
    with torch.no_grad():
        for k in range(10):
            t = torch.full((2,), k / 10)
            x = x + 0.1 * policy.velocity(x, t, policy.prefix(obs))
    torch.testing.assert_close(cached, x, rtol=0, atol=1e-6)


def test_actions_see_the_prefix_rows_stay_apart_and_padding_is_masked() -> None:
    policy = tiny().eval()
    obs, x, t = observations(2), torch.randn(2, H, A), torch.rand(2)
    with torch.no_grad():
        base = policy.velocity(x, t, policy.prefix(obs))
        for key in (*CAMERAS, "state"):  # changing one input of row 0 changes only row 0
            changed = dict(obs)
            changed[key] = obs[key].clone()
            changed[key][0] = torch.rand_like(obs[key][0])
            v = policy.velocity(x, t, policy.prefix(changed))
            assert (v[0] - base[0]).abs().max() > 1e-4, key
            torch.testing.assert_close(v[1], base[1], rtol=0, atol=1e-6)
        policy.backbone.prompt_ids[0] += 1  # the prompt is seen too
        assert (policy.velocity(x, t, policy.prefix(obs)) - base).abs().max() > 1e-4
        policy.backbone.prompt_ids[0] -= 1
        policy.backbone.prompt_embed.weight[0] += 5.0  # the pad token's row: masked out
        torch.testing.assert_close(
            policy.velocity(x, t, policy.prefix(obs)), base, rtol=0, atol=1e-6
        )
        # best-of-N: repeated prefix rows give what the repeated observations give
        n = 3
        noise = torch.randn(2 * n, H, A)
        repeated = {k: o.repeat_interleave(n, dim=0) for k, o in obs.items()}
        torch.testing.assert_close(
            euler_chunks(policy, repeat_rows(policy.prefix(obs), n), noise, 5),
            euler_chunks(policy, policy.prefix(repeated), noise, 5),
            rtol=0,
            atol=1e-6,
        )


def test_prefix_does_not_depend_on_actions_or_time() -> None:
    """The block mask: the prefix's keys/values are those of the prefix alone, so one ctx
    serves every Euler step and every candidate; its gradient w.r.t. the actions is zero."""
    policy = tiny()
    obs = observations(2)
    ctx = policy.prefix(obs)
    x = torch.randn(2, H, A, requires_grad=True)
    v = policy.velocity(x, torch.rand(2), ctx)
    grads = torch.autograd.grad(v.sum(), [*ctx[:2], x])
    assert grads[0].abs().sum() > 0 and grads[2].abs().sum() > 0  # the expert reads the ctx
    keys, values, _ = policy.prefix(obs)
    torch.testing.assert_close(keys, ctx[0])  # same obs, same prefix, whatever x and t were
    torch.testing.assert_close(values, ctx[1])


def test_training_time_is_pi0_beta_mapped_to_t0_noise() -> None:
    policy = tiny()
    t = policy.sample_time(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    # tau = 0.999 b + 0.001, b ~ Beta(1.5, 1) (E b = 0.6); t = 1 - tau: E t = 0.4006
    assert abs(t.mean().item() - (1 - (0.999 * 0.6 + 0.001))) < 2e-3
    assert 0.0 <= t.min().item() and t.max().item() <= 0.999
    # P(t <= s) = 1 - ((0.999 - s) / 0.999)^1.5: the noisy end (small t) is weighted up
    for s in (0.1, 0.4, 0.8):
        want = 1 - ((0.999 - s) / 0.999) ** 1.5
        assert abs((t <= s).float().mean().item() - want) < 5e-3
    again = policy.sample_time(5, torch.device("cpu"), torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, t[:5])


def fixed_loss(policy: Pi0Policy, obs: dict, actions: torch.Tensor) -> float:
    with torch.no_grad():
        g = torch.Generator().manual_seed(123)
        return flow_matching_loss(policy, obs, actions, generator=g).item()


def test_flow_matching_steps_lower_the_loss_with_cameras_state_and_prompt() -> None:
    policy = tiny()
    obs = observations(8)
    actions = torch.tanh(obs["state"][:, :, :A].repeat(1, H, 1))  # a chunk the obs determines
    before = fixed_loss(policy, obs, actions)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = flow_matching_loss(policy, obs, actions, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss(policy, obs, actions) < 0.6 * before


def agent(cls: type = ACRLPD, **kwargs) -> ACRLPD:
    """Q-chunking's agent with a tiny pi0 as its policy."""
    torch.manual_seed(0)
    return cls(
        obs_specs=SPECS,
        action_dim=A,
        action_bounds={"low": [-1.0] * A, "high": [1.0] * A, "source": "env"},
        policy=functools.partial(Pi0Policy, emb_dim=16, n_heads=2, num_layers=1, prompt="go"),
        critic_encoder=ObservationEncoder,
        horizon_length=H,
        num_critics=2,
        critic_hidden_dims=(16,),
        best_of_n_samples=4,
        batch_size=4,
        entropy_samples=4,
        **kwargs,
    )


class Fixed:
    """A storage that always gives the same batch."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        images = {k: (255 * v).to(torch.uint8) for k, v in observations(4).items() if k in CAMERAS}
        self.batch = {
            OBS: images | {"state": torch.randn(4, 1, 5, generator=g)},
            NEXT_OBS: images | {"state": torch.randn(4, 1, 5, generator=g)},
            ACTIONS: torch.rand(4, H, A, generator=g) * 2 - 1,
            CHUNK_RETURN: torch.randn(4, generator=g),
            BOOTSTRAP: torch.ones(4),
            VALID: torch.ones(4),
        }

    def sample(self, n: int) -> dict:
        return self.batch

    def __len__(self) -> int:
        return 10**6


def test_freeze_backbone_keeps_the_prefix_side_and_trains_the_expert() -> None:
    policy = tiny()
    backbone = {id(p) for p in policy.backbone_parameters()}
    expert = {id(p) for p in policy.expert.parameters()}
    assert backbone | expert == {id(p) for p in policy.parameters()} and not backbone & expert
    assert id(policy.backbone.patchify["base_0_rgb"].weight) in backbone

    algo = agent(freeze_backbone=True)  # the ALOHA preset's switch
    frozen = {k: v.clone() for k, v in algo.policy.backbone.state_dict().items()}
    head = algo.policy.expert.out.weight.clone()
    fabric = Fabric(accelerator="cpu", devices=1)
    algo.gradient_step(fabric, algo, algo.configure_optimizers(), Fixed())
    for k, v in algo.policy.backbone.state_dict().items():
        torch.testing.assert_close(v, frozen[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(algo.policy.expert.out.weight, head)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [ACRLPD, QCFQL])
def test_agents_export_their_best_of_n_graph_with_pi0(cls: type, tmp_path: Path) -> None:
    """The one ONNX graph (cameras, state, noise -> chunk, q) holds pi0's prefix and sampler;
    export_model checks onnxruntime against torch."""
    metadata = export_model(agent(cls), tmp_path / "pi0.onnx")
    assert metadata["model_type"] == "best_of_n"


def test_pretrained_backbone_loads_from_local_safetensors_only(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(ConfigError, match="file not found.*never downloaded") as err:
        tiny(pretrained_path=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)

    source, path = tiny(seed=1), tmp_path / "backbone.safetensors"
    save_file(source.backbone.state_dict(), path)
    loaded = tiny(seed=2, pretrained_path=str(path))
    obs = observations(2)
    with torch.no_grad():
        for a, b in zip(source.prefix(obs), loaded.prefix(obs), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    for bad, match in (
        (dict(emb_dim=64), "has shape"),  # same keys, other widths
        (dict(num_layers=3), "keys do not match"),
    ):
        with pytest.raises(ConfigError, match=match) as err:
            tiny(pretrained_path=str(path), **bad)
        assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="not a safetensors file") as err:
        tiny(pretrained_path=str(garbage))
    assert "\n" not in str(err.value)


def test_a_checkpoint_rebuilds_without_the_pretrained_file(tmp_path: Path) -> None:
    """The checkpoint holds every weight: export elsewhere must not need the training-time
    safetensors file (load_model drops `pretrained_path`)."""
    from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY, load_model

    weights = tmp_path / "backbone.safetensors"
    save_file(tiny(seed=3, emb_dim=16, n_heads=2, num_layers=1).backbone.state_dict(), weights)
    policy = {
        "_target_": "learning.networks.pi0.Pi0Policy",
        "_partial_": True,
        **dict(emb_dim=16, n_heads=2, num_layers=1, prompt="go", pretrained_path=str(weights)),
    }
    model = {
        "_target_": "learning.algorithms.qchunking.ACRLPD",
        "policy": policy,
        "critic_encoder": {
            "_target_": "learning.networks.encoders.ObservationEncoder",
            "_partial_": True,
        },
        **dict(horizon_length=H, num_critics=2, critic_hidden_dims=[16], best_of_n_samples=4),
    }
    dims = {
        "obs_specs": SPECS,
        "action_dim": A,
        "action_bounds": {"low": [-1.0] * A, "high": [1.0] * A, "source": "env"},
    }
    trained = instantiate(model, _convert_="all", **dims)
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {CONFIG_KEY: {"model": model}, MODEL_KWARGS_KEY: dims, "state_dict": trained.state_dict()},
        ckpt,
    )
    weights.unlink()  # e.g. exported on another machine
    rebuilt, _ = load_model(ckpt)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_config_builds_the_policy_with_the_roots_widths() -> None:
    cfg = yaml.safe_load((REPO / "configs/policy/pi0.yaml").read_text())
    root = OmegaConf.create({"emb_dim": 16, "n_heads": 2, "num_layers": 1, "policy": cfg})
    factory = instantiate(root.policy)
    policy = factory(obs_specs=SPECS, obs_steps=1, action_dim=A, horizon=H)
    keys, _, _ = policy.prefix(observations(1))
    assert keys.shape[1:3] == (1, 2) and keys.shape[-1] == 8  # 1 layer, 2 heads of 16 / 2
    with pytest.raises(ConfigError, match="obs_steps 2"):
        factory(obs_specs=SPECS, obs_steps=2, action_dim=A, horizon=H)


class Sampler(torch.nn.Module):
    """Prefix once, then 10 Euler steps: the part of the agent's best_of_n graph pi0 fills."""

    def __init__(self, policy: Pi0Policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, base: torch.Tensor, wrist: torch.Tensor, state: torch.Tensor, noise):
        obs = {"base_0_rgb": base, "left_wrist_0_rgb": wrist, "state": state}
        return euler_chunks(self.policy, self.policy.prefix(obs), noise, 10)


def test_onnx_parity_of_prefix_and_euler_sampling() -> None:
    sampler = Sampler(tiny(num_layers=1).eval())
    example = (*observations(2).values(), torch.randn(2, H, A))
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            sampler,
            example,
            input_names=["base", "wrist", "state", "noise"],
            output_names=["actions"],
            dynamic_shapes=tuple({0: batch} for _ in example),
            opset_version=18,  # learning/export.py's OPSET
            dynamo=True,
            verbose=False,
        )
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    feeds = (*observations(5, seed=7).values(), torch.randn(5, H, A))
    names = ["base", "wrist", "state", "noise"]
    got = session.run(None, {n: f.numpy() for n, f in zip(names, feeds, strict=True)})[0]
    with torch.no_grad():
        want = sampler(*feeds).numpy()
    assert got.shape == (5, H, A)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
