"""learned_q planner: proposals from the sim's transition model, one batch, argmax executed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from learning.namo.planner import LearnedQPlanner
from sim.namo.keys import ACTION_KEYS, STATE_KEYS

SIZE = 32


def _grid_masks(model, state, proposal) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Stand-in mask builder: every channel marks the proposal's target cell on a 32 grid."""
    m = np.zeros((SIZE, SIZE), np.float32)
    i = min(int(proposal.y / model.scene.height * SIZE), SIZE - 1)
    j = min(int(proposal.x / model.scene.width * SIZE), SIZE - 1)
    m[i, j] = 1.0
    return {k: m for k in (*STATE_KEYS, *ACTION_KEYS)}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learning.export import export_model
    from learning.namo.model import QFunctionNet

    torch.manual_seed(0)
    model = QFunctionNet(hidden_dim=32, image_size=SIZE, encoder_channels=[8, 8, 8, 8])
    path = tmp_path_factory.mktemp("qp") / "q.onnx"
    export_model(model, path, mask_size=(SIZE, SIZE))
    return path


def test_learned_q_acts_on_the_best_valid_proposal(onnx_model: Path) -> None:
    from sim.namo.scene import generate_scene
    from sim.namo.transition import TransitionModel

    model = TransitionModel(generate_scene(3))
    state = model.initial_state()
    planner = LearnedQPlanner(str(onnx_model), proposals_per_object=4, mask_fn=_grid_masks)
    decision = planner.decide(model, state)
    assert len(decision.proposals) >= 2 and decision.q_values.shape == (len(decision.proposals),)
    assert decision.proposal is decision.proposals[int(np.argmax(decision.q_values))]
    assert model.check(state, decision.proposal) is None  # the sim accepts the move
    assert 0.0 < decision.network_seconds <= decision.seconds
    # the same seed gives the same decision; the registry string form resolves or says why
    planner.reset()
    assert planner(model, state) == decision.proposal
    with pytest.raises(ImportError, match="no_such_module"):
        LearnedQPlanner(str(onnx_model), mask_fn="no_such_module:f")


def test_learned_q_with_the_sim_mask_builder(onnx_model: Path) -> None:
    from sim.namo.scene import generate_scene
    from sim.namo.transition import TransitionModel

    model = TransitionModel(generate_scene(5))
    state = model.initial_state()
    # default mask builder "sim.namo.masks:proposal_masks", rendered at the model's 32 x 32
    planner = LearnedQPlanner(str(onnx_model), proposals_per_object=2)
    decision = planner.decide(model, state)
    assert decision.proposal is not None and model.check(state, decision.proposal) is None
    assert decision.q_values.shape == (len(decision.proposals),)
