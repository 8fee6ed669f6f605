"""RecordingSession + writer thread -> real episode_dataset files (ROS-free)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
from roboloop_recorder.session import RecordingSession, SessionConfig
from roboloop_recorder.topics import dataset_specs, parse_topics
from roboloop_recorder.writer_thread import EpisodeWriterThread

from episode_dataset import EpisodeReader, validate_file

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
    session = RecordingSession(SPECS, SessionConfig(1 / P, 0.4 * P, **cfg), writer, logs.append)
    return session, writer, logs


def publish_episode(session, t0, n, k0=0, nan_at=None, bad_image_at=None):
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
        session.on_message("/d", NS(data=k == n - 1), s + P + 0.002)
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


def test_headerless_without_anchor_nearby_falls_back_and_is_counted(tmp_path):
    session, writer, _ = make(tmp_path, headerless_anchor_key="actions")
    session.on_message("/r", NS(data=1.0), 3.0)
    session.tick(3.001)
    assert session.unanchored == 0  # still within the tolerance
    session.tick(3.5)
    assert session.unanchored == 1
    writer.close()
