"""FaultLog (exact counters, recent-error level) and SequenceGaps (dropped samples)."""

from __future__ import annotations

from roboloop_node_common.faults import ERROR, OK, WARN, FaultLog, SequenceGaps


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_level_is_error_only_while_the_last_error_is_recent() -> None:
    clock = Clock()
    faults = FaultLog(hold_s=5.0, clock=clock)
    assert faults.level() == (OK, "") and faults.values()["last_error"] == ""
    faults.record("rejected:/a:shape", "/a: image is 0x0", WARN)
    assert faults.level() == (WARN, "/a: image is 0x0")
    clock.now += 1.0
    faults.record("bad_output:nonfinite", "model output holds NaN")
    faults.record("bad_output:nonfinite", "model output holds NaN again")
    assert faults.level() == (ERROR, "model output holds NaN again")
    clock.now += 4.5  # the warning is 5.5 s old, the error 4.5 s
    assert faults.level()[0] == ERROR
    clock.now += 1.0
    assert faults.level() == (OK, "")
    values = faults.values()
    # Counts stay exact and the last error stays readable with its age after the level clears.
    assert values["bad_output:nonfinite"] == "2" and values["rejected:/a:shape"] == "1"
    assert values["last_error"] == "model output holds NaN again"
    assert values["last_error_age_s"] == "5.5" and values["last_warning_age_s"] == "6.5"
    assert faults.status(WARN, "stale") == (WARN, "stale")  # the node's own state again
    assert faults.status(OK, "active", "configure failed: x") == (ERROR, "configure failed: x")
    faults.record("rejected:/a:shape", "/a: image is 0x0", WARN)
    assert faults.status(OK, "active") == (WARN, "/a: image is 0x0")
    assert faults.status(WARN, "stale") == (WARN, "stale")
    faults.count("dropped:/a", 3)
    assert faults.total("dropped:") == 3 and faults.total("rejected:") == 2


def test_sequence_gaps_count_per_publisher_after_the_first_sample() -> None:
    gaps = SequenceGaps(max_publishers=2)

    def info(pub: int, seq: int) -> dict:
        return {"publication_sequence_number": seq, "publisher_gid": {"data": bytes([pub] * 16)}}

    assert gaps.take(info(1, 5)) == 0  # first sample of a publisher: nothing known before it
    assert gaps.take(info(1, 6)) == 0
    assert gaps.take(info(1, 10)) == 3
    assert gaps.take(info(2, 1)) == 0 and gaps.take(info(2, 3)) == 1
    assert gaps.take(info(1, 11)) == 0
    gaps.take(info(3, 1))  # a third publisher: the one heard from longest ago (2) is forgotten
    assert gaps.take(info(2, 9)) == 0 and gaps.take(info(1, 12)) == 0
    assert gaps.missed == 4 and gaps.supported
    gaps.reset()
    assert gaps.take(info(1, 20)) == 0
    assert gaps.take({"publication_sequence_number": None, "publisher_gid": None}) == 0
    assert not gaps.supported
