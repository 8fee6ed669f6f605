"""QFunctionDataModule, QFunctionNet, ranking metrics, training entry and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from learning.namo.data import (
    MaskFileError,
    QFunctionDataModule,
    QFunctionDataset,
    dihedral,
    dihedral_pose,
    find_mask_files,
    load_item,
)
from learning.namo.metrics import group_ids, ranking_metrics, spearman
from learning.namo.model import CENTROID_PAIRS, POOL_MASKS, MaskCentroids, QFunctionNet
from roboloop_testing.namo_masks import write_synthetic
from sim.namo.keys import ACTION_KEYS, STATE_KEYS

NAMO_TINY = Path(__file__).parent / "data" / "namo_tiny"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("namo_masks"), episodes=12)


@pytest.fixture(scope="module")
def synthetic_larger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("namo_masks_40"), episodes=40, seed=1)


def test_split_by_episode_keeps_scenes_apart(synthetic: Path) -> None:
    dm = QFunctionDataModule(str(synthetic), batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    eps = {name: {f.episode for f in ds.files} for name, ds in dm.splits.items()}
    assert eps["train"] and eps["val"] and eps["test"]
    assert not (
        eps["train"] & eps["val"] or eps["train"] & eps["test"] or eps["val"] & eps["test"]
    )
    assert eps["train"] | eps["val"] | eps["test"] == set(range(12))
    assert sum(len(ds) for ds in dm.splits.values()) == 12 * 2 * 4
    assert dm.has_test_split


def test_batch_shapes_channel_order_and_resize(synthetic: Path) -> None:
    dm = QFunctionDataModule(str(synthetic), batch_size=8, num_workers=0, image_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["state_masks"].shape == (8, 11, 16, 16)
    assert batch["action_masks"].shape == (8, 2, 16, 16)
    assert batch["target_q"].shape == (8, 1)
    f = dm.splits["train"].files[0]
    raw = np.load(f.path)
    item = load_item(f.path)
    for c, key in enumerate(STATE_KEYS):
        np.testing.assert_array_equal(item["state_masks"][c].numpy(), raw[key])
    np.testing.assert_array_equal(item["action_masks"][1].numpy(), raw["target_goal"])
    assert item["target_q"].item() == pytest.approx(float(raw["goal_q_value"]))

    # augmentation (train split only): one symmetry of the square, the same for all 13 channels
    torch.manual_seed(3)
    ds = QFunctionDataset([f], augment=True)
    views = [ds[0] for _ in range(12)]
    ks = set()
    for view in views:
        both = torch.cat([view["state_masks"], view["action_masks"]])
        raw_both = torch.cat([item["state_masks"], item["action_masks"]])
        match = [k for k in range(8) if torch.equal(both, dihedral(raw_both, k))]
        assert match, "augmented item is not a symmetry of the stored one"
        ks.add(match[0])
    assert len(ks) > 1
    dm_aug = QFunctionDataModule(str(synthetic), num_workers=0, augment=True)
    dm_aug.setup("fit")
    assert dm_aug.splits["train"].augment and not dm_aug.splits["val"].augment


def test_missing_key_names_file_and_key(tmp_path: Path, synthetic: Path) -> None:
    src = np.load(synthetic / "episode_0_goal_0_proposal_0.npz")
    arrays = {k: src[k] for k in src.files if k != "post_action_movable"}
    bad = tmp_path / "episode_3_goal_0_proposal_0.npz"
    np.savez(bad, **arrays)
    with pytest.raises(
        MaskFileError, match=r"episode_3_goal_0_proposal_0\.npz.*post_action_movable"
    ):
        QFunctionDataModule(str(tmp_path), num_workers=0).prepare_data()
    with pytest.raises(
        MaskFileError, match=r"episode_3_goal_0_proposal_0\.npz.*post_action_movable"
    ):
        load_item(bad)
    with pytest.raises(MaskFileError, match="not a directory"):
        QFunctionDataModule(str(tmp_path / "does_not_exist"), num_workers=0).prepare_data()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskFileError, match="no episode_"):
        QFunctionDataModule(str(tmp_path / "empty"), num_workers=0).prepare_data()


def test_ranking_metrics_on_known_inputs() -> None:
    groups = group_ids(np.array([0, 0, 0, 1, 1, 1, 2]), np.array([0, 0, 0, 0, 0, 0, 0]))
    target = np.array([0.1, 0.5, 0.9, 0.3, 0.2, 0.1, 0.7])
    # state 0: same order (rho 1, top-1 hit); state 1: reversed (rho -1, miss); state 2: 1 item
    pred = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 0.0])
    m = ranking_metrics(pred, target, groups)
    assert m == {
        "spearman": pytest.approx(0.0),
        "top1": pytest.approx(0.5),
        "pair_acc": pytest.approx(0.5),  # state 0: 3 of 3 pairs, state 1: 0 of 3
        "states": 2.0,
        "tied_best": 0.0,
        "zero_q": 0.0,
    }
    # a tie-heavy state (MCTS Q 0 for three moves): the prediction orders every pair MCTS tells
    # apart, yet its Spearman stays below 1 (it breaks the ties); pair accuracy is 1
    tq, tp = np.array([0.0, 0.0, 0.0, 0.6, 0.6]), np.array([0.1, -0.2, 0.05, 0.7, 0.5])
    tie = ranking_metrics(tp, tq, np.zeros(5))
    assert tie["pair_acc"] == 1.0 and tie["top1"] == 1.0 and tie["spearman"] < 0.9
    assert tie["tied_best"] == 1.0 and tie["zero_q"] == pytest.approx(0.6)
    assert spearman(np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0])) == pytest.approx(1.0)
    assert spearman(
        np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    ) == pytest.approx(0.8)
    # a constant-target state is unrankable; ties in the target all count as the best
    assert ranking_metrics(np.ones(3), np.ones(3), np.zeros(3))["states"] == 0.0
    assert ranking_metrics(np.array([0.0, 1.0, 0.5]), np.array([1.0, 1.0, 0.0]), np.zeros(3))[
        "top1"
    ] == pytest.approx(1.0)


def _val_mse(model: QFunctionNet, dm: QFunctionDataModule) -> float:
    model.eval()
    errs = []
    with torch.no_grad():
        for b in dm.val_dataloader():
            errs.append((model(b["state_masks"], b["action_masks"]) - b["target_q"]).pow(2))
    return float(torch.cat(errs).mean())


def test_train_entry_lowers_val_mse_and_checkpoint_loads(
    synthetic_larger: Path, tmp_path: Path
) -> None:
    synthetic = synthetic_larger
    from learning.train import compose_config, run

    cfg = compose_config(
        "train_q_function",
        [
            f"data_dir={synthetic}",
            "batch_size=16",
            "max_epochs=12",
            "num_workers=0",
            "image_size=32",
            "base_lr=2e-3",
            "model.hidden_dim=64",
            "model.encoder_channels=[16,32,32,32]",
            f"run_dir={tmp_path / 'run'}",
            "~trainer.callbacks.progress_bar",
            "gpu_id=0",
        ],
    )
    assert cfg.data.val_fraction == 0.1 and cfg.model.input_channels == 13
    torch.manual_seed(0)
    untrained = QFunctionNet(hidden_dim=64, image_size=32, encoder_channels=[16, 32, 32, 32])
    result = run(cfg)
    for key in ("val_loss", "val_spearman", "val_top1", "test_loss", "test_spearman", "test_top1"):
        assert key in result["metrics"], key

    model = QFunctionNet.load_from_checkpoint(result["best_ckpt"], map_location="cpu")
    dm = QFunctionDataModule(str(synthetic), batch_size=16, num_workers=0, split_seed=cfg.seed)
    dm.setup("fit")
    trained_mse, untrained_mse = _val_mse(model, dm), _val_mse(untrained, dm)
    targets = torch.cat([b["target_q"] for b in dm.val_dataloader()])
    assert trained_mse < 0.5 * untrained_mse
    assert trained_mse < float(targets.var())  # better than predicting the mean
    # seed usage: model(state_masks, action_masks) -> (B, 1) on full-size masks
    q = model(torch.rand(3, 11, 64, 64), torch.rand(3, 2, 64, 64))
    assert q.shape == (3, 1)
    assert list(model.hparams.input_shape) == [32, 32]  # from the datamodule's model_kwargs
    # held-out scoring reads every file (no split) of the folder it is given
    from learning.namo.evaluate import evaluate

    held_out = evaluate(result["best_ckpt"], str(synthetic), batch_size=32)
    assert held_out["samples"] == sum(len(ds) for ds in dm.splits.values())
    assert held_out["mse"] < float(targets.var())

    # the generic `python -m learning.export` path (export hooks on QFunctionNet)
    from learning.export import export_checkpoint, parity

    meta = export_checkpoint(result["best_ckpt"], tmp_path / "q_generic.onnx")
    assert meta["model_type"] == "q_function"
    assert meta["inputs"]["state_masks"]["shape"] == [-1, 11, 32, 32]
    assert parity(model, tmp_path / "q_generic.onnx") <= 1e-4


@pytest.mark.parametrize(
    "features", [{}, {"pooled_features": True, "centroid_features": True}], ids=["grid", "all"]
)
def test_onnx_export_parity_and_metadata(tmp_path: Path, features: dict[str, bool]) -> None:
    from learning.export import export_model
    from roboloop_runtime import OnnxModel

    torch.manual_seed(0)
    model = QFunctionNet(
        hidden_dim=32, image_size=32, encoder_channels=[8, 8, 8, 8], **features
    ).eval()
    path = tmp_path / "q.onnx"
    export_model(model, path, mask_size=(64, 64))
    onnx_model = OnnxModel(path, device="cpu")
    meta = onnx_model.metadata
    assert meta["model_type"] == "q_function"
    assert meta["inputs"]["state_masks"] == {"shape": [-1, 11, 64, 64], "dtype": "float32"}
    assert meta["inputs"]["action_masks"] == {"shape": [-1, 2, 64, 64], "dtype": "float32"}
    assert meta["outputs"]["q_values"]["shape"] == [-1, 1]
    assert json.loads(json.dumps(meta["training_config"]))["image_size"] == 32
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        s = rng.random((batch, 11, 64, 64), dtype=np.float32)
        a = rng.random((batch, 2, 64, 64), dtype=np.float32)
        out = onnx_model.run({"state_masks": s, "action_masks": a})["q_values"]
        with torch.no_grad():
            ref = model(torch.from_numpy(s), torch.from_numpy(a)).numpy()
        assert out.shape == (batch, 1)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.skipif(not NAMO_TINY.is_dir(), reason="tests/data/namo_tiny not generated")
def test_namo_tiny_real_masks_train_and_split(tmp_path: Path) -> None:
    """The sim's shipped MCTS mask files: episode split, keys, and val MSE falls in training."""
    from learning.train import compose_config, run

    dm = QFunctionDataModule(str(NAMO_TINY), batch_size=16, num_workers=0, split_seed=42)
    dm.prepare_data()
    dm.setup("fit")
    eps = [{f.episode for f in ds.files} for ds in dm.splits.values()]
    assert all(eps) and not (eps[0] & eps[1] or eps[0] & eps[2] or eps[1] & eps[2])
    h, w = dm.model_kwargs()["input_shape"]
    cfg = compose_config(
        "train_q_function",
        [
            f"data_dir={NAMO_TINY}",
            "batch_size=16",
            "max_epochs=8",
            "num_workers=0",
            f"image_size={h // 2}",
            "model.hidden_dim=64",
            "model.encoder_channels=[16,32,32,32]",
            f"run_dir={tmp_path / 'run'}",
            "~trainer.callbacks.progress_bar",
        ],
    )
    torch.manual_seed(0)
    untrained = QFunctionNet(
        hidden_dim=64, image_size=h // 2, encoder_channels=[16, 32, 32, 32], input_shape=(h, w)
    )
    result = run(cfg)
    model = QFunctionNet.load_from_checkpoint(result["best_ckpt"], map_location="cpu")
    assert _val_mse(model, dm) < 0.5 * _val_mse(untrained, dm)
    assert "val_spearman" in result["metrics"] and "test_top1" in result["metrics"]


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("learning.export", "not a readable torch checkpoint (UnpicklingError"),
        ("learning.namo.evaluate", "not a readable torch checkpoint (UnpicklingError"),
    ],
)
def test_export_clis_reject_a_corrupt_checkpoint_in_one_line(
    tmp_path: Path, module: str, message: str
) -> None:
    import importlib

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(SystemExit) as exit_:
        out = "--data-dir" if module.endswith("evaluate") else "--out"
        importlib.import_module(module).main(["--ckpt", str(garbage), out, str(tmp_path / "x")])
    text = str(exit_.value.code)
    assert "garbage.ckpt" in text and message in text and "\n" not in text


def test_bare_lightning_checkpoint_scores_and_exports_from_python(tmp_path: Path) -> None:
    """docs/q_function.md: the CLI needs a learning.train checkpoint; a bare one loads for
    scoring and exports through export_model."""
    import lightning.pytorch as pl

    from learning.checkpoint import load_lightning
    from learning.export import export_model, main, parity

    torch.manual_seed(0)
    net = QFunctionNet(hidden_dim=16, image_size=8, encoder_channels=[4, 4, 4, 4])
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(net)
    trainer.save_checkpoint(tmp_path / "bare.ckpt")
    with pytest.raises(SystemExit, match="not written by learning.train"):
        main(["--ckpt", str(tmp_path / "bare.ckpt"), "--out", str(tmp_path / "cli.onnx")])
    model = load_lightning(QFunctionNet, tmp_path / "bare.ckpt")
    meta = export_model(model, tmp_path / "q.onnx", mask_size=(16, 16))
    assert meta["inputs"]["state_masks"]["shape"] == [-1, 11, 16, 16]
    assert parity(model, tmp_path / "q.onnx") <= 1e-4


# ---- augmentation geometry: an augmented sample is the sample of the transformed scene ------


def _dihedral_scene(scene, k: int):  # noqa: ANN001, ANN202
    from dataclasses import replace

    from sim.namo.scene import MovableObject, Wall

    side = scene.width
    walls = []
    for w in scene.walls:
        hx, hy = (w.half_y, w.half_x) if k % 2 else (w.half_x, w.half_y)  # a quarter turn swaps
        walls.append(Wall(*dihedral_pose((w.x, w.y), k, side), hx, hy))
    objects = tuple(
        MovableObject(o.object_id, o.half_x, o.half_y, dihedral_pose(o.pose, k, side))
        for o in scene.objects
    )
    return replace(
        scene,
        walls=tuple(walls),
        objects=objects,
        robot_start=dihedral_pose(scene.robot_start, k, side),
        goal=dihedral_pose(scene.goal, k, side),
        doorways=(),  # not read by the transition model or the masks
    )


def _dihedral_state(state, k: int, side: float):  # noqa: ANN001, ANN202
    from sim.namo.transition import NamoState

    return NamoState(
        dihedral_pose(state.robot, k, side), tuple(dihedral_pose(p, k, side) for p in state.poses)
    )


def _tied_reach_cells(model, state, object_id: str) -> set[tuple[int, int]]:  # noqa: ANN001
    """Cells of the object's reach band at the shortest robot distance (the step's candidates)."""
    from sim.namo.grid import distance_to

    info = model.info(state)
    k = model.scene.object_index(object_id)
    band = info.reachable & (distance_to(model.grid, info.footprints[k]) <= model.reach_distance)
    d = np.where(band, info.robot_distance, np.inf)
    return {tuple(int(v) for v in c) for c in np.argwhere(np.isclose(d, d.min(), atol=1e-9))}


def test_dihedral_pose_matches_the_mask_grid_convention() -> None:
    # row 0 = top of the world: rot90 turns the world counter-clockwise, flip(-1) mirrors x
    img = torch.zeros(1, 5, 5)
    img[0, 0, 4] = 1.0  # pixel centre (4.5, 4.5) of a 5 m world, top right
    for k in range(8):
        i, j = (int(v) for v in torch.nonzero(dihedral(img, k)[0])[0])
        x, y = dihedral_pose((4.5, 4.5), k, 5.0)
        assert (x, y) == pytest.approx((j + 0.5, 5.0 - (i + 0.5))), k
    turned = (4.5, 1.0, 0.3 + np.pi / 2 - np.pi)  # wrapped into [-pi/2, pi/2)
    assert dihedral_pose((1.0, 0.5, 0.3), 1, 5.0) == pytest.approx(turned)
    assert dihedral_pose((1.0, 0.5, 0.3), 4, 5.0) == pytest.approx((4.0, 0.5, -0.3))
    with pytest.raises(ValueError, match=r"\(4, 6\) are not square"):
        dihedral(torch.zeros(2, 4, 6), 1)


@pytest.mark.parametrize(("seed", "moved"), [(0, True), (2, False), (5, False), (7, True)])
def test_augmentation_equals_rendering_the_transformed_scene(seed: int, moved: bool) -> None:
    """For all 8 symmetries: rotating/mirroring the scene in world coordinates (walls, objects,
    robot, goal, the proposal's goal pose) and rendering its masks with sim.namo.masks gives
    `dihedral` of the original masks, and the move's cost and outcome (what the MCTS Q is made
    of) are unchanged. The one freedom: when several reach cells tie for the shortest drive, the
    transition model takes the first in raster order, which a rotation may reorder; the
    augmented post-move robot must then be one of the tied cells (seeds 2 and 5 have ties in
    some views; `moved`: the state after one move rather than the scene's start)."""
    from sim.namo.masks import proposal_masks, state_masks
    from sim.namo.scene import generate_scene
    from sim.namo.transition import Proposal, TransitionModel

    size, keys = 64, (*STATE_KEYS, *ACTION_KEYS)
    scene = generate_scene(seed)
    side = scene.width
    model = TransitionModel(scene)
    rng = np.random.default_rng(seed)
    state = model.initial_state()
    proposals = model.proposals(state, 2, rng)
    if moved:
        state = model.step(state, proposals[1]).state
        proposals = model.proposals(state, 2, rng)
    prop = proposals[0]
    step = model.step(state, prop)
    ref = proposal_masks(model, state, prop, size)
    ref_t = torch.from_numpy(np.stack([ref[key] for key in keys]))
    tied_views = 0
    for k in range(8):
        model_k = TransitionModel(_dihedral_scene(scene, k))
        state_k = _dihedral_state(state, k, side)
        prop_k = Proposal(prop.object_id, *dihedral_pose(prop.pose, k, side))
        want = dict(zip(keys, dihedral(ref_t, k).numpy(), strict=True))
        got = proposal_masks(model_k, state_k, prop_k, size)
        for key in (*STATE_KEYS[:8], *ACTION_KEYS):  # the state and the proposed goal pose
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=f"{key} k={k}")
        # the post-move channels: the transformed post-move state renders the augmented ones
        after_k = _dihedral_state(step.state, k, side)
        post = state_masks(model_k, after_k, size)
        for key, src in (
            ("post_action_robot", "robot"),
            ("post_action_movable", "movable"),
            ("post_action_robot_distance", "robot_distance"),
        ):
            np.testing.assert_allclose(post[src], want[key], atol=1e-6, err_msg=f"{key} k={k}")
        # ... and that post-move state is the transformed model's own step, up to reach ties
        step_k = model_k.step(state_k, prop_k)
        np.testing.assert_allclose(step_k.state.poses, after_k.poses, atol=1e-9)
        ties = _tied_reach_cells(model_k, state_k, prop.object_id)
        assert model_k.grid.cell(*after_k.robot) in ties
        tied_views += len(ties) > 1
        if len(ties) == 1:
            for key in ("post_action_robot", "post_action_robot_distance"):
                np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=key)
        # the target: step cost and goal reachability are invariant, so is the MCTS value
        assert step_k.cost == pytest.approx(step.cost, abs=1e-9)
        assert model_k.goal_reached(after_k) == model.goal_reached(step.state)
    assert bool(tied_views) == (seed in (2, 5))  # both branches above are exercised


def test_encoder_comes_from_the_registry_by_config_name(tmp_path: Path) -> None:
    from learning.export import export_model, parity
    from learning.namo.model import CNNEncoder
    from learning.train import compose_config

    cfg = compose_config("train_q_function", ["data_dir=x"])
    assert cfg.model.encoder == "mask_grid" and cfg.model.encoder_kwargs.grid == 4
    cfg = compose_config("train_q_function", ["data_dir=x", "model/q_encoder=resnet18"])
    assert cfg.model.encoder == "resnet18"
    torch.manual_seed(0)
    s, a = torch.rand(3, 11, 32, 32), torch.rand(3, 2, 32, 32)
    for name, kwargs in (("conv", {"feature_dim": 24}), ("resnet18", {})):
        net = QFunctionNet(
            hidden_dim=16,
            image_size=16,
            encoder=name,
            encoder_channels=[16, 16, 16, 16] if name == "resnet18" else [8, 8],
            encoder_kwargs=kwargs,
            input_shape=(32, 32),
        ).eval()
        assert not isinstance(net.encoder, CNNEncoder)
        assert net(s, a).shape == (3, 1)
    # the last one through the ONNX contract, as the planner and q_scorer load it
    export_model(net, tmp_path / "q.onnx", mask_size=(32, 32))
    assert parity(net, tmp_path / "q.onnx") <= 1e-4
    # the default stays the flattened-grid CNN (4 x 4 final map of 128 channels at 56)
    assert isinstance(QFunctionNet().encoder, CNNEncoder)
    assert QFunctionNet().encoder.out_dim == 128 * 4 * 4
    with pytest.raises(ValueError, match=r"unknown image encoder 'vit_huge' \(registered: "):
        QFunctionNet(encoder="vit_huge")


def test_label_noise_researches_the_stored_moves_and_pools_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A second MCTS search of each stored decision (root moves fixed) is scored against the
    stored labels; --write-dir pools the Q of all searches, weighted by their visits."""
    from learning.namo.label_noise import compare_labels, label_noise, main
    from sim.namo.episodes import EpisodeFileError, read_episode, solve_episode, write_episode
    from sim.namo.mcts import MCTSConfig

    budget = 24
    for seed in (1, 3):
        write_episode(solve_episode(seed, MCTSConfig(budget=budget), max_moves=2), tmp_path / "e")
    stored = {p.name: read_episode(p) for p in (tmp_path / "e").glob("episode_*.json")}
    decisions = sum(len(ep["decisions"]) for ep in stored.values())
    proposals = sum(len(d["q_values"]) for ep in stored.values() for d in ep["decisions"])
    assert decisions >= 2
    out = label_noise(tmp_path / "e", seed=5, repeats=2, write_dir=tmp_path / "p", workers=1)
    assert out["samples"] == proposals and 1 <= out["states"] <= decisions
    assert -1.0 <= out["spearman"] <= 1.0 and 0.0 <= out["pair_acc"] <= 1.0
    for name, ep in stored.items():
        pooled = read_episode(tmp_path / "p" / name)
        assert pooled["label_searches"] == 3
        for before, after in zip(ep["decisions"], pooled["decisions"], strict=True):
            assert after["proposals"] == before["proposals"] and after["state"] == before["state"]
            # every search spends its whole budget at the root: visits add up
            assert sum(after["visits"]) == sum(before["visits"]) + 2 * budget
            assert all(0.0 <= q <= 1.0 for q in after["q_values"])
    assert label_noise(tmp_path / "e", seed=5, repeats=2, workers=1) == out  # seeded

    # The same command after a stop searches only the episodes not written yet: the same result.
    first, second = sorted((tmp_path / "p").glob("episode_*.json"))
    kept = second.stat().st_mtime_ns
    first.unlink()
    capsys.readouterr()
    again = label_noise(tmp_path / "e", seed=5, repeats=2, write_dir=tmp_path / "p", workers=1)
    assert again == out and second.stat().st_mtime_ns == kept and first.exists()
    assert "1 of 2 episodes already searched in" in capsys.readouterr().err
    with pytest.raises(
        EpisodeFileError, match=r"searched with other settings \(seed 5, this run 6"
    ):
        label_noise(tmp_path / "e", seed=6, repeats=2, write_dir=tmp_path / "p", workers=1)
    damaged = read_episode(first)
    del damaged["decisions"][0]["first_research_q"]
    write_episode(damaged, tmp_path / "p")
    with pytest.raises(EpisodeFileError, match=r"decision 0: other moves than"):
        label_noise(tmp_path / "e", seed=5, repeats=2, write_dir=tmp_path / "p", workers=1)
    with pytest.raises(ValueError, match=r"is --episodes: write into another folder"):
        label_noise(tmp_path / "e", write_dir=tmp_path / "e" / ".." / "e", workers=1)
    capsys.readouterr()
    main(["--episodes", str(tmp_path / "e"), "--seed", "5", "--repeats", "2", "--workers", "2"])
    printed = capsys.readouterr()
    assert json.loads(printed.out) == out  # the JSON alone on stdout, whatever order on 2 cores
    assert "episodes: 2/2 (100%)" in printed.err  # progress (not a terminal: plain lines)
    with pytest.raises(SystemExit, match="no episode_"):
        main(["--episodes", str(tmp_path)])

    # --fresh: the re-searches alone, so two seeds give independent pools; --compare scores one
    # pool against the other. A pool of the same searches agrees with itself exactly.
    for seed, name in ((5, "a"), (9, "b")):
        label_noise(
            tmp_path / "e",
            seed=seed,
            repeats=2,
            write_dir=tmp_path / f"{name}_fresh",
            workers=1,
            fresh=True,
        )
    for name in stored:
        fresh = read_episode(tmp_path / "a_fresh" / name)
        assert fresh["label_searches"] == 2
        for decision in fresh["decisions"]:
            assert sum(decision["visits"]) == 2 * budget  # the stored search's visits left out
    same = compare_labels(tmp_path / "a_fresh", tmp_path / "a_fresh")
    assert same["spearman"] == pytest.approx(1.0) and same["top1"] == 1.0
    other = compare_labels(tmp_path / "a_fresh", tmp_path / "b_fresh")
    assert other["samples"] == proposals and other["spearman"] < 1.0  # other random streams
    with pytest.raises(SystemExit, match="other moves in"):  # labels of other decisions
        tampered = read_episode(tmp_path / "b_fresh" / name)
        tampered["decisions"][0]["proposals"][0][1] += 0.5  # one goal moved
        write_episode(tampered, tmp_path / "b_fresh")
        main(["--episodes", str(tmp_path / "a_fresh"), "--compare", str(tmp_path / "b_fresh")])


def test_state_batches_and_pairwise_rank_loss(synthetic: Path) -> None:
    from learning.namo.model import group_ids_torch, pairwise_rank_loss

    dm = QFunctionDataModule(
        str(synthetic), batch_size=8, num_workers=0, group_by_state=True, augment=True
    )
    dm.setup("fit")
    train = dm.splits["train"]
    per_state = {}
    for f in train.files:
        per_state[(f.episode, f.goal)] = per_state.get((f.episode, f.goal), 0) + 1
    seen = []
    for batch in dm.train_dataloader():  # 4 proposals per state: 2 whole states per batch
        ids = list(zip(batch["episode"].tolist(), batch["goal"].tolist(), strict=True))
        assert all(ids.count(s) == per_state[s] for s in set(ids)) and len(set(ids)) <= 2
        seen += batch["proposal"].tolist()
    assert len(seen) == len(train)
    assert next(iter(dm.val_dataloader()))["target_q"].shape == (8, 1)  # val: plain batches

    groups = group_ids_torch(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0]))
    target = torch.tensor([0.2, 0.0, 0.5, 0.5])
    right = torch.tensor([1.0, 0.0, 0.0, 0.0])  # state 0 ordered right, state 1 has no pair
    assert float(pairwise_rank_loss(right, target, groups, 0.1)) == pytest.approx(
        float(torch.nn.functional.softplus(torch.tensor(-10.0)))
    )
    wrong = torch.tensor([0.0, 1.0, 0.0, 9.0])
    assert float(pairwise_rank_loss(wrong, target, groups, 0.1)) == pytest.approx(10.0, abs=1e-3)
    # pairs across states never count: no pair inside a state -> 0
    assert float(pairwise_rank_loss(wrong, target, torch.arange(4), 0.1)) == 0.0


def test_top_move_loss_is_cross_entropy_on_each_states_best_move() -> None:
    from learning.namo.model import group_ids_torch, top_move_loss

    # state 0: three moves, the first best; state 1: one Q for both moves (no best: left out)
    groups = group_ids_torch(torch.tensor([0, 0, 0, 1, 1]), torch.zeros(5, dtype=torch.long))
    target = torch.tensor([0.6, 0.1, 0.3, 0.5, 0.5])
    pred = torch.tensor([0.2, 0.4, 0.1, 0.0, 3.0], requires_grad=True)
    want = -torch.log_softmax(pred[:3] / 0.1, 0)[0]
    loss = top_move_loss(pred, target, groups, 0.1)
    assert float(loss) == pytest.approx(float(want))
    loss.backward()
    assert pred.grad[0] < 0 < pred.grad[1] and pred.grad[3:].abs().sum() == 0
    # the best move scored far above the others: ~0; tied best moves share the target
    assert float(top_move_loss(torch.tensor([9.0, 0.0, 0.0]), target[:3], groups[:3], 0.1)) < 1e-6
    tied = top_move_loss(torch.zeros(3), torch.tensor([0.6, 0.6, 0.1]), groups[:3], 0.1)
    assert float(tied) == pytest.approx(float(torch.log(torch.tensor(3.0))))
    assert float(top_move_loss(pred, target, torch.arange(5), 0.1)) == 0.0  # one move a state


def test_cached_dataset_reads_each_file_once(tmp_path: Path, synthetic: Path) -> None:
    import shutil

    shutil.copy(synthetic / "episode_0_goal_0_proposal_0.npz", tmp_path)
    files = find_mask_files(tmp_path)
    ds = QFunctionDataset(files, cache=True, augment=True)
    first = ds[0]
    (tmp_path / "episode_0_goal_0_proposal_0.npz").unlink()  # served from memory from now on
    views = [ds[0] for _ in range(8)]
    assert all(v["target_q"] == first["target_q"] for v in views)
    raw = torch.cat([ds.cache[0]["state_masks"], ds.cache[0]["action_masks"]])
    for v in views:  # the cached item stays as stored while views are augmented
        both = torch.cat([v["state_masks"], v["action_masks"]])
        assert any(torch.equal(both, dihedral(raw, k)) for k in range(8))
    np.testing.assert_array_equal(raw[0].numpy(), np.load(synthetic / files[0].path.name)["robot"])


def test_mask_centroids_read_positions_and_carry_distance() -> None:
    centroids = MaskCentroids(POOL_MASKS, CENTROID_PAIRS)
    x = torch.zeros(2, 13, 32, 32)
    x[0, 11, 4:6, 8:12] = 1.0  # target_object: rows 4-5, columns 8-11
    x[0, 12, 20:22, 8:12] = 0.5  # target_goal 16 rows further down, area-averaged values
    x[1, 0, 31, 31] = 1.0  # robot in the last cell; everything else empty
    out = centroids(x)
    assert out.shape == (2, 2 * len(POOL_MASKS) + len(CENTROID_PAIRS))
    obj, goal = POOL_MASKS.index(11), POOL_MASKS.index(12)
    centres = out[:, : 2 * len(POOL_MASKS)].reshape(2, -1, 2)
    torch.testing.assert_close(centres[0, obj], torch.tensor([10 / 32, 5 / 32]))
    torch.testing.assert_close(centres[0, goal], torch.tensor([10 / 32, 21 / 32]))
    carry = out[:, 2 * len(POOL_MASKS) + CENTROID_PAIRS.index((11, 12))]
    torch.testing.assert_close(carry[0], torch.tensor(0.5))  # 16 of 32 rows
    robot = POOL_MASKS.index(0)
    torch.testing.assert_close(centres[1, robot], torch.tensor([31.5 / 32, 31.5 / 32]))
    assert centres[1, obj].abs().max() == 0  # an empty mask sits at (0, 0)
    # The augmentation's flips and rotations move the centroids but keep their distances.
    for k in range(8):
        moved = centroids(dihedral(x, k))
        torch.testing.assert_close(moved[0, -3:], out[0, -3:], atol=1e-6, rtol=0)
