"""sim.namo.masks: channel semantics, ranges and determinism; the files both models load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from roboloop_testing.damage import damage
from sim.namo.grid import Grid, rasterize_disc, rasterize_rect
from sim.namo.keys import ACTION_KEYS, CONTEXT_KEYS, SEED001_ALIASES, STATE_KEYS
from sim.namo.mask_files import MaskFileError, load_sample
from sim.namo.masks import proposal_masks, sample_arrays
from sim.namo.scene import doorway_scene, generate_scene
from sim.namo.transition import TransitionModel

BINARY = ("robot", "goal", "movable", "static", "reachable", "post_action_robot")
BINARY += ("post_action_movable", "target_object", "target_goal")
DISTANCES = ("robot_distance", "goal_distance", "combined_distance", "post_action_robot_distance")


@pytest.fixture(scope="module")
def pixel_model() -> TransitionModel:
    """Planning grid == 100 x 100 image grid, so masks are the model's own arrays."""
    scene = generate_scene(4)
    return TransitionModel(scene, grid=Grid.image(scene.width, scene.height, 100))


def _move(model: TransitionModel, seed: int = 0):
    state = model.initial_state()
    proposals = model.proposals(state, 2, np.random.default_rng(seed))
    assert proposals
    return state, proposals


def test_keys_dtypes_ranges_and_determinism() -> None:
    model = TransitionModel(generate_scene(3))
    state, proposals = _move(model)
    masks = proposal_masks(model, state, proposals[0], size=48)
    assert set(masks) == set(STATE_KEYS) | set(ACTION_KEYS)
    for key, m in masks.items():
        assert m.shape == (48, 48) and m.dtype == np.float32, key
        assert 0.0 <= m.min() and m.max() <= 1.0, key
    for key in BINARY:
        assert set(np.unique(masks[key])) <= {0.0, 1.0}, key
        assert masks[key].any(), key
    # A fresh model (no caches) gives identical arrays.
    again = proposal_masks(TransitionModel(generate_scene(3)), state, proposals[0], size=48)
    for key in masks:
        np.testing.assert_array_equal(masks[key], again[key], err_msg=key)
    arrays = sample_arrays(model, state, proposals[0], 0.5, size=48)
    for alias, key in SEED001_ALIASES.items():
        np.testing.assert_array_equal(arrays[alias], masks[key])
    assert arrays["goal_q_value"].dtype == np.float32 and arrays["object_id"].dtype.kind == "U"
    np.testing.assert_allclose(arrays["goal_coordinates"], proposals[0].pose, atol=1e-6)


def test_reachable_is_flood_fill_of_free_space_from_robot(pixel_model: TransitionModel) -> None:
    model = pixel_model
    state, proposals = _move(model)
    masks = proposal_masks(model, state, proposals[0], size=100)
    g, scene = model.grid, model.scene
    occupied = np.zeros(g.shape, bool)
    for w in scene.walls:
        occupied |= rasterize_rect(g, w.x, w.y, 0.0, w.half_x, w.half_y)
    for o, pose in zip(scene.objects, state.poses, strict=True):
        occupied |= rasterize_rect(g, *pose, o.half_x, o.half_y)
    occupied[0, :] = occupied[-1, :] = occupied[:, 0] = occupied[:, -1] = True
    free = ndimage.distance_transform_edt(~occupied, sampling=g.sampling) > model.inflation
    labels, _ = ndimage.label(free, structure=np.ones((3, 3), bool))
    expected = labels == labels[g.cell(*state.robot)]
    np.testing.assert_array_equal(masks["reachable"] > 0.5, expected)
    assert masks["reachable"][g.cell(*scene.goal)] == 0.0  # scene 4 starts blocked


def test_distance_fields_zero_at_source_one_where_unreachable(pixel_model) -> None:  # noqa: ANN001
    model = pixel_model
    state, proposals = _move(model)
    masks = proposal_masks(model, state, proposals[0], size=100)
    g = model.grid
    rc, gc = g.cell(*state.robot), g.cell(*model.scene.goal)
    assert masks["robot_distance"][rc] == 0.0 and masks["goal_distance"][gc] == 0.0
    assert masks["combined_distance"][rc] == pytest.approx(masks["goal_distance"][rc] / 2)
    after = model.step(state, proposals[0]).state
    assert masks["post_action_robot_distance"][g.cell(*after.robot)] == 0.0
    reach = masks["reachable"] > 0.5
    assert (masks["robot_distance"][~reach] == 1.0).all()
    assert (masks["robot_distance"][reach] < 1.0).all()
    assert (masks["static"] > 0.5)[masks["goal_distance"] < 1.0].sum() == 0  # walls never < 1
    # Geodesic: one step between 4-neighbours in the reachable region changes it by <= 1 cell.
    d = masks["robot_distance"]
    step = g.res_x / (g.width + g.height) + 1e-6
    both = reach[:, 1:] & reach[:, :-1]
    assert (np.abs(d[:, 1:] - d[:, :-1])[both] <= step).all()


def test_post_action_masks_change_exactly_where_the_object_moved() -> None:
    model = TransitionModel(generate_scene(4))
    state, proposals = _move(model, seed=1)
    for p in proposals[:4]:
        m = proposal_masks(model, state, p, size=96)
        moved = (m["target_object"] > 0.5) ^ (m["target_goal"] > 0.5)
        diff = m["movable"] != m["post_action_movable"]
        np.testing.assert_array_equal(diff, moved)
        after = model.step(state, p).state
        g = Grid.image(model.scene.width, model.scene.height, 96)
        disc = rasterize_disc(g, *after.robot, model.scene.robot_radius)
        np.testing.assert_array_equal(m["post_action_robot"] > 0.5, disc)
        # The 8 pre-action channels do not depend on the proposal.
        first = proposal_masks(model, state, proposals[0], size=96)
        for key in STATE_KEYS[:8]:
            np.testing.assert_array_equal(m[key], first[key])


def test_invalid_move_is_refused_with_reason() -> None:
    model = TransitionModel(doorway_scene())
    state = model.initial_state()
    from sim.namo.transition import Proposal

    with pytest.raises(ValueError, match="collides with a wall"):
        proposal_masks(model, state, Proposal("door", 2.0, 0.4, 0.0), size=32)


def test_collector_files_load_for_both_models_through_one_alias_table(tmp_path: Path) -> None:
    """A file the collector writes feeds the goal generator and the Q-function; one without the
    seed-001 names loads the same (SEED001_ALIASES); both loaders fail with MaskFileError."""
    from learning.namo.data import load_item

    model = TransitionModel(generate_scene(3))
    state, proposals = _move(model)
    arrays = sample_arrays(model, state, proposals[0], 0.5, size=32)
    both = tmp_path / "episode_0_goal_0_proposal_0.npz"
    np.savez(both, **arrays)
    np.savez(
        tmp_path / "seed000.npz", **{k: v for k, v in arrays.items() if k not in SEED001_ALIASES}
    )
    context, target = load_sample(both)
    np.testing.assert_array_equal(context, load_sample(tmp_path / "seed000.npz")[0])
    for i, key in enumerate(CONTEXT_KEYS):
        np.testing.assert_array_equal(context[i], arrays[SEED001_ALIASES.get(key, key)], key)
    np.testing.assert_array_equal(target, arrays["target_goal"])
    item = load_item(both)
    np.testing.assert_array_equal(item["state_masks"][0].numpy(), arrays["robot"])
    del arrays["robot"], arrays["robot_image"]
    np.savez(tmp_path / "no_robot.npz", **arrays)
    with pytest.raises(
        MaskFileError,
        match=r"no_robot\.npz: missing key 'robot_image' \(or its seed-000 name 'robot'\)",
    ):
        load_sample(tmp_path / "no_robot.npz")
    with pytest.raises(MaskFileError, match=r"no_robot\.npz: missing key 'robot'"):
        load_item(tmp_path / "no_robot.npz")


def test_damaged_mask_files_are_one_line_errors(tmp_path: Path) -> None:
    """Flips and truncations (fixed seed) of a compressed mask file (what the collector
    writes): both loaders return the masks or raise one MaskFileError line naming the file.
    Before, numpy and zipfile's BadZipFile, zlib.error, NotImplementedError, EOFError and
    RuntimeError came out as tracebacks (948 of 2,000 loads, 1,000 cases x 2 loaders)."""
    from learning.namo.data import load_item

    model = TransitionModel(generate_scene(3))
    state, proposals = _move(model)
    path = tmp_path / "episode_0_goal_0_proposal_0.npz"
    np.savez_compressed(path, **sample_arrays(model, state, proposals[0], 0.5, size=16))
    pristine = path.read_bytes()
    expected = (load_sample(path)[1], load_item(path)["state_masks"])
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "read": 0}
    for _ in range(150):
        path.write_bytes(damage(pristine, rng)[1])
        for load in (lambda: load_sample(path)[1], lambda: load_item(path)["state_masks"]):
            try:
                got = load()
            except MaskFileError as err:
                outcomes["error"] += 1
                assert "\n" not in str(err) and str(path) in str(err), str(err)
                continue
            outcomes["read"] += 1  # zip's CRC-32 stands between a flip and the data
            assert any(np.array_equal(np.asarray(got), np.asarray(e)) for e in expected)
    assert outcomes["error"] > 100 and outcomes["read"] > 20, outcomes


def _random_states(seeds: range, moves: int = 2):
    """(model, state, proposals) at the start and after random valid moves of generated scenes."""
    for seed in seeds:
        model = TransitionModel(generate_scene(seed))
        rng = np.random.default_rng(seed)
        state = model.initial_state()
        for _ in range(moves + 1):
            proposals = model.proposals(state, 3, rng)
            if not proposals:
                break
            yield model, state, proposals
            state = model.step(state, proposals[int(rng.integers(len(proposals)))]).state


def test_batched_masks_equal_the_full_computation() -> None:
    """batch_masks (what the learned planners feed the network) == proposal_masks per move, on
    random states and proposals: binary channels exactly, distances to float tolerance."""
    from sim.namo.masks import batch_masks

    checked = changed = 0
    for model, state, proposals in _random_states(range(100, 106)):
        states, actions = batch_masks(model, state, proposals, size=48)
        assert states.shape == (len(proposals), 11, 48, 48) and states.dtype == np.float32
        assert actions.shape == (len(proposals), 2, 48, 48) and actions.dtype == np.float32
        fresh = TransitionModel(model.scene)  # no caches shared with the batched path
        for i, p in enumerate(proposals):
            ref = proposal_masks(fresh, state, p, size=48)
            got = dict(zip(STATE_KEYS, states[i], strict=True))
            got.update(zip(ACTION_KEYS, actions[i], strict=True))
            for key in BINARY:
                np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
            for key in DISTANCES:
                np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6, err_msg=key)
            checked += 1
            changed += not np.array_equal(ref["robot_distance"], ref["post_action_robot_distance"])
    assert checked >= 30 and changed >= checked // 2  # the post-move field is not the pre-move one


def test_post_move_distance_without_analysing_the_post_move_state() -> None:
    """after_distance (graph built once per scene, cells cut per move) == the robot distance of
    the post-move state's full analysis, in metres on the planning grid."""
    for model, state, proposals in _random_states(range(200, 204), moves=1):
        for p in proposals:
            got = model.after_distance(state, p)
            ref = model.info(model.step(state, p).state).robot_distance
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
            np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], atol=1e-9)


def test_grid_graph_with_cells_removed_equals_geodesic_distance() -> None:
    from sim.namo.grid import GridGraph, geodesic_distance

    rng = np.random.default_rng(0)
    g = Grid(3.0, 2.0, 20, 30)
    free = rng.random(g.shape) > 0.25
    graph = GridGraph(g, free)
    for trial in range(20):
        removed = [rng.random(g.shape) > 0.9 for _ in range(trial % 3)]
        source = tuple(int(v) for v in rng.integers((20, 30)))
        left = free.copy()
        for r in removed:
            left &= ~r
        ref = geodesic_distance(g, left, [source])
        got = graph.distances(source, *(graph.cut(r) for r in removed))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref), err_msg=str(trial))
        np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], atol=1e-9)


def test_batched_masks_refuse_an_invalid_move() -> None:
    from sim.namo.masks import batch_masks
    from sim.namo.transition import Proposal

    model = TransitionModel(doorway_scene())
    state = model.initial_state()
    good = model.proposals(state, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="invalid move: door target pose collides with a wall"):
        batch_masks(model, state, [*good, Proposal("door", 2.0, 0.4, 0.0)], size=32)


def test_near_equals_the_distance_transform_of_the_footprint() -> None:
    """near (the cells a placed object keeps the robot's centre out of: the post-move distance;
    check asks it for one cell) == distance_to(footprint) <= inflation, and _crowded (the
    placement clearance) == distance_to(footprint) < clearance, for random poses."""
    from sim.namo.grid import distance_to

    model = TransitionModel(generate_scene(7))
    rng = np.random.default_rng(1)
    for _ in range(40):
        k = int(rng.integers(len(model.scene.objects)))
        pose = (rng.uniform(-0.2, 5.2), rng.uniform(-0.2, 5.2), rng.uniform(-np.pi, np.pi))
        fp = model.footprint(k, pose)
        expected = distance_to(model.grid, fp) <= model.inflation
        np.testing.assert_array_equal(model.near(k, pose), expected)
        clearance = model.cell * model.config.clearance_cells
        crowded = distance_to(model.grid, fp) < clearance
        np.testing.assert_array_equal(model._crowded(k, pose), crowded)
        # check's one-cell form (robot and goal cells), at the grid's edges too
        for cell in [(0, 0), (99, 99), (0, 50), *rng.integers(0, 100, (20, 2))]:
            cell = (int(cell[0]), int(cell[1]))
            assert model._is_near(fp, cell) == expected[cell], (pose, cell)


def test_lifted_world_equals_the_distance_transform_of_the_others() -> None:
    """_lifted composes the walls' and the other objects' cached dilations; it must equal the
    distance transform of everything but the lifted object (robot-free cells and the placement
    clearance), on random states of every level."""
    from sim.namo.grid import distance_to

    checked = 0
    for level in ("easy", "hard"):
        for seed in range(300, 303):
            model = TransitionModel(generate_scene(seed, level=level))
            rng = np.random.default_rng(seed)
            state = model.initial_state()
            for _ in range(2):
                info = model.info(state)
                for k in model.reachable_objects(state):
                    occupied = model.static.copy()
                    for j, fp in enumerate(info.footprints):
                        occupied |= fp if j != k else False
                    dist = distance_to(model.grid, occupied)
                    lifted = model._lifted(state, k)
                    np.testing.assert_array_equal(lifted.blocked, dist <= model.inflation)
                    clearance = model.cell * model.config.clearance_cells
                    np.testing.assert_array_equal(lifted.crowded, dist < clearance)
                    checked += 1
                proposals = model.proposals(state, 2, rng)
                state = model.step(state, proposals[0]).state
    assert checked >= 12


def test_reach_test_equals_the_distance_transform_of_the_region() -> None:
    """check's "out of the robot's reach" test (at once when the centre's cell is in both the
    footprint and the region, else the footprint's distance transform in a window) must equal
    the distance transform of the whole lifted region (distance_to(region)[fp] <= reach) for
    random target poses on every level, at the grid's edges too."""
    from sim.namo.grid import distance_to

    agree = {True: 0, False: 0}
    for level in ("easy", "medium", "hard"):
        for seed in range(310, 313):
            model = TransitionModel(generate_scene(seed, level=level))
            state = model.initial_state()
            rng = np.random.default_rng(seed)
            for k in model.reachable_objects(state):
                region = model._lifted(state, k).region
                region_dist = distance_to(model.grid, region)
                for _ in range(60):
                    pose = (rng.uniform(-0.2, 5.2), rng.uniform(-0.2, 5.2), rng.uniform(-3, 3))
                    fp = model.footprint(k, pose)
                    expected = bool((region_dist[fp] <= model.reach_distance).any())
                    assert model._within_reach(fp, region) == expected, (level, seed, k, pose)
                    cell = model.grid.cell(*pose[:2])  # check's shortcut: the centre's cell
                    assert model._within_reach(fp, region, cell) == expected, (level, pose)
                    agree[expected] += 1
    assert min(agree.values()) >= 50, agree  # both answers were exercised


def test_rasterizers_equal_the_test_of_every_cell_centre() -> None:
    """rasterize_rect / rasterize_disc test only a window around the shape; they must equal the
    inside test of every cell centre of the grid, for random poses (off the world's edges too)
    and at both the planning grid's and a mask's size."""
    rng = np.random.default_rng(3)
    for g in (Grid(5.0, 5.0, 100, 100), Grid(5.0, 5.0, 32, 32), Grid(3.0, 2.0, 40, 60)):
        px, py = np.meshgrid(g.xs(), g.ys())
        for _ in range(60):
            x, y = rng.uniform(-0.4, g.width + 0.4), rng.uniform(-0.4, g.height + 0.4)
            theta = rng.choice([0.0, np.pi / 2, -np.pi / 2, rng.uniform(-np.pi, np.pi)])
            hx, hy = rng.uniform(0.05, 0.6, 2)
            c, s = np.cos(theta), np.sin(theta)
            u, v = (px - x) * c + (py - y) * s, -(px - x) * s + (py - y) * c
            inside = (np.abs(u) <= hx + 1e-9) & (np.abs(v) <= hy + 1e-9)
            np.testing.assert_array_equal(rasterize_rect(g, x, y, theta, hx, hy), inside)
            disc = (px - x) ** 2 + (py - y) ** 2 <= hx * hx + 1e-12
            np.testing.assert_array_equal(rasterize_disc(g, x, y, hx), disc)


def test_grid_graph_cuts_of_a_window_and_repeated_queries() -> None:
    """A cut given as a window of the grid (``origin``) equals the cut of the whole mask, and a
    query leaves the graph as built: the same query again, or one without cuts, is unchanged."""
    from sim.namo.grid import GridGraph, geodesic_distance

    rng = np.random.default_rng(4)
    g = Grid(3.0, 2.0, 20, 30)
    free = rng.random(g.shape) > 0.2
    graph = GridGraph(g, free)
    plain = graph.distances((10, 15))
    for trial in range(20):
        i0, j0 = (int(v) for v in rng.integers((15, 25)))
        window = (slice(i0, i0 + 5), slice(j0, j0 + 5))
        removed = np.zeros(g.shape, bool)
        removed[window] = rng.random((5, 5)) > 0.4
        source = tuple(int(v) for v in rng.integers((20, 30)))
        whole = graph.distances(source, graph.cut(removed))
        part = graph.distances(source, graph.cut(removed[window], (i0, j0)))
        np.testing.assert_array_equal(part, whole, err_msg=str(trial))
        ref = geodesic_distance(g, free & ~removed, [source])
        np.testing.assert_array_equal(np.isfinite(whole), np.isfinite(ref), err_msg=str(trial))
        np.testing.assert_allclose(whole[np.isfinite(ref)], ref[np.isfinite(ref)], atol=1e-9)
        np.testing.assert_array_equal(graph.distances((10, 15)), plain)
    # A source inside the removed cells (none of its neighbours stays) reaches nothing.
    block = np.zeros(g.shape, bool)
    block[8:13, 13:18] = True
    free[10, 15] = True
    graph = GridGraph(g, free)
    assert np.isinf(graph.distances((10, 15), graph.cut(block))).all()
