"""Recording state machine without rclpy: messages in, aligned steps and episodes out.

`RecordingSession.on_message` validates and buffers a message (cheap; called from subscription
callbacks). `tick(now)` aligns what is complete and queues the steps on the writer thread; an
aligned step whose done is true ends the episode (and starts the next one if `restart_after_done`).

Every message is counted per topic: `received` = `valid` (buffered for alignment) + `invalid`
by reason (a decoder's reason such as `encoding` or `nonfinite`, or the aligner's `future_stamp`
and `late`), plus headerless messages still waiting for their anchor. Rejections are logged at
most once per (topic, reason) every `log_period_s`, with the number held back since the last
line, so a frequent reason never hides a rare one. Counters are published as diagnostics by the
node and stored in each episode's metadata (counts during that episode).

A failed write (see `sink`) stops recording: the episode is lost (committed ones stay),
`write_error` holds the one-line reason until an explicit `start_episode` tries again, and no
episode restarts by itself.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from episode_dataset import ACTIONS, DONES, REWARDS
from episode_dataset.recording.alignment import FUTURE_STAMP, LATE, AlignedStep, Aligner
from episode_dataset.recording.convert import CONVERTERS, MessageError, converter_for
from episode_dataset.recording.sink import EpisodeSink, WriteError
from episode_dataset.recording.topics import TopicSpec


@dataclass
class TopicCounts:
    received: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # reason -> count
    wrong_type_publishers: int = 0  # publishers of another type seen on the topic


@dataclass
class SessionConfig:
    control_rate_hz: float  # control steps per second of robot (simulated) time
    max_age_s: float  # other keys' samples within this of the step's observation (< period/2)
    # Simulated seconds per wall-clock second of the recorded robot: stamps are wall-clock, so
    # the timeline's period is 1 / (control_rate_hz x real_time_factor) stamp seconds.
    real_time_factor: float = 1.0
    # Headerless samples (Float32, Bool) have no stamp of their own. With an anchor key, a
    # headerless sample takes the header stamp of the anchor message that arrived nearest to it
    # (within the tolerance): the sim bridge publishes reward and done right after the applied
    # action (stamped with its observation) in the same callback. Without an anchor, or when no
    # anchor arrived close enough, it is stamped on arrival shifted by `headerless_offset_periods`
    # (the bridge publishes step k's reward one period after step k's observation).
    headerless_anchor_key: str = ""
    headerless_anchor_tolerance_s: float = 0.02
    headerless_offset_periods: float = -1.0
    reference_key: str = ""  # "" = first obs key whose type has a header
    restart_after_done: bool = True
    max_episodes: int = 0  # 0 = unlimited
    future_tolerance_s: float = 1.0  # stamps further ahead of the node clock are rejected
    log_period_s: float = 2.0  # rejection log lines per (topic, reason)
    metadata: dict[str, Any] = field(default_factory=dict)


ANCHORS = 64  # headerless anchor messages remembered (newest)


@dataclass(slots=True)
class _Topic:
    """What `on_message` needs of one topic, looked up once (it runs for every message)."""

    spec: TopicSpec
    counts: TopicCounts
    read: Callable[[Any], tuple[float | None, Any]]  # msg -> (header stamp or None, value)
    key: str
    anchor: bool  # the headerless anchor key's topic


class RejectionLog:
    """At most one line per (topic, reason) every `period_s`; the next line says how many were
    held back in between."""

    def __init__(self, emit: Callable[[str], None], period_s: float) -> None:
        self._emit = emit
        self._period = period_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def __call__(self, topic: str, reason: str, text: str, now: float) -> None:
        key = (topic, reason)
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self._period:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        self._emit(text + (f" (+{held} more since the last such line)" if held else ""))


class RecordingSession:
    def __init__(
        self,
        specs: list[TopicSpec],
        config: SessionConfig,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Validate the configuration (no file is touched); `attach` the writer before use."""
        self.specs = {s.topic: s for s in specs}
        self.config = config
        self.writer: EpisodeSink | None = None
        self._log = log or (lambda _msg: None)
        self._log_rejection = RejectionLog(self._log, config.log_period_s)
        self.period = 1.0 / (config.control_rate_hz * config.real_time_factor)
        ref = config.reference_key or next(
            (s.key for s in specs if s.obs_name and CONVERTERS[s.type].has_header), ""
        )
        if not ref:
            raise ValueError("no obs topic with a header to drive the timeline; set reference_key")
        if ref not in {s.key for s in specs}:
            raise ValueError(f"reference_key {ref!r} is not one of the recorded keys")
        self.reference_key = ref
        self.aligner = Aligner(
            [s.key for s in specs],
            ref,
            self.period,
            config.max_age_s,
            future_tolerance=config.future_tolerance_s,
        )
        self._epoch = self.aligner.epoch
        self._time_jumps = 0
        self.counts = {s.topic: TopicCounts() for s in specs}
        self._topic_of = {s.key: s.topic for s in specs}
        self._counts_of = {s.key: self.counts[s.topic] for s in specs}
        self._topics = {
            s.topic: _Topic(
                s,
                self.counts[s.topic],
                converter_for(s),
                s.key,
                bool(config.headerless_anchor_key) and s.key == config.headerless_anchor_key,
            )
            for s in specs
        }
        self._obs_keys = [(s.obs_name, s.key) for s in specs if s.obs_name]
        self.recording = False
        self.episodes_started = 0
        self.episodes_ended = 0
        self.current_steps = 0
        self._snapshot: dict[str, Any] = {}
        self._keys = {s.key for s in specs}
        self._has_rewards, self._has_dones = REWARDS in self._keys, DONES in self._keys
        # Stamps of done=True samples not yet written with their step. A done whose step was
        # skipped (stale) still ends the episode once no tick can use it any more.
        self._pending_dones: list[float] = []
        self.lost_dones = 0
        self._anchors: deque[tuple[float, float]] = deque(maxlen=ANCHORS)  # (arrival, stamp)
        self._anchors_unsorted = 0  # appends until the anchors are in arrival order again
        self._unanchored: list[tuple[str, float, Any]] = []  # (key, arrival, value)
        self.unanchored = 0
        if config.headerless_anchor_key and config.headerless_anchor_key not in self._keys:
            raise ValueError(
                f"headerless_anchor_key {config.headerless_anchor_key!r} not recorded"
            )
        self._last_done_stamp: float | None = None
        self.write_error: str | None = None
        self._failures_seen = 0

    def attach(self, writer: EpisodeSink) -> None:
        self.writer = writer
        self._failures_seen = writer.failures

    # -- inputs ----------------------------------------------------------------------------
    def on_message(self, topic: str, msg: Any, arrival: float) -> bool:
        """Validate + buffer one message; False if rejected (counted and logged)."""
        t = self._topics[topic]
        t.counts.received += 1
        try:
            stamp, value = t.read(msg)
        except MessageError as e:
            self._reject(topic, e.reason, str(e), arrival)
            return False
        if stamp is None:
            if self.config.headerless_anchor_key:
                self._unanchored.append((t.key, arrival, value))
                self._resolve_headerless(arrival)
                return True
            stamp = arrival + self.config.headerless_offset_periods * self.period
        if not self._add(t.key, stamp, value, arrival):
            return False
        if t.anchor:
            anchors = self._anchors
            if anchors and arrival < anchors[-1][0]:
                self._anchors_unsorted = ANCHORS
            elif self._anchors_unsorted:
                self._anchors_unsorted -= 1
            anchors.append((arrival, stamp))
            if self._unanchored:
                self._resolve_headerless(arrival)
        return True

    def count_undecodable(self, topic: str, text: str, arrival: float) -> None:
        """A message that could not even be deserialized (a corrupt record in a bag): received,
        rejected as `deserialize`."""
        self.counts[topic].received += 1
        self._reject(topic, "deserialize", f"deserialize: {text}", arrival)

    def count_wrong_type_publisher(self, topic: str) -> None:
        self.counts[topic].wrong_type_publishers += 1

    def _reject(self, topic: str, reason: str, text: str, now: float) -> None:
        invalid = self.counts[topic].invalid
        invalid[reason] = invalid.get(reason, 0) + 1
        self._log_rejection(
            topic, reason, f"{topic}: rejected {self.specs[topic].type}: {text}", now
        )

    def _add(self, key: str, stamp: float, value: Any, arrival: float) -> bool:
        reason = self.aligner.add(key, stamp, value, arrival)
        if self.aligner.epoch != self._epoch:
            self._sync_timeline()
        if reason is not None:
            topic = self._topic_of[key]
            if reason == FUTURE_STAMP:
                why = (
                    f"stamp {stamp:.3f} is {stamp - arrival:.3f} s ahead of the node clock "
                    f"(future_tolerance_s {self.config.future_tolerance_s})"
                )
            elif reason == LATE:
                why = (
                    f"stamp {stamp:.3f} is older than every step still to align "
                    f"({self.aligner.oldest_usable:.3f})"
                )
            else:
                why = f"stamp {stamp:.3f} repeats an earlier {key} stamp"
            self._reject(topic, reason, f"{reason}: {why}", arrival)
            return False
        self._counts_of[key].valid += 1
        if key == DONES and bool(value):
            self._pending_dones.append(stamp)
        return True

    def _sync_timeline(self) -> None:
        """After the aligner reset its timeline, forget what was derived from the old one."""
        if self.aligner.epoch == self._epoch:
            return
        self._epoch = self.aligner.epoch
        self._pending_dones.clear()
        self._last_done_stamp = None
        jumps = self.aligner.stats.time_jumps
        if jumps != self._time_jumps:
            self._time_jumps = jumps
            self._log(
                f"time went backwards (node clock or {self.reference_key} stamps): alignment "
                f"restarts from the next {self.reference_key} sample (time_jumps={jumps})"
            )

    def _resolve_headerless(self, now: float, final: bool = False) -> None:
        """Give waiting headerless samples the stamp of the anchor nearest in arrival time, once
        no nearer one can come: an anchor still to arrive comes at `now` or later, so the best
        so far is kept when it is at most `now - arrival` away (`final`: nothing more comes).
        Topics reach the node in any order: on sim time every message of a step arrives at one
        node time, and a done taken before its step's applied action would otherwise settle for
        the previous step's, one period away (within a one-period tolerance)."""
        tol = self.config.headerless_anchor_tolerance_s
        waiting = []
        for item in self._unanchored:
            key, arrival, value = item
            near = self._nearest_anchor(arrival, tol)
            if near is not None:
                if final or near[0] <= now - arrival:
                    self._add(key, near[1], value, arrival)
                else:
                    waiting.append(item)
            elif final or now - arrival > tol:  # no anchor came in time: the arrival rule
                self.unanchored += 1
                stamp = arrival + self.config.headerless_offset_periods * self.period
                self._add(key, stamp, value, arrival)
            else:
                waiting.append(item)
        self._unanchored = waiting

    def _nearest_anchor(self, arrival: float, tol: float) -> tuple[float, float] | None:
        """(distance, stamp) of the anchor nearest in arrival time to `arrival` (the lower stamp
        on a tie), among those at most `tol` away; None if there is none. While the anchors are
        in arrival order (always, unless the clock went back) the scan goes from the newest and
        stops at the first one too far before `arrival`: every older one is further."""
        best = None
        ordered = not self._anchors_unsorted
        for a, s in reversed(self._anchors):
            d = abs(a - arrival)
            if d <= tol:
                if best is None or (d, s) < best:
                    best = (d, s)
            elif ordered and a < arrival:
                break
        return best

    # -- episode control -------------------------------------------------------------------
    def start_episode(self) -> tuple[bool, str]:
        """Begin an episode on request: the timeline restarts clean, and after a failed write
        this is the explicit retry."""
        self._check_writer()
        if self.recording:
            return False, "already recording an episode"
        if self._quota_reached():
            return False, f"max_episodes={self.config.max_episodes} reached"
        retry, self.write_error = self.write_error, None
        self.aligner.reset()
        self._sync_timeline()
        self._begin()
        return True, "recording" + (f" (the last write failed: {retry})" if retry else "")

    def _begin(self) -> None:
        assert self.writer is not None, "attach a writer first"
        self.recording = True
        self.current_steps = 0
        self.episodes_started += 1
        self._snapshot = self.counters()
        meta = copy.deepcopy(self.config.metadata)
        meta.update(
            {
                "recorder": {
                    "control_rate_hz": self.config.control_rate_hz,
                    "real_time_factor": self.config.real_time_factor,
                    "max_age_s": self.config.max_age_s,
                    "reference_key": self.reference_key,
                    "topics": {t: s.key for t, s in self.specs.items()},
                },
                "wall_time_start": time.time(),
            }
        )
        self.writer.begin(meta)

    def stop_episode(self, reason: str = "service", wait_s: float = 0.0) -> tuple[bool, str]:
        """End the open episode (written if it has steps); no restart. With `wait_s`, wait that
        long for the commit and answer what happened to it."""
        self._check_writer()
        if not self.recording:
            if self.write_error:
                return False, f"not recording: {self.write_error}"
            return False, "not recording"
        steps = self.current_steps
        committed = self._end(reason)
        if wait_s <= 0:
            return True, f"episode ended ({steps} steps)"
        try:
            result = committed.result(timeout=wait_s)
        except WriteError as e:
            self._check_writer()
            return False, str(e)
        except FutureTimeout:
            return True, f"episode ended ({steps} steps), still being written"
        if result is None:
            return True, "episode ended with no steps: nothing written"
        name, written = result
        return True, f"episode {name} written ({written} steps)"

    def discard_episode(self) -> None:
        if self.recording:
            self.recording = False
            self.writer.discard()

    def finish(self, now: float, reason: str = "shutdown") -> None:
        """Process exit (or the end of a bag): align what has arrived and keep the open episode
        (`end_reason` `reason`: cut short, not ended by the task)."""
        if self.recording:
            self.tick(now, drain=True)
        if self.recording:
            self._end(reason)

    def _end(self, reason: str) -> Future[tuple[str, int] | None]:
        now = self.counters()
        committed = self.writer.end(
            {
                "end_reason": reason,
                "wall_time_end": time.time(),
                "recorder_counts": diff_counters(now, self._snapshot),
            }
        )
        self.recording = False
        self.episodes_ended += 1
        return committed

    def _quota_reached(self) -> bool:
        return 0 < self.config.max_episodes <= self.episodes_started

    def _check_writer(self) -> None:
        """A write failed since the last look: stop recording (the open episode is lost)."""
        failures = self.writer.failures if self.writer is not None else 0
        if failures == self._failures_seen:
            return
        self._failures_seen = failures
        self.write_error = self.writer.last_error
        if self.recording:
            self.discard_episode()

    # -- timeline --------------------------------------------------------------------------
    def tick(self, now: float, drain: bool = False) -> int:
        """Align everything complete up to `now` (`drain`: everything that has arrived); queue
        the steps; returns steps queued."""
        self._check_writer()
        if self._unanchored:
            self._resolve_headerless(now, final=drain)
        steps = self.aligner.drain() if drain else self.aligner.poll(now)
        if self.aligner.epoch != self._epoch:
            self._sync_timeline()
        queued = 0
        for step in steps:
            queued += self._queue_step(step)
        if self._pending_dones:
            horizon = self.aligner.evaluated_until - self.period - self.config.max_age_s
            self._flush_lost_dones(horizon)
        return queued

    def _queue_step(self, step: AlignedStep) -> bool:
        if self._pending_dones:
            # a done sample this much older than the step's observation belongs to an earlier one
            self._flush_lost_dones(step.stamp - self.config.max_age_s)
            if DONES in step.stamps and step.stamps[DONES] in self._pending_dones:
                self._pending_dones.remove(step.stamps[DONES])
        if not self.recording:
            return False
        v = step.values
        obs = {name: v[key] for name, key in self._obs_keys}
        reward = v[REWARDS] if self._has_rewards else 0.0
        done = False
        if self._has_dones:
            # a done sample ends one step only, even if max_age lets a later tick see it
            done = bool(v[DONES]) and step.stamps[DONES] != self._last_done_stamp
            if done:
                self._last_done_stamp = step.stamps[DONES]
        self.writer.step(obs, v[ACTIONS], reward, done)
        self.current_steps += 1
        if done:
            self._end("done")
            if self.config.restart_after_done and not self._quota_reached():
                self._begin()
        return True

    def _flush_lost_dones(self, horizon: float) -> None:
        """End the episode for done samples at or before `horizon` that no step carried."""
        lost = [s for s in self._pending_dones if s < horizon]
        if not lost:
            return
        self._pending_dones = [s for s in self._pending_dones if s >= horizon]
        self.lost_dones += len(lost)
        if self.recording:
            self._end("done (its step was stale)")
            if self.config.restart_after_done and not self._quota_reached():
                self._begin()

    # -- counters --------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Cumulative counters (JSON-able): per topic, alignment, writer queue."""
        stats = self.aligner.stats.as_dict()
        return {
            "topics": {
                t: {
                    "received": c.received,
                    "valid": c.valid,
                    "invalid": dict(c.invalid),
                    "wrong_type_publishers": c.wrong_type_publishers,
                }
                for t, c in self.counts.items()
            },
            "invalid_total": sum(sum(c.invalid.values()) for c in self.counts.values()),
            "wrong_type_publishers": sum(c.wrong_type_publishers for c in self.counts.values()),
            "aligned_steps": stats["steps"],
            "stale_steps": stats["stale_steps"],
            "stale_by_key": stats["stale_by_key"],
            "relocks": stats["relocks"],
            "time_jumps": stats["time_jumps"],
            "dropped_steps": self.writer.stats.dropped_steps if self.writer else 0,
            "write_errors": self.writer.failures if self.writer else 0,
            "lost_dones": self.lost_dones,
            "unanchored": self.unanchored,
        }


def diff_counters(now: Any, before: Any) -> Any:
    """Recursive `now - before` over nested dicts of ints (keys missing before count from 0)."""
    if isinstance(now, dict):
        return {
            k: diff_counters(v, before.get(k, {}) if isinstance(before, dict) else 0)
            for k, v in now.items()
        }
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        return now - (before if isinstance(before, (int, float)) else 0)
    return now
