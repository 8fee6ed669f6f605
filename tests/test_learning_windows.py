"""Windows for every family on real HDF5 files: rewards, dones/terminals, next observations,
chunk returns with episode-end masks, (B, T) sequences; image encoders from the registry and the
declared feature type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from episode_dataset import IMAGE, LOW_DIM, EpisodeWriter, KeySpec
from learning.data.episode_datamodule import EpisodeDataModule
from learning.data.keys import (
    ACTION_IS_PAD,
    ACTIONS,
    BOOTSTRAP,
    CHUNK_RETURN,
    DONES,
    IS_FIRST,
    IS_PAD,
    NEXT_OBS,
    OBS,
    REWARDS,
    TERMINALS,
    VALID,
)
from learning.networks.encoders import IMAGE_ENCODERS, ObservationEncoder, register_image_encoder
from learning.train import compose_config

GAMMA = 0.5
IMG = (6, 6, 3)


def write_counting(path: Path, lengths: tuple[int, ...], terminated: tuple[bool, ...]) -> Path:
    """Episode e, step t: state = 100 e + t, image filled with t, action = (t, -t),
    reward = 10 e + t + 1, done at the last step; meta["terminated"] as given."""
    specs = {
        "state": KeySpec("float32", (1,)),
        "image": KeySpec("uint8", IMG, encoding="rgb8"),
    }
    with EpisodeWriter(path, specs, KeySpec("float32", (2,)), {"env_name": "count"}) as w:
        for e, (n, term) in enumerate(zip(lengths, terminated, strict=True)):
            t = np.arange(n, dtype=np.float32)
            image = np.broadcast_to(t.astype(np.uint8)[:, None, None, None], (n, *IMG)).copy()
            w.write_episode(
                {"state": (100 * e + t)[:, None], "image": image},
                np.stack([t, -t], 1),
                10 * e + t + 1,
                t == n - 1,
                metadata={"terminated": term},
            )
    return path


def samples(dm: EpisodeDataModule) -> dict[tuple[str, int], dict]:
    """Every sample of every split, by (episode, step or start)."""
    return {ds.index[i]: ds[i] for ds in dm.datasets.values() for i in range(len(ds))}


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # demo_0: 6 steps, terminated; demo_1: 5 steps, cut (time limit); demo_2: 2 steps, cut.
    path = tmp_path_factory.mktemp("windows") / "count.hdf5"
    return write_counting(path, (6, 5, 2), (True, False, False))


def test_default_windows_carry_only_obs_and_actions(counting: Path) -> None:
    dm = EpisodeDataModule(str(counting), obs_steps=2, horizon=3, val_fraction=0.0)
    dm.setup("fit")
    assert set(samples(dm)[("demo_0", 4)]) == {OBS, ACTIONS}
    assert all(REWARDS not in c for c in dm.cache.values())  # nothing extra is read


def test_chunk_rewards_returns_and_episode_end_masks(counting: Path) -> None:
    dm = EpisodeDataModule(
        str(counting), obs_steps=2, horizon=3, val_fraction=0.0, rewards=True,
        next_obs=True, discount=GAMMA,
    )  # fmt: skip
    dm.setup("fit")
    s = samples(dm)
    # Inside demo_0 (t=1): rewards 2, 3, 4; next obs = history ending at t+H = 4.
    mid = s[("demo_0", 1)]
    assert mid[REWARDS].tolist() == [2, 3, 4] and not mid[ACTION_IS_PAD].any()
    assert mid[CHUNK_RETURN].item() == pytest.approx(2 + GAMMA * 3 + GAMMA**2 * 4)
    assert (mid[BOOTSTRAP].item(), mid[VALID].item()) == (1.0, 1.0)
    assert mid[NEXT_OBS]["state"][:, 0].tolist() == [3, 4]
    assert mid[NEXT_OBS]["image"][:, 0, 0, 0].tolist() == [3, 4]
    # t=2: the chunk ends at step 4, s_5 exists: still bootstraps.
    assert (s[("demo_0", 2)][BOOTSTRAP].item(), s[("demo_0", 2)][VALID].item()) == (1.0, 1.0)
    # demo_0 (terminated) at t=4: steps 4, 5 and one past the end.
    end = s[("demo_0", 4)]
    assert end[REWARDS].tolist() == [5, 6, 0] and end[ACTION_IS_PAD].tolist() == [0, 0, 1]
    assert end[DONES].tolist() == [0, 1, 0] and end[TERMINALS].tolist() == [0, 1, 0]
    assert end[ACTIONS][:, 0].tolist() == [4, 5, 5]  # last action repeated (BC unchanged)
    assert end[CHUNK_RETURN].item() == pytest.approx(5 + GAMMA * 6)
    assert (end[BOOTSTRAP].item(), end[VALID].item()) == (0.0, 1.0)  # no Q after a terminal
    # demo_1 (cut by a time limit) at t=3: done but not a terminal; s_6 was never recorded.
    cut = s[("demo_1", 3)]
    assert cut[DONES].tolist() == [0, 1, 0] and not cut[TERMINALS].any()
    assert cut[REWARDS].tolist() == [14, 15, 0]
    assert cut[VALID].item() == 0.0
    assert cut[NEXT_OBS]["state"][:, 0].tolist() == [103, 104]  # clamped to the last frame
    # t + H == n exactly (demo_1, t=2): the chunk is whole but s_5 is missing.
    assert s[("demo_1", 2)][VALID].item() == 0.0 and s[("demo_1", 1)][VALID].item() == 1.0
    # Batches stack every extra.
    batch = next(iter(dm.train_dataloader()))
    assert batch[CHUNK_RETURN].shape == (13,) and batch[NEXT_OBS]["image"].shape == (13, 2, *IMG)


def test_sequences_for_recurrent_models(counting: Path) -> None:
    dm = EpisodeDataModule(
        str(counting), obs_steps=1, horizon=1, val_fraction=0.0, sequence_length=4
    )
    dm.setup("fit")
    s = samples(dm)
    # Starts where the whole sequence fits: demo_0 0..2, demo_1 0..1; demo_2 (2 < 4) once.
    assert sorted(s) == [("demo_0", i) for i in range(3)] + [("demo_1", 0), ("demo_1", 1)] + [
        ("demo_2", 0)
    ]
    first = s[("demo_0", 0)]
    assert first[OBS]["state"][:, 0].tolist() == [0, 1, 2, 3]
    assert first[OBS]["image"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert first[IS_FIRST].tolist() == [1, 0, 0, 0] and not s[("demo_0", 1)][IS_FIRST].any()
    last = s[("demo_0", 2)]
    assert last[REWARDS].tolist() == [3, 4, 5, 6] and last[TERMINALS].tolist() == [0, 0, 0, 1]
    short = s[("demo_2", 0)]
    assert short[IS_PAD].tolist() == [0, 0, 1, 1] and short[REWARDS].tolist() == [21, 22, 0, 0]
    assert short[DONES].tolist() == [0, 1, 0, 0] and short[ACTIONS][:, 0].tolist() == [0, 1, 1, 1]
    batch = next(iter(dm.train_dataloader()))
    assert batch[OBS]["image"].shape == (6, 4, *IMG) and batch[ACTIONS].shape == (6, 4, 2)


def test_bad_window_options_are_refused(counting: Path) -> None:
    with pytest.raises(ValueError, match="discount 1.5 is not in"):
        EpisodeDataModule(str(counting), obs_steps=1, horizon=2, discount=1.5)
    with pytest.raises(ValueError, match="sequence_length 4: needs >= 1 and no next_obs"):
        EpisodeDataModule(str(counting), obs_steps=1, horizon=2, sequence_length=4, next_obs=True)


# ---- encoders -------------------------------------------------------------------------------
class TinyEncoder(nn.Module):
    """A stand-in for a ResNet: the registry builds it from the frame shape."""

    def __init__(self, image_shape: tuple[int, ...], feature_dim: int = 5) -> None:
        super().__init__()
        self.linear = nn.Linear(int(np.prod(image_shape)), feature_dim)
        self.out_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))


def test_a_registered_image_encoder_plugs_in_from_the_config(counting: Path) -> None:
    if "tiny_test" not in IMAGE_ENCODERS:
        register_image_encoder("tiny_test")(TinyEncoder)
    with pytest.raises(ValueError, match="'tiny_test' is already registered"):
        register_image_encoder("tiny_test")(TinyEncoder)
    cfg = compose_config(
        "train_fbc",
        [
            f"dataset={counting}",
            # only its own arguments (the default block's are the conv/resnet ones)
            "~model.encoder.image_encoder",
            "+model.encoder.image_encoder={name: tiny_test, feature_dim: 7}",
        ],
    )
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model, _convert_="all", **dm.model_kwargs())
    enc = model.encoder.image_encoders["image"]
    assert isinstance(enc, TinyEncoder) and enc.out_dim == 7
    assert model.encoder.out_dim == cfg.obs_steps * (7 + 1)  # image features + state
    batch = next(iter(dm.train_dataloader()))
    model.loss(batch).backward()
    assert enc.linear.weight.grad.abs().sum() > 0  # the image path trains


def test_image_is_the_declared_feature_type_never_the_shape() -> None:
    specs = {
        "depth": {"shape": [4, 4, 1], "dtype": "float32", "feature_type": IMAGE},
        "grid": {"shape": [3], "dtype": "float32", "feature_type": LOW_DIM},
    }
    enc = ObservationEncoder(specs, obs_steps=2, image_encoder={"name": "conv", "feature_dim": 8})
    assert list(enc.image_encoders) == ["depth"] and enc.out_dim == 2 * 8 + 2 * 3
    out = enc({"depth": torch.rand(5, 2, 4, 4, 1), "grid": torch.rand(5, 2, 3)})
    assert out.shape == (5, enc.out_dim)
    # A uint8 (H, W, 3) key declared low_dim is not silently treated as an image.
    rgb_low = {"rgb": {"shape": [4, 4, 3], "dtype": "uint8", "feature_type": LOW_DIM}}
    with pytest.raises(ValueError, match=r"'rgb': low_dim shape \(4, 4, 3\) is not \(D,\)"):
        ObservationEncoder(rgb_low, obs_steps=1)
    with pytest.raises(ValueError, match="'rgb': feature_type None is not one of"):
        ObservationEncoder({"rgb": {"shape": [4, 4, 3], "dtype": "uint8"}}, obs_steps=1)
    with pytest.raises(ValueError, match="unknown image encoder 'resnet999'"):
        ObservationEncoder(specs, obs_steps=1, image_encoder={"name": "resnet999"})
