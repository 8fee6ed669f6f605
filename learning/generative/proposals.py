"""Goal proposals judged by what they achieve, beside IoU: valid moves, best-of-K Q, success.

    items = episode_items("episodes/")            # MCTS decisions: scene, state, object, targets
    row = proposal_metrics(generator, items, q_scorer=scorer, mcts_budget=50)
    row |= planner_success(generator, "q.onnx", seeds=range(100000, 100010), level="hard")

Per item (one MCTS decision's state and one object MCTS proposed to move) the generator samples
K goal masks for that object; each becomes a move through `mask_to_pose` + `TransitionModel.check`
(`planner.mask_moves`, what the `dit_q` planner executes). K uniform proposals for the same
object (`TransitionModel.proposals`, what `learned_q` scores) are the reference. Reported:

- `target_iou`: mean over masks of the best IoU against the object's MCTS root proposals;
- `valid_rate`: fraction of masks that became valid moves;
- `q_learned_generated` / `q_learned_uniform`: best-of-K Q by the learned Q-function, paired over
  items where the generator gave at least one valid move (`q_learned_items` of them; the learned
  Q has no failure value for an empty set);
- `q_mcts_generated` / `q_mcts_uniform`: best-of-K Q by an MCTS search whose root moves are fixed
  to the set (`MCTS.search(state, proposals)`, same seed for both sets; no valid move scores 0,
  the failure value), the ground truth of what a set of moves achieves;
- `planner_success`: `dit_q` episodes on held-out scenes (with `learned_q` on the same scenes and
  Q-function as the uniform reference).

`generator` is anything with `image_size`, `threshold`, `propose(scene (H, W, 5)) -> (K, S, S)`:
the ONNX `sim.namo.goal_generator.GoalGenerator` or `TorchGenerator` (a checkpoint + sampler).
The table: `python -m learning.generative.quality --episodes DIR ...` (docs/generative.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learning.generative.planner import DiTQPlanner, Generator, mask_moves, scene_masks
from sim.namo.episodes import decision_items, episode_model, read_episode
from sim.namo.grid import Grid, rasterize_rect
from sim.namo.keys import ACTION_KEYS, STATE_KEYS
from sim.namo.mcts import MCTS, MCTSConfig
from sim.namo.transition import NamoState, Proposal, TransitionModel


@dataclass(frozen=True)
class Item:
    """One MCTS decision's state and an object it proposed to move (its root proposals)."""

    model: TransitionModel
    state: NamoState
    k: int  # object index
    targets: tuple[Proposal, ...]


def episode_items(episode_dir: str | Path, max_items: int | None = None) -> list[Item]:
    """Items from MCTS episode files (`episode_*.json`, sim.namo.episodes), in file order."""
    files = sorted(Path(episode_dir).glob("episode_*.json"))
    if not files:
        raise FileNotFoundError(f"{episode_dir}: no episode_*.json files")
    items: list[Item] = []
    for path in files:
        episode = read_episode(path)
        model = episode_model(episode)
        ids = [o.object_id for o in model.scene.objects]
        for decision in episode["decisions"]:
            state, proposals, _ = decision_items(decision)
            for object_id in dict.fromkeys(p.object_id for p in proposals):
                targets = tuple(p for p in proposals if p.object_id == object_id)
                items.append(Item(model, state, ids.index(object_id), targets))
                if max_items is not None and len(items) >= max_items:
                    return items
    return items


class TorchGenerator:
    """A trained GenerativeModule with a sampler as a `Generator` (K proposals per scene)."""

    def __init__(
        self,
        module: Any,
        sampler: Any,
        num_proposals: int = 8,
        seed: int = 0,
        threshold: float = 0.5,
    ) -> None:
        import torch

        self.torch, self.module, self.sampler = torch, module.eval(), sampler
        self.image_size = int(module.network.image_size)
        self.num_proposals, self.threshold = num_proposals, threshold
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, scene: np.ndarray) -> np.ndarray:
        from sim.namo.mask_files import resize_area

        torch, size, k = self.torch, self.image_size, self.num_proposals
        context = np.clip(resize_area(np.moveaxis(scene, -1, 0), size), 0.0, 1.0)
        context_t = torch.from_numpy(np.ascontiguousarray(context, np.float32))[None]
        context_t = context_t.expand(k, -1, -1, -1)
        noise = torch.randn((k, 1, size, size), generator=self.gen)
        with torch.no_grad():
            x1 = self.sampler.sample(
                self.module.path, self.module.model_fn(context_t), noise, self.gen
            )
        return ((x1[:, 0] + 1) * 0.5).clamp(0, 1).numpy()


def _iou_best_of_set(pred: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """pred (K, S, S) bool, targets (T, S, S) bool -> (K,) max IoU over targets (empty: 0)."""
    p, t = pred.reshape(len(pred), -1), targets.reshape(len(targets), -1)
    inter = p.astype(np.int64) @ t.T.astype(np.int64)
    union = p.sum(1)[:, None] + t.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).max(1)


def _target_masks(item: Item, proposals: Iterable[Proposal], size: int) -> np.ndarray:
    scene, obj = item.model.scene, item.model.scene.objects[item.k]
    grid = Grid.image(scene.width, scene.height, size)
    return np.stack([rasterize_rect(grid, *p.pose, obj.half_x, obj.half_y) for p in proposals])


def _best_learned_q(scorer: Any, masks_fn: Any, item: Item, moves: list[Proposal]) -> float:
    masks = [masks_fn(item.model, item.state, p) for p in moves]
    state = np.stack([np.stack([m[c] for c in STATE_KEYS]) for m in masks]).astype(np.float32)
    action = np.stack([np.stack([m[c] for c in ACTION_KEYS]) for m in masks]).astype(np.float32)
    return float(np.max(scorer.score(state, action).q_values))


def _best_mcts_q(item: Item, moves: list[Proposal], budget: int, seed: int) -> float:
    if not moves:
        return 0.0  # MCTS's failure value: nothing to execute
    search = MCTS(item.model, MCTSConfig(budget=budget, seed=seed))
    search.reset(seed)
    result = search.search(item.state, moves)
    return float(result.q_values[result.best_index])


def proposal_metrics(
    generator: Generator,
    items: list[Item],
    q_scorer: Any | None = None,
    mcts_budget: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of one generator on the items (module docstring), with the uniform reference
    under `uniform_*` (the same uniform proposals for every generator with the same seed)."""
    from sim.namo.masks import proposal_masks

    size = generator.image_size
    rng = np.random.default_rng(seed)
    hw = getattr(q_scorer, "input_hw", None)
    q_size = int(hw[0]) if hw and int(hw[0]) > 0 else size

    def q_masks(model: Any, state: Any, p: Proposal) -> dict[str, np.ndarray]:
        return proposal_masks(model, state, p, q_size)

    ious, uniform_ious, valid, masks_total, uniform_total, seconds = [], [], 0, 0, 0, 0.0
    q_gen, q_uni, q_uni_all, m_gen, m_uni = [], [], [], [], []
    for i, item in enumerate(items):
        start = time.perf_counter()
        masks = generator.propose(scene_masks(item.model, item.state, item.k, size))
        seconds += time.perf_counter() - start
        k = len(masks)
        targets = _target_masks(item, item.targets, size)
        ious.append(_iou_best_of_set(masks > generator.threshold, targets))
        moves = mask_moves(item.model, item.state, item.k, masks, generator.threshold)
        moves = [p for p in moves if p is not None]
        uniform = item.model.proposals(item.state, k, rng, objects=[item.k])
        valid, masks_total = valid + len(moves), masks_total + k
        uniform_total += len(uniform)
        if uniform:
            uniform_ious.append(_iou_best_of_set(_target_masks(item, uniform, size), targets))
        if q_scorer is not None and uniform:
            q_uni_all.append(_best_learned_q(q_scorer, q_masks, item, uniform))
            if moves:  # paired: the same items on both sides
                q_gen.append(_best_learned_q(q_scorer, q_masks, item, moves))
                q_uni.append(q_uni_all[-1])
        if mcts_budget > 0:
            m_gen.append(_best_mcts_q(item, moves, mcts_budget, seed + i))
            m_uni.append(_best_mcts_q(item, uniform, mcts_budget, seed + i))
    mean = lambda xs: float(np.mean(xs)) if len(xs) else math.nan  # noqa: E731
    return {
        "items": len(items),
        "masks": masks_total,
        "target_iou": mean(np.concatenate(ious)) if ious else math.nan,
        "valid_rate": valid / masks_total if masks_total else math.nan,
        "q_learned_generated": mean(q_gen),
        "q_learned_uniform": mean(q_uni),
        "q_learned_items": len(q_gen),
        "q_mcts_generated": mean(m_gen),
        "q_mcts_uniform": mean(m_uni),
        "mcts_budget": mcts_budget,
        "propose_seconds": seconds / max(len(items), 1),
        "uniform_iou": mean(np.concatenate(uniform_ious)) if uniform_ious else math.nan,
        "uniform_valid_rate": uniform_total / masks_total if masks_total else math.nan,
        "uniform_q_learned": mean(q_uni_all),  # over every item
    }


def planner_success(
    generator: Generator | str | None,
    q_model_path: str,
    seeds: list[int],
    max_moves: int = 5,
    proposals_per_object: int = 8,
    **episode_kwargs: Any,
) -> dict[str, Any]:
    """Success of `dit_q` acting on the generator's proposals (`generator=None`: `learned_q` on
    uniform proposals, the reference) on scenes `seeds`; `episode_kwargs` go to
    `sim.namo.evaluate_planners.evaluate_planners` (e.g. the scene level)."""
    from learning.namo.planner import LearnedQPlanner, fit_masks
    from sim.namo.evaluate_planners import evaluate_planners, summarize
    from sim.namo.masks import SizedMasks
    from sim.namo.planners import DecidePlanner

    masks = SizedMasks()
    if generator is None:
        inner: Any = LearnedQPlanner(
            q_model_path, proposals_per_object=proposals_per_object, mask_fn=masks
        )
        name = "learned_q"
    else:
        inner = DiTQPlanner(
            generator, q_model_path, proposals_per_object=proposals_per_object, mask_fn=masks
        )
        name = "dit_q"
    planner = DecidePlanner(inner, name, fit_masks(inner, masks, None))
    summary = summarize(evaluate_planners([planner], list(seeds), max_moves, **episode_kwargs))[0]
    return {
        "planner": name,
        "planner_episodes": summary["episodes"],
        "planner_success": summary["success_rate"],
        "planner_moves_per_solve": summary["moves_per_solve"],
        "planner_seconds_per_decision": summary["seconds_per_decision"],
        "planner_fallbacks": getattr(inner, "fallbacks", 0),
    }


@dataclass(frozen=True)
class ProposalEval:
    """What `learning.generative.quality --episodes ...` measures per sampler row."""

    episodes: str  # MCTS episode files of held-out scenes
    q_model: str | None = None  # learned Q (.onnx/.ckpt): best-of-K Q and the planner
    mcts_budget: int = 32  # 0: no MCTS Q
    num_proposals: int = 8  # K
    max_items: int | None = 64
    planner_seeds: tuple[int, ...] = ()  # scenes for planner success (needs q_model)
    level: str | None = None  # scene level of those (None: generate_scene's default)
    max_moves: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.planner_seeds and not self.q_model:
            raise ValueError("planner success needs a Q-function: pass --q-model")

    def setup(self) -> tuple[list[Item], Any]:
        from learning.namo.scoring import make_scorer

        items = episode_items(self.episodes, self.max_items)
        return items, (make_scorer(self.q_model, "cpu", 1) if self.q_model else None)

    def measure(self, generator: Generator | None, items: list[Item], scorer: Any) -> dict:
        """Columns of one row; `generator=None`: the uniform-proposal reference row."""
        reference = generator is None
        if reference:  # the metrics' uniform side, on a generator that is never asked
            generator = _NoProposals(self.num_proposals)
        row = proposal_metrics(generator, items, scorer, self.mcts_budget, self.seed)
        if reference:
            row.update(
                target_iou=row["uniform_iou"],
                valid_rate=row["uniform_valid_rate"],
                q_learned_generated=row["uniform_q_learned"],
                q_learned_uniform=row["uniform_q_learned"],
                q_learned_items=len(items),
                q_mcts_generated=row["q_mcts_uniform"],
                propose_seconds=0.0,
            )
        if self.planner_seeds:
            kwargs = {} if self.level is None else {"level": self.level}
            row |= planner_success(
                None if reference else generator,
                self.q_model,
                list(self.planner_seeds),
                self.max_moves,
                self.num_proposals,
                **kwargs,
            )
        return row


class _NoProposals:
    """K empty masks: the generator side of the reference row (its uniform side is reported)."""

    image_size, threshold = 32, 0.5

    def __init__(self, k: int):
        self.k = k

    def propose(self, scene: np.ndarray) -> np.ndarray:
        return np.zeros((self.k, self.image_size, self.image_size), np.float32)
