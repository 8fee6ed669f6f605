"""`dit_q` NAMO planner: DiT goal proposals scored by the learned Q-function, best one executed.

Per decision, for every object the robot can reach: render the scene masks the generator was
trained on (robot, goal, movable, static, target object) at its resolution, sample K goal masks,
turn each into a target pose (mask centroid; yaw from the mask's principal axis, `mask_to_pose`),
keep the poses the transition model accepts (`TransitionModel.check`), render the Q-function's
13 channels for each (the same mask builder as `learned_q`) and score all in one batch; act on
the argmax. Compared with `learned_q` only the proposal source differs (learned vs uniform).

Torch-free with ONNX models. When no generated pose is valid, the decision falls back to the
transition model's uniform proposals and says so (`Decision.fallback`, `DiTQPlanner.fallbacks`).
Importing this module registers `dit_q` in the sim's planner registry (and, through
`learning.namo.planner`, `learned_q`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from learning.namo.planner import DEFAULT_MASK_FN, MaskFn, fit_masks, resolve
from learning.namo.scoring import make_scorer
from sim.namo.goal_generator import GoalGenerator
from sim.namo.masks import SizedMasks, stack_masks
from sim.namo.planners import DecidePlanner, register_planner

# (transition model, state, object index, size) -> (size, size, 5) context masks
SceneMaskFn = Callable[[Any, Any, int, int], np.ndarray]


class Generator(Protocol):
    image_size: int
    threshold: float

    def propose(self, scene: np.ndarray) -> np.ndarray: ...  # (S, S, 5) -> (K, S, S)


def scene_masks(model: Any, state: Any, k: int, size: int) -> np.ndarray:
    """The generator's 5 context masks of object k in `state`, rasterized on a size^2 image grid
    with the sim's geometry (sim.namo.grid: row 0 = top of the world)."""
    from sim.namo.grid import Grid, rasterize_disc, rasterize_rect

    scene = model.scene
    g = Grid.image(scene.width, scene.height, size)
    robot = rasterize_disc(g, *state.robot, scene.robot_radius)
    goal = rasterize_disc(g, *scene.goal, scene.robot_radius)
    boxes = [
        rasterize_rect(g, *pose, o.half_x, o.half_y)
        for o, pose in zip(scene.objects, state.poses, strict=True)
    ]
    static = np.zeros(g.shape, bool)
    for w in scene.walls:
        static |= rasterize_rect(g, w.x, w.y, 0.0, w.half_x, w.half_y)
    movable = np.logical_or.reduce(boxes) if boxes else np.zeros(g.shape, bool)
    return np.stack([robot, goal, movable, static, boxes[k]], axis=-1).astype(np.float32)


def mask_to_pose(
    mask: np.ndarray, width: float, height: float, half_x: float, half_y: float
) -> tuple[float, float, float] | None:
    """Boolean goal mask (S, S) over a width x height world -> (x, y, yaw) or None when empty.

    Centroid of the occupied cells; yaw from the second moments (major axis), turned by pi/2 when
    the object's long side is its y side, wrapped to [-pi/2, pi/2) like the sim's proposals.
    """
    rows, cols = mask.shape
    ii, jj = np.nonzero(mask)
    if len(ii) == 0:
        return None
    res_x, res_y = width / cols, height / rows
    xs, ys = (jj + 0.5) * res_x, height - (ii + 0.5) * res_y
    x, y = float(xs.mean()), float(ys.mean())
    dx, dy = xs - x, ys - y
    major = 0.5 * math.atan2(2 * float((dx * dy).mean()), float((dx**2).mean() - (dy**2).mean()))
    yaw = major if half_x >= half_y else major + math.pi / 2
    yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
    return x, y, yaw


def mask_moves(model: Any, state: Any, k: int, masks: np.ndarray, threshold: float) -> list[Any]:
    """Goal masks (K, S, S) for object k -> one move per mask: the Proposal at its pose when the
    transition model accepts it, else None (empty mask or a move `check` rejects)."""
    from sim.namo.transition import Proposal

    obj, moves = model.scene.objects[k], []
    for mask in masks:
        pose = mask_to_pose(
            mask > threshold, model.scene.width, model.scene.height, obj.half_x, obj.half_y
        )
        p = None if pose is None else Proposal(obj.object_id, *(round(v, 4) for v in pose))
        moves.append(p if p is not None and model.check(state, p) is None else None)
    return moves


@dataclass
class Decision:
    proposal: Any | None
    q_values: np.ndarray
    proposals: list[Any]
    seconds: float
    network_seconds: float  # Q-function time
    generated: int = 0  # goal masks sampled
    valid: int = 0  # of them, poses the transition model accepted
    fallback: bool = False  # True: uniform proposals were scored instead


@dataclass
class DiTQPlanner:
    """`generator`: goal_generator .onnx path or an object with image_size/threshold/propose;
    `q_model_path`: Q-function .onnx/.ckpt path or a scorer (`score(state, actions)`, e.g. one
    that asks the q_scorer node)."""

    generator: str | Generator
    q_model_path: str | Any
    proposals_per_object: int = 8
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    mask_fn: str | MaskFn = DEFAULT_MASK_FN
    scene_mask_fn: SceneMaskFn = scene_masks
    name: str = "dit_q"
    fallbacks: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.generator, str):
            self.generator = GoalGenerator(
                self.generator, self.proposals_per_object, self.seed, self.device, self.threads
            )
        self.scorer = (
            make_scorer(self.q_model_path, self.device, self.threads)
            if isinstance(self.q_model_path, (str, os.PathLike))
            else self.q_model_path
        )
        self._masks: MaskFn = (
            resolve(self.mask_fn) if isinstance(self.mask_fn, str) else self.mask_fn
        )
        self._rng = np.random.default_rng(self.seed)

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(self.seed if seed is None else seed)
        if hasattr(self.generator, "rng"):
            self.generator.rng = np.random.default_rng(self.seed if seed is None else seed)

    def generated_proposals(self, model: Any, state: Any) -> tuple[list[Any], int]:
        """(valid generated proposals, number of masks sampled)."""
        size, out, sampled = self.generator.image_size, [], 0
        for k in model.reachable_objects(state):
            masks = self.generator.propose(self.scene_mask_fn(model, state, k, size))
            sampled += len(masks)
            moves = mask_moves(model, state, k, masks, self.generator.threshold)
            out += [p for p in moves if p is not None]
        return out, sampled

    def decide(self, model: Any, state: Any) -> Decision:
        start = time.perf_counter()
        proposals, sampled = self.generated_proposals(model, state)
        fallback = not proposals
        if fallback:
            self.fallbacks += 1
            proposals = model.proposals(state, self.proposals_per_object, self._rng)
        if not proposals:
            seconds = time.perf_counter() - start
            return Decision(None, np.zeros(0, np.float32), [], seconds, 0.0, sampled, 0, fallback)
        state_masks, action_masks = stack_masks(self._masks, model, state, proposals)
        result = self.scorer.score(state_masks, action_masks)
        return Decision(
            proposals[result.best_index],
            result.q_values,
            proposals,
            time.perf_counter() - start,
            result.latency_s,
            sampled,
            0 if fallback else len(proposals),
            fallback,
        )

    def __call__(self, model: Any, state: Any) -> Any | None:
        return self.decide(model, state).proposal


def dit_q_planner(
    generator_path: str, q_model_path: str, image_size: int | None = None, **kwargs: Any
) -> DecidePlanner:
    """The `dit_q` registry entry: a DiTQPlanner on the sim's mask builder."""
    masks = SizedMasks()
    inner = DiTQPlanner(generator_path, q_model_path, mask_fn=masks, **kwargs)
    return DecidePlanner(inner, "dit_q", fit_masks(inner, masks, image_size))


register_planner("dit_q", dit_q_planner)
