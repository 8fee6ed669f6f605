"""learning.train: config composition, run-dir layout, resume, FBC loss falls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from test_learning_data import write_toy_dataset

from learning.algorithms.flow_bc import euler_sample
from learning.data.keys import ACTIONS, OBS
from learning.train import compose_config, run

TINY = ["model.network.hidden_dims=[64,64]", "batch_size=32", "~trainer.callbacks.progress_bar"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy.hdf5", episodes=10)


def test_configs_compose(tmp_path: Path) -> None:
    single = compose_config("train_fbc", ["dataset=x.hdf5", f"output_root={tmp_path}"])
    for key in ("name", "seed", "batch_size", "max_epochs", "base_lr", "ckpt_path", "num_workers"):
        assert key in single
    assert single.seed == 42 and single.ckpt_path is None
    assert single.trainer.precision == ("16-mixed" if torch.cuda.is_available() else "32-true")
    assert single.trainer.gradient_clip_val == 1.0
    assert single.model.optimizer.lr == single.base_lr
    callbacks = [instantiate(c) for c in single.trainer.callbacks.values()]
    assert {type(c).__name__ for c in callbacks} == {
        "ModelCheckpoint",
        "LearningRateMonitor",
        "RichProgressBar",
    }
    multi = compose_config("train_fbc", ["dataset=x.hdf5", "trainer=multi_gpu"])
    assert multi.trainer.devices == "auto" and multi.trainer.sync_batchnorm is True
    assert multi.trainer.precision == "16-mixed"
    strategy = instantiate(multi.trainer.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {"static_graph": True, "find_unused_parameters": False}
    assert set(multi.trainer.callbacks) == set(single.trainer.callbacks)
    # The network group is injected into the model as a partial factory.
    net = instantiate(single.model.network)(obs_dim=5, action_dim=2, horizon=3)
    out = net(torch.zeros(4, 3, 2), torch.zeros(4), torch.zeros(4, 5))
    assert out.shape == (4, 3, 2)


def test_train_writes_run_dir_and_resumes(toy: Path, tmp_path: Path) -> None:
    overrides = [f"dataset={toy}", f"output_root={tmp_path}", "name=toyrun", *TINY]
    first = run(compose_config("train_fbc", [*overrides, "max_epochs=2"]))
    run_dir = Path(first["run_dir"])
    assert run_dir.parent == tmp_path / "toyrun"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.max_epochs == 2 and saved.dataset == str(toy)
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    best = Path(first["best_ckpt"])
    assert best.parent == run_dir / "checkpoints"
    assert best.name.startswith("epoch00") and "-val_loss" in best.name
    assert {"train_loss", "val_loss", "val_action_mse"} <= set(first["metrics"])

    resumed = run(
        compose_config(
            "train_fbc", [*overrides, "max_epochs=3", f"ckpt_path={first['last_ckpt']}"]
        )
    )
    ckpt = torch.load(resumed["last_ckpt"], map_location="cpu", weights_only=True)
    before = torch.load(first["last_ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == before["global_step"] * 3 // 2
    assert resumed["run_dir"] != first["run_dir"]


def test_test_split_runs_test_loop(toy: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={toy}",
            f"output_root={tmp_path}",
            "max_epochs=1",
            "data.test_fraction=0.2",
            *TINY,
        ],
    )
    assert "test_loss" in run(cfg)["metrics"]


def test_fbc_loss_falls(toy: Path) -> None:
    torch.manual_seed(0)
    cfg = compose_config("train_fbc", [f"dataset={toy}", *TINY, "base_lr=3e-3"])
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))

    def val_loss() -> float:
        with torch.no_grad():
            return float(model.loss(batch, generator=torch.Generator().manual_seed(0)))

    def action_mse() -> float:
        noise = torch.randn(batch[ACTIONS].shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            pred = model.predict_action_chunk(batch[OBS], noise)
        return float(((pred - batch[ACTIONS]) ** 2).mean())

    loss0, mse0 = val_loss(), action_mse()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        for b in dm.train_dataloader():
            opt.zero_grad()
            model.loss(b).backward()
            opt.step()
    model.eval()
    loss1, mse1 = val_loss(), action_mse()
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    assert mse1 < 0.35 * mse0, (mse0, mse1)  # sampled chunks approach the expert's


def test_euler_sampler_follows_the_straight_path() -> None:
    # For the optimal velocity of a single data point x1, v(x, t) = (x1 - x) / (1 - t),
    # Euler lands exactly on x1 (t=0 noise -> t=1 data).
    x1 = torch.tensor([[[0.5, -2.0]]])
    x0 = torch.randn(1, 1, 2, generator=torch.Generator().manual_seed(0))
    calls = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t[0]))
        return (x1 - x) / (1 - t[:, None, None])

    out = euler_sample(velocity, x0, steps=10)
    torch.testing.assert_close(out, x1)
    assert calls == pytest.approx([k / 10 for k in range(10)])


def test_model_dims_from_the_config_or_an_env_agree_with_the_data(tmp_path: Path) -> None:
    from episode_dataset import EpisodeWriter
    from learning.data.spec import env_model_dims
    from learning.train import ConfigError, model_kwargs
    from sim.envs import make
    from sim.spec import env_spec

    env = make("Reacher-v5", camera=16)
    spec = env_spec(env, "Reacher-v5", 16)
    env.close()
    path = tmp_path / "reacher.hdf5"
    with EpisodeWriter(path, spec.obs_specs, spec.action_spec, spec.env_args) as w:
        obs = {k: np.zeros((3, *s.shape), s.np_dtype) for k, s in spec.obs_specs.items()}
        w.write_episode(obs, np.zeros((3, 2)), np.zeros(3), [0, 0, 1])
    from_env = env_model_dims("Reacher-v5", camera=16)
    assert from_env["obs_specs"]["image"]["feature_type"] == "image"
    assert from_env["action_dim"] == 2 and from_env["control_rate_hz"] == 50.0
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={path}",
            "data.val_fraction=0",
            "+model_dims._target_=learning.data.spec.env_model_dims",
            "+model_dims.env_id=Reacher-v5",
            "+model_dims.camera=16",
        ],
    )
    dm = instantiate(cfg.data)
    merged = model_kwargs(cfg, dm)  # the env and the dataset it wrote agree key by key
    assert {k: merged[k] for k in from_env} == from_env and "normalization" in merged
    # Dimensions written in the config without any data-derived ones, and a disagreement.
    plain = compose_config("train_fbc", ["dataset=x.hdf5", "+model_dims.action_dim=2"])
    assert model_kwargs(plain, object()) == {"action_dim": 2}
    bad = compose_config(
        "train_fbc", [f"dataset={path}", "data.val_fraction=0", "+model_dims.action_dim=3"]
    )
    with pytest.raises(ConfigError, match="model_dims.action_dim = 3 disagrees with the data's 2"):
        model_kwargs(bad, instantiate(bad.data))
