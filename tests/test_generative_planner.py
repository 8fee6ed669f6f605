"""dit_q planner: generated goal masks -> sim poses -> Q-scored in one batch -> argmax executed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from learning.generative.planner import DiTQPlanner, mask_to_pose, scene_masks
from sim.namo.keys import ACTION_KEYS, STATE_KEYS

SIZE = 32


@pytest.fixture(scope="module")
def namo():
    from sim.namo.scene import generate_scene
    from sim.namo.transition import TransitionModel

    model = TransitionModel(generate_scene(3))
    return model, model.initial_state()


@pytest.fixture(scope="module")
def q_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learning.export import export_model
    from learning.namo.model import QFunctionNet

    torch.manual_seed(0)
    net = QFunctionNet(hidden_dim=32, image_size=SIZE, encoder_channels=[8, 8, 8, 8])
    path = tmp_path_factory.mktemp("dq") / "q.onnx"
    export_model(net, path, mask_size=(SIZE, SIZE))
    return path


def _q_masks(model, state, proposal) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Stand-in for the sim's Q mask builder: the proposal's target object footprint."""
    from sim.namo.grid import Grid, rasterize_rect

    k = model.scene.object_index(proposal.object_id)
    o = model.scene.objects[k]
    g = Grid.image(model.scene.width, model.scene.height, SIZE)
    m = rasterize_rect(g, *proposal.pose, o.half_x, o.half_y).astype(np.float32)
    return {key: m for key in (*STATE_KEYS, *ACTION_KEYS)}


def test_mask_to_pose_recovers_sim_poses(namo) -> None:
    from sim.namo.grid import Grid, rasterize_rect

    model, state = namo
    g = Grid.image(model.scene.width, model.scene.height, 128)
    proposals = model.proposals(state, 6, np.random.default_rng(0))
    assert proposals
    for p in proposals:
        o = model.scene.objects[model.scene.object_index(p.object_id)]
        mask = rasterize_rect(g, *p.pose, o.half_x, o.half_y)
        x, y, yaw = mask_to_pose(mask, g.width, g.height, o.half_x, o.half_y)
        assert abs(x - p.x) < g.res_x and abs(y - p.y) < g.res_y
        if abs(o.half_x - o.half_y) > 0.2 * max(o.half_x, o.half_y):  # yaw defined mod pi
            diff = (yaw - p.theta + math.pi / 2) % math.pi - math.pi / 2
            assert abs(diff) < 0.15, (p, yaw)
    assert mask_to_pose(np.zeros((8, 8), bool), 1.0, 1.0, 0.2, 0.1) is None


class OracleGenerator:
    """Goal masks = footprints of the sim's own valid proposals for the scene's target object."""

    image_size, threshold = SIZE, 0.5

    def __init__(self, model, state, k: int = 3):  # noqa: ANN001
        self.model, self.state, self.k, self.rng = model, state, k, np.random.default_rng(1)

    def propose(self, scene: np.ndarray) -> np.ndarray:
        from sim.namo.grid import Grid, rasterize_rect

        m, g = self.model, Grid.image(self.model.scene.width, self.model.scene.height, SIZE)
        objs = m.scene.objects
        feet = [
            rasterize_rect(g, *pose, o.half_x, o.half_y)
            for o, pose in zip(objs, self.state.poses, strict=True)
        ]
        k = int(np.argmax([(f & (scene[..., 4] > 0.5)).sum() for f in feet]))
        props = m.proposals(self.state, self.k, self.rng, objects=[k])
        return np.stack(
            [rasterize_rect(g, *p.pose, objs[k].half_x, objs[k].half_y) for p in props]
        ).astype(np.float32)


def test_dit_q_scores_generated_proposals_and_acts_on_the_best(namo, q_model: Path) -> None:
    model, state = namo
    context = scene_masks(model, state, model.reachable_objects(state)[0], SIZE)
    assert context.shape == (SIZE, SIZE, 5) and context.dtype == np.float32
    assert all(context[..., c].any() for c in range(5))  # robot, goal, movable, static, target
    planner = DiTQPlanner(OracleGenerator(model, state), str(q_model), mask_fn=_q_masks)
    decision = planner.decide(model, state)
    assert not decision.fallback and decision.generated >= decision.valid >= 2
    assert decision.valid == len(decision.proposals)
    assert decision.proposal is decision.proposals[int(np.argmax(decision.q_values))]
    assert model.check(state, decision.proposal) is None
    assert planner.name == "dit_q"


def test_dit_q_with_an_onnx_generator_runs_or_falls_back_loudly(
    namo, q_model: Path, tmp_path: Path
) -> None:
    from hydra.utils import instantiate

    from learning.export import export_model
    from learning.train import compose_config

    cfg = compose_config(
        "train_fb_flow_matching",
        ["network=dit_tiny", f"image_size={SIZE}", "model.sampler.method=euler"]
        + ["sampling_steps=2"],
    )
    torch.manual_seed(0)
    gen = instantiate(cfg.model, _convert_="all").eval()
    export_model(gen, tmp_path / "g.onnx", training_config={})
    model, state = namo
    planner = DiTQPlanner(str(tmp_path / "g.onnx"), str(q_model), 4, mask_fn=_q_masks)
    decision = planner.decide(model, state)
    assert decision.generated == 4 * len(model.reachable_objects(state))
    # An untrained generator rarely yields valid poses: then uniform proposals are scored and
    # the fallback is reported, never hidden.
    assert decision.fallback == (decision.valid == 0) and planner.fallbacks == int(
        decision.fallback
    )
    assert decision.proposal is None or model.check(state, decision.proposal) is None


def test_remote_planner_over_transports_decides_like_the_local_one(namo, q_model: Path) -> None:
    """namo_planner's logic: generator and scorer behind request/reply transports (here the
    local models through the wire layouts) decide exactly as dit_q in-process, timed."""
    from roboloop_namo.planning import (
        RemoteGenerator,
        RemoteScorer,
        ReplyError,
        make_remote_planner,
        plan_episode,
    )

    from sim.namo.layout import split_request
    from sim.namo.masks import SizedMasks
    from sim.namo.scoring import OnnxQScorer

    model, state = namo
    scorer, oracle = OnnxQScorer(q_model, "cpu"), OracleGenerator(model, state)
    remote = make_remote_planner(
        RemoteGenerator(lambda scene: oracle.propose(scene).transpose(1, 2, 0), SIZE),
        RemoteScorer(lambda request: scorer.score(*split_request(request)).q_values, (SIZE, SIZE)),
    )
    local = DiTQPlanner(OracleGenerator(model, state), str(q_model), mask_fn=SizedMasks(SIZE))
    ours, theirs = remote.decide(model, state), local.decide(model, state)
    assert ours.proposals == theirs.proposals and ours.proposal == theirs.proposal
    np.testing.assert_allclose(ours.q_values, theirs.q_values, atol=1e-6)
    (record, *_) = plan_episode(remote, model, max_moves=1)
    assert record.object_id == ours.proposal.object_id and not record.fallback
    assert 0 < record.generator_s and 0 < record.scorer_s < record.decision_s
    assert record.network_s == record.generator_s + record.scorer_s < record.decision_s
    short = RemoteScorer(lambda request: np.zeros(1, np.float32), (SIZE, SIZE))
    bad = make_remote_planner(RemoteGenerator(remote.generator.ask, SIZE), short)
    with pytest.raises(ReplyError, match="1 Q-values for"):
        bad.decide(model, state)


def test_planner_stats_are_counts_and_sums_over_every_decision() -> None:
    """/diagnostics' means cover every decision of the node's life in constant memory."""
    from roboloop_namo.planning import DecisionRecord, PlannerStats

    stats = PlannerStats()
    assert stats.values() == {"episodes": "0", "solved": "0", "decisions": "0"}
    for i in range(10_000):
        stats.record(
            DecisionRecord(
                move=i % 3, object_id="box", x=1.0, y=2.0, theta=0.0, q=0.5, generated=8,
                valid=8 - i % 2, fallback=i % 4 == 0, decision_s=0.001 * (i % 10 + 1),
                generator_s=0.002, scorer_s=0.001 * (i % 2), goal_reached=False,
            )
        )  # fmt: skip
    values = stats.values()
    assert values["decisions"] == "10000" and values["fallbacks"] == "2500"
    assert values["mean_decision_ms"] == "5.5"  # 1..10 ms, equally often
    assert values["mean_network_ms"] == "2.5"  # 2 ms + 0 or 1 ms
    assert values["last_decision_ms"] == "10.0" and values["last_valid"] == "7"
    assert not any(isinstance(v, list) for v in vars(stats).values())  # nothing grows
