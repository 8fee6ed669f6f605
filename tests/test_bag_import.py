"""rosbag2 -> dataset (`import-bag`) on real bags written by `rosbags` (MCAP and sqlite3).

The stream is what the sim bridge publishes (docs/ros_bridge_recorder.md): every tick, the
applied action of the previous observation (stamped with it), reward, done and a goal
(Float32MultiArray, headerless), then the next observation (JointState + rgb8 Image). Tested
both ways: the same stream, fed as rclpy messages to the recorder's session with its writer
thread and a half-period timer (what the node does) and imported from a bag, gives the same
dataset, and that dataset holds the values the stream carried.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from episode_dataset import EpisodeReader, validate_file
from episode_dataset.bag_import import BagImportError, import_bag
from episode_dataset.cli import main as cli_main
from episode_dataset.recording.params import (
    read_params_file,
    recording_from_params,
    session_config,
)
from episode_dataset.recording.session import RecordingSession
from episode_dataset.recording.topics import RecorderConfigError, dataset_specs
from roboloop_testing.damage import damage

RATE, RTF = 50.0, 0.4  # the demo's Reacher-v5 bridge: 20 ticks per wall-clock second
P = 1 / (RATE * RTF)
T0 = 1_765_000_000.0  # stamps and log times near today's epoch, as a real robot's
H, W = 6, 8
CONFIG = f"""\
/**:
  ros__parameters:
    topics: [/sim/state, /sim/image, /sim/goal, /sim/applied_action, /sim/reward, /sim/done]
    types: [sensor_msgs/msg/JointState, sensor_msgs/msg/Image, std_msgs/msg/Float32MultiArray,
            sensor_msgs/msg/JointState, std_msgs/msg/Float32, std_msgs/msg/Bool]
    keys: [obs/state, obs/image, obs/goal, actions, rewards, dones]
    shapes: ["4", "{H},{W},3", "2", "2", "", ""]
    fields: [position, "", "", effort, "", ""]
    env_args_json: '{{"env_name": "Fake-v0"}}'
    control_rate_hz: {RATE}
    real_time_factor: {RTF}
    max_age_s: 0.02
    headerless_anchor_key: actions
    output_path: ignored_by_import.hdf5
    queue_size: 64
"""
STATE, IMAGE, GOAL, ACTION, REWARD, DONE = (
    "/sim/state",
    "/sim/image",
    "/sim/goal",
    "/sim/applied_action",
    "/sim/reward",
    "/sim/done",
)
TYPES = {
    STATE: "sensor_msgs/msg/JointState",
    IMAGE: "sensor_msgs/msg/Image",
    GOAL: "std_msgs/msg/Float32MultiArray",
    ACTION: "sensor_msgs/msg/JointState",
    REWARD: "std_msgs/msg/Float32",
    DONE: "std_msgs/msg/Bool",
}
TRIGGER_EVENT = "std_srvs/srv/Trigger_Event"
# What rosbag2 stores for a service event topic (its type is not in rosbags' stores).
TRIGGER_EVENT_DEF = (
    "service_msgs/ServiceEventInfo info\nstd_srvs/Trigger_Request[<=1] request\n"
    "std_srvs/Trigger_Response[<=1] response\n"
)
TRIGGER_EVENT_HASH = "RIHS01_" + "0" * 64


@dataclass
class Msg:
    """One message of the stream: topic, log (arrival) time in ns, content."""

    topic: str
    t_ns: int
    stamp: float | None = None
    values: np.ndarray | None = None  # JointState field / Image pixels / Float32MultiArray
    scalar: float | bool | None = None
    raw: bytes | None = None  # a corrupt record, written as is
    service: str | None = None  # "start_episode" / "stop_episode": a Trigger request event


def ns(t: float) -> int:
    return round(t * 1e9)


def stream(episodes=(6, 5, 7), t0=T0, pause=0.0, dones=True, k0=0) -> list[Msg]:
    """The bridge's messages: step k of an episode observed at s_k, its action/reward/done/goal
    published at the next tick (s_k + P), then the next observation; `pause` seconds between
    episodes (a bridge paused until ~/start_episode)."""
    out: list[Msg] = []
    t, k = t0, k0
    for length in episodes:
        for i in range(length + 1):  # the observation after the last step closes it
            s = t + i * P
            if i > 0:
                prev = s - P
                arrive = ns(s) + 1_000_000
                action = np.array([k - 1, -(k - 1)], np.float64) / 10
                out.append(Msg(ACTION, arrive, prev, values=action))
                out.append(Msg(REWARD, arrive + 200_000, scalar=float(k - 1) / 2))
                out.append(Msg(DONE, arrive + 400_000, scalar=dones and i == length))
                goal = np.array([k - 1, 1], np.float32)
                out.append(Msg(GOAL, arrive + 600_000, values=goal))
            if i == length:
                break
            arrive = ns(s) + 1_800_000
            out.append(Msg(STATE, arrive, s, values=np.arange(4, dtype=np.float64) + k))
            pixels = np.full((H, W, 3), k % 251, np.uint8)
            pixels[0, 0] = [1, 2, 3]
            out.append(Msg(IMAGE, arrive + 300_000, s, values=pixels))
            k += 1
        t += (length + 1) * P + pause
    return sorted(out, key=lambda m: m.t_ns)


# -- message builders: rosbags' (for the bag) and rclpy's (for the live side) ------------------
def typestore():
    return get_typestore(Stores.ROS2_KILTED)


def _fields(m: Msg) -> dict:
    sec = int(m.stamp) if m.stamp is not None else 0
    nanosec = ns(m.stamp) - sec * 1_000_000_000 if m.stamp is not None else 0
    return {"sec": sec, "nanosec": nanosec}


def rosbags_msg(ts, m: Msg):
    T = ts.types
    if m.topic in (STATE, ACTION, IMAGE):
        header = T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](**_fields(m)), frame_id="sim"
        )
    if m.topic in (STATE, ACTION):
        empty = np.zeros(0, np.float64)
        pos, eff = (m.values, empty) if m.topic == STATE else (empty, m.values)
        return T[TYPES[m.topic]](header=header, name=[], position=pos, velocity=empty, effort=eff)
    if m.topic == IMAGE:
        h, w, _ = m.values.shape
        return T[TYPES[IMAGE]](
            header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
            step=w * 3, data=m.values.reshape(-1),
        )  # fmt: skip
    if m.topic == GOAL:
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        return T[TYPES[GOAL]](layout=layout, data=m.values)
    return T[TYPES[m.topic]](data=m.scalar)


def rclpy_msg(m: Msg):
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float32, Float32MultiArray, Header

    if m.topic in (STATE, ACTION, IMAGE):
        header = Header(stamp=Time(**_fields(m)), frame_id="sim")
    if m.topic == STATE:
        return JointState(header=header, position=m.values.tolist())
    if m.topic == ACTION:
        return JointState(header=header, effort=m.values.tolist())
    if m.topic == IMAGE:
        h, w, _ = m.values.shape
        return Image(
            header=header, height=h, width=w, encoding="rgb8", step=w * 3,
            data=m.values.tobytes(),
        )  # fmt: skip
    if m.topic == GOAL:
        return Float32MultiArray(data=m.values.tolist())
    return (Float32 if m.topic == REWARD else Bool)(data=m.scalar)


def write_bag(path: Path, msgs: list[Msg], storage: StoragePlugin) -> Path:
    ts = typestore()
    writer = Writer(path, version=9, storage_plugin=storage)
    writer.open()
    conns = {}
    seq = 0
    for m in msgs:
        topic = f"/recorder/{m.service}/_service_event" if m.service else m.topic
        if topic not in conns and m.service:
            conns[topic] = writer.add_connection(
                topic, TRIGGER_EVENT, msgdef=TRIGGER_EVENT_DEF, rihs01=TRIGGER_EVENT_HASH
            )
        elif topic not in conns:
            conns[topic] = writer.add_connection(topic, TYPES[m.topic], typestore=ts)
        if m.service:
            seq += 1
            for event in _service_events(seq):  # one call: client and server side events
                writer.write(conns[topic], m.t_ns, event)
            continue
        raw = m.raw if m.raw is not None else ts.serialize_cdr(rosbags_msg(ts, m), TYPES[m.topic])
        writer.write(conns[topic], m.t_ns, raw)
    writer.close()
    return path


def _service_events(seq: int) -> list[bytes]:
    """A Trigger call as service introspection publishes it (rclpy's own serialization):
    REQUEST_SENT (client), REQUEST_RECEIVED (server), RESPONSE_SENT (server)."""
    from rclpy.serialization import serialize_message
    from std_srvs.srv import Trigger

    events = []
    for kind in (0, 1, 2):
        event = Trigger.Event()
        event.info.event_type = kind
        event.info.client_gid = list(range(16))
        event.info.sequence_number = seq
        if kind < 2:
            event.request = [Trigger.Request()]
        else:
            event.response = [Trigger.Response(success=True, message="recording")]
        events.append(serialize_message(event))
    return events


def record_live(config: Path, msgs: list[Msg], out: Path) -> None:
    """What the recorder node does with these messages: rclpy messages into its session, the
    writer thread, an alignment timer every half period from activation, SIGINT at the end."""
    from roboloop_recorder.writer_thread import EpisodeWriterThread

    params = read_params_file(config)
    recording = recording_from_params(params)
    session = RecordingSession(recording.topics, session_config(params, recording))
    obs, act = dataset_specs(recording.topics)
    writer = EpisodeWriterThread(out, obs, act, recording.env_args, queue_size=10_000)
    session.attach(writer)
    tick = msgs[0].t_ns * 1e-9
    session.start_episode()  # record_on_activate
    for m in msgs:
        now = m.t_ns * 1e-9
        while tick + P / 2 <= now:
            tick += P / 2
            session.tick(tick)
        session.on_message(m.topic, rclpy_msg(m), now)
    session.finish(msgs[-1].t_ns * 1e-9)
    writer.close()


def episodes(path: Path) -> list[dict[str, np.ndarray]]:
    with EpisodeReader(path) as r:
        return [r.read_episode(ep) for ep in r.episodes]


def flat(ep) -> dict[str, np.ndarray]:
    """{"obs/state": ..., "actions": ...} of an episode dict (nested obs)."""
    out = {}
    for k, v in ep.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "recorder_topics.yaml"
    path.write_text(CONFIG)
    return path


STORAGES = [StoragePlugin.MCAP, StoragePlugin.SQLITE3]


@pytest.mark.parametrize("storage", STORAGES, ids=["mcap", "sqlite3"])
def test_import_equals_live_recording_and_the_stream(tmp_path, config, storage):
    msgs = stream()
    bag = write_bag(tmp_path / "bag", msgs, storage)
    report = import_bag(bag, config, tmp_path / "bag.hdf5")
    record_live(config, msgs, tmp_path / "live.hdf5")
    validate_file(tmp_path / "bag.hdf5")
    imported, live = episodes(tmp_path / "bag.hdf5"), episodes(tmp_path / "live.hdf5")
    assert [len(flat(e)["actions"]) for e in imported] == [6, 5, 7]
    assert report.episodes == [("demo_0", 6), ("demo_1", 5), ("demo_2", 7)]
    assert report.counters["invalid_total"] == 0 and report.counters["stale_steps"] == 0
    assert len(imported) == len(live)
    for a, b in zip(imported, live, strict=True):
        a, b = flat(a), flat(b)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # ... and it is the stream: step k of the run holds observation k and action k
    steps = np.concatenate([flat(e)["obs/state"][:, 0] for e in imported])
    np.testing.assert_array_equal(steps, np.arange(18))
    ep1 = flat(imported[1])
    np.testing.assert_allclose(ep1["actions"][:, 0], np.arange(6, 11) / 10, rtol=1e-6)
    np.testing.assert_array_equal(ep1["rewards"], np.arange(6, 11) / 2)
    np.testing.assert_array_equal(ep1["obs/goal"][:, 0], np.arange(6, 11))
    np.testing.assert_array_equal(ep1["obs/image"][:, 1, 1, 0], np.arange(6, 11))
    assert ep1["dones"].tolist() == [False] * 4 + [True]
    with EpisodeReader(tmp_path / "bag.hdf5") as r:
        assert r.env_args["control_rate_hz"] == RATE and r.env_args["env_name"] == "Fake-v0"
        meta = r.episode_metadata("demo_0")
        assert meta["end_reason"] == "done" and meta["source_bag"] == str(bag)
        assert r.obs_specs["image"].source_topic == IMAGE


def test_malformed_messages_are_counted_and_the_rest_is_intact(tmp_path, config):
    msgs = stream()
    clean = import_bag(
        write_bag(tmp_path / "clean", msgs, StoragePlugin.MCAP), config, tmp_path / "c.hdf5"
    )
    states = [m for m in msgs if m.topic == STATE]
    images = [m for m in msgs if m.topic == IMAGE]
    good = typestore().serialize_cdr(rosbags_msg(typestore(), images[2]), TYPES[IMAGE])
    images[2].raw = good[: len(good) // 2]  # a truncated record: cannot be deserialized
    states[8].values = states[8].values.copy()
    states[8].values[1] = np.nan  # well-formed, but not a usable observation
    bag = write_bag(tmp_path / "bad", msgs, StoragePlugin.MCAP)
    report = import_bag(bag, config, tmp_path / "bad.hdf5")
    validate_file(tmp_path / "bad.hdf5")
    topics = report.counters["topics"]
    assert topics[IMAGE]["invalid"] == {"deserialize": 1}
    assert topics[STATE]["invalid"] == {"nonfinite": 1}
    assert topics[IMAGE]["received"] == len(images) and topics[IMAGE]["valid"] == len(images) - 1
    # the step without its image is stale; the one without its observation is no step (the
    # timeline relocks on the next one)
    assert report.counters["stale_steps"] == 1
    assert report.counters["relocks"] == clean.counters["relocks"] + 1
    assert "invalid 2 (/sim/state nonfinite: 1, /sim/image deserialize: 1)" in report.summary()
    # every other step is there, unchanged
    a = np.concatenate([flat(e)["obs/state"][:, 0] for e in episodes(tmp_path / "c.hdf5")])
    b = np.concatenate([flat(e)["obs/state"][:, 0] for e in episodes(tmp_path / "bad.hdf5")])
    np.testing.assert_array_equal(b, np.delete(a, [2, 8]))
    assert clean.steps - report.steps == 2


def test_episodes_from_recorded_service_calls(tmp_path, config):
    """No done topic: a robot whose episodes are started and stopped by a person or a script
    calling the recorder's services, recorded by rosbag2 with service introspection."""
    msgs = [m for m in stream(episodes=(30,), dones=False)]
    t = [m.t_ns for m in msgs if m.topic == STATE]
    calls = [
        Msg("", t[2] - 10_000_000, service="start_episode"),
        Msg("", t[10] - 10_000_000, service="stop_episode"),
        Msg("", t[15] - 10_000_000, service="start_episode"),
        Msg("", t[27] - 10_000_000, service="stop_episode"),
    ]
    bag = write_bag(
        tmp_path / "bag", sorted(msgs + calls, key=lambda m: m.t_ns), StoragePlugin.SQLITE3
    )
    report = import_bag(bag, config, tmp_path / "out.hdf5", services="/recorder")
    assert report.service_calls == {"start_episode": 2, "stop_episode": 2}
    eps = [flat(e)["obs/state"][:, 0] for e in episodes(tmp_path / "out.hdf5")]
    # a stop ends the episode at once, as live: the steps not aligned yet (within one period
    # plus max_age of their tick) are not in it
    np.testing.assert_array_equal(eps[0], np.arange(2, 8))
    np.testing.assert_array_equal(eps[1], np.arange(15, 25))
    with EpisodeReader(tmp_path / "out.hdf5") as r:
        assert [r.episode_metadata(e)["end_reason"] for e in r.episodes] == ["service"] * 2
    with pytest.raises(BagImportError, match="no /robot/start_episode/_service_event"):
        import_bag(bag, config, tmp_path / "x.hdf5", services="/robot")


def test_episodes_split_by_gaps(tmp_path, config):
    msgs = stream(episodes=(8, 6, 9), pause=2.0, dones=False)
    bag = write_bag(tmp_path / "bag", msgs, StoragePlugin.MCAP)
    report = import_bag(bag, config, tmp_path / "out.hdf5", gap_s=1.0)
    assert report.gaps == 2
    assert [n for _, n in report.episodes] == [8, 6, 9]
    with EpisodeReader(tmp_path / "out.hdf5") as r:
        reasons = [r.episode_metadata(e)["end_reason"] for e in r.episodes]
    assert reasons == ["gap", "gap", "end of bag"]
    # without --gap-s the pauses are only a relock of the timeline: one episode
    one = import_bag(bag, config, tmp_path / "one.hdf5")
    assert [n for _, n in one.episodes] == [23] and one.counters["relocks"] == 2


def test_cli_imports_and_errors_are_one_line(tmp_path, config, capsys):
    bag = write_bag(tmp_path / "bag", stream(episodes=(4,)), StoragePlugin.MCAP)
    out = tmp_path / "d.hdf5"
    run = subprocess.run(
        [sys.executable, "-m", "episode_dataset", "import-bag", str(bag),
         "--topics-config", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{bag}: " in run.stdout and "-> 1 episodes, 4 steps" in run.stdout
    validate_file(out)

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        CONFIG.replace("std_msgs/msg/Float32MultiArray", "sensor_msgs/msg/JointState")
    )
    missing = tmp_path / "missing.yaml"
    missing.write_text(CONFIG.replace("/sim/goal", "/sim/target"))
    cases = [
        (
            wrong,
            "topic /sim/goal holds ['std_msgs/msg/Float32MultiArray'], the config records "
            "sensor_msgs/msg/JointState",
        ),
        (missing, "topic /sim/target (obs/goal) is not in the bag"),
        (tmp_path / "nope.yaml", "nope.yaml: cannot read the parameter file"),
    ]
    for cfg, text in cases:
        code = cli_main(
            [
                "import-bag",
                str(bag),
                "--topics-config",
                str(cfg),
                "--out",
                str(tmp_path / "e.hdf5"),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 1 and text in err and "\n" not in err, err
    # a parameter of another type than the node declares, and a file that is not UTF-8
    typed = tmp_path / "typed.yaml"
    unset = "ros__parameters:\n    future_tolerance_s:"  # YAML null: no float
    typed.write_text(CONFIG.replace("ros__parameters:", unset))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(CONFIG.encode().replace(b"Fake-v0", b"Fak\xe9-v0"))
    ranged = tmp_path / "ranged.yaml"  # the range the recorder node declares for it
    ranged.write_text(CONFIG.replace("max_age_s: 0.02", "max_age_s: -0.5"))
    for cfg, text in (
        (typed, "typed.yaml: parameter future_tolerance_s must be like 1.0, got None"),
        (ranged, "ranged.yaml: parameter max_age_s must be a number in [0, 60], got -0.5"),
        (latin, "latin.yaml: cannot read the parameter file: 'utf-8' codec can't decode"),
    ):
        with pytest.raises(RecorderConfigError) as caught:
            import_bag(bag, cfg, tmp_path / "e.hdf5")
        assert text in str(caught.value) and "\n" not in str(caught.value)
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(CONFIG.replace("obs/goal", "goal"))
    with pytest.raises(RecorderConfigError, match="key 'goal' not obs/<name>"):
        import_bag(bag, bad_key, tmp_path / "e.hdf5")


def test_settings_the_aligner_refuses_are_one_line_before_any_work(tmp_path, capsys):
    """Before: a ValueError traceback from the aligner ("need 0 < max_age < period / 2") for a
    max_age_s inside its declared range [0, 60], also when real_time_factor 0 (= 1) shortened
    the period under a max_age_s set for 0.4; and for a reference_key not recorded."""
    bag = write_bag(tmp_path / "bag", stream(episodes=(4,)), StoragePlugin.MCAP)
    out = tmp_path / "d.hdf5"
    cases = [
        (
            CONFIG.replace("max_age_s: 0.02", "max_age_s: 0.5"),
            "parameter max_age_s 0.5 must be below half a period, 0.025 s "
            "(control_rate_hz 50 x real_time_factor 0.4 = 20 steps per stamp second)",
        ),
        (
            CONFIG.replace("real_time_factor: 0.4", "real_time_factor: 0"),
            "parameter max_age_s 0.02 must be below half a period, 0.01 s "
            "(control_rate_hz 50 x real_time_factor 1 = 50 steps per stamp second)",
        ),
        (
            CONFIG.replace("max_age_s: 0.02", "max_age_s: 0.02\n    reference_key: obs/nope"),
            "reference_key 'obs/nope' is not one of the recorded keys",
        ),
    ]
    for i, (text, message) in enumerate(cases):
        cfg = tmp_path / f"c{i}.yaml"
        cfg.write_text(text)
        argv = ["import-bag", str(bag), "--topics-config", str(cfg), "--out", str(out)]
        assert cli_main(argv) == 1
        assert capsys.readouterr().err == f"ERROR: {cfg}: {message}\n"
        assert not out.exists() and not Path(f"{out}.episodes").exists()


def test_an_import_without_episodes_fails_and_adds_nothing(tmp_path, config, capsys):
    """Before: exit 0 and a dataset of 0 episodes when every step was rejected (a config for
    other shapes). Now one line with the counters; a new dataset is not written, one appended
    to is as it was."""
    bag = write_bag(tmp_path / "bag", stream(episodes=(4,)), StoragePlugin.MCAP)
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace('shapes: ["4"', 'shapes: ["5"'))  # every state refused
    out = tmp_path / "d.hdf5"
    argv = ["import-bag", str(bag), "--topics-config", str(other), "--out", str(out)]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert not captured.out and captured.err == (
        f"ERROR: {bag}: no episode in 24 messages (invalid 4 (/sim/state size: 4), stale "
        f"steps 0, relocks 0, time jumps 0, lost dones 0, unanchored 0); {out} not written\n"
    )
    assert not out.exists() and not Path(f"{out}.episodes").exists()

    assert [n for _, n in import_bag(bag, config, out).episodes] == [4]
    msgs = stream(episodes=(4,), t0=T0 + 100)
    for m in msgs:
        if m.topic == STATE:
            m.values = np.full(4, np.nan)
    nan_bag = write_bag(tmp_path / "nan_bag", msgs, StoragePlugin.MCAP)
    with pytest.raises(BagImportError) as caught:
        import_bag(nan_bag, config, out)
    line = str(caught.value)
    assert "(invalid 4 (/sim/state nonfinite: 4)" in line and "\n" not in line
    assert line.startswith(f"{nan_bag}: no episode") and line.endswith(f"; nothing added to {out}")
    assert validate_file(out).num_episodes == 1


@pytest.mark.parametrize("storage", STORAGES, ids=["mcap", "sqlite3"])
def test_damaged_bag_files_give_one_line_errors(tmp_path, config, storage):
    """Flips and truncations (fixed seed) of a bag's files: the import succeeds (a flip inside
    a payload reads as written: rosbag2 stores no checksum) or raises one BagImportError line
    naming the bag. Before, rosbags' ReaderError, UnicodeDecodeError and OverflowError came
    out as tracebacks (188 of 300 MCAP cases)."""
    bag = write_bag(tmp_path / "bag", stream(episodes=(3, 2)), storage)
    files = sorted(p for p in bag.iterdir() if p.is_file())
    rng = np.random.default_rng(2)
    outcomes = {"error": 0, "read": 0}
    for case in range(80):
        target = files[case % len(files)]
        pristine = target.read_bytes()
        target.write_bytes(damage(pristine, rng)[1])
        try:
            import_bag(bag, config, tmp_path / f"out{case}.hdf5", fsync=False)
            outcomes["read"] += 1
        except BagImportError as err:
            outcomes["error"] += 1
            assert "\n" not in str(err) and str(err).startswith(str(bag)), str(err)
        target.write_bytes(pristine)
    assert outcomes["error"] > 20 and outcomes["read"] > 5, outcomes


def test_a_damaged_record_mid_bag_keeps_the_episodes_before_it(tmp_path, config):
    """A record whose length field is damaged, in the MCAP's second chunk: the import stops
    there with one line saying where, and the dataset holds every episode finished before it
    (the open one is discarded)."""
    msgs = stream(episodes=(50,) * 40)  # ~1.8 MB: rosbags closes an MCAP chunk at 1 MiB
    bag = write_bag(tmp_path / "bag", msgs, StoragePlugin.MCAP)
    mcap = bag / "bag.mcap"
    data = bytearray(mcap.read_bytes())
    pos, chunks = 8, []  # after the magic: records of (opcode u8, length u64, body)
    while pos < len(data) - 8:
        (length,) = struct.unpack_from("<Q", data, pos + 1)
        if data[pos] == 0x06:  # a chunk
            chunks.append(pos)
        pos += 9 + length
    assert len(chunks) >= 2, "the stream should span several chunks"
    body = chunks[1] + 9  # start, end, size (u64 x3), crc (u32), compression (u32 len + str)
    (name,) = struct.unpack_from("<I", data, body + 28)
    record = body + 32 + name + 8  # after records_length (u64): the chunk's first record
    struct.pack_into("<Q", data, record + 1, 10**12)
    mcap.write_bytes(bytes(data))
    out = tmp_path / "out.hdf5"
    with pytest.raises(BagImportError) as caught:
        import_bag(bag, config, out, fsync=False)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{bag}: unreadable after t=")
    kept = int(line.split("; the ")[1].split(" episodes")[0])
    assert 0 < kept < 40 and line.endswith(f"before it are in {out}")
    summary = validate_file(out)
    assert (summary.num_episodes, summary.total_steps) == (kept, 50 * kept)


def test_direct_sink_writes_steps_in_batches(tmp_path):
    from episode_dataset import EpisodeWriter, KeySpec
    from episode_dataset.recording.sink import DirectSink

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, H, W, 3), dtype=np.uint8)
    actions = rng.normal(size=(8, 2)).astype(np.float32)
    specs = {"image": KeySpec("uint8", (H, W, 3), encoding="rgb8")}
    with EpisodeWriter(tmp_path / "d.hdf5", specs, KeySpec("float32", (2,))) as w:
        sink = DirectSink(w, batch_steps=3)
        sink.begin({"seed": 1})
        for t in range(8):
            sink.step({"image": image[t]}, actions[t], float(t), t == 7)
        assert w.current_steps == 6  # two batches handed over, two steps still gathered
        assert sink.end({"end_reason": "done"}).result() == ("demo_0", 8)
    (ep,) = episodes(tmp_path / "d.hdf5")
    np.testing.assert_array_equal(ep["obs"]["image"], image)
    np.testing.assert_array_equal(ep["actions"], actions)
    np.testing.assert_array_equal(ep["rewards"], np.arange(8))
    assert ep["dones"].tolist() == [False] * 7 + [True]


def _plain(msg):
    """A message's fields as plain values (rosbags dataclass or the CDR readers' tuples)."""
    if isinstance(msg, np.ndarray):
        return ("array", msg.dtype.str, msg.tolist())
    if isinstance(msg, (list, tuple)) and not hasattr(msg, "_fields"):
        return [_plain(v) for v in msg]
    if hasattr(msg, "__dataclass_fields__") or hasattr(msg, "_fields"):
        names = getattr(msg, "_fields", None) or [
            n for n in msg.__dataclass_fields__ if n != "__msgtype__"
        ]
        return {n: _plain(getattr(msg, n)) for n in names}
    return msg


def test_cdr_readers_give_rosbags_values_and_leave_every_doubt_to_rosbags():
    """The import's own CDR readers (Image, JointState, Float32, Bool): on well-formed messages
    of every alignment the fields rosbags gives; on damaged bytes (truncated, flipped, padded)
    either rosbags' values or, when in doubt, rosbags' own answer (its error included)."""
    from episode_dataset.cdr import READERS, Deserializer

    ts = typestore()
    T = ts.types
    deserialize = Deserializer(ts)
    assert set(deserialize.readers) == set(READERS)

    def header(frame_id):
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=-3, nanosec=999_999_999), frame_id=frame_id
        )

    msgs = []
    for frame_id in ("", "a", "ab", "abc", "abcd", "ünï"):
        for names in ([], ["j0"], ["j0", "joint_1", "x"]):
            values = np.arange(len(names) or 2, dtype=np.float64) - 0.5
            msgs.append(("sensor_msgs/msg/JointState", T["sensor_msgs/msg/JointState"](
                header=header(frame_id), name=names, position=values,
                velocity=np.zeros(0), effort=values * 2)))  # fmt: skip
        for encoding, data in (("rgb8", np.arange(12, dtype=np.uint8)), ("mono8", np.zeros(0))):
            msgs.append(("sensor_msgs/msg/Image", T["sensor_msgs/msg/Image"](
                header=header(frame_id), height=2, width=2, encoding=encoding,
                is_bigendian=1, step=6, data=data.astype(np.uint8))))  # fmt: skip
    msgs += [("std_msgs/msg/Float32", T["std_msgs/msg/Float32"](data=-1.5)),
             ("std_msgs/msg/Bool", T["std_msgs/msg/Bool"](data=True))]  # fmt: skip
    rng = np.random.default_rng(0)
    taken = doubts = 0
    for msgtype, msg in msgs:
        raw = bytes(ts.serialize_cdr(msg, msgtype))
        mine = deserialize.read(raw, msgtype)  # read here, not left to rosbags
        assert mine is not None and _plain(mine) == _plain(ts.deserialize_cdr(raw, msgtype))
        big = bytes(ts.serialize_cdr(msg, msgtype, little_endian=False))
        assert _plain(deserialize(big, msgtype)) == _plain(msg)  # rosbags reads it
        for _ in range(40):
            cut = rng.integers(0, len(raw) + 6)
            damaged = bytearray(raw[:cut] + bytes(rng.integers(0, 256, 6, np.uint8))[: max(
                0, cut - len(raw))])  # fmt: skip
            if damaged and rng.random() < 0.7:
                damaged[rng.integers(0, len(damaged))] ^= 1 << int(rng.integers(0, 8))
            damaged = bytes(damaged)
            mine = deserialize.read(damaged, msgtype)
            ok = mine is not None
            try:
                theirs = ts.deserialize_cdr(damaged, msgtype)
            except Exception:
                assert not ok, (msgtype, damaged)  # never accepted what rosbags rejects
                doubts += 1
                continue
            if ok:
                taken += 1
                assert _plain(mine) == _plain(theirs), (msgtype, damaged)
    assert taken > 50 and doubts > 500, (taken, doubts)  # both sides were exercised
