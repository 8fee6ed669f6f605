"""Align per-topic samples onto a fixed control-rate timeline by stamp (no rclpy).

Timeline: ticks `t_j = t_0 + j * period`. `t_0` is phase-locked half a period after the first
reference sample (an observation topic with a header), so the reference stamps fall in the middle
of tick intervals rather than on their edges where jitter would flip them between ticks.

At tick `t_j` the reference key takes its newest sample with `stamp <= t_j`; it must be new (not
used by the previous step) and at most one period old, otherwise the tick is not a step (publisher
late or paused) and the timeline re-locks its phase on the next reference sample (`relocks`).
Every other key takes, among its samples with `stamp <= t_j`, the one nearest to the reference
stamp, which must be within `max_age` of it (`|ref_stamp - stamp| <= max_age`); a key without one
makes the step stale (skipped, counted). A 500 Hz joint state thus contributes the sample taken
with the camera frame, an action stamped with its observation's stamp matches exactly. With
`max_age` < period / 2 no sample can serve two steps.

A tick is only evaluated once `now >= t_j + lag` and `now >= arrival + lag` of its reference
sample, so that messages belonging to that step (e.g. the applied action, published up to one
period after the observation it was applied to) have arrived, even when a publisher stamps
its samples well before it sends them.
Samples of headerless topics are stamped on arrival by the caller.

Bad stamps cannot wedge the timeline. `add` rejects (returns a reason, buffers nothing):
- "future_stamp": a stamp more than `future_tolerance` ahead of its arrival (the node clock); a
  sample 11 days ahead would otherwise become a buffer's newest and push every real one out;
- "late": a stamp older than every tick still ahead (one far in the past, or out of order);
- "duplicate_stamp": a reference sample whose stamp an earlier one had (it cannot make a new
  step; a publisher that leaves its stamps at zero shows up here instead of stalling silently).
Time going backwards resets the timeline (buffers, phase, `evaluated_until`; `time_jumps`):
- the node clock (`poll(now)`) stepped back by more than a period (a sim clock that restarts);
- `REF_JUMP_SAMPLES` reference samples in a row were late, with increasing stamps: the reference
  publisher's clock went back, and the timeline follows it (a single stray old sample, or stamps
  stuck at one value, are just late).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AlignedStep:
    stamp: float  # stamp of the reference sample
    tick: float
    values: dict[str, Any]
    stamps: dict[str, float]  # stamp of the sample each key took


@dataclass
class AlignStats:
    steps: int = 0
    stale_steps: int = 0
    stale_by_key: dict[str, int] = field(default_factory=dict)
    relocks: int = 0
    time_jumps: int = 0  # timeline resets because time went backwards

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "stale_steps": self.stale_steps,
            "stale_by_key": dict(self.stale_by_key),
            "relocks": self.relocks,
            "time_jumps": self.time_jumps,
        }


FUTURE_STAMP = "future_stamp"


def is_future_stamp(stamp: float, now: float, tolerance: float) -> bool:
    """The future-stamp rule (the recorder's aligner, the sim bridge's action commands): a stamp
    more than `tolerance` seconds ahead of `now`, the node clock when the message arrived."""
    return stamp > now + tolerance


LATE = "late"
DUPLICATE_STAMP = "duplicate_stamp"
REF_JUMP_SAMPLES = 3


class _Buffer:
    """Stamp-sorted samples of one key (out-of-order arrivals are inserted in place)."""

    def __init__(self, horizon: float) -> None:
        self.stamps: deque[float] = deque()
        self.values: deque[Any] = deque()
        self.horizon = horizon

    def add(self, stamp: float, value: Any) -> None:
        stamps = self.stamps
        if not stamps or stamp >= stamps[-1]:
            stamps.append(stamp)
            self.values.append(value)
        else:
            i = bisect.bisect_right(stamps, stamp)
            stamps.insert(i, stamp)
            self.values.insert(i, value)
        while stamps and stamps[-1] - stamps[0] > self.horizon:
            stamps.popleft()
            self.values.popleft()

    def newest_at_or_before(self, t: float) -> tuple[float, Any] | None:
        i = bisect.bisect_right(self.stamps, t)
        return None if i == 0 else (self.stamps[i - 1], self.values[i - 1])

    def nearest(self, t: float, upto: float) -> tuple[float, Any] | None:
        """Sample with stamp nearest to `t` among those with stamp <= `upto` (t <= upto)."""
        stamps = self.stamps
        i = bisect.bisect_left(stamps, t)
        # the first at or after t if it is allowed and strictly nearer, else the last before t
        if i < len(stamps) and stamps[i] <= upto and (i == 0 or stamps[i] - t < t - stamps[i - 1]):
            return stamps[i], self.values[i]
        return None if i == 0 else (stamps[i - 1], self.values[i - 1])

    def first_after(self, t: float) -> float | None:
        i = bisect.bisect_right(self.stamps, t)
        return None if i == len(self.stamps) else self.stamps[i]

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()


class Aligner:
    """Fixed-rate, stamp-based alignment of several keys; `reference` drives the timeline."""

    def __init__(
        self,
        keys: list[str],
        reference: str,
        period: float,
        max_age: float,
        lag: float | None = None,
        horizon: float | None = None,
        future_tolerance: float = 1.0,
    ) -> None:
        if reference not in keys:
            raise ValueError(f"reference key {reference!r} not among {keys}")
        if period <= 0 or not 0 < max_age < period / 2:
            raise ValueError(
                f"need 0 < max_age < period / 2, got period {period}, max_age {max_age}"
            )
        if not future_tolerance >= 0:
            raise ValueError(f"need future_tolerance >= 0, got {future_tolerance}")
        self.keys = list(keys)
        self.reference = reference
        self.period = period
        self.max_age = max_age
        self.lag = period + max_age if lag is None else lag
        self.future_tolerance = future_tolerance
        horizon = horizon if horizon is not None else max(2.0, 4 * (self.lag + max_age))
        self._buffers = {k: _Buffer(horizon) for k in keys}
        self._next_tick: float | None = None
        self._last_ref_stamp: float | None = None
        self._evaluated_until = -math.inf
        self._oldest_usable = -math.inf  # oldest_usable, kept up to date (add reads it a lot)
        self._ref_arrivals: dict[float, float] = {}  # reference stamp -> arrival time
        self._late_refs: list[float] = []  # stamps of the last reference samples, all late
        self._clock = -math.inf  # latest `now` seen by poll
        self.epoch = 0  # bumped by every reset, so that callers can drop what they derived
        self.stats = AlignStats()

    @property
    def evaluated_until(self) -> float:
        """Latest tick evaluated (samples before it minus period + max_age are no longer used)."""
        return self._evaluated_until

    @property
    def oldest_usable(self) -> float:
        """Stamps below this are "late": no tick still ahead can use them."""
        return self._oldest_usable

    def add(self, key: str, stamp: float, value: Any, arrival: float | None = None) -> str | None:
        """Buffer a sample, or return why not (FUTURE_STAMP, LATE, DUPLICATE_STAMP).

        `arrival` (the node clock when it came; default: its stamp) bounds how far ahead the
        stamp may be and delays the reference key's ticks.
        """
        if arrival is not None and is_future_stamp(stamp, arrival, self.future_tolerance):
            return FUTURE_STAMP
        if stamp < self._oldest_usable:
            if key != self.reference:
                return LATE
            if self._late_refs and stamp <= self._late_refs[-1]:
                self._late_refs.clear()  # not a clock that went on from an earlier time
            self._late_refs.append(stamp)
            if len(self._late_refs) < REF_JUMP_SAMPLES:
                return LATE
            self.reset()  # the reference publisher's stamps went back: follow them
            self.stats.time_jumps += 1
        if key != self.reference:
            self._buffers[key].add(stamp, value)
            return None
        self._late_refs.clear()
        if stamp == self._last_ref_stamp or stamp in self._ref_arrivals:
            return DUPLICATE_STAMP
        self._buffers[key].add(stamp, value)
        self._ref_arrivals[stamp] = stamp if arrival is None else arrival
        if len(self._ref_arrivals) > 4 * len(self._buffers[key].stamps) + 64:
            kept = set(self._buffers[key].stamps)
            self._ref_arrivals = {s: a for s, a in self._ref_arrivals.items() if s in kept}
        if self._next_tick is None:
            if self._last_ref_stamp is not None and stamp <= self._last_ref_stamp:
                return None
            self._next_tick = stamp + self.period / 2
            if self._last_ref_stamp is not None:
                self.stats.relocks += 1
        return None

    def reset(self) -> None:
        """Forget buffered samples, the phase and the evaluated ticks (re-lock on the next
        reference sample): a new episode, or time that went backwards."""
        for b in self._buffers.values():
            b.clear()
        self._next_tick = None
        self._last_ref_stamp = None
        self._evaluated_until = self._oldest_usable = -math.inf
        self._ref_arrivals.clear()
        self._late_refs.clear()
        self.epoch += 1

    def poll(self, now: float) -> list[AlignedStep]:
        """Evaluate every tick with `tick + lag <= now`; return the complete, fresh steps."""
        if now < self._clock - self.period:  # the node clock went back (e.g. a sim clock)
            self.reset()
            self.stats.time_jumps += 1
        self._clock = now
        return self._run_ticks(now)

    def drain(self) -> list[AlignedStep]:
        """Evaluate every tick that has its reference sample, without waiting for the lag (the
        end of a recording: what has not arrived by now never will)."""
        return self._run_ticks(math.inf)

    def _run_ticks(self, now: float) -> list[AlignedStep]:
        steps: list[AlignedStep] = []
        while self._next_tick is not None and self._next_tick + self.lag <= now:
            tick = self._next_tick
            ref = self._buffers[self.reference].newest_at_or_before(tick)
            if ref is not None and self._ref_arrivals.get(ref[0], ref[0]) + self.lag > now:
                break  # its step's other messages may still be on their way
            self._next_tick = tick + self.period
            if tick > self._evaluated_until:
                self._evaluated_until = tick
                self._oldest_usable = tick - self.period - self.max_age
            step = self._evaluate(tick, ref)
            if step is not None:
                steps.append(step)
        return steps

    def _evaluate(self, tick: float, ref: tuple[float, Any] | None) -> AlignedStep | None:
        """The step of `tick`, whose reference sample (newest at or before it) is `ref`."""
        ref_buf = self._buffers[self.reference]
        if ref is None or ref[0] == self._last_ref_stamp or tick - ref[0] > self.period:
            # No new reference sample for this tick: publisher late or paused. Re-lock on the
            # next one if it already exists so that one late tick does not shift every step.
            nxt = ref_buf.first_after(tick)
            self._next_tick = None if nxt is None else nxt + self.period / 2
            if nxt is not None:
                self.stats.relocks += 1
            return None
        values: dict[str, Any] = {}
        stamps: dict[str, float] = {}
        stale = []
        for key, buf in self._buffers.items():
            sample = ref if key == self.reference else buf.nearest(ref[0], tick)
            if sample is None or abs(ref[0] - sample[0]) > self.max_age:
                stale.append(key)
            else:
                stamps[key], values[key] = sample
        self._last_ref_stamp = ref[0]
        if stale:
            self.stats.stale_steps += 1
            for key in stale:
                self.stats.stale_by_key[key] = self.stats.stale_by_key.get(key, 0) + 1
            return None
        self.stats.steps += 1
        return AlignedStep(stamp=ref[0], tick=tick, values=values, stamps=stamps)
