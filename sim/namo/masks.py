"""Image masks of NAMO states and moves: the seed-000 Q-function channels and seed-001 aliases.

All masks are float32 (S, S) over the whole world (``Grid.image``: row 0 = top, S = 224 by
default). Binary masks hold 0/1; a shape covers a pixel when the pixel centre lies inside it.

State channels (``sim.namo.keys.STATE_KEYS`` order, the one definition of the file format;
the first 8 describe the state, the last 3 the move):

- ``robot``: robot disc; ``goal``: robot-radius disc at the robot goal;
- ``movable``: union of object footprints; ``static``: walls;
- ``reachable``: the robot centre's free configuration space reachable from where it stands
  (8-connected flood fill of cells farther than ``robot_radius + 0.75 cell`` from anything), the
  transition model's own notion of reachability;
- ``robot_distance``: geodesic metres from the robot over that free space;
- ``goal_distance``: geodesic metres from the goal over the space free of WALLS only (objects
  can be moved, so they do not cut paths);
- ``combined_distance``: ``robot_distance + goal_distance`` (length of the best path
  robot -> cell -> goal; smallest where the robot should push from);
- ``post_action_robot``: robot disc where the robot ends up after the move (its reach position);
- ``post_action_movable``: objects with the moved one at its proposed pose;
- ``post_action_robot_distance``: ``robot_distance`` of the post-move state.

Action channels: ``target_object`` (moved object's footprint now), ``target_goal`` (its
footprint at the proposed pose).

Distances are normalized by ``DISTANCE_SCALE x (width + height)`` (combined: twice that) and
clipped to [0, 1]: 0 at the source, **1.0 where the source is unreachable** (walls, objects and
cut-off free space). The fields and ``reachable`` are computed on the transition model's
planning grid and sampled at pixel centres (nearest cell), so they agree with the planner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from episode_dataset.ranges import count
from sim.namo.grid import Grid, rasterize_disc, rasterize_rect
from sim.namo.keys import (
    ACTION_KEYS,
    SEED001_ALIASES,
    SHARED_CHANNELS,
    SHARED_STATE_KEYS,
    STATE_CHANNELS,
    STATE_KEYS,
)
from sim.namo.transition import NamoState, Proposal, TransitionModel

DEFAULT_SIZE = 224
# Mask sides the data CLIs accept. Below 32 px the smallest generated object (0.2 m across in a
# 5 m scene) can fall between pixel centres and its target masks come out empty; 512 bounds
# the files (13 channels x 512^2 float32 = 13.6 MB a proposal before compression) and the time
# (configs train at 56, the demo and tests at 32 to 64, the default is 224).
MASK_SIZE = count(32, high=512)
DISTANCE_SCALE = 1.0  # x (width + height) metres maps to 1.0

_CACHE_LIMIT = 64


def _f32(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask, dtype=np.float32)


class _Sampler:
    """Pixel centres of an S x S image -> the planning-grid cell that contains each (plus the
    walls and goal images of that size)."""

    def __init__(self, model: TransitionModel, size: int):
        self.image = Grid.image(model.scene.width, model.scene.height, size)
        g = model.grid
        rows = np.floor((g.height - self.image.ys()) / g.res_y).astype(int)
        cols = np.floor(self.image.xs() / g.res_x).astype(int)
        self.rows = np.clip(rows, 0, g.rows - 1)[:, None]
        self.cols = np.clip(cols, 0, g.cols - 1)[None, :]
        # The channels no move changes: walls and the goal disc, rendered once per size.
        scene, image = model.scene, self.image
        static = np.zeros(image.shape, bool)
        for w in scene.walls:
            static |= rasterize_rect(image, w.x, w.y, 0.0, w.half_x, w.half_y)
        self.static = _f32(static)
        self.goal = _f32(rasterize_disc(image, *scene.goal, scene.robot_radius))
        # The goal's distance field is per scene too: sampled (metres) and normalized once.
        self.goal_metres = self(model.goal_distance_static())
        self.goal_distance = normalize_distance(self.goal_metres, _scale(model))

    def __call__(self, field: np.ndarray) -> np.ndarray:
        return field[self.rows, self.cols]


def _cache(model: TransitionModel, name: str) -> dict:
    # Per-model caches (the model caches per-state analysis the same way): samplers per size
    # (per-scene work, never dropped), state masks per (state, size) and object images (bounded).
    return model.__dict__.setdefault(name, {})


def _sampler(model: TransitionModel, size: int) -> _Sampler:
    cache = _cache(model, "_mask_samplers")
    if size not in cache:
        cache[size] = _Sampler(model, size)
    return cache[size]


def prepare_masks(model: TransitionModel, size: int) -> None:
    """The masks' per-scene work at ``size`` (walls-only graph, the goal's distance field, walls
    and goal images), done when a planner is given a scene rather than in its first decision."""
    _sampler(model, size)


def normalize_distance(dist: np.ndarray, scale: float) -> np.ndarray:
    """Metres (>= 0) -> [0, 1]: dist / scale capped at 1; inf (unreachable) -> 1.0."""
    return _f32(np.minimum(dist / scale, 1.0))


def _scale(model: TransitionModel) -> float:
    return DISTANCE_SCALE * (model.scene.width + model.scene.height)


def _robot_distance(model: TransitionModel, state: NamoState, size: int) -> np.ndarray:
    return normalize_distance(
        _sampler(model, size)(model.info(state).robot_distance), _scale(model)
    )


def state_masks(
    model: TransitionModel, state: NamoState, size: int = DEFAULT_SIZE
) -> dict[str, np.ndarray]:
    """The 8 pre-action channels (``SHARED_STATE_KEYS``) of ``state``; cached per (state, size)."""
    cache = _cache(model, "_state_masks")
    key = (state, size)
    got = cache.get(key)
    if got is not None:
        return got
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    scene, sample = model.scene, _sampler(model, size)
    g = sample.image
    info = model.info(state)
    robot_m = sample(info.robot_distance)  # sampled first: the sum of samples is the same
    scale = _scale(model)
    got = {
        "robot": _f32(rasterize_disc(g, *state.robot, scene.robot_radius)),
        "goal": sample.goal,
        "movable": _f32(_movable(model, g, state.poses)),
        "static": sample.static,
        "reachable": _f32(sample(info.reachable)),
        "robot_distance": normalize_distance(robot_m, scale),
        "goal_distance": sample.goal_distance,
        "combined_distance": normalize_distance(robot_m + sample.goal_metres, 2 * scale),
    }
    cache[key] = got
    return got


def _object_image(model: TransitionModel, g: Grid, k: int, pose) -> np.ndarray:  # noqa: ANN001
    """Object k's footprint on image grid ``g`` (cached per model, size and pose: a decision
    moves one object, so the others' images carry over to the next state)."""
    cache = _cache(model, "_object_images")
    key = (g.shape, k, tuple(pose))
    got = cache.get(key)
    if got is None:
        if len(cache) > 4096:
            cache.clear()
        o = model.scene.objects[k]
        got = cache[key] = rasterize_rect(g, *pose, o.half_x, o.half_y)
    return got


def _movable(model: TransitionModel, g: Grid, poses) -> np.ndarray:  # noqa: ANN001
    out = np.zeros(g.shape, bool)
    for k, pose in enumerate(poses):
        out |= _object_image(model, g, k, pose)
    return out


def action_masks(
    model: TransitionModel, state: NamoState, proposal: Proposal, size: int = DEFAULT_SIZE
) -> dict[str, np.ndarray]:
    """The 3 post-action channels and the 2 action channels of one (valid) move.

    Raises ValueError naming the reason when the transition model rejects the move.
    """
    scene, sample = model.scene, _sampler(model, size)
    g = sample.image
    k = scene.object_index(proposal.object_id)
    o = scene.objects[k]
    after = model.step(state, proposal).state
    return {
        "post_action_robot": _f32(rasterize_disc(g, *after.robot, scene.robot_radius)),
        "post_action_movable": _f32(_movable(model, g, after.poses)),
        "post_action_robot_distance": _robot_distance(model, after, size),
        "target_object": _f32(rasterize_rect(g, *state.poses[k], o.half_x, o.half_y)),
        "target_goal": _f32(rasterize_rect(g, *proposal.pose, o.half_x, o.half_y)),
    }


def proposal_masks(
    model: TransitionModel, state: NamoState, proposal: Proposal, size: int = DEFAULT_SIZE
) -> dict[str, np.ndarray]:
    """All 13 Q-function channels (``STATE_KEYS`` + ``ACTION_KEYS``) of one move, (S, S) each.

    The mask builder of the ``learned_q`` and ``dit_q`` planners
    (``"sim.namo.masks:proposal_masks"``).
    """
    return {**state_masks(model, state, size), **action_masks(model, state, proposal, size)}


def batch_masks(
    model: TransitionModel,
    state: NamoState,
    proposals: Sequence[Proposal],
    size: int = DEFAULT_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """The Q-function's input for K moves of one state: state masks (K, 11, S, S) and action
    masks (K, 2, S, S), float32, equal to stacking ``proposal_masks`` of each (the tests check).

    Built for what the channels need only: the 8 pre-action channels once (``state_masks``);
    every object's footprint image once; per moved object the image of the others and the
    robot disc at its reach position; per move its target footprint and
    ``TransitionModel.after_distance`` (the post-move robot distance without analysing the
    post-move state: no reach bands, no distance transform of the whole grid). Raises
    ValueError naming the first invalid move.
    """
    shared = state_masks(model, state, size)
    sample, scene, scale = _sampler(model, size), model.scene, _scale(model)
    g = sample.image
    states = np.empty((len(proposals), STATE_CHANNELS, size, size), np.float32)
    actions = np.empty((len(proposals), len(ACTION_KEYS), size, size), np.float32)
    states[:, :SHARED_CHANNELS] = np.stack([shared[key] for key in SHARED_STATE_KEYS])
    objects = [_object_image(model, g, k, pose) for k, pose in enumerate(state.poses)]
    per_object: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, proposal in enumerate(proposals):
        reason = model.check(state, proposal)
        if reason is not None:
            raise ValueError(f"invalid move: {reason}")
        k = scene.object_index(proposal.object_id)
        o = scene.objects[k]
        if k not in per_object:
            robot = model.grid.center(*model.info(state).reach[k])
            others = np.zeros(g.shape, bool)
            for j, image in enumerate(objects):
                if j != k:
                    others |= image
            per_object[k] = (rasterize_disc(g, *robot, scene.robot_radius), others)
        robot_disc, others_image = per_object[k]
        target_goal = rasterize_rect(g, *proposal.pose, o.half_x, o.half_y)
        states[i, SHARED_CHANNELS] = robot_disc
        states[i, SHARED_CHANNELS + 1] = others_image | target_goal
        states[i, SHARED_CHANNELS + 2] = normalize_distance(
            sample(model.after_distance(state, proposal)), scale
        )
        actions[i, 0] = objects[k]
        actions[i, 1] = target_goal
    return states, actions


MaskFn = Callable[[Any, Any, Any], dict[str, np.ndarray]]


def stack_masks(
    fn: MaskFn, model: Any, state: Any, proposals: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(K, 11, S, S), (K, 2, S, S) float32 from a per-move builder ``fn(model, state, move)``;
    a builder with a ``batch(model, state, moves)`` method (``SizedMasks``) builds them at once.
    """
    batch = getattr(fn, "batch", None)
    if batch is not None:
        return batch(model, state, proposals)
    masks = [fn(model, state, p) for p in proposals]
    states = np.stack([np.stack([m[k] for k in STATE_KEYS]) for m in masks])
    actions = np.stack([np.stack([m[k] for k in ACTION_KEYS]) for m in masks])
    return states.astype(np.float32), actions.astype(np.float32)


class SizedMasks:
    """``proposal_masks`` (and ``batch_masks``, its ``batch``) at a size set after construction
    (the planners learn it from the model they load):
    ``fn = SizedMasks(); fn.size = 64; fn(model, state, proposal)``."""

    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = size

    def __call__(self, model: Any, state: Any, proposal: Any) -> dict[str, np.ndarray]:
        return proposal_masks(model, state, proposal, self.size)

    def batch(
        self, model: Any, state: Any, proposals: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        return batch_masks(model, state, proposals, self.size)


def sample_arrays(
    model: TransitionModel,
    state: NamoState,
    proposal: Proposal,
    q_value: float,
    size: int = DEFAULT_SIZE,
) -> dict[str, np.ndarray]:
    """Everything one mask file holds: seed-000 keys (13 channels, ``goal_q_value`` float32,
    ``object_id`` str, ``goal_coordinates`` float32 [x, y, theta]) + seed-001 aliases."""
    masks = proposal_masks(model, state, proposal, size)
    out: dict[str, np.ndarray] = dict(masks)
    out.update({alias: masks[key] for alias, key in SEED001_ALIASES.items()})
    out["goal_q_value"] = np.float32(q_value)
    out["object_id"] = np.str_(proposal.object_id)
    out["goal_coordinates"] = np.array(proposal.pose, np.float32)
    return out
