"""rclpy-free logic of `namo_planner`: the `dit_q` planner with its generator and Q-function
behind request/reply transports (the goal_generator and q_scorer nodes), timed per decision.

    generator = RemoteGenerator(ask_goals, scene_size=64)    # scene (H, W, 5) -> (S, S, K)
    scorer = RemoteScorer(ask_q, input_hw=(56, 56))          # request (H, W, 8 + 5K) -> (K,)
    planner = make_remote_planner(generator, scorer, proposals_per_object=8)
    for record in plan_episode(planner, model, max_moves=5): ...

A decision is `learning.generative.planner.DiTQPlanner.decide` unchanged: per reachable object
the scene masks go to the generator, goal masks become moves (`mask_to_pose` + the transition
model's check), all valid moves of the state go to the scorer in one request, the argmax is
executed. `DecisionRecord` says how long it took and how much of it was waiting on the two
nodes (their inference plus the DDS round trip): `network_s = generator_s + scorer_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from learning.generative.planner import DiTQPlanner
from sim.namo.layout import join_request
from sim.namo.masks import SizedMasks
from sim.namo.scoring import ScoreResult, score_result
from sim.namo.transition import NamoState, TransitionModel


class ReplyError(RuntimeError):
    """A node's reply that cannot be used (wrong shape, non-finite values)."""


class RemoteGenerator:
    """The `Generator` of DiTQPlanner over a transport: `ask(scene (H, W, 5) float32)` returns
    the goal_generator node's proposals (S, S, K) in [0, 1]."""

    def __init__(
        self, ask: Callable[[np.ndarray], np.ndarray], scene_size: int, threshold: float = 0.5
    ):
        self.ask, self.image_size, self.threshold = ask, scene_size, threshold
        self.seconds = 0.0  # time spent waiting on the node since the last `take_seconds`

    def propose(self, scene: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        hwk = self.ask(np.ascontiguousarray(scene, np.float32))
        self.seconds += time.perf_counter() - start
        if hwk.ndim != 3 or hwk.shape[0] != hwk.shape[1] or not np.isfinite(hwk).all():
            raise ReplyError(f"goal proposals of shape {hwk.shape}: expected finite (S, S, K)")
        return np.ascontiguousarray(hwk.transpose(2, 0, 1))

    def take_seconds(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class RemoteScorer:
    """The scorer of DiTQPlanner over a transport: `ask(request (H, W, 8 + 5K))` returns the
    q_scorer node's K Q-values. `latency_s` is the round trip."""

    provider = "q_scorer node"

    def __init__(self, ask: Callable[[np.ndarray], np.ndarray], input_hw: tuple[int, int]):
        self.ask, self.input_hw = ask, tuple(input_hw)

    def score(self, state_masks: np.ndarray, action_masks: np.ndarray) -> ScoreResult:
        start = time.perf_counter()
        q = np.asarray(self.ask(join_request(state_masks, action_masks)), np.float32).ravel()
        if q.size != len(action_masks) or not np.isfinite(q).all():
            raise ReplyError(f"{q.size} Q-values for {len(action_masks)} proposals")
        return score_result(q, start)


def make_remote_planner(
    generator: RemoteGenerator, scorer: RemoteScorer, proposals_per_object: int = 8, seed: int = 0
) -> DiTQPlanner:
    """DiTQPlanner on the remote pair, Q masks at the scorer's size (the sim's mask builder)."""
    masks = SizedMasks(int(scorer.input_hw[0]))
    return DiTQPlanner(generator, scorer, proposals_per_object, seed, mask_fn=masks)


@dataclass(frozen=True)
class DecisionRecord:
    """One executed decision: the move, its Q, and where the time went."""

    move: int  # 0-based index in the episode
    object_id: str | None
    x: float
    y: float
    theta: float
    q: float
    generated: int  # goal masks sampled
    valid: int  # of them, moves the transition model accepted
    fallback: bool  # no valid generated move: uniform proposals were scored
    decision_s: float  # the whole decision
    generator_s: float  # waiting on the goal_generator node
    scorer_s: float  # waiting on the q_scorer node
    goal_reached: bool  # after executing the move

    @property
    def network_s(self) -> float:
        return self.generator_s + self.scorer_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"network_s": self.network_s}


def timed_decision(
    planner: DiTQPlanner, model: TransitionModel, state: NamoState
) -> tuple[Any, float, float]:
    """(Decision, generator seconds, scorer seconds) of one decision."""
    planner.generator.take_seconds()
    decision = planner.decide(model, state)
    return decision, planner.generator.take_seconds(), float(decision.network_seconds)


def plan_episode(
    planner: DiTQPlanner, model: TransitionModel, max_moves: int = 5, seed: int = 0
) -> Iterator[DecisionRecord]:
    """Decide and execute until the goal is reachable, no move is left or `max_moves`."""
    planner.reset(seed)
    state = model.initial_state()
    for move in range(max_moves):
        if model.goal_reached(state):
            return
        decision, generator_s, scorer_s = timed_decision(planner, model, state)
        p = decision.proposal
        if p is not None:
            state = model.step(state, p).state
        best = float(np.max(decision.q_values)) if len(decision.q_values) else float("nan")
        yield DecisionRecord(
            move,
            None if p is None else p.object_id,
            *((float("nan"),) * 3 if p is None else (p.x, p.y, p.theta)),
            best,
            decision.generated,
            decision.valid,
            decision.fallback,
            decision.seconds,
            generator_s,
            scorer_s,
            model.goal_reached(state),
        )
        if p is None:
            return


class PlannerStats:
    """What /diagnostics says about the planner's decisions: counts and sums, not a list of
    every decision, so a node that plans for days keeps a constant size."""

    def __init__(self) -> None:
        self.episodes = 0
        self.solved = 0
        self.decisions = 0
        self.fallbacks = 0
        self.last: DecisionRecord | None = None
        self._decision_s = 0.0  # sums, for the means
        self._network_s = 0.0

    def record(self, record: DecisionRecord) -> None:
        self.decisions += 1
        self.fallbacks += bool(record.fallback)
        self._decision_s += record.decision_s
        self._network_s += record.network_s
        self.last = record

    def values(self) -> dict[str, str]:
        out = {
            "episodes": str(self.episodes),
            "solved": str(self.solved),
            "decisions": str(self.decisions),
        }
        last = self.last
        if last is not None:
            out.update(
                last_decision_ms=f"{1e3 * last.decision_s:.1f}",
                last_network_ms=f"{1e3 * last.network_s:.1f}",
                last_generator_ms=f"{1e3 * last.generator_s:.1f}",
                last_scorer_ms=f"{1e3 * last.scorer_s:.1f}",
                mean_decision_ms=f"{1e3 * self._decision_s / self.decisions:.1f}",
                mean_network_ms=f"{1e3 * self._network_s / self.decisions:.1f}",
                last_generated=str(last.generated),
                last_valid=str(last.valid),
                fallbacks=str(self.fallbacks),
            )
        return out
