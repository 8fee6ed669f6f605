"""Goal proposals judged by what they achieve: valid-move rate, best-of-K Q (learned, MCTS with
the root moves fixed), planner success, and the quality table's command that reports them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from learning.generative.proposals import (
    Item,
    _target_masks,
    episode_items,
    proposal_metrics,
)

TINY = Path(__file__).parent / "data" / "namo_tiny"
EPISODES = TINY / "episodes"
K = 4


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return episode_items(EPISODES)


@pytest.fixture(scope="module")
def q_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learning.export import export_model
    from learning.namo.model import QFunctionNet

    torch.manual_seed(0)
    net = QFunctionNet(hidden_dim=16, image_size=32, encoder_channels=[4, 4, 4, 4])
    path = tmp_path_factory.mktemp("proposals") / "q.onnx"
    export_model(net, path, mask_size=(32, 32))
    return path


class Oracle:
    """Returns the MCTS root proposals of the item being asked (rendered at 64 px, cycled to K)."""

    image_size, threshold = 64, 0.5

    def __init__(self, items: list[Item]):
        self.queue = list(items)

    def propose(self, scene: np.ndarray) -> np.ndarray:
        item = self.queue.pop(0)
        masks = _target_masks(item, item.targets, self.image_size).astype(np.float32)
        return masks[np.arange(K) % len(masks)]


class Blank:
    image_size, threshold = 64, 0.5  # the oracle's size: IoUs are rendered at it

    def propose(self, scene: np.ndarray) -> np.ndarray:
        return np.zeros((K, 64, 64), np.float32)


def test_items_are_mcts_decisions_per_object(items: list[Item]) -> None:
    assert len(items) >= 10
    for item in items[:10]:
        ids = {p.object_id for p in item.targets}
        assert ids == {item.model.scene.objects[item.k].object_id}
        assert item.k in item.model.reachable_objects(item.state)


def test_oracle_and_blank_generators(items: list[Item], q_model: Path) -> None:
    from learning.namo.scoring import make_scorer

    scorer = make_scorer(q_model, "cpu", 1)
    oracle = proposal_metrics(Oracle(items), items, scorer, mcts_budget=8, seed=3)
    blank = proposal_metrics(Blank(), items, scorer, mcts_budget=8, seed=3)
    assert oracle["items"] == blank["items"] == len(items)
    assert oracle["masks"] == blank["masks"] == K * len(items)
    # The MCTS targets themselves: IoU exactly 1; as moves, all but the few whose pose,
    # recovered from a 64 px mask, lands a hair onto the robot's reach position are valid.
    assert oracle["target_iou"] == 1.0
    assert 0.95 <= oracle["valid_rate"] <= 1.0
    assert oracle["q_learned_items"] >= 0.95 * len(items)
    assert math.isfinite(oracle["q_learned_generated"])
    assert oracle["q_mcts_generated"] > 0.5  # MCTS found these moves solve the scene
    # Blank masks: no pose, no move, nothing to score; MCTS scores an empty set as failure.
    assert blank["target_iou"] == 0.0 and blank["valid_rate"] == 0.0
    assert blank["q_learned_items"] == 0 and math.isnan(blank["q_learned_generated"])
    assert blank["q_mcts_generated"] == 0.0
    # The uniform reference is the same for every generator (same seed, same K).
    for key in ("q_mcts_uniform", "uniform_iou", "uniform_q_learned", "uniform_valid_rate"):
        assert oracle[key] == blank[key], key
    assert 0 < blank["q_mcts_uniform"] <= 1 and 0 < blank["uniform_iou"] < 1


def test_mcts_search_with_fixed_root_moves() -> None:
    from sim.namo.mcts import MCTS, MCTSConfig
    from sim.namo.scene import doorway_scene
    from sim.namo.transition import TransitionModel

    model = TransitionModel(doorway_scene())
    state = model.initial_state()
    best = MCTS(model, MCTSConfig(budget=40, seed=0)).search(state).best
    step = model.step(state, best)
    assert model.goal_reached(step.state)
    result = MCTS(model, MCTSConfig(budget=5, seed=1)).search(state, [best])
    assert result.proposals == [best] and result.visits.tolist() == [5]
    # One move that reaches the goal: every simulation returns exactly its cost-discounted 1.
    expected = 1.0 - step.cost - model.final_cost(step.state)
    assert result.q_values[0] == pytest.approx(expected, abs=1e-6)
    assert MCTS(model, MCTSConfig(budget=5)).search(state, []).best_index == -1


def test_quality_command_reports_proposal_columns(
    q_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from learning.generative.quality import main
    from learning.train import compose_config, run

    cfg = compose_config(
        "train_fb_flow_matching",
        [
            f"data.data_dir={TINY}",
            f"run_dir={tmp_path / 'fm'}",
            "network=dit_tiny",
            "image_size=32",
            "batch_size=16",
            "num_workers=0",
            "max_epochs=1",
            "model.sample_every_n_epochs=0",
            "~trainer.callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
        ],
    )
    ckpt = run(cfg)["last_ckpt"]
    out = tmp_path / "rows.json"
    main(
        ["--quick", "--data-dir", str(TINY), "--fm-ckpt", ckpt, "--models", "flow_matching",
         "--episodes", str(EPISODES), "--q-model", str(q_model), "--mcts-budget", "4",
         "--proposals", str(K), "--max-items", "3", "--planner-seeds", "2", "--max-moves", "2",
         "--out", str(out)]
    )  # fmt: skip
    rows = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert all(h in text for h in ("valid", "Q_learn unif", "Q_MCTS unif", "success")), text
    judged = [r for r in rows if "valid_rate" in r]
    assert {r["sampler"] for r in judged} >= {"euler", "uniform_proposals"}, rows
    for r in judged:
        assert r["items"] == 3 and r["masks"] == 3 * K
        assert 0 <= r["valid_rate"] <= 1 and 0 <= r["q_mcts_generated"] <= 1
        assert r["planner_episodes"] == 2 and 0 <= r["planner_success"] <= 1
    (ref,) = [r for r in rows if r["model"] == "reference"]
    assert ref["planner"] == "learned_q" and ref["q_mcts_generated"] == ref["q_mcts_uniform"]
    dit = [r for r in judged if r["model"] == "flow_matching"]
    assert dit and all(r["planner"] == "dit_q" for r in dit)
    # Every generator row is paired with the same uniform reference.
    assert {r["q_mcts_uniform"] for r in judged} == {ref["q_mcts_uniform"]}
