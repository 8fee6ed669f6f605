"""UCT over NAMO moves: which object to move where so the robot can reach its goal cheaply.

Actions at a node are the transition model's proposals (``TransitionModel.proposals``: up to
``proposals_per_object`` random valid target poses per reachable object, drawn once when the
node is expanded). A simulation selects by UCT, expands one untried proposal, then finishes
with a random rollout (one random proposal per step) until the goal is reachable or the move
budget (``max_depth`` moves from the root) is spent.

Return of a simulation, counted from the root state (in [0, 1]):

    R = max(0, 1 - sum(step costs) - final drive cost)   if the goal became reachable
    R = 0                                                 otherwise

with step cost = ``move_cost`` + ``object_distance_cost`` x object displacement +
``robot_distance_cost`` x robot drive (``transition.CostConfig``), so fewer and shorter moves
score higher. ``Q(root, a)`` = mean return of the simulations through ``a`` (``W / N``).
A root proposal that the budget never visited gets Q = 0 (the failure value) and
``visits = 0``; consumers that care filter on visits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from sim.namo.transition import NamoState, Proposal, TransitionModel


@dataclass(frozen=True)
class MCTSConfig:
    budget: int = 100  # simulations per decision
    max_depth: int = 3  # moves looked ahead from the root (tree + rollout)
    proposals_per_object: int = 4  # branching at the root
    inner_proposals_per_object: int = 2  # branching below the root
    exploration: float = 0.7  # UCT constant c in Q + c sqrt(ln N / n)
    seed: int = 0


@dataclass
class Node:
    state: NamoState
    depth: int
    cost: float  # accumulated step cost from the root to this node
    proposals: list[Proposal] | None = None  # None until expanded
    children: dict[int, Node] = field(default_factory=dict)
    visits: np.ndarray | None = None  # per proposal
    value_sum: np.ndarray | None = None
    n: int = 0


@dataclass
class SearchResult:
    """Root proposals with their Q-values, visit counts and the chosen move."""

    proposals: list[Proposal]
    q_values: np.ndarray  # (K,) float32, mean return; 0.0 where unvisited
    visits: np.ndarray  # (K,) int64
    best_index: int  # -1 when there is no proposal
    simulations: int
    seconds: float

    @property
    def best(self) -> Proposal | None:
        return self.proposals[self.best_index] if self.best_index >= 0 else None


class MCTS:
    """UCT search for one transition model (scene); ``search(state)`` plans one decision."""

    def __init__(self, model: TransitionModel, config: MCTSConfig | None = None):
        self.model = model
        self.config = config or MCTSConfig()
        self.rng = np.random.default_rng(self.config.seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _expand(self, node: Node) -> None:
        per = (
            self.config.proposals_per_object
            if node.depth == 0
            else self.config.inner_proposals_per_object
        )
        node.proposals = self.model.proposals(node.state, per, self.rng)
        k = len(node.proposals)
        node.visits = np.zeros(k, np.int64)
        node.value_sum = np.zeros(k, np.float64)

    def _terminal_value(self, state: NamoState, cost: float) -> float | None:
        """Return if ``state`` ends the simulation (goal reachable), else None."""
        if self.model.goal_reached(state):
            return max(0.0, 1.0 - cost - self.model.final_cost(state))
        return None

    def _rollout(self, state: NamoState, depth: int, cost: float) -> float:
        while depth < self.config.max_depth:
            reachable = self.model.reachable_objects(state)
            if not reachable:
                return 0.0
            k = int(reachable[self.rng.integers(len(reachable))])
            moves = self.model.proposals(state, 1, self.rng, objects=[k])
            if not moves:
                return 0.0
            step = self.model.step(state, moves[0])
            state, cost, depth = step.state, cost + step.cost, depth + 1
            value = self._terminal_value(state, cost)
            if value is not None:
                return value
        return 0.0

    def _select(self, node: Node) -> int:
        unvisited = np.flatnonzero(node.visits == 0)
        if len(unvisited):
            return int(unvisited[self.rng.integers(len(unvisited))])
        q = node.value_sum / node.visits
        ucb = q + self.config.exploration * np.sqrt(math.log(node.n) / node.visits)
        return int(np.argmax(ucb))

    def _simulate(self, node: Node) -> float:
        value = self._terminal_value(node.state, node.cost)
        if value is not None:
            return value
        if node.depth >= self.config.max_depth:
            return 0.0
        if node.proposals is None:
            self._expand(node)
        if not node.proposals:
            return 0.0
        a = self._select(node)
        child = node.children.get(a)
        if child is None:
            step = self.model.step(node.state, node.proposals[a])
            child = Node(step.state, node.depth + 1, node.cost + step.cost)
            node.children[a] = child
            value = self._terminal_value(child.state, child.cost)
            if value is None:
                value = self._rollout(child.state, child.depth, child.cost)
        else:
            value = self._simulate(child)
        node.visits[a] += 1
        node.value_sum[a] += value
        node.n += 1
        return value

    def search(self, state: NamoState, proposals: list[Proposal] | None = None) -> SearchResult:
        """Run ``budget`` simulations from ``state``; Q for every root proposal. ``proposals``
        fixes the root's moves instead of drawing them (what a set of given moves achieves)."""
        start = time.perf_counter()
        root = Node(state, 0, 0.0)
        if proposals is None:
            self._expand(root)
        else:
            root.proposals = list(proposals)
            root.visits = np.zeros(len(proposals), np.int64)
            root.value_sum = np.zeros(len(proposals), np.float64)
        sims = 0
        if root.proposals:
            for sims in range(1, self.config.budget + 1):  # noqa: B007
                self._simulate(root)
        k = len(root.proposals)
        visits = root.visits.copy()
        q = np.zeros(k, np.float32)
        seen = visits > 0
        q[seen] = (root.value_sum[seen] / visits[seen]).astype(np.float32)
        best = best_index(q, visits)
        return SearchResult(root.proposals, q, visits, best, sims, time.perf_counter() - start)


def best_index(q_values: np.ndarray, visits: np.ndarray) -> int:
    """Highest mean return among visited proposals (ties: most visits, then order); -1: none."""
    if len(q_values) == 0 or not (visits > 0).any():
        return -1 if len(q_values) == 0 else 0
    keys = np.where(visits > 0, q_values, -np.inf)
    best = np.flatnonzero(keys == keys.max())
    return int(best[np.argmax(visits[best])])
