"""Every velocity network x every observation encoder the flow configs allow builds from the
Hydra config, gives chunks of the right shape and learns a step on a fixed batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from test_learning_data import ACT_DIM, IMG, write_toy_dataset

from learning.train import compose_config

NETWORKS = {  # tiny sizes of each network group
    "mlp": ["model.network.hidden_dims=[32]"],
    "chiunet": ["model_dim=8", "model.network.dim_mult=[1,2]"],
    "chitransformer": ["n_heads=2", "num_layers=1"],
}
ENCODERS = {  # obs keys x the encoder each feature type goes through
    "state-identity": ["obs_type=state", "encoder=identity"],
    "state-mlp": ["obs_type=state", "encoder=mlp"],
    "image-conv+state": ["rgb_model_name=conv", "model.encoder.image_encoder.channels=[8,8]"],
    "image-resnet18+state": [
        "rgb_model_name=resnet18",
        "model.encoder.image_encoder.channels=[16,16,16,16]",
        f"crop_shape=[{IMG[0] - 2},{IMG[1] - 2}]",
    ],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("grid") / "toy.hdf5", episodes=4, image=True)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_network_x_encoder_shapes_and_a_step_that_learns(
    network: str, encoder: str, data: Path
) -> None:
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={data}",
            f"network_type={network}",
            "emb_dim=16",
            "batch_size=16",
            "flow_steps=2",
            *NETWORKS[network],
            *ENCODERS[encoder],
        ],
    )
    dm = instantiate(cfg.data)
    dm.setup("fit")
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    assert ("image" in model.obs_keys) == encoder.startswith("image")
    batch = next(iter(dm.train_dataloader()))
    noise = torch.randn(2, cfg.horizon_length, ACT_DIM)
    obs = {k: v[:2] for k, v in batch["obs"].items()}
    assert model.predict_action_chunk(obs, noise).shape == (2, cfg.horizon_length, ACT_DIM)

    assert_a_step_learns(model, batch)


def assert_a_step_learns(model: torch.nn.Module, batch: dict, steps: int = 5) -> None:
    """The model's loss on `batch` is lower after a few Adam steps (same crops and noise)."""

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same crops and noise at every evaluation
        return model.loss(batch, generator=torch.Generator().manual_seed(1))

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before
