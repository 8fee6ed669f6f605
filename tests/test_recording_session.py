"""RecordingSession + writer thread -> real episode_dataset files (ROS-free)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
from roboloop_recorder.writer_thread import EpisodeWriterThread

from episode_dataset import DatasetError, EpisodeReader, validate_file
from episode_dataset.recording.session import RecordingSession, SessionConfig
from episode_dataset.recording.topics import dataset_specs, parse_topics

P = 0.05
SPECS = parse_topics(
    ["/s", "/img", "/a", "/r", "/d"],
    [
        "sensor_msgs/msg/JointState",
        "sensor_msgs/msg/Image",
        "sensor_msgs/msg/JointState",
        "std_msgs/msg/Float32",
        "std_msgs/msg/Bool",
    ],
    ["obs/state", "obs/image", "actions", "rewards", "dones"],
    ["3", "4,5,3", "2", "", ""],
)


def hdr(t):
    return NS(stamp=NS(sec=int(t), nanosec=int(round((t - int(t)) * 1e9))))


def make(tmp_path, **cfg):
    tmp_path.mkdir(parents=True, exist_ok=True)
    obs, act = dataset_specs(SPECS)
    writer = EpisodeWriterThread(
        tmp_path / "rec.hdf5", obs, act, {"env_name": "fake"}, fsync=False
    )
    logs = []
    session = RecordingSession(SPECS, SessionConfig(1 / P, 0.4 * P, **cfg), logs.append)
    session.attach(writer)
    return session, writer, logs


def publish_episode(session, t0, n, k0=0, nan_at=None, bad_image_at=None, done_last=True):
    """Bridge-like stream: obs k at t0 + kP; action/reward/done of step k one period later."""
    for k in range(n):
        s = t0 + k * P
        pos = [float(k0 + k), 0.0, float("nan") if k == nan_at else 1.0]
        session.on_message("/s", NS(header=hdr(s), name=[], position=pos), s)
        enc = "bgr8" if k == bad_image_at else "rgb8"
        img = NS(
            header=hdr(s),
            encoding=enc,
            height=4,
            width=5,
            step=15,
            data=bytes([(k0 + k) % 256]) * 60,
        )
        session.on_message("/img", img, s)
        session.on_message("/a", NS(header=hdr(s), name=[], effort=[k0 + k, -1.0]), s + P)
        session.on_message("/r", NS(data=float(k0 + k)), s + P + 0.002)
        session.on_message("/d", NS(data=done_last and k == n - 1), s + P + 0.002)
    return t0 + n * P


def test_two_done_episodes_written_with_aligned_values(tmp_path):
    session, writer, _ = make(tmp_path)
    session.start_episode()
    t = publish_episode(session, 100.0, 6, k0=0)
    t = publish_episode(session, t, 4, k0=100)
    session.tick(t + 1.0)
    writer.close()
    validate_file(tmp_path / "rec.hdf5")
    r = EpisodeReader(tmp_path / "rec.hdf5")
    assert r.episodes == ["demo_0", "demo_1"]
    assert [r.num_steps(e) for e in r.episodes] == [6, 4]
    for ep, k0 in (("demo_0", 0), ("demo_1", 100)):
        st = r.read_obs(ep, "state")
        np.testing.assert_array_equal(st[:, 0], r.read_actions(ep)[:, 0])  # same step
        np.testing.assert_array_equal(st[:, 0], r.read_rewards(ep))
        assert r.read_obs(ep, "image")[:, 0, 0, 0].tolist() == [
            (k0 + k) % 256 for k in range(len(st))
        ]
        assert r.read_dones(ep).tolist() == [False] * (len(st) - 1) + [True]
        meta = r.episode_metadata(ep)
        assert meta["end_reason"] == "done"
        assert meta["recorder"]["topics"]["/img"] == "obs/image"
    r.close()


def test_invalid_messages_counted_and_never_written(tmp_path):
    session, writer, logs = make(tmp_path, restart_after_done=False)
    session.start_episode()
    t = publish_episode(session, 5.0, 8, nan_at=2, bad_image_at=5)
    session.tick(t + 1.0)
    c = session.counters()
    assert c["topics"]["/s"]["invalid"] == {"nonfinite": 1}
    assert c["topics"]["/img"]["invalid"] == {"encoding": 1}
    assert len(logs) == 2 and "/img" in logs[1] and "encoding" in logs[1]
    writer.close()
    r = EpisodeReader(tmp_path / "rec.hdf5")
    st = r.read_obs("demo_0", "state")
    assert np.isfinite(st).all()
    # steps 2 and 5 lost a key -> stale, skipped; the others are aligned
    assert st[:, 0].tolist() == [0, 1, 3, 4, 6, 7]
    meta = r.episode_metadata("demo_0")["recorder_counts"]
    assert meta["topics"]["/s"]["invalid"] == {"nonfinite": 1}
    assert meta["topics"]["/img"]["invalid"] == {"encoding": 1}
    # step 5 lost its image (stale step); step 2 lost the reference (timeline re-locked)
    assert meta["stale_steps"] == 1 and meta["stale_by_key"] == {"obs/image": 1}
    assert meta["relocks"] == 1
    r.close()


def test_stop_service_and_max_episodes(tmp_path):
    session, writer, _ = make(tmp_path, max_episodes=1)
    assert session.stop_episode() == (False, "not recording")
    assert session.start_episode()[0]
    assert not session.start_episode()[0]  # already recording
    t = publish_episode(session, 1.0, 5)
    session.tick(t - 2 * P)  # only part of it aligned yet
    ok, msg = session.stop_episode()
    assert ok and "steps" in msg
    ok, msg = session.start_episode()
    assert not ok and "max_episodes" in msg
    writer.close()
    r = EpisodeReader(tmp_path / "rec.hdf5")
    assert r.episodes == ["demo_0"] and 0 < r.num_steps("demo_0") < 5
    assert r.episode_metadata("demo_0")["end_reason"] == "service"
    r.close()


def test_full_queue_drops_steps_and_counts_them(tmp_path):
    obs, act = dataset_specs(SPECS)
    writer = EpisodeWriterThread(tmp_path / "q.hdf5", obs, act, {}, queue_size=1, fsync=False)
    writer._queue.put(("discard",))  # occupy the only slot... the thread may take it at once
    dropped = 0
    for _ in range(200):
        ok = writer.step(
            {"state": np.zeros(3, np.float32), "image": np.zeros((4, 5, 3), np.uint8)},
            np.zeros(2),
            0.0,
            False,
        )
        dropped += not ok
    writer.close()
    assert dropped > 0 and writer.stats.dropped_steps == dropped


def test_done_of_a_stale_step_still_ends_the_episode(tmp_path):
    session, writer, _ = make(tmp_path)
    session.start_episode()
    t = publish_episode(session, 50.0, 5, k0=0, bad_image_at=4)  # the done step loses its image
    t = publish_episode(session, t, 3, k0=10)
    session.tick(t + 1.0)
    writer.close()
    assert session.lost_dones == 1
    r = EpisodeReader(tmp_path / "rec.hdf5")
    assert [r.num_steps(e) for e in r.episodes] == [4, 3]
    assert r.read_obs("demo_1", "state")[:, 0].tolist() == [10, 11, 12]
    assert r.episode_metadata("demo_0")["end_reason"] == "done (its step was stale)"
    assert not r.read_dones("demo_0").any() and r.read_dones("demo_1")[-1]
    r.close()


def late_callbacks_stream(session, t0, n, late):
    """Bridge whose timer callbacks run `late[k]` s behind their slot: the action (stamped with
    its observation) and the headerless reward/done go out together in the late callback."""
    for k in range(n):
        s = t0 + k * P
        session.on_message(
            "/s", NS(header=hdr(s), name=[], position=[float(k), 0.0, 1.0]), s + late[k]
        )
        img = NS(header=hdr(s), encoding="rgb8", height=4, width=5, step=15, data=bytes(60))
        session.on_message("/img", img, s + late[k])
        arrival = s + P + late[k + 1]
        session.on_message("/a", NS(header=hdr(s), name=[], effort=[k, 0.0]), arrival)
        session.on_message("/r", NS(data=float(k)), arrival + 0.0005)
        session.on_message("/d", NS(data=k == n - 1), arrival + 0.0007)
    return t0 + n * P


def test_headerless_anchor_survives_late_callbacks(tmp_path):
    late = [0.0, 0.03, 0.0, 0.035, 0.0, 0.0, 0.032, 0.0, 0.0]  # > max_age (0.02) sometimes
    anchored, writer, _ = make(tmp_path / "a", headerless_anchor_key="actions")
    plain, writer2, _ = make(tmp_path / "b")
    for session in (anchored, plain):
        session.start_episode()
        t = late_callbacks_stream(session, 7.0, 8, late)
        session.tick(t + 1.0)
    writer.close()
    writer2.close()
    # stamped on arrival, the reward of a late callback misses its step: stale, skipped
    assert plain.counters()["stale_steps"] > 0
    assert anchored.counters()["stale_steps"] == 0 and anchored.unanchored == 0
    r = EpisodeReader(tmp_path / "a" / "rec.hdf5")
    np.testing.assert_array_equal(r.read_rewards("demo_0"), np.arange(8))
    assert r.read_dones("demo_0").tolist() == [False] * 7 + [True]
    r.close()


def lockstep_stream(session, episodes, steps, headerless_first):
    """A lockstep sim bridge at 50 Hz of sim time: every message of step k reaches the node at
    its clock t_k (nanoseconds, read as the node reads them); the applied action is stamped with
    the observation it acted on (t_k-1), the next observation with t_k. `headerless_first(k)`:
    reward and done come before the applied action (topics arrive in any order)."""
    period_ns = 20_000_000
    k = 5000  # t_k - t_k-1 in floats: 0.02 s give or take a rounding, on either side

    def obs(k, value):
        stamp = hdr_ns(k * period_ns)
        img = NS(header=stamp, encoding="rgb8", height=4, width=5, step=15, data=bytes(60))
        session.on_message("/s", NS(header=stamp, name=[], position=[value, 0.0, 1.0]), t(k))
        session.on_message("/img", img, t(k))

    def t(k):
        return k * period_ns * 1e-9

    obs(k, 0.0)
    for e in range(episodes):
        for i in range(steps):
            k += 1
            value = float(100 * e + i)
            applied = ("/a", NS(header=hdr_ns((k - 1) * period_ns), name=[], effort=[value, 0]))
            events = [("/r", NS(data=value)), ("/d", NS(data=i == steps - 1))]
            for topic, msg in [*events, applied] if headerless_first(k) else [applied, *events]:
                session.on_message(topic, msg, t(k))
            if i < steps - 1 or e < episodes - 1:
                obs(k, value + 1 if i < steps - 1 else 100.0 * (e + 1))  # the reset's after done
            session.tick(t(k))
    session.tick(t(k + 3))


def hdr_ns(ns):
    return NS(stamp=NS(sec=ns // 10**9, nanosec=ns % 10**9))


@pytest.mark.parametrize("headerless_first", [lambda k: True, lambda k: k % 7 == 0])
def test_lockstep_sim_time_done_before_its_applied_action_keeps_its_step(
    tmp_path, headerless_first
):
    """recorder.yaml's anchor tolerance is one period on sim time: the previous step's applied
    action (one period earlier) must not anchor a done that came before its own."""
    obs_specs, act = dataset_specs(SPECS)
    writer = EpisodeWriterThread(tmp_path / "rec.hdf5", obs_specs, act, {}, fsync=False)
    config = SessionConfig(50.0, 0.008, headerless_anchor_key="actions")
    assert config.headerless_anchor_tolerance_s == 0.02  # the default: exactly one period
    session = RecordingSession(SPECS, config)
    session.attach(writer)
    session.start_episode()
    lockstep_stream(session, 3, 10, headerless_first)
    writer.close()
    c = session.counters()
    assert (c["stale_steps"], c["lost_dones"], c["unanchored"]) == (0, 0, 0)
    r = EpisodeReader(tmp_path / "rec.hdf5")
    assert [r.num_steps(ep) for ep in r.episodes] == [10, 10, 10]
    for e, ep in enumerate(r.episodes):
        expected = np.arange(10) + 100 * e
        np.testing.assert_array_equal(r.read_rewards(ep), expected)
        np.testing.assert_array_equal(r.read_actions(ep)[:, 0], expected)
        assert r.read_dones(ep).tolist() == [False] * 9 + [True]
    r.close()


def test_headerless_takes_the_nearest_anchor_also_when_arrivals_went_back(tmp_path):
    """Anchors are searched by bisection while they arrived in order; after the clock stepped
    back (here: 5.05 then 4.90), by looking at all of them."""
    session, writer, _ = make(tmp_path, headerless_anchor_key="actions")
    for stamp, arrival in ((1.0, 5.0), (2.0, 5.05), (3.0, 4.9)):
        session.on_message("/a", NS(header=hdr(stamp), name=[], effort=[0.0, 0.0]), arrival)
    session.on_message("/r", NS(data=1.0), 4.905)  # nearest: the anchor that came at 4.90
    session.on_message("/a", NS(header=hdr(4.0), name=[], effort=[0.0, 0.0]), 6.0)
    session.on_message("/r", NS(data=2.0), 6.001)  # in order again: found by bisection
    session.tick(6.01)  # taken once no nearer anchor can come
    assert list(session.aligner._buffers["rewards"].stamps) == [3.0, 4.0]
    assert session.unanchored == 0
    writer.close()


def test_headerless_without_anchor_nearby_falls_back_and_is_counted(tmp_path):
    session, writer, _ = make(tmp_path, headerless_anchor_key="actions")
    session.on_message("/r", NS(data=1.0), 3.0)
    session.tick(3.001)
    assert session.unanchored == 0  # still within the tolerance
    session.tick(3.5)
    assert session.unanchored == 1
    writer.close()


def test_rejections_counted_per_topic_and_reason_and_logged_per_pair(tmp_path):
    session, writer, logs = make(tmp_path, restart_after_done=False, log_period_s=2.0)
    session.start_episode()
    t = publish_episode(session, 20.0, 4, done_last=False)
    session.tick(t)
    future = NS(header=hdr(t + 1e6), name=[], position=[0.0, 0.0, 1.0])
    img = NS(header=hdr(t + 1e6), encoding="rgb8", height=4, width=5, step=15, data=bytes(60))
    old_img = NS(header=hdr(1.0), encoding="rgb8", height=4, width=5, step=15, data=bytes(60))
    for k in range(3):  # three of each kind within one log period
        session.on_message("/s", future, t + 0.01 * k)
        session.on_message("/img", img, t + 0.01 * k)
        session.on_message("/img", old_img, t + 0.01 * k)
    session.on_message("/s", NS(header=hdr(1.0), name=[], position=[0.0, 0.0, 1.0]), t)
    t = publish_episode(session, t, 4, k0=4)
    session.tick(t + 1.0)
    c = session.counters()["topics"]
    assert c["/s"]["invalid"] == {"future_stamp": 3, "late": 1}
    assert c["/img"]["invalid"] == {"future_stamp": 3, "late": 3}
    assert c["/s"]["received"] == c["/s"]["valid"] + 4
    assert c["/img"]["received"] == c["/img"]["valid"] + 6
    # one line per (topic, reason), none hiding another
    assert [line.split(": ")[0] + " " + line.split(": ")[2] for line in logs] == [
        "/s future_stamp",
        "/img future_stamp",
        "/img late",
        "/s late",
    ]
    session.on_message("/s", future, t + 3.0)  # a period later: the count held back is told
    assert logs[-1].startswith("/s: rejected") and logs[-1].endswith(
        "(+2 more since the last such line)"
    )
    writer.close()
    with EpisodeReader(tmp_path / "rec.hdf5") as r:
        assert r.read_obs("demo_0", "state")[:, 0].tolist() == list(range(8))  # nothing lost


def test_shutdown_keeps_the_open_episode_with_what_has_arrived(tmp_path):
    session, writer, _ = make(tmp_path)
    session.start_episode()
    t = publish_episode(session, 30.0, 6, done_last=False)
    session.tick(t)  # the last steps still wait for their lag
    assert session.recording and session.current_steps < 6
    session.finish(t)
    writer.close()
    with EpisodeReader(tmp_path / "rec.hdf5") as r:
        assert r.episodes == ["demo_0"] and r.num_steps("demo_0") == 6
        assert r.episode_metadata("demo_0")["end_reason"] == "shutdown"


def test_shutdown_anchors_the_headerless_samples_still_waiting(tmp_path):
    """At shutdown nothing more arrives: a reward/done waiting for a nearer anchor takes the
    nearest it has."""
    session, writer, _ = make(tmp_path, headerless_anchor_key="actions")
    session.start_episode()
    t = publish_episode(session, 30.0, 4, done_last=False)
    session.finish(t + 0.002)  # the node clock when the last reward and done arrived
    writer.close()
    assert session.unanchored == 0 and session.counters()["stale_steps"] == 0
    with EpisodeReader(tmp_path / "rec.hdf5") as r:
        np.testing.assert_array_equal(r.read_rewards("demo_0"), np.arange(4))


def test_writer_that_fails_to_open_a_new_dataset_leaves_nothing(tmp_path):
    obs, act = dataset_specs(SPECS)
    bad = {**obs, "a/b": obs["state"]}
    with pytest.raises(DatasetError, match="bad obs key"):
        EpisodeWriterThread(tmp_path / "new.hdf5", bad, act, {}, fsync=False)
    assert list(tmp_path.iterdir()) == []


# Runs in a process of its own under a file-size limit (standing in for a full disk).
FAILING_WRITES = """
import json, resource, sys, time
from pathlib import Path
sys.path[:0] = {paths!r}
import test_recording_session as t

def limit(n):
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.RLIM_INFINITY))

def wait(cond):
    deadline = time.monotonic() + 10
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)

session, writer, logs = t.make(Path({tmp!r}))
out = {{}}
session.start_episode()
end = t.publish_episode(session, 10.0, 3)
session.tick(end + 1.0)  # demo_0 ends on done and is committed; the next episode starts
wait(lambda: writer.stats.last_episode == "demo_0")
limit({limit})
end = t.publish_episode(session, end + 1.0, 3, k0=10)
session.tick(end + 1.0)  # its commit fails on the writer thread; the next one has started
wait(lambda: writer.failures == 1)
end = t.publish_episode(session, end + 1.0, 2, k0=20, done_last=False)
session.tick(end + 1.0)
out["recording_after_failure"] = session.recording
out["stop_after_failure"] = session.stop_episode(wait_s=5.0)
out["retry"] = session.start_episode()
limit(resource.RLIM_INFINITY)
end = t.publish_episode(session, end + 1.0, 2, k0=30, done_last=False)
session.tick(end + 1.0)
out["stop_retry"] = session.stop_episode(wait_s=5.0)
limit({limit})
session.start_episode()
end = t.publish_episode(session, end + 1.0, 2, k0=40, done_last=False)
session.tick(end + 1.0)
out["stop_failing_commit"] = session.stop_episode(wait_s=5.0)
out["write_errors"] = session.counters()["write_errors"]
out["written"] = [writer.stats.episodes_written, writer.stats.last_episode]
out["last_error"] = writer.last_error
writer.close()
print(json.dumps(out))
"""


def test_failed_writes_stop_recording_and_are_answered(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    paths = [str(Path(__file__).parent), *sys.path]
    script = FAILING_WRITES.format(paths=paths, tmp=str(tmp_path), limit=40_000)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-3000:]  # no crash, no segfault at exit
    out = json.loads(run.stdout.splitlines()[-1])
    # demo_1 failed at its commit while the next episode recorded: recording stopped
    assert out["recording_after_failure"] is False
    ok, message = out["stop_after_failure"]
    assert not ok and "rec.hdf5: writing demo_1 failed" in message, message
    assert "File too large" in message
    assert out["retry"][0] and "the last write failed" in out["retry"][1]
    assert out["stop_retry"] == [True, "episode demo_1 written (2 steps)"]
    ok, message = out["stop_failing_commit"]  # a failure in the commit the service waits for
    assert not ok and "writing demo_2 failed" in message and "File too large" in message
    assert out["write_errors"] == 2
    assert out["written"] == [2, "demo_1"] and "writing demo_2 failed" in out["last_error"]
    validate_file(tmp_path / "rec.hdf5")
    with EpisodeReader(tmp_path / "rec.hdf5") as r:
        assert r.episodes == ["demo_0", "demo_1"]
        assert r.read_obs("demo_0", "state")[:, 0].tolist() == [0, 1, 2]
        assert r.read_obs("demo_1", "state")[:, 0].tolist() == [30, 31]  # the retry
    assert not list((tmp_path / "rec.hdf5.episodes").glob("*.partial"))


@pytest.mark.parametrize(("rate", "rtf", "expected"), [(50.0, 0.4, 0.02), (50.0, 1.0, 0.008)])
def test_default_max_age_follows_the_timeline_period(rate, rtf, expected):
    from episode_dataset.recording.params import (
        RECORDING_PARAMETERS,
        make_recording,
        session_config,
    )

    params = {name: default for name, (default, *_) in RECORDING_PARAMETERS.items()}
    recording = make_recording(SPECS, env_args={}, control_rate_hz=rate, real_time_factor=rtf)
    config = session_config(params, recording)
    assert config.max_age_s == pytest.approx(expected)
    RecordingSession(SPECS, config, print)  # the aligner accepts it (< half a period)
    params["max_age_s"] = 0.004  # a value set by the user stands
    assert session_config(params, recording).max_age_s == 0.004


@pytest.mark.parametrize("seed", range(20))
def test_nearest_anchor_scan_equals_the_minimum_over_all_anchors(seed):
    """Headerless samples take the anchor nearest in arrival time (lower stamp on a tie). The
    session scans from the newest anchor and stops at the first one too far before the sample,
    which must give the minimum over every remembered anchor, also with repeated arrival times
    (sim time) and after the clock went back (then it scans them all)."""
    from episode_dataset.recording.session import ANCHORS

    rng = np.random.default_rng(seed)
    session = RecordingSession(
        SPECS, SessionConfig(1 / P, 0.4 * P, headerless_anchor_key="actions")
    )
    tol = session.config.headerless_anchor_tolerance_s
    t = 100.0
    for _ in range(3 * ANCHORS):
        step = rng.choice([0.0, 0.001, 0.01, P, -1.0], p=[0.2, 0.2, 0.3, 0.28, 0.02])
        t = round(t + step, 3)  # repeated arrival times and equal distances happen
        stamp = round(t - rng.choice([0.0, P, 0.002]), 3)
        session.on_message(
            "/a", NS(header=hdr(stamp), name=[], effort=[0.0, 0.0]), t
        )  # an anchor: remembered whether or not the aligner keeps it
        for arrival in np.round(t + rng.uniform(-3 * tol, 3 * tol, 5), 3):
            brute = min(
                ((abs(a - arrival), s) for a, s in session._anchors if abs(a - arrival) <= tol),
                default=None,
            )
            assert session._nearest_anchor(float(arrival), tol) == brute
