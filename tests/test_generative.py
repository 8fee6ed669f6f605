"""Generative goal masks: schedulers, paths, samplers (vs Meta's flow_matching where installed),
DiT, configs from seed 001, tiny training runs, ONNX export parity."""

from __future__ import annotations

import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from learning.generative.dit import DiT
from learning.generative.module import GenerativeModule
from learning.generative.paths import FlowMatchingPath, HFDiffusionPath
from learning.generative.quality import iou_dice
from learning.generative.samplers import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    HFDiffusionSampler,
    ODESampler,
)
from learning.generative.schedulers import SCHEDULERS, make_scheduler
from learning.generative.synthetic import synthetic_sample, write_synthetic_dataset
from learning.train import compose_config, run
from sim.namo.mask_files import MaskFileError, load_sample, resize_area

FM, DIFF = "train_fb_flow_matching", "train_hf_diffusion"
SCHEDULER_NAMES = list(SCHEDULERS)
ODE_METHODS = [*FIXED_STEP_METHODS, "dopri5"]

try:
    import flow_matching  # noqa: F401

    HAVE_FM_LIB = True
except ImportError:
    HAVE_FM_LIB = False
needs_fm_lib = pytest.mark.skipif(
    not HAVE_FM_LIB, reason="Meta flow_matching not installed (optional, CC BY-NC)"
)


# ---- schedulers and paths -----------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_scheduler_endpoints_and_derivatives(name: str) -> None:
    sched = make_scheduler(name)
    t = torch.linspace(0.02, 0.97, 40, dtype=torch.float64)
    out = sched(t)
    h = 1e-6
    fd_alpha = (sched(t + h).alpha_t - sched(t - h).alpha_t) / (2 * h)
    fd_sigma = (sched(t + h).sigma_t - sched(t - h).sigma_t) / (2 * h)
    torch.testing.assert_close(out.d_alpha_t, fd_alpha, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.d_sigma_t, fd_sigma, atol=1e-5, rtol=1e-5)
    # Noise at t=0, data at t=1 (vp reaches alpha=exp(-5.0) at t=0, not exactly 0).
    ends = sched(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.alpha_t[0] < 0.01 and ends.sigma_t[0] == pytest.approx(1.0, abs=1e-4)
    assert ends.alpha_t[1] == pytest.approx(1.0) and ends.sigma_t[1] == pytest.approx(0.0)


def test_condot_path_is_the_workspace_convention() -> None:
    gen = torch.Generator().manual_seed(3)
    x1 = torch.rand(4, 1, 8, 8) * 2 - 1
    pair = FlowMatchingPath("condot").sample(x1, generator=gen)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.rand(4, generator=gen) * (1 - 1e-3)
    tt = t[:, None, None, None]
    torch.testing.assert_close(pair.t, t)
    torch.testing.assert_close(pair.x_t, (1 - tt) * x0 + tt * x1)
    torch.testing.assert_close(pair.target, x1 - x0)


@needs_fm_lib
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_schedulers_and_paths_match_flow_matching_library(name: str) -> None:
    from learning.generative.fm_library import MetaFlowMatchingPath, library_scheduler

    t = torch.linspace(0.0, 0.99, 23, dtype=torch.float64)
    ours, theirs = make_scheduler(name)(t), library_scheduler(name)(t)
    for field in ("alpha_t", "sigma_t", "d_alpha_t", "d_sigma_t"):
        torch.testing.assert_close(
            getattr(ours, field), getattr(theirs, field), rtol=0, atol=1e-12
        )
    x1 = torch.rand(5, 1, 4, 4) * 2 - 1
    a = FlowMatchingPath(name).sample(x1, torch.Generator().manual_seed(1))
    b = MetaFlowMatchingPath(name).sample(x1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.x_t, b.x_t)
    torch.testing.assert_close(a.target, b.target)


# ---- ODE samplers -------------------------------------------------------------------------------
def _field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = cos(t) x  ->  x(1) = x(0) exp(sin 1)."""
    return torch.cos(t).reshape(-1, *([1] * (x.dim() - 1))) * x


@pytest.mark.parametrize("method", ODE_METHODS)
def test_ode_sampler_converges_at_its_order(method: str) -> None:
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = x0 * math.exp(math.sin(1.0))
    if method in ADAPTIVE_METHODS:
        err = (ODESampler(method, atol=1e-9, rtol=1e-9).sample(None, _field, x0) - exact).abs()
        assert err.max() < 1e-7
        return
    order = {"euler": 1, "midpoint": 2, "rk4": 4}[method]
    steps = (16, 32) if order == 4 else (8, 16)  # rk4 reaches its asymptote later
    errs = [(ODESampler(method, n).sample(None, _field, x0) - exact).abs().max() for n in steps]
    assert math.log2(errs[0] / errs[1]) == pytest.approx(order, abs=0.3)
    assert ODESampler(method, 5).nfe == 5 * FIXED_STEP_METHODS[method][1]


@needs_fm_lib
@pytest.mark.parametrize("method", ODE_METHODS)
def test_ode_sampler_matches_flow_matching_library(method: str) -> None:
    from learning.generative.fm_library import MetaODESampler

    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # nonlinear, time dependent
        return torch.sin(3 * t).reshape(-1, 1, 1, 1) * x - 0.3 * x**3 + torch.cos(x)

    ours = ODESampler(method, 7).sample(None, field, x0)
    theirs = MetaODESampler(method, 7).sample(None, field, x0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_unknown_names_fail_with_the_choices() -> None:
    with pytest.raises(ValueError, match="condot"):
        FlowMatchingPath("cosinus")
    with pytest.raises(ValueError, match="midpoint"):
        ODESampler("heun9")
    with pytest.raises(ValueError, match="ddim"):
        HFDiffusionSampler("dpm")


# ---- diffusion ----------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize(("sampler_type", "steps"), [("ddim", 20), ("ddpm", 50)])
def test_diffusion_sampler_recovers_data_with_an_oracle(
    beta_schedule: str, sampler_type: str, steps: int
) -> None:
    """Point-mass data x1 = c: the exact eps predictor must bring noise back to c.

    The oracle reads diffusers' timestep back from the workspace time t = 1 - k/T, so this
    also checks the time conversion at the diffusers edge.
    """
    path = HFDiffusionPath(beta_schedule=beta_schedule)
    abar = path.noise_scheduler.alphas_cumprod.double()
    c = torch.full((2, 1, 4, 4), 0.6, dtype=torch.float64)

    def oracle_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = torch.round((1 - t) * path.num_train_timesteps).long()
        a = abar[k].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(c.shape, generator=gen, dtype=torch.float64)
    out = HFDiffusionSampler(sampler_type, steps).sample(path, oracle_eps, noise, gen)
    torch.testing.assert_close(out, c, atol=2e-3, rtol=0)


def test_diffusion_path_forward_process() -> None:
    path = HFDiffusionPath()
    x1 = torch.rand(6, 1, 4, 4) * 2 - 1
    pair = path.sample(x1, torch.Generator().manual_seed(2))
    k = torch.round((1 - pair.t) * 1000).long()
    a = path.noise_scheduler.alphas_cumprod[k].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(pair.x_t, a.sqrt() * x1 + (1 - a).sqrt() * pair.target)


# ---- network ------------------------------------------------------------------------------------
def test_dit_shapes_adaln_zero_and_time_conditioning() -> None:
    torch.manual_seed(0)
    net = DiT(in_ch=8, out_ch=1, image_size=16, patch_size=4, hidden_dim=32, depth=2, num_heads=4)
    x, t = torch.randn(3, 8, 16, 16), torch.rand(3)
    out, aux = net.forward_with_aux(x, t)
    assert out.shape == (3, 1, 16, 16) and aux.shape == (3, 1, 16, 16)
    assert out.abs().max() == 0  # adaLN-Zero: zero output layer at init
    for p in net.parameters():  # leave init: every part must now matter
        torch.nn.init.normal_(p, std=0.2)
    a, b = net(x, t), net(x, t + 0.3)
    assert a.shape == (3, 1, 16, 16) and (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"\(B, 8, 16, 16\)"):
        net(torch.randn(1, 7, 16, 16), t[:1])


# ---- masks and data -----------------------------------------------------------------------------
def test_masks_load_legacy_keys_resize_and_errors(tmp_path: Path) -> None:
    sample = synthetic_sample(np.random.default_rng(0), size=224)
    legacy = dict(sample)
    for new, old in [("robot_image", "robot"), ("static_objects_image", "static")]:
        legacy[old] = legacy.pop(new)
    np.savez(tmp_path / "new.npz", **sample)
    np.savez(tmp_path / "legacy.npz", **legacy)
    ctx_a, tgt_a = load_sample(tmp_path / "new.npz", 64)
    ctx_b, tgt_b = load_sample(tmp_path / "legacy.npz", 64)
    assert ctx_a.shape == (5, 64, 64) and tgt_a.shape == (64, 64)
    np.testing.assert_array_equal(ctx_a, ctx_b)
    # Area resize keeps the occupied area (in pixels of the new grid) and stays in [0, 1].
    scale = (64 / 224) ** 2
    assert tgt_a.sum() == pytest.approx(sample["target_goal"].sum() * scale, rel=1e-4)
    assert 0.0 <= ctx_a.min() and ctx_a.max() <= 1.0
    np.testing.assert_allclose(resize_area(np.eye(4), 2), [[0.5, 0], [0, 0.5]])
    del sample["target_goal"]
    np.savez(tmp_path / "broken.npz", **sample)
    with pytest.raises(MaskFileError, match=r"broken\.npz: missing key 'target_goal'"):
        load_sample(tmp_path / "broken.npz")


def test_iou_dice() -> None:
    a = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, 0, :2], b[0, 0, 1:3] = True, True  # 8 vs 8 px, overlap 4
    iou, dice = iou_dice(a, b)
    assert iou.tolist() == pytest.approx([4 / 12, 1.0]) and dice.tolist() == pytest.approx(
        [0.5, 1]
    )


# ---- configs (seed 001) -------------------------------------------------------------------------
# Every seed command and its overrides: tests/test_configs.py. Here: the seed's defaults as built
# objects, and one override no seed command uses.
@pytest.mark.parametrize("name", [FM, DIFF])
def test_seed_defaults(name: str) -> None:
    cfg = compose_config(name)
    assert (cfg.seed, cfg.batch_size, cfg.max_epochs, cfg.base_lr) == (42, 64, 1000, 1e-4)
    assert cfg.image_size == 64 and cfg.ckpt_path is None
    model = instantiate(cfg.model, _convert_="all")
    assert isinstance(model, GenerativeModule) and isinstance(model.network, DiT)
    assert (cfg.model.network.in_ch, cfg.model.network.out_ch) == (8, 1)
    if name == FM:
        assert (model.path.scheduler_name, model.sampler.method) == ("condot", "midpoint")
    else:
        assert model.path.noise_scheduler.config.beta_schedule == "squaredcos_cap_v2"
        assert model.path.noise_scheduler.config.num_train_timesteps == 1000
        assert cfg.model.path.prediction_type == "epsilon" and cfg.model.sampler.eta == 0.0
        assert (model.sampler.sampler_type, model.sampler.steps) == ("ddim", 50)


def test_aux_loss_weight_override_reaches_the_module() -> None:
    model = instantiate(compose_config(FM, ["model.aux_loss_weight=0.01"]).model, _convert_="all")
    assert model.aux_loss_weight == 0.01


# ---- training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def namo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = Path(__file__).parent / "data" / "namo_tiny"
    if len(glob.glob(str(tiny / "**" / "*.npz"), recursive=True)) >= 32:
        return tiny
    out = tmp_path_factory.mktemp("goal_masks")
    write_synthetic_dataset(out, 96, size=32, seed=0, episodes=24)
    return out


def _tiny_config(name: str, data_dir: Path, run_dir: Path, extra: list[str]):
    return compose_config(
        name,
        [
            f"data.data_dir={data_dir}",
            f"run_dir={run_dir}",
            "network=dit_tiny",
            "image_size=32",
            "batch_size=16",
            "base_lr=2e-3",
            "num_workers=0",
            "data.val_fraction=0.25",
            "model.num_val_samples=4",
            "~trainer.callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            *extra,
        ],
    )


def _untrained_val_loss(cfg) -> float:
    """val_loss of the model `run` starts from (same seed, same fixed validation noise)."""
    import lightning as L

    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")
    datamodule.setup("fit")
    total, count = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(datamodule.val_dataloader()):
            gen = torch.Generator().manual_seed(cfg.seed + i)
            n = batch["target"].shape[0]
            total += float(model.losses(batch, gen)["loss"]) * n
            count += n
    return total / count


def _scalars(run_dir: Path) -> tuple[dict[str, list[float]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(str(run_dir / "tensorboard" / "events.*"))
    acc = EventAccumulator(events)
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["images"]


@pytest.mark.parametrize(
    ("name", "extra", "export_sampler"),
    [
        (FM, ["max_epochs=6", "sampling_steps=4"], {"method": "euler", "steps": 2}),
        (
            DIFF,
            ["max_epochs=6", "sampling_steps=5", "model.sampler.sampler_type=ddpm"],
            {"sampler_type": "ddim", "steps": 3},
        ),
    ],
)
def test_tiny_training_lowers_val_loss(
    name: str, extra: list[str], export_sampler: dict, namo_dir: Path, tmp_path: Path
) -> None:
    cfg = _tiny_config(name, namo_dir, tmp_path / "run", extra)
    start = _untrained_val_loss(cfg)
    result = run(cfg)
    scalars, images = _scalars(tmp_path / "run")
    val = scalars["val_loss"]
    assert len(val) == 6 and val[-1] < 0.75 * start and val[-1] < val[0], (start, val)
    assert scalars["val_loss_best"][-1] == pytest.approx(min(val))
    assert "train_loss" in scalars
    assert any(tag.startswith("Validation_Samples_") for tag in images)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    assert any(n.startswith("epoch") and "-val_loss" in n for n in ckpts), ckpts
    # The checkpoint rebuilds the model; samples are masks of the right shape and range.
    from learning.checkpoint import load_model

    model, _ = load_model(result["last_ckpt"])
    context = torch.rand(3, 5, 32, 32)
    masks = model.generate(context, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (3, 1, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    assert masks.std() > 0
    # Export with a deterministic sampler chosen at export time (DDPM/dopri5 don't unroll).
    from learning.export import export_model, parity

    model, cfg = load_model(result["last_ckpt"])
    meta = export_model(model, tmp_path / "g.onnx", cfg, sampler=export_sampler)
    assert meta["sampler"]["steps"] == export_sampler["steps"]
    assert meta["training_config"]["model"]["sampler"]["steps"] == export_sampler["steps"]
    assert parity(model, tmp_path / "g.onnx") <= 1e-4  # the graph of the chosen sampler


# ---- ONNX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        (FM, ["model.sampler.method=midpoint", "sampling_steps=2"]),
        (FM, ["model.sampler.method=rk4", "sampling_steps=1", "model.path.scheduler=cosine"]),
        (DIFF, ["sampling_steps=3"]),
    ],
)
def test_onnx_export_matches_torch_sampler(name: str, overrides: list[str], tmp_path: Path):
    from learning.export import export_model
    from roboloop_runtime import OnnxModel

    cfg = compose_config(name, ["network=dit_tiny", "image_size=32", *overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all").eval()
    for p in model.network.parameters():  # away from the zero init, so the graph is exercised
        torch.nn.init.normal_(p, std=0.05)
    meta = export_model(model, tmp_path / "g.onnx", training_config={"name": name})
    assert meta["model_type"] == "goal_generator" and meta["image_size"] == 32
    runner = OnnxModel(tmp_path / "g.onnx", device="cpu")
    rng = np.random.default_rng(0)
    context = (rng.random((5, 5, 32, 32)) > 0.7).astype(np.float32)
    noise = rng.standard_normal((5, 1, 32, 32)).astype(np.float32)
    feeds = {f"obs.{k}": context[:, i] for i, k in enumerate(meta["context_keys"])}
    got = runner.run({**feeds, "noise": noise})["goal_masks"]
    want = model.generate(torch.from_numpy(context), torch.from_numpy(noise)).numpy()
    assert got.shape == (5, 1, 32, 32)
    assert np.abs(got - want).max() <= 1e-4
    assert 0.01 < want.std()  # not a constant output


def test_export_refuses_adaptive_and_stochastic_samplers() -> None:
    """...with the --sampler keys of the checkpoint's own sampler family in the hint."""
    for name, override, hint in [
        (FM, "model.sampler.method=dopri5", "--sampler method=euler`"),
        (DIFF, "model.sampler.eta=1.0", "--sampler sampler_type=ddim --sampler eta=0`"),
    ]:
        cfg = compose_config(name, ["network=dit_tiny", override])
        model = instantiate(cfg.model, _convert_="all")
        with pytest.raises(ValueError, match="deterministic fixed-step sampler") as err:
            model.export_graph()
        assert str(err.value).endswith(hint), err.value


@pytest.mark.parametrize(
    ("name", "sampler", "says"),
    [
        (FM, {"steps": 0}, "steps must be >= 1, got 0"),
        (FM, {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        (FM, {"sampler_type": "ddim"}, "unexpected keyword argument 'sampler_type'"),
        (DIFF, {"method": "euler"}, "unexpected keyword argument 'method'"),
    ],
)
def test_export_sampler_arguments_it_refuses_are_one_line(
    name: str, sampler: dict, says: str, tmp_path: Path
) -> None:
    from learning.export import ExportError, export_model

    cfg = compose_config(name, ["network=dit_tiny", "image_size=32"])
    model = instantiate(cfg.model, _convert_="all").eval()
    config = OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "g.onnx", config, sampler=sampler)
    text = str(err.value)
    assert "\n" not in text and says in text and "--sampler" in text, text
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--level", "bogus"], "argument --level: invalid choice: 'bogus'"),
        (["--out", "{tmp}"], "is a directory, not a JSON file"),
    ],
)
def test_quality_refuses_a_bad_level_or_out_before_any_work(
    argv: list[str], says: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    from learning.generative import quality

    monkeypatch.setattr(quality, "run_quality", lambda *a, **k: pytest.fail("did the work"))
    episodes = Path(__file__).parent / "data" / "namo_tiny" / "episodes"
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        quality.main(["--quick", "--episodes", str(episodes), "--planner-seeds", "1", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert says in err.splitlines()[-1], err
