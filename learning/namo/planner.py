"""Q-greedy NAMO planner (`learned_q`): score all proposals of a state in one batch, take the best.

Per decision: the sim's proposal generator (`TransitionModel.proposals`) samples candidate
moves, the sim's batched mask builder (`sim.namo.masks.batch_masks`) renders all K into the 13
seed channels at the model's input size, the Q-function scores them in one batch (ONNX or
torch, `learning.namo.scoring`), and the argmax proposal is executed. No search: the decision
costs the proposals, the masks and one network call.

Importing this module registers `learned_q` in the sim's planner registry
(`sim.namo.planners.PLANNERS`), wrapped by `DecidePlanner`.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learning.namo.scoring import make_scorer
from sim.namo.masks import DEFAULT_SIZE, MaskFn, SizedMasks, stack_masks
from sim.namo.planners import DecidePlanner, register_planner

# MaskFn: (transition model, state, proposal) -> {key: (H, W) float32} with at least the 13
# seed keys. A "module:function" string is resolved and called with size=<the model's mask
# side>; one with a `batch(model, state, proposals)` method builds all K at once.
DEFAULT_MASK_FN = "sim.namo.masks:proposal_masks"


def resolve(path: str) -> Callable[..., Any]:
    """'module:attr' -> the attribute (one-line error naming both when it does not exist)."""
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"learned_q: cannot resolve mask builder {path!r}: {err}") from None


@dataclass
class Decision:
    proposal: Any | None  # sim.namo.transition.Proposal, None when nothing is proposable
    q_values: np.ndarray
    proposals: list[Any]
    seconds: float  # wall time of the whole decision (proposals + masks + network)
    network_seconds: float


@dataclass
class LearnedQPlanner:
    """Q-greedy planner. `model_path`: .onnx (torch-free) or .ckpt (torch). `mask_fn` None:
    the sim's masks at the model's input size, all proposals at once (`SizedMasks.batch`)."""

    model_path: str
    device: str = "cpu"
    proposals_per_object: int = 4  # the MCTS root branching
    seed: int = 0
    threads: int | None = None
    mask_fn: str | MaskFn | None = None
    name: str = "learned_q"
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scorer = make_scorer(self.model_path, self.device, self.threads)
        # The sim's builders render at any size: use the mask size the model was trained on.
        size = int(self.scorer.input_hw[0])
        if self.mask_fn is None:
            self._masks: MaskFn = SizedMasks(size)
        elif isinstance(self.mask_fn, str):
            self._masks = functools.partial(resolve(self.mask_fn), size=size)
        else:
            self._masks = self.mask_fn
        self._rng = np.random.default_rng(self.seed)

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(self.seed if seed is None else seed)

    def decide(self, model: Any, state: Any) -> Decision:
        """One decision in `state` of transition model `model`."""
        start = time.perf_counter()
        proposals = model.proposals(state, self.proposals_per_object, self._rng)
        if not proposals:
            return Decision(None, np.zeros(0, np.float32), [], time.perf_counter() - start, 0.0)
        state_masks, action_masks = stack_masks(self._masks, model, state, proposals)
        result = self.scorer.score(state_masks, action_masks)
        return Decision(
            proposals[result.best_index],
            result.q_values,
            proposals,
            time.perf_counter() - start,
            result.latency_s,
        )

    def __call__(self, model: Any, state: Any) -> Any | None:
        """The proposal to execute (None: no valid proposal)."""
        return self.decide(model, state).proposal


def fit_masks(planner: Any, masks: SizedMasks, image_size: int | None) -> int:
    """Render masks at the size the Q-function's ONNX input expects (or image_size; a torch
    checkpoint pools any size, so 224 by default)."""
    hw = getattr(planner.scorer, "input_hw", None)
    masks.size = image_size or (int(hw[0]) if hw and int(hw[0]) > 0 else DEFAULT_SIZE)
    return masks.size


def learned_q_planner(
    model_path: str, image_size: int | None = None, **kwargs: Any
) -> DecidePlanner:
    """The `learned_q` registry entry: a LearnedQPlanner on the sim's mask builder."""
    masks = SizedMasks()
    inner = LearnedQPlanner(model_path, mask_fn=masks, **kwargs)
    return DecidePlanner(inner, "learned_q", fit_masks(inner, masks, image_size))


register_planner("learned_q", learned_q_planner)
