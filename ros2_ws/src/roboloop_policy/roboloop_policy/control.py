"""The policy control loop without ROS: latest observations in, one action per tick out.

Subscription callbacks only store the newest decoded observation per key (`observe`); the
control timer calls `step` once per period. `step` samples the newest observations (zero-order
hold at the control rate, the way the recorder samples them into datasets) and acts through the
runtime's `ActingBuffer`, the observation history and action queue that sim evaluation uses
too: when the queue is empty it runs `predict_action_chunk` and queues the first
`n_action_steps` actions. Each action carries the stamp of the newest observation of the step it
is published for (what the robot, e.g. a lockstep sim bridge, matches it to), also a queued
action of a chunk computed from an earlier one (`Command.chunk_stamp_ns`).

Watchdog: if any observation is older than `stale_periods` control periods, by its header stamp
against the node clock or by the time it arrived, `step` returns the safe action (zeros, or the
last policy action held) instead. When every observation is fresh again, history and queue are
reset (with the policy's recurrent state, `reset()`) so the policy restarts from current
data, never from a half-stale window.

Every chunk passes `safety.ActionGuard` before it is queued: a chunk of the wrong shape, with a
NaN/Inf, or an inference that raised, gives the safe action for that tick (the command carries
the `ModelOutputError`); finite actions outside the bounds are clipped (the command says so). The
safe action itself is zeros clipped into the bounds, or the last (checked) policy action.
A value the graph returns beside its chunk (`CHUNK_VALUES`: a best_of_n model's chosen `q`) is
checked with it, one finite number, and reported on diagnostics; a non-finite one rejects the
whole chunk like a non-finite action. A best_of_n chunk runs open-loop like any other: its first
`n_action_steps` (the export sets the horizon) are queued and no inference runs until they are
spent.

Episode boundaries: a sim (or any source of a done signal) starts its next episode in the same
tick that ends one, so without a signal the first chunk of an episode would be computed from a
window holding the previous episode's last frame, after its leftover queued actions.
`episode_done()` (the node calls it on True from the bridge's done topic) makes `step` wait for
an observation newer than the last one acted on, then restart history and queue from it, as
sim evaluation resets the policy per episode.

Triggers: on the control timer (`step` every period), or on observations: `step_ready` says
when the newest observations complete a control step (every key at one stamp, at least a period
less `STEP_TOLERANCE` after the step acted on last), and the node calls `step` at once; the timer
then only runs the watchdog (`stale`), so a silent or malformed stream still gets the safe action.

Rate check: once every key has `RATE_SAMPLES` arrivals after `activate`, `check_rates` compares
the slowest observation rate with the control rate. Observations slower than the control rate
(by more than `RATE_TOLERANCE`) mean repeated frames in the history and stale events: that is a
mismatch, reported once per activation. Faster observations are sampled down, as the recorder
samples datasets, and are fine.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np

from roboloop_policy.safety import ActionGuard
from roboloop_runtime import Q_OUTPUT, ActingBuffer, ChunkPolicy, ModelOutputError, check_output

WAITING = "waiting_for_observations"  # some key never received: nothing is published
RUNNING = "running"
STALE = "stale"  # safe action published
BAD_OUTPUT = "bad_model_output"  # the last chunk was rejected: safe action published
SAFE_ACTIONS = ("zeros", "hold")
RATE_SAMPLES = 20  # arrivals per key after activation before the rates are compared
RATE_TOLERANCE = 0.2  # observations slower than (1 - this) x the control rate: a mismatch
PUBLISH_MARGIN = 0.05  # of a period: publish + delivery of an action before the robot's tick
STEP_TOLERANCE = 0.25  # of a period: stamp jitter an observation-triggered step tolerates
TRIGGERS = ("timer", "observation")
# Graph outputs beside the actions, one value per row, checked with the chunk and reported:
# output name -> diagnostics key (extend here, not with model-type branches).
CHUNK_VALUES = {Q_OUTPUT: "chosen_q"}


class LatencyWindow:
    """Seconds of the last `size` events; percentiles for diagnostics."""

    def __init__(self, size: int = 500) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._values.append(seconds)
        self.count += 1

    def percentile_ms(self, q: float) -> float | None:
        values = list(self._values)  # copy: the control thread keeps appending
        return float(np.percentile(values, q) * 1e3) if values else None


@dataclass
class ChunkValue:
    """One CHUNK_VALUES output over the chunks: the latest accepted value and counts."""

    latest: float | None = None
    count: int = 0  # chunks whose value was finite (and queued)
    rejected: int = 0  # chunks rejected for a non-finite or misshapen value

    def accept(self, value: float) -> None:
        self.latest = value
        self.count += 1


@dataclass(frozen=True)
class Command:
    """One control tick's output."""

    action: np.ndarray  # (A,) float32, within the action bounds
    stamp_ns: int  # newest observation stamp of the step this action is for (header.stamp)
    safe: bool  # True: safe action (stale observations or a rejected model output)
    stale_keys: tuple[str, ...] = ()
    clipped: bool = False  # the policy's action was outside the bounds and clipped
    fault: ModelOutputError | None = None  # why the model's output was rejected
    # Policy actions: stamp of the observation the action's chunk was computed from (older
    # than stamp_ns for a queued action), and whether this step computed that chunk.
    chunk_stamp_ns: int | None = None
    new_chunk: bool = False


@dataclass
class _Latest:
    value: np.ndarray
    stamp_ns: int  # header.stamp
    arrival_ns: int  # monotonic clock at receipt


class PolicyLoop:
    """Newest observations + acting buffer + watchdog + guard around one `ChunkPolicy`."""

    def __init__(
        self,
        policy: ChunkPolicy,
        period_s: float,
        stale_periods: float = 3.0,
        safe_action: str = "zeros",
        latency_window: int = 500,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"control period must be > 0 s, got {period_s}")
        if stale_periods <= 0:
            raise ValueError(f"stale_periods must be > 0, got {stale_periods}")
        if safe_action not in SAFE_ACTIONS:
            raise ValueError(f"safe_action {safe_action!r} is not one of {SAFE_ACTIONS}")
        self.policy = policy
        self.meta = policy.metadata
        self.guard = ActionGuard(self.meta.action_bounds, self.meta.horizon, self.meta.action_dim)
        self.keys = tuple(self.meta.observations)
        self.period_s = period_s
        self.max_age_ns = int(stale_periods * period_s * 1e9)
        self.safe_action = safe_action
        self._lock = threading.Lock()
        self._latest: dict[str, _Latest] = {}
        # Arrival times per key, to report the rate observations really come in at.
        self._arrivals = {key: collections.deque(maxlen=50) for key in self.keys}
        self.acting = ActingBuffer(self.meta)
        # Zeros as the safe action, moved into the bounds if they exclude zero.
        self._zeros = self.guard.clip(np.zeros(self.meta.action_dim, np.float32))
        self._last_action = self._zeros
        self.state = WAITING
        self.inference_latency = LatencyWindow(latency_window)
        # Every policy action: its step's observation stamp -> publish (queued actions too).
        self.obs_to_action_latency = LatencyWindow(latency_window)
        # Only the steps that computed a chunk: observation -> publish including the inference.
        self.obs_to_first_action_latency = LatencyWindow(latency_window)
        self._pushed_stamp: int | None = None  # newest stamp acted on (pushed to the history)
        self._episode_end: int | None = None  # episode_done(): act on stamps after this only
        self.episodes_ended = 0
        self.late_chunk_steps = 0  # chunk actions skipped: their step had passed (late_steps)
        self.actions_published = 0
        self.safe_actions_published = 0
        self.stale_events = 0
        self.last_stale_keys: tuple[str, ...] = ()
        self.rate_mismatch = ""  # set by check_rates
        self._rates_checked = False
        self.chunk_values: dict[str, ChunkValue] = {}  # diagnostics key -> latest and counts

    def warm_up(self) -> float:
        """One inference on zeros so the first real one is not slow; returns its seconds.

        Also the configure-time check of the graph against its metadata: an output of another
        shape than (1, horizon, action_dim), or a non-finite one, raises ModelOutputError.
        """
        m = self.meta
        batch = {
            key: np.zeros((1, m.obs_steps, *spec.shape), spec.dtype)
            for key, spec in m.observations.items()
        }
        start = time.perf_counter()
        chunk = self.policy.predict_action_chunk(batch)
        elapsed = time.perf_counter() - start
        self.policy.reset()
        self.guard.check_chunk(chunk)
        self._chunk_values()
        return elapsed

    def activate(self) -> None:
        """Start of an active period: clean window and queue, rates measured afresh."""
        self.reset()
        with self._lock:
            for arrivals in self._arrivals.values():
                arrivals.clear()
            self._episode_end = self._pushed_stamp = None
        self.rate_mismatch = ""
        self._rates_checked = False

    def observe(self, key: str, value: np.ndarray, stamp_ns: int, arrival_ns: int) -> None:
        """Store the newest observation of `key` (called from subscription callbacks)."""
        if key not in self.meta.observations:
            raise KeyError(f"{key!r} is not an observation of this policy")
        with self._lock:
            self._latest[key] = _Latest(value, stamp_ns, arrival_ns)
            self._arrivals[key].append(arrival_ns)

    def episode_done(self) -> None:
        """The episode ended: the next observation newer than the last one acted on starts a
        fresh window and queue (called from a done-topic callback)."""
        with self._lock:
            self._episode_end = -1 if self._pushed_stamp is None else self._pushed_stamp
            self.episodes_ended += 1

    def observation_rate_hz(self, key: str) -> float | None:
        """Mean arrival rate of `key` over its last 50 messages (None before two)."""
        with self._lock:
            times = list(self._arrivals[key])
        if len(times) < 2 or times[-1] == times[0]:
            return None
        return (len(times) - 1) / ((times[-1] - times[0]) * 1e-9)

    def reset(self, forget_observations: bool = False) -> None:
        """Drop history, queued actions and the policy's recurrent state (and optionally the
        buffered observations)."""
        self.acting.reset()
        self.policy.reset()
        if forget_observations:
            with self._lock:
                self._latest.clear()
            self.state = WAITING

    def step_ready(self) -> bool:
        """Observation trigger: every key has arrived at one stamp, a control step (less
        STEP_TOLERANCE) after the stamp acted on last, or after an episode ended."""
        with self._lock:
            stamps = {obs.stamp_ns for obs in self._latest.values()}
            if len(self._latest) < len(self.keys) or len(stamps) != 1:
                return False
            stamp = stamps.pop()
            last = self._pushed_stamp
        return last is None or stamp - last >= (1.0 - STEP_TOLERANCE) * self.period_s * 1e9

    def stale(self, now_ns: int, now_mono_ns: int) -> bool:
        """Observation trigger's watchdog: some observation is too old (or never came while
        others did), so the timer must publish the safe action."""
        with self._lock:
            latest = dict(self._latest)
        return bool(latest) and bool(self._stale_keys(latest, now_ns, now_mono_ns))

    def _stale_keys(
        self, latest: dict[str, _Latest], now_ns: int, now_mono_ns: int
    ) -> tuple[str, ...]:
        """Keys whose newest observation is too old by header stamp or by arrival."""
        return tuple(
            key
            for key, obs in latest.items()
            if now_ns - obs.stamp_ns > self.max_age_ns
            or now_mono_ns - obs.arrival_ns > self.max_age_ns
        )

    def step(self, now_ns: int, now_mono_ns: int) -> Command | None:
        """One control tick. None while some observation has never arrived, or after
        `episode_done()` until the next episode's first observation has."""
        with self._lock:
            latest = dict(self._latest)
            episode_end = self._episode_end
        if len(latest) < len(self.keys):
            self.state = WAITING
            return None
        newest_stamp = max(obs.stamp_ns for obs in latest.values())
        stale = self._stale_keys(latest, now_ns, now_mono_ns)
        if stale:
            if self.state != STALE:
                self.stale_events += 1
            self.state = STALE
            self.last_stale_keys = stale
            return Command(self._safe_action(), newest_stamp, safe=True, stale_keys=stale)
        if episode_end is not None:
            if min(obs.stamp_ns for obs in latest.values()) <= episode_end:
                return None  # the next episode's first observation is not here yet
            with self._lock:
                self._episode_end = None
            self.reset()  # a new episode: nothing of the last one in the window or queue
        if self.state == STALE:
            self.reset()  # fresh data again: restart from a clean window, not a stale one
        self.state = RUNNING
        self.acting.push({key: obs.value for key, obs in latest.items()})
        self._pushed_stamp = newest_stamp
        new_chunk = self.acting.needs_chunk
        if new_chunk:
            try:
                self._infer(newest_stamp, now_ns)
            except ModelOutputError as err:
                self.state = BAD_OUTPUT
                return Command(self._safe_action(), newest_stamp, safe=True, fault=err)
        queued = self.acting.pop()
        self._last_action = queued.action
        # Stamped with this step's observation, not the chunk's: the action is this step's
        # command (a lockstep bridge waits for exactly that stamp).
        return Command(
            queued.action,
            newest_stamp,
            safe=False,
            clipped=queued.clipped,
            chunk_stamp_ns=queued.stamp_ns,
            new_chunk=new_chunk,
        )

    def _safe_action(self) -> np.ndarray:
        return (self._last_action if self.safe_action == "hold" else self._zeros).copy()

    def check_rates(self) -> str | None:
        """Once per activation, when measured: a mismatch message (also kept in rate_mismatch)."""
        if self._rates_checked:
            return None
        with self._lock:
            if any(len(arrivals) < RATE_SAMPLES for arrivals in self._arrivals.values()):
                return None
        self._rates_checked = True
        rates = {key: self.observation_rate_hz(key) for key in self.keys}
        key, rate = min(rates.items(), key=lambda kv: kv[1] or 0.0)
        control = 1.0 / self.period_s
        if rate is None or rate >= (1.0 - RATE_TOLERANCE) * control:
            return None
        trained = self.meta.control_rate_hz
        self.rate_mismatch = (
            f"observation rate mismatch: {key!r} arrives at {rate:.1f} Hz but the policy runs "
            f"at {control:g} Hz"
            + (f" (model trained at {trained:g} Hz)" if trained else "")
            + ": the policy sees repeated frames and stale observations"
        )
        return self.rate_mismatch

    def published(self, command: Command, now_ns: int) -> None:
        """Count a published command; policy actions feed the obs->action latency window
        (from their step's observation), those that computed a chunk the first-action one."""
        if command.safe:
            self.safe_actions_published += 1
        else:
            self.actions_published += 1
            latency = (now_ns - command.stamp_ns) * 1e-9
            self.obs_to_action_latency.add(latency)
            if command.new_chunk:
                self.obs_to_first_action_latency.add(latency)

    def _infer(self, stamp_ns: int, now_ns: int) -> None:
        """Queue n_action_steps checked actions of a new chunk (or ModelOutputError), from the
        one for the step they will be applied at (`late_steps`)."""
        batch = self.acting.window()
        start = time.perf_counter()
        try:
            chunk = self.policy.predict_action_chunk(batch)  # (1, horizon, A)
        except Exception as err:  # onnxruntime raises its own types; the robot gets safe
            raise ModelOutputError("inference_failed", f"{type(err).__name__}: {err}") from err
        self.inference_latency.add(time.perf_counter() - start)
        actions, clipped = self.guard.check_chunk(chunk)
        for key, value in self._chunk_values().items():
            self.chunk_values[key].accept(value)
        late = self.late_steps(now_ns - stamp_ns)
        self.late_chunk_steps += late
        self.acting.queue(actions[late:], stamp_ns, clipped[late:])

    def _chunk_values(self) -> dict[str, float]:
        """The CHUNK_VALUES outputs of the last inference, each checked: one finite number,
        else ModelOutputError (counted as rejected)."""
        outputs = getattr(self.policy, "last_outputs", {})
        values = {}
        for name, key in CHUNK_VALUES.items():
            if name not in outputs:
                continue
            tracker = self.chunk_values.setdefault(key, ChunkValue())
            try:
                values[key] = float(check_output(name, outputs[name], (1,))[0])
            except ModelOutputError:
                tracker.rejected += 1
                raise
        return values

    def late_steps(self, age_ns: int) -> int:
        """Whole control periods between the observation a chunk is computed from and the step
        its first action will be applied at. The chunk's action k is for step stamp + k periods;
        an observation a period old (this tick came just before the next one arrived) gets its
        actions from index 1, not a step late. At most horizon - n_action_steps."""
        periods = (age_ns * 1e-9 + PUBLISH_MARGIN * self.period_s) // self.period_s
        return int(min(max(periods, 0), self.meta.horizon - self.meta.n_action_steps))

    def diagnostics(self) -> dict[str, str]:
        """Counters and latency percentiles as diagnostic key/values (ms, 3 decimals)."""

        def num(value: float | None, fmt: str = ".3f") -> str:
            return "n/a" if value is None else format(value, fmt)

        inf, o2a = self.inference_latency, self.obs_to_action_latency
        first = self.obs_to_first_action_latency
        values = {
            "control_state": self.state,
            "inference_latency_p50_ms": num(inf.percentile_ms(50)),
            "inference_latency_p99_ms": num(inf.percentile_ms(99)),
            "inference_count": str(inf.count),
            "obs_to_action_latency_p50_ms": num(o2a.percentile_ms(50)),
            "obs_to_action_latency_p99_ms": num(o2a.percentile_ms(99)),
            "obs_to_first_action_latency_p50_ms": num(first.percentile_ms(50)),
            "obs_to_first_action_latency_p99_ms": num(first.percentile_ms(99)),
            "actions_published": str(self.actions_published),
            "safe_actions_published": str(self.safe_actions_published),
            "stale_events": str(self.stale_events),
            "episodes_ended": str(self.episodes_ended),
            "late_chunk_steps": str(self.late_chunk_steps),
            "last_stale_keys": ",".join(self.last_stale_keys),
            "action_bounds_source": self.guard.source,
            "observation_rate_mismatch": self.rate_mismatch,
        }
        for key in self.keys:
            values[f"observation_rate_hz:{key}"] = num(self.observation_rate_hz(key), ".1f")
        for key, tracker in self.chunk_values.items():
            values[key] = num(tracker.latest, ".6g")
            values[f"{key}_count"] = str(tracker.count)
            values[f"{key}_rejected"] = str(tracker.rejected)
        return values
