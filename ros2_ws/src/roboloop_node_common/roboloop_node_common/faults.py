"""What a node rejected and what went wrong, for /diagnostics (rclpy-free).

    faults = FaultLog(hold_s=10.0)
    faults.record("rejected:/q_scorer/request:too_large", "/q_scorer/request: 82 MB > 8 MB")
    faults.values()   # {"rejected:/q_scorer/request:too_large": "1", "last_error": "...",
                      #  "last_error_age_s": "0.4", "last_warning": "", ...}
    faults.level()    # (ERROR, message) while the last error is younger than hold_s
    faults.status(OK, "active", condition="")   # the node's level combined with the faults'

Counters are exact and never reset. The last error stays readable with its age, but the level
is ERROR only while errors are recent: a node that failed once and then served requests again
goes back to OK after `hold_s`, without losing what happened. Conditions that last (a failed
configure) are not events: the node reports those itself for as long as they hold.

`SequenceGaps` counts samples a subscription never took (DDS replaced them in a full KEEP_LAST
history) from gaps in each publisher's sequence numbers, which rmw reports per message.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

# diagnostic_msgs/DiagnosticStatus levels (as ints: bytes([level]) for the message field)
OK, WARN, ERROR = 0, 1, 2
LEVEL_KEYS = {ERROR: "last_error", WARN: "last_warning"}


class FaultLog:
    """Counters by name, plus the last error and the last warning with their time."""

    def __init__(self, hold_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()  # worker threads record, the diagnostics timer reads
        self._counts: Counter[str] = Counter()
        self._last: dict[int, tuple[str, float]] = {}

    def count(self, counter: str, n: int = 1) -> None:
        """Count without reporting a message (e.g. dropped samples)."""
        with self._lock:
            self._counts[counter] += n

    def record(self, counter: str, message: str, level: int = ERROR) -> None:
        """Count one fault under `counter` and make `message` the last error (or warning)."""
        with self._lock:
            self._counts[counter] += 1
            self._last[level] = (message, self._clock())

    def total(self, prefix: str) -> int:
        """Sum of the counters whose name starts with `prefix`."""
        with self._lock:
            return sum(n for name, n in self._counts.items() if name.startswith(prefix))

    def level(self) -> tuple[int, str]:
        """(level, message) of the most severe fault younger than hold_s; (OK, "") if none."""
        now = self._clock()
        with self._lock:
            for level in (ERROR, WARN):
                last = self._last.get(level)
                if last is not None and now - last[1] < self.hold_s:
                    return level, last[0]
        return OK, ""

    def status(self, level: int, message: str, condition: str = "") -> tuple[int, str]:
        """A node's (level, message) for /diagnostics: ERROR for a standing `condition` (a
        failed configure), else the more severe of its own and the recent faults'."""
        if condition:
            return ERROR, condition
        recent, text = self.level()
        return (recent, text) if recent > level else (level, message)

    def values(self) -> dict[str, str]:
        """Every counter, and last_error / last_warning with their age (empty if none)."""
        now = self._clock()
        with self._lock:
            out = {name: str(n) for name, n in sorted(self._counts.items())}
            for level, key in LEVEL_KEYS.items():
                message, at = self._last.get(level, ("", None))
                out[key] = message
                out[f"{key}_age_s"] = "" if at is None else f"{now - at:.1f}"
        return out


class SequenceGaps:
    """Samples missed between two taken from the same publisher (by publication sequence number).

    Samples lost before the first one taken from a publisher cannot be told apart from samples
    it published before this subscription matched, so they are not counted. Reset when the
    subscription is recreated. `supported` turns False if rmw reports no sequence numbers.
    """

    def __init__(self, max_publishers: int = 64) -> None:
        self.max_publishers = max_publishers
        self._last: OrderedDict[bytes, int] = OrderedDict()
        self.missed = 0
        self.supported = True

    def take(self, info: Mapping[str, Any]) -> int:
        """The number of samples missed just before this one (rclpy MessageInfo)."""
        seq, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        if seq is None or gid is None:
            self.supported = False
            return 0
        key = bytes(gid["data"])
        last = self._last.pop(key, None)
        self._last[key] = seq
        if len(self._last) > self.max_publishers:
            self._last.popitem(last=False)  # forget the publisher heard from longest ago
        missed = max(seq - last - 1, 0) if last is not None else 0
        self.missed += missed
        return missed

    def reset(self) -> None:
        self._last.clear()
