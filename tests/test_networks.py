"""Velocity networks (MLP, ChiUNet, ChiTransformer) x time embeddings: shapes, the flow map's
second time s, a loss that falls, ONNX parity; FlowBC trains and exports with each network."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra.utils import instantiate
from test_learning_data import write_toy_dataset
from torch import nn

from learning import export
from learning.networks.chitransformer import ChiTransformer
from learning.networks.chiunet import ChiUNet
from learning.networks.embeddings import TIME_EMBEDDINGS, build_time_embedding
from learning.networks.mlp import MLPVelocityNet
from learning.train import compose_config

B, H, A, OBS_STEPS, STEP_DIM = 4, 8, 2, 2, 6
OBS_DIM = OBS_STEPS * STEP_DIM

# Tiny versions of every network the configs allow (ChiUNet in both conditioning modes).
NETS = {
    "mlp": lambda e: MLPVelocityNet(
        OBS_DIM, A, H, OBS_STEPS, hidden_dims=(32, 32), time_embed_dim=16, time_embedding=e
    ),
    "chiunet": lambda e: ChiUNet(
        OBS_DIM, A, H, OBS_STEPS, model_dim=8, dim_mult=(1, 2, 2), emb_dim=16, time_embedding=e
    ),
    "chiunet_local": lambda e: ChiUNet(
        OBS_DIM,
        A,
        H,
        OBS_STEPS,
        model_dim=8,
        dim_mult=(1, 2),
        emb_dim=16,
        time_embedding=e,
        obs_as_global_cond=False,
    ),  # fmt: skip
    "chitransformer": lambda e: ChiTransformer(
        OBS_DIM,
        A,
        H,
        OBS_STEPS,
        emb_dim=16,
        n_heads=2,
        num_layers=2,
        dropout=0.0,
        time_embedding=e,
    ),  # fmt: skip
}
CASES = [(n, e) for n in NETS for e in TIME_EMBEDDINGS]
# ONNX export is slow (seconds each): every embedding in the MLP, ChiUNet's local conditioning;
# global ChiUNet and ChiTransformer export inside FlowBC in test_flow_bc_trains_and_exports.
EXPORT_CASES = [("mlp", e) for e in TIME_EMBEDDINGS] + [("chiunet_local", "learnable")]


def build(name: str, embedding: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name](embedding)


def inputs(batch: int = B, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """x_t, t, cond, s with s <= t (a flow map from s to t)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(batch, generator=g)
    s = t * torch.rand(batch, generator=g)
    return torch.randn(batch, H, A, generator=g), t, torch.randn(batch, OBS_DIM, generator=g), s


@pytest.mark.parametrize(("name", "embedding"), CASES)
def test_shape_and_second_time(name: str, embedding: str) -> None:
    net = build(name, embedding).eval()
    x, t, c, s = inputs()
    with torch.no_grad():
        for p in net.parameters():  # wake zero-initialized paths (the MLP's s input)
            p.add_(0.1 * torch.randn_like(p))
        plain = net(x, t, c)
        assert plain.shape == (B, H, A)
        # s=None is s = t: the instantaneous velocity, exactly the network without s.
        torch.testing.assert_close(net(x, t, c, s=t), plain, rtol=0, atol=1e-6)
        assert (net(x, t, c, s=s) - plain).abs().max() > 1e-3
        # Time and observations both matter.
        assert (net(x, 1 - t, c) - plain).abs().max() > 1e-3
        assert (net(x, t, c.flip(0)) - plain).abs().max() > 1e-3


def test_mlp_loads_weights_saved_before_the_s_input() -> None:
    net = build("mlp", "sinusoidal")
    old = {k: v for k, v in net.state_dict().items() if not k.startswith("s_in.")}
    with torch.no_grad():
        net.s_in.weight.normal_()  # then loading the old weights must zero it again
    fresh = build("mlp", "sinusoidal")
    fresh.load_state_dict(old)
    net.load_state_dict(old)
    assert net.s_in.weight.abs().max() == 0
    x, t, c, s = inputs()
    torch.testing.assert_close(net(x, t, c, s=s), fresh(x, t, c), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "embedding"), CASES)
def test_flow_loss_falls(name: str, embedding: str) -> None:
    """20 Adam steps on one fixed batch of the flow-matching loss, half the rows with s."""
    net = build(name, embedding)
    x0, t, c, s = inputs(batch=32)
    x1 = torch.sin(c[:, :A, None] + torch.arange(H) / H).transpose(1, 2)  # a function of c
    x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * x1
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        v = torch.cat([net(x_t[:16], t[:16], c[:16]), net(x_t[16:], t[16:], c[16:], s=s[16:])])
        loss = ((v - (x1 - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


class _WithS(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, s: torch.Tensor):
        return self.net(x, t, c, s=s)


def onnx_session(module: nn.Module, example: tuple[torch.Tensor, ...]) -> ort.InferenceSession:
    """Export as `learning.export` does (dynamo, opset 18, dynamic batch) into onnxruntime."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            input_names=[f"in{i}" for i in range(len(example))],
            dynamic_shapes=tuple({0: batch} for _ in example),
            opset_version=export.OPSET,
            dynamo=True,
            verbose=False,
        )
    return ort.InferenceSession(program.model_proto.SerializeToString())


@pytest.mark.parametrize(("name", "embedding"), EXPORT_CASES)
def test_onnx_matches_torch(name: str, embedding: str) -> None:
    net = build(name, embedding).eval()
    with torch.no_grad():  # weights away from init (N(0, 0.02) in the transformer)
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    module = _WithS(net).eval()
    session = onnx_session(module, inputs(batch=2))
    feeds = inputs(batch=5, seed=1)  # another batch size: the batch axis is dynamic
    got = session.run(None, {f"in{i}": v.numpy() for i, v in enumerate(feeds)})[0]
    with torch.no_grad():
        ref = module(*feeds).numpy()
    assert np.abs(ref).max() > 0.1  # not a trivially small output
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["chiunet", "chitransformer"])
def test_scalar_head(name: str) -> None:
    net = NETS[name]("sinusoidal")
    x, t, c, s = inputs()
    with pytest.raises(RuntimeError, match="scalar_head: true"):
        net.scalar(x, t, c)
    cls = type(net)
    kwargs = {"model_dim": 8, "emb_dim": 16} if cls is ChiUNet else {"emb_dim": 16, "n_heads": 2}
    net = cls(OBS_DIM, A, H, OBS_STEPS, scalar_head=True, **kwargs)
    value = net.scalar(x, t, c, s=s)
    assert value.shape == (B, 1)
    value.sum().backward()
    assert net.head.weight.grad.abs().sum() > 0
    assert (net.scalar(x, t, c.flip(0)) - net.scalar(x, t, c)).abs().max() > 0


@pytest.mark.parametrize(("horizon", "dim_mult", "fix"), [(12, (1, 2, 2), 16), (2, (1, 2, 2), 4)])
def test_chiunet_horizon_error(horizon: int, dim_mult: tuple[int, ...], fix: int) -> None:
    with pytest.raises(ValueError, match=rf"horizon {horizon} must be a power of 2") as err:
        ChiUNet(OBS_DIM, A, horizon, model_dim=8, dim_mult=dim_mult)
    assert "\n" not in str(err.value) and f"set horizon_length to e.g. {fix}" in str(err.value)
    ChiUNet(OBS_DIM, A, 4, model_dim=8, dim_mult=dim_mult)  # 2^2: the smallest that fits


def test_bad_network_arguments_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown time_embedding 'gauss' \(known: ") as err:
        build_time_embedding("gauss", 16)
    with pytest.raises(ValueError, match="obs_dim 13 does not split into obs_steps 2") as err2:
        ChiTransformer(13, A, H, obs_steps=2, emb_dim=16, n_heads=2)
    with pytest.raises(ValueError, match=r"multiples of n_groups 8") as err3:
        ChiUNet(OBS_DIM, A, H, model_dim=12)
    assert all("\n" not in str(e.value) for e in (err, err2, err3))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy.hdf5", episodes=6)


TINY_RUN = ["batch_size=16", "model.sampler_steps=2"]  # 2 Euler steps: a smaller graph
TINY_NETS = {
    "chiunet": ["model_dim=8", "emb_dim=16", "model.network.dim_mult=[1,2]"],
    "chitransformer": ["emb_dim=16", "n_heads=2", "num_layers=1"],
}


@pytest.mark.parametrize("network", sorted(TINY_NETS))
def test_flow_bc_trains_and_exports(network: str, toy: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train_fbc",
        [f"dataset={toy}", f"network={network}", *TINY_NETS[network], *TINY_RUN],
    )
    dm = instantiate(cfg.data)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    assert type(model.network).__name__ == {"chiunet": "ChiUNet"}.get(network, "ChiTransformer")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.network.parameters()]
    loss = model.loss(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.network.parameters())
    moved = [(p - q).abs().max() for p, q in zip(model.network.parameters(), before, strict=True)]
    assert max(moved) > 0
    out = tmp_path / f"fbc_{network}.onnx"
    export.export_model(model, out)
    assert export.parity(model, out, batch_sizes=(1, 3)) <= 1e-4


def test_cli_bad_network_setting_is_one_line(toy: Path, tmp_path: Path) -> None:
    """Raised inside Hydra's instantiate, the network's error still reaches the command line
    as its own one line (Hydra wraps it in several)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "learning.train", "--config-name=train_fbc", f"dataset={toy}"]
    cmd += ["network_type=chiunet", "horizon_length=12", f"output_root={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("learning.train: ChiUNet: horizon 12 must be a power of 2"), last
    assert "Traceback" not in proc.stderr and "Error in call to target" not in proc.stderr
