"""`import-bag` speed vs the `rosbags` reader's raw message rate on the same bag.

The bag holds what the demo's sim bridge publishes (the topics of
ros2_ws/src/roboloop_recorder/config/recorder_topics.yaml: 10-d JointState state, 64x64 rgb8
image, applied action, reward, done), written by rosbags itself in MCAP and in sqlite3. The
reference is the least any reader of the bag must do: iterate its messages and deserialize them
(`AnyReader.messages` + `deserialize`). The import also validates, aligns and writes the dataset
(durable as the CLI makes it: the index lists the episodes every 2 s and at the end, after one
sync of the file system; also timed with fsync=False, to show the disk's share).
Target: import >= 0.8x the raw rate. Best of `REPEATS`, alternating, in the same process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import report
from episode_dataset.bag_import import import_bag

CONFIG = (
    Path(__file__).resolve().parents[1]
    / "ros2_ws/src/roboloop_recorder/config/recorder_topics.yaml"
)
PERIOD = 1 / (50.0 * 0.4)  # the config's control_rate_hz x real_time_factor
T0 = 1_765_000_000.0
REPEATS = 3


def write_bag(path: Path, episodes: int, steps: int, storage: str) -> int:
    """The bridge's stream for `episodes` x `steps`; returns the number of messages."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    writer.open()
    kinds = {
        "/sim/state": "sensor_msgs/msg/JointState",
        "/sim/image": "sensor_msgs/msg/Image",
        "/sim/applied_action": "sensor_msgs/msg/JointState",
        "/sim/reward": "std_msgs/msg/Float32",
        "/sim/done": "std_msgs/msg/Bool",
    }
    conns = {t: writer.add_connection(t, k, typestore=ts) for t, k in kinds.items()}
    rng = np.random.default_rng(0)
    empty = np.zeros(0)
    n = 0

    def put(topic: str, t: float, msg: object) -> None:
        nonlocal n
        writer.write(conns[topic], round(t * 1e9), ts.serialize_cdr(msg, kinds[topic]))
        n += 1

    def header(s: float) -> object:
        sec = int(s)
        stamp = T["builtin_interfaces/msg/Time"](sec=sec, nanosec=round((s - sec) * 1e9))
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id="sim")

    t = T0
    for _ in range(episodes):
        for i in range(steps + 1):
            s = t + i * PERIOD
            if i > 0:  # the previous step's action, reward, done, published at this tick
                a = T[kinds["/sim/applied_action"]](
                    header=header(s - PERIOD), name=[], position=empty, velocity=empty,
                    effort=rng.uniform(-1, 1, 2),
                )  # fmt: skip
                put("/sim/applied_action", s + 0.001, a)
                put("/sim/reward", s + 0.0012, T["std_msgs/msg/Float32"](data=-0.1))
                put("/sim/done", s + 0.0014, T["std_msgs/msg/Bool"](data=i == steps))
            if i == steps:
                break
            state = T[kinds["/sim/state"]](
                header=header(s), name=[], position=rng.normal(size=10), velocity=empty,
                effort=empty,
            )  # fmt: skip
            put("/sim/state", s + 0.0018, state)
            image = T[kinds["/sim/image"]](
                header=header(s), height=64, width=64, encoding="rgb8", is_bigendian=0,
                step=192, data=rng.integers(0, 256, 64 * 64 * 3, dtype=np.uint8),
            )  # fmt: skip
            put("/sim/image", s + 0.0021, image)
        t += (steps + 1) * PERIOD
    writer.close()
    return n


def raw_read(bag: Path) -> int:
    """The reference: iterate and deserialize every message (rosbags' high-level reader)."""
    from rosbags.highlevel import AnyReader

    n = 0
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages(connections=reader.connections):
            reader.deserialize(raw, conn.msgtype)
            n += 1
    return n


def run(quick: bool = False) -> None:
    episodes, steps = (10, 50) if quick else (100, 50)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_bag_import_"))
    try:
        for storage in ("mcap", "sqlite3"):
            bag = work / f"bag_{storage}"
            messages = write_bag(bag, episodes, steps, storage)
            times: dict[str, list[float]] = {"read": [], "import": [], "import_no_fsync": []}
            for r in range(REPEATS):
                start = time.perf_counter()
                assert raw_read(bag) == messages
                times["read"].append(time.perf_counter() - start)
                for name, fsync in (("import", True), ("import_no_fsync", False)):
                    start = time.perf_counter()
                    result = import_bag(
                        bag, CONFIG, work / f"{name}_{storage}_{r}.hdf5", fsync=fsync
                    )
                    times[name].append(time.perf_counter() - start)
                    assert result.steps == episodes * steps, result.summary()
                    assert result.counters["invalid_total"] == 0, result.summary()
            rate = {name: messages / min(t) for name, t in times.items()}
            rows.append(
                {
                    "storage": storage,
                    "messages": messages,
                    "episodes": episodes,
                    "bag_MB": round(sum(f.stat().st_size for f in bag.iterdir()) / 1e6, 1),
                    "rosbags_read_msg_per_s": round(rate["read"]),
                    "import_msg_per_s": round(rate["import"]),
                    "import/read": round(rate["import"] / rate["read"], 2),
                    "no_fsync_msg_per_s": round(rate["import_no_fsync"]),
                    "no_fsync/read": round(rate["import_no_fsync"] / rate["read"], 2),
                    "target": ">= 0.8",
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(
        "bag_import",
        rows,
        note="import-bag in one process, nothing overlapped (read + decode + validate + align + "
        "write HDF5, synced as the CLI does: one syncfs per index write, every 2 s; and without "
        "fsync) vs rosbags AnyReader iterate + deserialize, "
        "same bag, best of 3 alternating; the demo's topics: 64x64 rgb8 + 10-d state at 20 Hz, "
        "50-step episodes",
    )
