"""NAMO planners behind one interface, and the registry the evaluation harness builds them from.

    planner = make_planner("mcts", budget=100)      # or "random", "learned_q", "dit_q"
    planner.reset(model, seed)                      # bind a scene (TransitionModel) + seed
    proposal = planner.choose(state)                # Proposal to execute, or None (gives up)
    planner.last_network_seconds                    # network part of the last decision (0 if none)

Registry: ``PLANNERS`` (name -> factory(**kwargs) -> Planner), ``register_planner(name, f)``.
The sim registers ``mcts`` and ``random``. The learned planners register themselves from the
layer above when imported: ``learned_q`` (``learning.namo.planner``) and ``dit_q``
(``learning.generative.planner``), both adapted by ``DecidePlanner`` (they decide with
``decide(model, state)``). The sim never imports ``learning``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from sim.namo.masks import prepare_masks
from sim.namo.mcts import MCTS, MCTSConfig
from sim.namo.transition import NamoState, Proposal, TransitionModel


class Planner(Protocol):
    name: str
    last_network_seconds: float

    def reset(self, model: TransitionModel, seed: int) -> None: ...

    def choose(self, state: NamoState) -> Proposal | None: ...


PlannerFactory = Callable[..., Planner]
PLANNERS: dict[str, PlannerFactory] = {}


def register_planner(name: str, factory: PlannerFactory) -> None:
    """Add (or replace) a planner factory under ``name``."""
    PLANNERS[name] = factory


def make_planner(name: str, **kwargs: Any) -> Planner:
    if name not in PLANNERS:
        raise KeyError(f"unknown NAMO planner {name!r}; registered: {sorted(PLANNERS)}")
    return PLANNERS[name](**kwargs)


class _Bound:
    """Holds the scene a planner is reset on; ``choose`` before ``reset`` fails loudly."""

    name = "planner"
    last_network_seconds = 0.0
    _model: TransitionModel | None = None

    @property
    def model(self) -> TransitionModel:
        if self._model is None:
            raise RuntimeError(f"planner {self.name!r}: call reset(model, seed) before choose()")
        return self._model


class MCTSPlanner(_Bound):
    """Runs a fresh UCT search per decision and executes its best root proposal."""

    name = "mcts"

    def __init__(self, **config: Any):
        self.config = MCTSConfig(**config)
        self.last_result = None

    def reset(self, model: TransitionModel, seed: int) -> None:
        self._model = model
        self.search = MCTS(model, self.config)
        self.search.reset(seed)

    def choose(self, state: NamoState) -> Proposal | None:
        self.last_result = self.search.search(state)
        return self.last_result.best


class RandomPlanner(_Bound):
    """A uniformly random valid proposal (random reachable object, random target pose)."""

    name = "random"

    def __init__(self, proposals_per_object: int = 4):
        self.proposals_per_object = proposals_per_object

    def reset(self, model: TransitionModel, seed: int) -> None:
        self._model = model
        self.rng = np.random.default_rng(seed)

    def choose(self, state: NamoState) -> Proposal | None:
        moves = self.model.proposals(state, self.proposals_per_object, self.rng)
        return moves[int(self.rng.integers(len(moves)))] if moves else None


class DecidePlanner(_Bound):
    """Adapter for planners with ``decide(model, state) -> Decision`` and ``reset(seed)`` (the
    learned planners)."""

    def __init__(self, inner: Any, name: str, mask_size: int | None = None):
        self.inner = inner
        self.name = name
        self.mask_size = mask_size  # side of the masks its Q-function is fed
        self.last_decision = None

    def reset(self, model: TransitionModel, seed: int) -> None:
        self._model = model
        if self.mask_size:  # per-scene mask work once, when the scene is given
            prepare_masks(model, self.mask_size)
        self.inner.reset(seed)

    def choose(self, state: NamoState) -> Proposal | None:
        self.last_decision = self.inner.decide(self.model, state)
        self.last_network_seconds = float(self.last_decision.network_seconds)
        return self.last_decision.proposal


register_planner("mcts", MCTSPlanner)
register_planner("random", RandomPlanner)
