"""The world-model node's loop without ROS: observations and applied actions in, one belief
update per new observation out.

Subscription callbacks only store: the newest decoded value per observation key (`observe`),
the applied actions with their stamps (`applied`: the stamp of the observation each was applied
at, as the sim bridge stamps them) and the end of an episode (`episode_end`). The timer calls
`step`, which filters an observation once every key holds a value newer than the last filtered
one (stamp t = the newest of them), exactly once:

    episode start (first observation, after `episode_end`, after a stale spell):
        latent <- initial (zeros), prev action a_{t-1} = 0                         (as trained)
    else  a_{t-1} = the newest applied action stamped before o_t
          reward, continue, prior = imagine(s_{t-1}, a_{t-1})   the model's guess of what the
                                      bridge's /reward and /done said about that step, and
          prediction = decode(prior)  of o_t, before seeing it          (with those graphs)
    s_t = filter(o_t, a_{t-1}, s_{t-1});  action a_t = actor(s_t), clipped to its bounds

Watchdog as the policy node's: an observation older than `stale_periods` control periods (by
stamp or by arrival) gives the safe action (zeros, or the last action held) while an actor is
served, nothing else; when observations are fresh again the latent restarts from the initial
state (the belief missed steps). A non-finite or misshapen model output publishes the safe
action for that observation (`BAD_OUTPUT`) and restarts the latent too.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from roboloop_policy.control import RUNNING, SAFE_ACTIONS, STALE, WAITING, LatencyWindow
from roboloop_policy.safety import ActionGuard

from roboloop_runtime import ActionBounds, ModelOutputError, WorldModelRunner

BAD_OUTPUT = "bad_model_output"
EPISODE, RECOVERY = "episode", "recovery"  # why the latent restarts from the initial state
APPLIED_DEPTH = 64  # applied actions kept (a few seconds at any control rate served here)


@dataclass(frozen=True)
class Belief:
    """What one filtered observation gives the node to publish."""

    stamp_ns: int  # stamp of the observation filtered
    episode_start: bool
    action: np.ndarray | None = None  # (A,) within bounds; None without an actor graph
    safe: bool = False  # `action` is the safe action (stale input or a rejected output)
    reward: float | None = None  # imagine(s_{t-1}, a_{t-1}); None at an episode start
    cont: float | None = None
    prediction: dict[str, np.ndarray] = field(default_factory=dict)  # decode(prior)
    stale_keys: tuple[str, ...] = ()
    clipped: bool = False
    fault: ModelOutputError | None = None


@dataclass
class _Latest:
    value: np.ndarray
    stamp_ns: int
    arrival_ns: int


class BeliefLoop:
    """Newest observations, applied actions, episode starts and the watchdog around one
    `WorldModelRunner` (module docstring)."""

    def __init__(
        self,
        world: WorldModelRunner,
        period_s: float,
        stale_periods: float = 3.0,
        safe_action: str = "zeros",
        predict_observations: bool = False,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"control period must be > 0 s, got {period_s}")
        if stale_periods <= 0:
            raise ValueError(f"stale_periods must be > 0, got {stale_periods}")
        if safe_action not in SAFE_ACTIONS:
            raise ValueError(f"safe_action {safe_action!r} is not one of {SAFE_ACTIONS}")
        if predict_observations and not {"imagine", "decode"} <= set(world.graphs):
            raise ValueError("predicting observations needs the imagine and decode graphs")
        self.world = world
        self.keys = tuple(world.observations)
        self.period_s = period_s
        self.max_age_ns = int(stale_periods * period_s * 1e9)
        self.safe_action = safe_action
        self.predict_observations = predict_observations
        self.guard: ActionGuard | None = None
        if "actor" in world.graphs:
            bounds = world.graphs["actor"].metadata.get("action_bounds")
            self.guard = ActionGuard(
                ActionBounds.from_dict(bounds) if bounds else None, 1, world.action_dim
            )
        zeros = np.zeros(world.action_dim, np.float32)
        self._zeros = self.guard.clip(zeros) if self.guard else zeros
        self._last_action = self._zeros
        self._lock = threading.Lock()
        self._latest: dict[str, _Latest] = {}
        self._applied: list[tuple[int, np.ndarray]] = []  # (stamp, action), stamps ascending
        # Why the next filtered observation starts from the initial latent (None: it does not).
        self._restart: str | None = EPISODE
        self._last_stamp = -1  # stamp of the last filtered observation
        self.state = WAITING
        self.latency = LatencyWindow()
        self.counts = dict.fromkeys(
            ("steps", "episode_starts", "latent_resets", "stale_events", "actions_published",
             "safe_actions_published", "missing_applied_actions", "bad_outputs"),
            0,
        )  # fmt: skip
        self.last_stale_keys: tuple[str, ...] = ()

    # ---- inputs (subscription callbacks) --------------------------------------------------
    def observe(self, key: str, value: np.ndarray, stamp_ns: int, arrival_ns: int) -> None:
        if key not in self.world.observations:
            raise KeyError(f"{key!r} is not an observation of this world model")
        with self._lock:
            self._latest[key] = _Latest(value, stamp_ns, arrival_ns)

    def applied(self, action: np.ndarray, stamp_ns: int) -> None:
        """The action applied at the observation stamped `stamp_ns`."""
        with self._lock:
            bisect.insort(self._applied, (stamp_ns, action), key=lambda item: item[0])
            del self._applied[:-APPLIED_DEPTH]

    def episode_end(self) -> None:
        """The episode ended: the next new observation starts one (initial latent)."""
        with self._lock:
            self._restart = EPISODE

    # ---- the timer ------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Every graph once on zeros: one that cannot run, or whose outputs disagree with its
        metadata (another latent size, non-finite values), fails at configure, not later."""
        world = self.world
        zeros = {k: np.zeros(s.shape, s.dtype) for k, s in world.observations.items()}
        world.step(zeros, None)
        if "imagine" in world.graphs:
            _, _, prior = world.predict(np.zeros(world.action_dim, np.float32))
            if "decode" in world.graphs:
                world.decode(prior)
        if self.guard is not None:
            self.guard.check_chunk(world.act()[None, None])
        world.reset()

    def step(self, now_ns: int, now_mono_ns: int) -> Belief | None:
        """One timer tick: a Belief when an observation was filtered or the safe action is
        due; None while waiting for (new) observations."""
        with self._lock:
            latest = dict(self._latest)
        if len(latest) < len(self.keys):
            self.state = WAITING
            return None
        stamp = max(obs.stamp_ns for obs in latest.values())
        stale = tuple(
            k
            for k, obs in latest.items()
            if now_ns - obs.stamp_ns > self.max_age_ns
            or now_mono_ns - obs.arrival_ns > self.max_age_ns
        )
        if stale:
            if self.state != STALE:
                self.counts["stale_events"] += 1
                self._restart_latent()
            self.state, self.last_stale_keys = STALE, stale
            return self._safe(stamp, stale_keys=stale)
        if any(obs.stamp_ns <= self._last_stamp for obs in latest.values()):
            if self.state == STALE:
                self.state = RUNNING
            return None  # some key has nothing newer than the last filtered observation
        self.state = RUNNING
        self._last_stamp = stamp
        start = time.perf_counter()
        try:
            belief = self._filter({k: obs.value for k, obs in latest.items()}, stamp)
        except ModelOutputError as err:
            self.state = BAD_OUTPUT
            self.counts["bad_outputs"] += 1
            self._restart_latent()
            return self._safe(stamp, fault=err)
        self.latency.add(time.perf_counter() - start)
        return belief

    def _filter(self, obs: dict[str, np.ndarray], stamp: int) -> Belief:
        world = self.world
        with self._lock:
            restart, self._restart = self._restart, None
            if restart:  # actions applied before this observation belong to the past
                self._applied = [a for a in self._applied if a[0] >= stamp]
            before = [a for s, a in self._applied if s < stamp]
        reward = cont = None
        prediction: dict[str, np.ndarray] = {}
        if restart:
            world.reset()
            prev = None
            self.counts["latent_resets"] += 1
            self.counts["episode_starts"] += restart == EPISODE
        else:
            prev = before[-1] if before else None
            self.counts["missing_applied_actions"] += prev is None
            if "imagine" in world.graphs:
                reward, cont, prior = world.predict(
                    np.zeros(world.action_dim, np.float32) if prev is None else prev
                )
                if self.predict_observations:
                    prediction = world.decode(prior)
        world.step(obs, prev)
        self.counts["steps"] += 1
        action, clipped = None, False
        if self.guard is not None:
            actions, rows = self.guard.check_chunk(world.act()[None, None])
            action, clipped = actions[0], bool(rows[0])
            self._last_action = action
            self.counts["actions_published"] += 1
        start = restart == EPISODE
        return Belief(stamp, start, action, False, reward, cont, prediction, clipped=clipped)

    def _restart_latent(self) -> None:
        with self._lock:
            self._restart = self._restart or RECOVERY

    def _safe(
        self,
        stamp: int,
        stale_keys: tuple[str, ...] = (),
        fault: ModelOutputError | None = None,
    ) -> Belief | None:
        if self.guard is None:
            return None if fault is None else Belief(stamp, False, safe=True, fault=fault)
        action = (self._last_action if self.safe_action == "hold" else self._zeros).copy()
        self.counts["safe_actions_published"] += 1
        return Belief(stamp, False, action, True, stale_keys=stale_keys, fault=fault)

    def diagnostics(self) -> dict[str, str]:
        p50, p99 = (self.latency.percentile_ms(q) for q in (50, 99))
        values = {
            "control_state": self.state,
            "step_latency_p50_ms": "n/a" if p50 is None else f"{p50:.3f}",
            "step_latency_p99_ms": "n/a" if p99 is None else f"{p99:.3f}",
            "last_stale_keys": ",".join(self.last_stale_keys),
            **{k: str(v) for k, v in self.counts.items()},
        }
        if self.guard is not None:
            values["action_bounds_source"] = self.guard.source
        return values
