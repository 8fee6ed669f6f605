"""Stamp-based alignment on a fixed timeline (ROS-free)."""

from __future__ import annotations

import pytest

from episode_dataset.recording.alignment import (
    DUPLICATE_STAMP,
    FUTURE_STAMP,
    LATE,
    REF_JUMP_SAMPLES,
    Aligner,
)

P = 0.05  # 20 Hz


def feed_bridge_like(al: Aligner, n: int, t0: float = 100.0, jitter: list[float] | None = None):
    """Observation k stamped S_k; its action (stamp S_k) and arrival-stamped reward arrive
    one period later, like the sim bridge publishes them."""
    stamps = []
    s = t0
    for k in range(n):
        s = t0 + k * P + (jitter[k] if jitter else 0.0)
        stamps.append(s)
        al.add("obs", s, ("obs", k))
        al.add("act", s, ("act", k))  # header stamp = stamp of the obs it was applied to
        # reward of step k arrives at ~S_{k+1} + 2 ms; caller stamps arrival - one period
        al.add("rew", s + P + 0.002 - P, ("rew", k))
    return stamps


def test_steps_pair_obs_action_reward_of_the_same_step():
    al = Aligner(["obs", "act", "rew"], "obs", P, max_age=0.4 * P)
    feed_bridge_like(al, 10)
    steps = al.poll(now=1e9)
    assert [s.values["obs"][1] for s in steps] == list(range(10))
    for s in steps:
        k = s.values["obs"][1]
        assert s.values["act"] == ("act", k)
        assert s.values["rew"] == ("rew", k)
    assert al.stats.stale_steps == 0


def test_jitter_below_half_period_keeps_alignment():
    al = Aligner(["obs", "act", "rew"], "obs", P, max_age=0.4 * P)
    jitter = [0.0, 0.012, -0.01, 0.02, 0.0, -0.015, 0.018, 0.0]
    feed_bridge_like(al, len(jitter), jitter=jitter)
    steps = al.poll(now=1e9)
    assert [s.values["obs"][1] for s in steps] == list(range(len(jitter)))
    assert all(s.values["rew"][1] == s.values["obs"][1] for s in steps)


def test_ticks_wait_for_lag_before_evaluating():
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    al.add("obs", 10.0, "o0")
    assert al.poll(now=10.0 + P / 2 + P) == []  # tick 10.025 needs now >= 10.025 + 0.1
    al.add("act", 10.0, "a0")  # the action came late but before the lag ran out
    steps = al.poll(now=10.0 + P / 2 + 2 * P)
    assert len(steps) == 1 and steps[0].values == {"obs": "o0", "act": "a0"}


def test_missing_key_makes_step_stale_not_misaligned():
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    for k in range(5):
        al.add("obs", 1.0 + k * P, k)
        if k != 2:
            al.add("act", 1.0 + k * P, k)
    steps = al.poll(now=100.0)
    # step 2's action is missing: the action of step 1 is 1.5 periods old at that tick -> stale
    assert [s.values["obs"] for s in steps] == [0, 1, 3, 4]
    assert all(s.values["act"] == s.values["obs"] for s in steps)
    assert al.stats.stale_steps == 1 and al.stats.stale_by_key == {"act": 1}


def test_reference_sample_used_once_and_relock_after_pause():
    al = Aligner(["obs"], "obs", P, max_age=0.4 * P)
    al.add("obs", 1.0, 0)
    assert len(al.poll(now=2.0)) == 1
    # a long pause (ticks without data), then the stream resumes with another phase
    al.add("obs", 5.013, 1)
    al.add("obs", 5.063, 2)
    steps = al.poll(now=10.0)
    assert [s.values["obs"] for s in steps] == [1, 2]
    assert steps[0].tick == pytest.approx(5.013 + P / 2)
    assert al.stats.relocks >= 1 and al.stats.stale_steps == 0


def test_out_of_order_arrival_is_sorted_and_late_samples_rejected():
    al = Aligner(["obs", "x"], "obs", P, max_age=0.4 * P)
    for k in (0, 2, 1):
        al.add("obs", 1.0 + k * P, k)
        al.add("x", 1.0 + k * P, k)
    assert [s.values["x"] for s in al.poll(now=5.0)] == [0, 1, 2]
    assert al.add("x", 1.0, "ancient") == LATE


def live(al: Aligner, ks, t0: float, clock_offset: float = 0.0, extra=None) -> list[int]:
    """Real time: step k's obs and act (one stamp) arrive at t0 + kP + clock_offset, and the
    node polls then. `extra[k]` = [(key, stamp offset)] more samples sent after step k's.
    Returns the obs values of the steps aligned, checking each pairs obs and act of one k."""
    out = []
    for k in ks:
        stamp = t0 + k * P
        now = stamp + clock_offset
        al.add("obs", stamp, k, arrival=now)
        al.add("act", stamp, k, arrival=now)
        for key, offset in (extra or {}).get(k, []):
            al.add(key, stamp + offset, "bad", arrival=now)
        for step in al.poll(now):
            assert step.values == {"obs": step.values["obs"], "act": step.values["obs"]}
            out.append(step.values["obs"])
    return out


@pytest.mark.parametrize("key", ["obs", "act"])
def test_a_far_future_sample_is_rejected_and_cannot_wedge_a_key(key):
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P, future_tolerance=1.0)
    assert al.add(key, 1e6, "bad", arrival=10.0) == FUTURE_STAMP
    assert al.add(key, 11.0, "ok", arrival=10.0) is None  # within the tolerance
    al.reset()
    got = live(al, range(40), 10.0, extra={5: [(key, 1e6)], 6: [(key, 5.0)]})
    assert got == list(range(38))  # the last two wait for their lag
    assert al.stats.stale_steps == 0 and al.stats.time_jumps == 0


@pytest.mark.parametrize("key", ["obs", "act"])
def test_a_far_past_sample_is_late_and_changes_nothing(key):
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    got = live(al, range(20), 50.0, extra={5: [(key, -1e6)], 6: [(key, -3 * P)]})
    assert got == list(range(18)) and al.stats.stale_steps == 0
    assert al.add(key, 1.0, "old", arrival=60.0) == LATE
    assert al.stats.time_jumps == 0


def test_reference_stamps_jumping_back_reset_the_timeline():
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    got = live(al, range(10), 200.0)
    # the publisher's clock goes back 100 s; its samples keep arriving in real time
    got += live(al, range(10, 30), 100.0, clock_offset=100.0)
    assert al.stats.time_jumps == 1
    # the first REF_JUMP_SAMPLES - 1 samples of the new time base are late, then followed
    assert got == list(range(10)) + list(range(10 + REF_JUMP_SAMPLES - 1, 28))
    assert live(al, range(100, 120), 200.0) == list(range(100, 118))  # and forward again
    assert al.stats.time_jumps == 1


def test_node_clock_going_back_resets_the_timeline():
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    assert live(al, range(10), 1000.0) == list(range(8))
    # a sim clock restarts at 0: step 10 arrives before the poll that notices
    assert live(al, range(10, 30), 0.0) == list(range(11, 28))
    assert al.stats.time_jumps == 1
    assert live(al, range(30, 35), 0.0) == [28, 29, 30, 31, 32]


def test_repeated_reference_stamps_are_rejected_not_a_silent_stall():
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    reasons = []
    for k in range(8):  # a publisher that never sets its stamps
        reasons.append(al.add("obs", 0.0, k, arrival=100.0))
        al.add("act", 0.0, k, arrival=100.0)
        al.poll(100.0 + k * P)
    # a repeat while its tick is ahead, then too old as well; never taken for a time jump
    assert reasons[:2] == [None, DUPLICATE_STAMP] and reasons[-1] == LATE
    assert set(reasons[1:]) == {DUPLICATE_STAMP, LATE}
    assert al.stats.steps == 1 and al.stats.time_jumps == 0


def test_reset_forgets_the_timeline():
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    live(al, range(10), 30.0)
    epoch = al.epoch
    al.reset()
    assert al.epoch == epoch + 1
    assert al.add("obs", 1.0, "earlier") is None  # nothing is late after a reset


def test_bad_arguments():
    with pytest.raises(ValueError, match="reference"):
        Aligner(["a"], "b", P, P)
    with pytest.raises(ValueError, match="max_age < period / 2"):
        Aligner(["a"], "a", 0.0, P)
    with pytest.raises(ValueError, match="max_age < period / 2"):
        Aligner(["a"], "a", P, 0.6 * P)  # one sample could serve two steps


def test_high_rate_key_contributes_the_sample_nearest_the_frame():
    al = Aligner(["cam", "joints"], "cam", P, max_age=0.4 * P)
    for k in range(4):
        al.add("cam", 2.0 + k * P, k)
    for i in range(int(4 * P / 0.002) + 10):  # 500 Hz, offset 0.3 ms from the frames
        t = 2.0 + 0.0003 + i * 0.002
        al.add("joints", t, round(t, 4))
    steps = al.poll(now=10.0)
    assert len(steps) == 4
    for s in steps:
        assert abs(s.stamps["joints"] - s.stamp) < 0.001


def test_tick_waits_for_the_steps_messages_when_stamps_lag_arrival():
    """A publisher running behind stamps its grid slot, 1.5 periods before it sends."""
    al = Aligner(["obs", "act"], "obs", P, max_age=0.4 * P)
    s0, arrival = 20.0, 20.0 + 1.5 * P
    al.add("obs", s0, "o0", arrival=arrival)
    assert al.poll(now=arrival + 0.001) == []  # by stamp it would be due already
    al.add("act", s0, "a0", arrival=arrival + 0.005)
    steps = al.poll(now=arrival + al.lag)
    assert len(steps) == 1 and steps[0].values == {"obs": "o0", "act": "a0"}
