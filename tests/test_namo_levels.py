"""NAMO difficulty levels: deterministic, solvable scenes with the stated properties."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sim.namo.episodes import read_episode, solve_episode, write_episode
from sim.namo.levels import scene_properties
from sim.namo.mask_generation import render_episode
from sim.namo.mcts import MCTSConfig
from sim.namo.mujoco_model import check_plan
from sim.namo.planners import make_planner
from sim.namo.scene import LEVELS, ChainConfig, Scene, SceneConfig, generate_scene
from sim.namo.transition import TransitionModel

TINY = Path(__file__).parent / "data" / "namo_tiny" / "episodes"
SEEDS = range(100_000, 100_004)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_is_deterministic_per_seed(level: str) -> None:
    scenes = [generate_scene(s, level=level) for s in SEEDS]
    assert scenes == [generate_scene(s, level=level) for s in SEEDS]
    assert len({json.dumps(s.to_dict()) for s in scenes}) == len(scenes)
    assert all(s.width == s.height == 5.0 for s in scenes)  # same mask scale at every level


def test_easy_is_the_generator_the_shipped_data_was_made_with() -> None:
    for path in sorted(TINY.glob("episode_*.json"))[:4]:
        episode = read_episode(path)  # written before levels: no "level" key, still read
        assert "level" not in episode
        scene = Scene.from_dict(episode["scene"])
        assert scene == generate_scene(episode["episode"], level="easy")
        assert scene == generate_scene(episode["episode"])


def _goal_open_without(scene, removed: tuple[int, ...]) -> bool:
    kept = tuple(o for k, o in enumerate(scene.objects) if k not in removed)
    model = TransitionModel(replace(scene, objects=kept))
    return model.goal_reached(model.initial_state())


@pytest.mark.parametrize(("level", "chain"), [("medium", 2), ("hard", 3)])
def test_chain_levels_have_walls_chains_and_distractors(level: str, chain: int) -> None:
    cfg = LEVELS[level].config
    for seed in SEEDS:
        scene = generate_scene(seed, level=level)
        props = scene_properties(scene)
        # Main wall (2 pieces), 2 thick corridor walls, start-room wall (2 pieces).
        assert props.interior_walls == 6 and props.doorways == 2
        assert props.min_moves == chain == len(props.chain) and props.solvable
        assert cfg.distractors[0] <= len(props.distractors) <= cfg.distractors[1]
        assert props.reachable_distractors >= cfg.reachable_distractors
        assert props.distractors_open_nothing
        # Independently of the search: lifting out fewer boxes than the chain never opens the
        # goal, not even with every distractor gone as well.
        idx = {o.object_id: k for k, o in enumerate(scene.objects)}
        off = tuple(idx[d] for d in props.distractors)
        for n in range(chain):
            for lifted in itertools.combinations(range(len(scene.objects)), n):
                assert not _goal_open_without(scene, lifted), (seed, lifted)
        for lifted in itertools.combinations([idx[c] for c in props.chain], chain - 1):
            assert not _goal_open_without(scene, lifted + off), (seed, lifted)
        # The plan is made of real moves and solves the scene.
        model = TransitionModel(scene)
        state = model.initial_state()
        for proposal in props.plan:
            assert model.check(state, proposal) is None
            state = model.step(state, proposal).state
        assert model.goal_reached(state)


def test_easy_properties_match_its_description() -> None:
    props = [scene_properties(generate_scene(s)) for s in range(12)]
    assert all(p.min_moves in (0, 1, 2) and p.solvable for p in props)
    assert any(p.min_moves == 1 for p in props)


def test_a_hard_plan_holds_up_in_mujoco() -> None:
    scene = generate_scene(SEEDS[0], level="hard")
    check = check_plan(
        TransitionModel(scene), list(scene_properties(scene).plan), drive_to_goal=True
    )
    assert check.ok, check.failures()


def test_level_errors_are_one_line() -> None:
    with pytest.raises(KeyError, match="unknown NAMO level 'extreme'"):
        generate_scene(0, level="extreme")
    with pytest.raises(TypeError, match="level 'hard' takes a ChainConfig, got SceneConfig"):
        generate_scene(0, SceneConfig(), level="hard")
    with pytest.raises(ValueError, match="world must be square"):
        generate_scene(0, ChainConfig("hard", width=6.0), level="hard")


def test_episode_records_level_and_masks_render(tmp_path: Path) -> None:
    episode = solve_episode(3, MCTSConfig(budget=8), max_moves=1, level="medium")
    assert episode["level"] == "medium" and len(episode["decisions"]) == 1
    path = write_episode(episode, tmp_path)
    assert Scene.from_dict(read_episode(path)["scene"]) == generate_scene(3, level="medium")
    (tmp_path / "masks").mkdir()
    written = render_episode(path, tmp_path / "masks", size=32)
    assert written == len(episode["decisions"][0]["proposals"]) >= 2
    with np.load(next((tmp_path / "masks").glob("*.npz"))) as data:
        assert data["static"].shape == (32, 32) and data["static"].any()


def test_evaluate_cli_level_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from learning.namo.evaluate_planners import main

    out = tmp_path / "r.json"
    main(["--planners", "random", "--level", "hard", "--seeds", "100000", "--out", str(out)])
    assert "planner episodes (hard): 1/1 (100%)" in capsys.readouterr().out  # not a terminal
    payload = json.loads(out.read_text())
    assert payload["level"] == "hard" and payload["rows"][0]["level"] == "hard"
    assert payload["rows"][0]["decisions"] >= 1  # a hard scene never starts solved


@pytest.mark.parametrize(
    ("level", "seeds"),
    [
        ("medium", SEEDS[:1]),
        ("hard", SEEDS[:1]),
        pytest.param("medium", SEEDS, marks=pytest.mark.slow),
        pytest.param("hard", SEEDS, marks=pytest.mark.slow),
    ],
)
def test_mcts_with_a_generous_budget_solves_the_levels(level: str, seeds: range) -> None:
    planner = make_planner("mcts", budget=200)
    for seed in seeds:
        model = TransitionModel(generate_scene(seed, level=level))
        planner.reset(model, seed)
        state = model.initial_state()
        for _ in range(6):
            if model.goal_reached(state):
                break
            state = model.step(state, planner.choose(state)).state
        assert model.goal_reached(state), (level, seed)
