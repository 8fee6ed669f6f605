"""Observation encoders (learning/networks/encoders.py, resnet.py): every image encoder x one or
two cameras x shared or per-camera weights, the step-major layout, GroupNorm groups, crops in
training and evaluation, one-line bad input, and an image FBC (ResNet18) that trains and exports
with its crop inside the graph."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from hydra.utils import instantiate
from test_learning_data import IMG, write_toy_dataset
from torch import nn

from episode_dataset import IMAGE, LOW_DIM, DatasetError
from learning.checkpoint import CONFIG_KEY, MODEL_KWARGS_KEY, CheckpointError, upgrade_checkpoint
from learning.data.episode_datamodule import EpisodeDataModule
from learning.export import export_model, parity
from learning.networks.encoders import IMAGE_ENCODERS, ImageCrop, ObservationEncoder
from learning.networks.resnet import SpatialSoftmax
from learning.train import compose_config

SMALL = {"conv": [8, 16], "resnet18": [16] * 4, "resnet34": [16] * 4, "resnet50": [16] * 4}


def specs(cameras: int, size: int = 16) -> dict:
    out = {
        f"cam{i}": {"shape": [size, size, 3], "dtype": "uint8", "feature_type": IMAGE}
        for i in range(cameras)
    }
    out["joints"] = {"shape": [3], "dtype": "float32", "feature_type": LOW_DIM}
    return out


def inputs(spec: dict, batch: int = 2, steps: int = 2) -> dict[str, torch.Tensor]:
    return {k: torch.rand(batch, steps, *s["shape"]) for k, s in spec.items()}


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("cameras", [1, 2])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_and_step_major_layout(name: str, cameras: int, share: bool) -> None:
    spec = specs(cameras)
    enc = ObservationEncoder(
        spec,
        obs_steps=2,
        image_encoder={"name": name, "channels": SMALL[name], "feature_dim": 5},
        low_dim_encoder={"name": "mlp", "emb_dim": 4, "hidden_dims": [8]},
        share_rgb_model=share,
        crop_shape=[14, 12],
    ).eval()
    assert enc.step_dim == cameras * 5 + 4 and enc.out_dim == 2 * enc.step_dim
    backbones = [enc.shared] if share else list(enc.image_encoders.values())
    assert len(backbones) == (1 if share else cameras)
    obs = inputs(spec, batch=3)
    out = enc(obs)
    assert out.shape == (3, enc.out_dim)
    # Step-major: changing step 1 of every key leaves the first step_dim features alone.
    later = {k: torch.cat([v[:, :1], torch.rand_like(v[:, 1:])], 1) for k, v in obs.items()}
    moved = enc(later)
    assert torch.equal(moved[:, : enc.step_dim], out[:, : enc.step_dim])
    assert not torch.allclose(moved[:, enc.step_dim :], out[:, enc.step_dim :])


def test_low_dim_encoders_identity_and_mlp() -> None:
    spec = {
        "a": {"shape": [3], "feature_type": LOW_DIM},
        "b": {"shape": [2], "feature_type": LOW_DIM},
    }
    x = {"a": torch.rand(4, 2, 3), "b": torch.rand(4, 2, 2)}
    ident = ObservationEncoder(spec, obs_steps=2)
    assert (ident.step_dim, ident.out_dim) == (5, 10)
    # identity, step-major: a_0 b_0 a_1 b_1
    want = torch.cat([x["a"][:, 0], x["b"][:, 0], x["a"][:, 1], x["b"][:, 1]], -1)
    assert torch.equal(ident(x), want)
    mlp = ObservationEncoder(spec, obs_steps=2, low_dim_encoder={"name": "mlp", "emb_dim": 7})
    assert mlp(x).shape == (4, 14) and mlp.step_dim == 7


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_group_norm_has_c_over_16_groups(name: str) -> None:
    net = IMAGE_ENCODERS[name](image_shape=(32, 32, 3))
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    assert {m.num_channels for m in norms} >= {64, 512}
    assert net.out_dim == (512 if name == "resnet18" else 2048)  # fc dropped: pooled features
    batch_norm = IMAGE_ENCODERS[name](image_shape=(32, 32, 3), use_group_norm=False)
    assert not any(isinstance(m, nn.GroupNorm) for m in batch_norm.modules())
    with pytest.raises(ValueError, match="width of 8 channels is not a multiple of 16"):
        IMAGE_ENCODERS["resnet18"](image_shape=(32, 32, 3), channels=[8, 16, 32, 64])


def test_random_crop_in_training_centre_crop_in_eval() -> None:
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10, 1)
    crop = ImageCrop((6, 4), random=True)
    centre = x[:, :, 2:8, 3:7]
    torch.manual_seed(0)
    first, second = crop(x), crop(x)
    assert first.shape == (2, 3, 6, 4, 1)
    assert not torch.equal(first, second)  # a new place each call
    # One offset per sample, shared by its history: frame t+1 is frame t + 100.
    assert torch.equal(first[:, 1:] - first[:, :-1], torch.full_like(first[:, 1:], 100.0))
    crop.eval()
    assert torch.equal(crop(x), centre) and torch.equal(crop(x), crop(x))
    # random_crop=false: still cropped (centre), in training too.
    fixed = ImageCrop((6, 4), random=False).train()
    assert torch.equal(fixed(x), centre)
    enc = ObservationEncoder(
        specs(1, 10), 1, {"name": "conv", "channels": [4]}, crop_shape=[6, 4], random_crop=False
    )
    assert enc.image_encoders["cam0"].convs[0].in_channels == 3 and enc.crop.crop == (6, 4)


def test_bad_encoder_input_is_one_line() -> None:
    with pytest.raises(
        ValueError, match=r"'cam0': crop_shape \[20, 12\] is larger than its image 16x16$"
    ):
        ObservationEncoder(specs(1), 1, crop_shape=[20, 12])
    for bad in ([56], [56, "a"], 56, [0, 4], [5.5, 4]):
        with pytest.raises(
            ValueError, match=r"crop_shape .* is not two positive ints \[height, width\]$"
        ):
            ObservationEncoder(specs(1), 1, crop_shape=bad)
    with pytest.raises(ValueError, match="unknown low-dim encoder 'gru'"):
        ObservationEncoder(specs(1), 1, low_dim_encoder={"name": "gru"})
    two = specs(2)
    two["cam1"]["shape"] = [12, 12, 3]
    with pytest.raises(
        ValueError, match="share_rgb_model: cameras give frames of different shapes"
    ):
        ObservationEncoder(two, 1, share_rgb_model=True)


def test_image_key_missing_from_the_dataset_is_one_line(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path / "state.hdf5", episodes=3)
    with pytest.raises(
        KeyError, match=r"no obs key 'wrist_image' \(it has state \(low_dim\)\)"
    ) as err:
        EpisodeDataModule(str(path), 1, 2, obs_keys=["wrist_image"]).setup()
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(
        DatasetError, match=r"obs_type image, but no image key among obs keys \['state'\]"
    ):
        EpisodeDataModule(str(path), 1, 2, obs_type="image").setup()
    images = write_toy_dataset(tmp_path / "image.hdf5", episodes=3, image=True)
    dm = EpisodeDataModule(str(images), 1, 2, obs_type="state")
    dm.setup()
    assert dm.obs_keys == ["state"]


def _image_fbc(tmp_path: Path, *overrides: str) -> tuple:
    data = write_toy_dataset(tmp_path / "img.hdf5", episodes=4, image=True)
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={data}",
            "obs_type=image",
            "rgb_model_name=resnet18",
            "model.encoder.image_encoder.channels=[16,16,16,16]",
            f"crop_shape=[{IMG[0] - 2},{IMG[1] - 2}]",
            "model.network.hidden_dims=[32]",
            *overrides,
        ],
    )
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    return model, next(iter(dm.train_dataloader()))


def test_image_fbc_with_resnet18_loss_falls(tmp_path: Path) -> None:
    model, batch = _image_fbc(tmp_path)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same crops and noise before and after the steps
        return model.loss(batch, generator=torch.Generator().manual_seed(0))

    before = loss()
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before.item()
    stem = model.encoder.image_encoders["image"].stem[0]
    assert stem.weight.grad.abs().sum() > 0  # the camera path trains


def test_exported_image_policy_takes_full_uint8_frames_and_crops_inside(tmp_path: Path) -> None:
    model, _ = _image_fbc(tmp_path, "horizon_length=4", "flow_steps=2")
    meta = export_model(model, tmp_path / "p.onnx")
    assert meta["inputs"]["obs.image"] == {"shape": [-1, 2, *IMG], "dtype": "uint8"}
    graph = onnx.load(str(tmp_path / "p.onnx")).graph
    image = next(v for v in graph.input if v.name == "obs.image")
    assert [d.dim_value for d in image.type.tensor_type.shape.dim[1:]] == [2, *IMG]
    assert parity(model, tmp_path / "p.onnx") < 1e-4  # eval-mode centre crop, as in torch


def test_checkpoint_from_before_the_step_major_layout_is_refused() -> None:
    encoder = {"_target_": "learning.networks.encoders.ObservationEncoder", "image_encoder": {}}
    two_keys = {"obs_specs": specs(1)}  # cam0 + joints
    old = {CONFIG_KEY: {"model": {"obs_steps": 2, "encoder": encoder}}}
    with pytest.raises(CheckpointError, match=r"^old.ckpt: .* 2 obs keys x 2 steps .*retrain it$"):
        upgrade_checkpoint({**old, MODEL_KWARGS_KEY: two_keys}, "old.ckpt")
    # One key, or one step: the order is the same, the checkpoint loads.
    one_key = {"obs_specs": {"joints": specs(0)["joints"]}}
    assert upgrade_checkpoint({**old, MODEL_KWARGS_KEY: one_key}, "old.ckpt")
    today = {
        CONFIG_KEY: {"model": {"obs_steps": 2, "encoder": {**encoder, "low_dim_encoder": {}}}}
    }
    assert upgrade_checkpoint({**today, MODEL_KWARGS_KEY: two_keys}, "new.ckpt")


def test_spatial_softmax_pool_gives_where_the_features_are() -> None:
    pool = SpatialSoftmax(channels=1, keypoints=1)
    nn.init.ones_(pool.conv.weight), nn.init.zeros_(pool.conv.bias)
    x = torch.zeros(1, 1, 4, 5)
    x[0, 0, 0, 4] = 50.0  # top row, right column
    assert torch.allclose(pool(x), torch.tensor([[1.0, -1.0]]), atol=1e-4)  # (x, y)
    net = IMAGE_ENCODERS["resnet18"](image_shape=(32, 32, 3), pool="spatial_softmax", keypoints=8)
    assert net.out_dim == 16 and net(torch.rand(2, 32, 32, 3)).shape == (2, 16)
    with pytest.raises(ValueError, match="pool 'max' is not one of"):
        IMAGE_ENCODERS["resnet18"](image_shape=(32, 32, 3), pool="max")
