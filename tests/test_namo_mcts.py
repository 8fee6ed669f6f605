"""sim.namo.mcts: UCT finds the known solutions of hand-built scenes; Q for every proposal."""

from __future__ import annotations

import numpy as np

from sim.namo.mcts import MCTS, MCTSConfig
from sim.namo.scene import doorway_scene, generate_scene
from sim.namo.transition import TransitionModel


def test_one_box_in_the_only_doorway_is_moved_and_solves_it() -> None:
    model = TransitionModel(doorway_scene())
    state = model.initial_state()
    assert not model.goal_reached(state)
    result = MCTS(model, MCTSConfig(budget=30, seed=0)).search(state)
    assert result.best is not None and result.best.object_id == "door"
    after = model.step(state, result.best)
    assert model.goal_reached(after.state)
    # Q = 1 - costs of the one move and the drive to the goal (the search found that exactly).
    expected = 1.0 - after.cost - model.final_cost(after.state)
    assert result.q_values[result.best_index] == np.float32(expected)
    assert (result.visits > 0).all() and result.q_values.shape == (len(result.proposals),)


def test_choice_between_two_boxes_prefers_the_one_that_unblocks() -> None:
    model = TransitionModel(doorway_scene(distractor=True))
    state = model.initial_state()
    result = MCTS(model, MCTSConfig(budget=60, seed=1)).search(state)
    ids = np.array([p.object_id for p in result.proposals])
    assert {"door", "side"} <= set(ids)
    assert result.best.object_id == "door"
    door_q, side_q = result.q_values[ids == "door"], result.q_values[ids == "side"]
    # Moving the side box solves nothing by itself; its value comes only from a second move
    # (of the door box), which costs at least one more move_cost than the best door move.
    sides = [p for p in result.proposals if p.object_id == "side"]
    assert not any(model.goal_reached(model.step(state, p).state) for p in sides)
    assert side_q.max() < door_q.max() - 0.05
    assert model.goal_reached(model.step(state, result.best).state)


def test_unvisited_root_proposals_get_q_zero_and_search_is_deterministic() -> None:
    model = TransitionModel(generate_scene(4))
    state = model.initial_state()
    small = MCTS(model, MCTSConfig(budget=3, seed=2)).search(state)
    assert len(small.proposals) > 3 and small.simulations == 3
    assert (small.visits == 0).sum() == len(small.proposals) - 3
    assert (small.q_values[small.visits == 0] == 0.0).all()
    a = MCTS(model, MCTSConfig(budget=25, seed=5)).search(state)
    b = MCTS(TransitionModel(generate_scene(4)), MCTSConfig(budget=25, seed=5)).search(state)
    assert a.proposals == b.proposals
    np.testing.assert_array_equal(a.q_values, b.q_values)
    np.testing.assert_array_equal(a.visits, b.visits)


def test_solved_state_has_no_search_and_generated_scenes_get_solved() -> None:
    for seed in (1, 3, 6):
        model = TransitionModel(generate_scene(seed))
        search, state, moves = MCTS(model, MCTSConfig(budget=30, seed=seed)), None, 0
        state = model.initial_state()
        while not model.goal_reached(state) and moves < 4:
            state = model.step(state, search.search(state).best).state
            moves += 1
        assert model.goal_reached(state), seed
