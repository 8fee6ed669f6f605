"""Recording state machine without rclpy: messages in, aligned steps and episodes out.

`RecordingSession.on_message` validates and buffers a message (cheap; called from subscription
callbacks). `tick(now)` aligns what is complete and queues the steps on the writer thread; an
aligned step whose done is true ends the episode (and starts the next one if `restart_after_done`).
All counters (received / invalid by reason / stale / dropped) are kept per topic, published as
diagnostics by the node and stored in each episode's metadata (counts during that episode).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from episode_dataset import ACTIONS, DONES, REWARDS
from roboloop_recorder.alignment import Aligner
from roboloop_recorder.convert import MessageError, convert
from roboloop_recorder.topics import TopicSpec
from roboloop_recorder.writer_thread import EpisodeWriterThread


@dataclass
class TopicCounts:
    received: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # reason -> count


@dataclass
class SessionConfig:
    control_rate_hz: float
    max_age_s: float  # other keys' samples within this of the step's observation (< period/2)
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
    metadata: dict[str, Any] = field(default_factory=dict)


class RecordingSession:
    def __init__(
        self,
        specs: list[TopicSpec],
        config: SessionConfig,
        writer: EpisodeWriterThread,
        log_invalid: Callable[[str], None] | None = None,
    ) -> None:
        from roboloop_recorder.convert import CONVERTERS

        self.specs = {s.topic: s for s in specs}
        self.config = config
        self.writer = writer
        self._log_invalid = log_invalid or (lambda _msg: None)
        self.period = 1.0 / config.control_rate_hz
        ref = config.reference_key or next(
            (s.key for s in specs if s.obs_name and CONVERTERS[s.type].has_header), ""
        )
        if not ref:
            raise ValueError("no obs topic with a header to drive the timeline; set reference_key")
        if ref not in {s.key for s in specs}:
            raise ValueError(f"reference_key {ref!r} is not one of the recorded keys")
        self.reference_key = ref
        self._has_header = {s.topic: CONVERTERS[s.type].has_header for s in specs}
        self.aligner = Aligner([s.key for s in specs], ref, self.period, config.max_age_s)
        self.counts = {s.topic: TopicCounts() for s in specs}
        self.recording = False
        self.episodes_started = 0
        self.episodes_ended = 0
        self.current_steps = 0
        self._snapshot: dict[str, Any] = {}
        self._keys = {s.key for s in specs}
        # Stamps of done=True samples not yet written with their step. A done whose step was
        # skipped (stale) still ends the episode once no tick can use it any more.
        self._pending_dones: list[float] = []
        self.lost_dones = 0
        self._anchors: deque[tuple[float, float]] = deque(maxlen=64)  # (arrival, stamp)
        self._unanchored: list[tuple[str, float, Any]] = []  # (key, arrival, value)
        self.unanchored = 0
        if config.headerless_anchor_key and config.headerless_anchor_key not in self._keys:
            raise ValueError(
                f"headerless_anchor_key {config.headerless_anchor_key!r} not recorded"
            )
        self._last_done_stamp: float | None = None

    # -- inputs ----------------------------------------------------------------------------
    def on_message(self, topic: str, msg: Any, arrival: float) -> bool:
        """Validate + buffer one message; False if rejected (counted, logged by the caller)."""
        spec = self.specs[topic]
        c = self.counts[topic]
        c.received += 1
        try:
            stamp, value = convert(msg, spec)
        except MessageError as e:
            c.invalid[e.reason] = c.invalid.get(e.reason, 0) + 1
            self._log_invalid(f"{topic}: rejected {spec.type}: {e}")
            return False
        c.valid += 1
        if stamp is None:
            if self.config.headerless_anchor_key:
                self._unanchored.append((spec.key, arrival, value))
                self._resolve_headerless(arrival)
                return True
            stamp = arrival + self.config.headerless_offset_periods * self.period
        self._add(spec.key, stamp, value, arrival)
        if spec.key == self.config.headerless_anchor_key:
            self._anchors.append((arrival, stamp))
            self._resolve_headerless(arrival)
        return True

    def _add(self, key: str, stamp: float, value: Any, arrival: float | None = None) -> None:
        self.aligner.add(key, stamp, value, arrival)
        if key == DONES and bool(value):
            self._pending_dones.append(stamp)

    def _resolve_headerless(self, now: float) -> None:
        """Give waiting headerless samples the stamp of the anchor nearest in arrival time."""
        tol = self.config.headerless_anchor_tolerance_s
        waiting = []
        for key, arrival, value in self._unanchored:
            near = [(abs(a - arrival), s) for a, s in self._anchors if abs(a - arrival) <= tol]
            if near:
                self._add(key, min(near)[1], value)
            elif now - arrival > tol:  # no anchor came in time: fall back to the arrival rule
                self.unanchored += 1
                self._add(
                    key, arrival + self.config.headerless_offset_periods * self.period, value
                )
            else:
                waiting.append((key, arrival, value))
        self._unanchored = waiting

    # -- episode control -------------------------------------------------------------------
    def start_episode(self) -> tuple[bool, str]:
        if self.recording:
            return False, "already recording an episode"
        if self._quota_reached():
            return False, f"max_episodes={self.config.max_episodes} reached"
        self.recording = True
        self.current_steps = 0
        self.episodes_started += 1
        self._snapshot = self.counters()
        meta = copy.deepcopy(self.config.metadata)
        meta.update(
            {
                "recorder": {
                    "control_rate_hz": self.config.control_rate_hz,
                    "max_age_s": self.config.max_age_s,
                    "reference_key": self.reference_key,
                    "topics": {t: s.key for t, s in self.specs.items()},
                },
                "wall_time_start": time.time(),
            }
        )
        self.writer.begin(meta)
        return True, "recording"

    def stop_episode(self, reason: str = "service") -> tuple[bool, str]:
        """End the open episode (written if it has steps); no restart."""
        if not self.recording:
            return False, "not recording"
        steps = self.current_steps
        self._end(reason)
        return True, f"episode ended ({steps} steps)"

    def discard_episode(self) -> None:
        if self.recording:
            self.recording = False
            self.writer.discard()

    def _end(self, reason: str) -> None:
        now = self.counters()
        self.writer.end(
            {
                "end_reason": reason,
                "wall_time_end": time.time(),
                "recorder_counts": diff_counters(now, self._snapshot),
            }
        )
        self.recording = False
        self.episodes_ended += 1

    def _quota_reached(self) -> bool:
        return 0 < self.config.max_episodes <= self.episodes_started

    # -- timeline --------------------------------------------------------------------------
    def tick(self, now: float) -> int:
        """Align everything complete up to `now`; queue steps; returns steps queued."""
        if self._unanchored:
            self._resolve_headerless(now)
        queued = 0
        for step in self.aligner.poll(now):
            # a done sample this much older than the step's observation belongs to an earlier one
            self._flush_lost_dones(step.stamp - self.config.max_age_s)
            if DONES in step.stamps and step.stamps[DONES] in self._pending_dones:
                self._pending_dones.remove(step.stamps[DONES])
            if not self.recording:
                continue
            v = step.values
            obs = {s.obs_name: v[s.key] for s in self.specs.values() if s.obs_name}
            reward = v[REWARDS] if REWARDS in self._keys else 0.0
            done = False
            if DONES in self._keys:
                # a done sample ends one step only, even if max_age lets a later tick see it
                done = bool(v[DONES]) and step.stamps[DONES] != self._last_done_stamp
                if done:
                    self._last_done_stamp = step.stamps[DONES]
            self.writer.step(obs, v[ACTIONS], reward, done)
            self.current_steps += 1
            queued += 1
            if done:
                self._end("done")
                if self.config.restart_after_done and not self._quota_reached():
                    self.start_episode()
        self._flush_lost_dones(self.aligner.evaluated_until - self.period - self.config.max_age_s)
        return queued

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
                self.start_episode()

    # -- counters --------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Cumulative counters (JSON-able): per topic, alignment, writer queue."""
        stats = self.aligner.stats.as_dict()
        return {
            "topics": {
                t: {"received": c.received, "valid": c.valid, "invalid": dict(c.invalid)}
                for t, c in self.counts.items()
            },
            "invalid_total": sum(sum(c.invalid.values()) for c in self.counts.values()),
            "aligned_steps": stats["steps"],
            "stale_steps": stats["stale_steps"],
            "stale_by_key": stats["stale_by_key"],
            "relocks": stats["relocks"],
            "late_samples": stats["late_samples"],
            "dropped_steps": self.writer.stats.dropped_steps,
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
