"""Tested both ways across real processes: the sim bridge publishes expert episodes; the recorder
node records them, and at the same time a bag recorder process (rclpy raw subscriptions written
by `rosbags`, what `ros2 bag record` does) writes an MCAP bag. `import-bag` of that bag, with the
recorder's own parameter file, gives the episodes the recorder wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from roboloop_bringup.processes import STARTED, RosProcess, start_node, wait_until

from episode_dataset import EpisodeReader, validate_file
from episode_dataset.bag_import import import_bag

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]
BRIDGE_YAML = REPO / "ros2_ws/src/roboloop_sim_bridge/config/sim_bridge.yaml"
TOPICS_YAML = REPO / "ros2_ws/src/roboloop_recorder/config/recorder_topics.yaml"
CAMERA = 32
RATE = 10.0  # steps per wall-clock second: a loaded 2-core machine keeps every step on time
REAL_TIME_FACTOR = RATE / 50.0

BAG_RECORDER = r"""
import signal, sys, threading
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32

TOPICS = {
    "/sim/state": (JointState, True), "/sim/image": (Image, True),
    "/sim/applied_action": (JointState, False), "/sim/reward": (Float32, False),
    "/sim/done": (Bool, False),
}
stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
node = Node("bag_recorder")
store = get_typestore(Stores.ROS2_KILTED)
writer = Writer(sys.argv[1], version=9, storage_plugin=StoragePlugin.MCAP)
writer.open()
for topic, (cls, sensor) in TOPICS.items():
    name = cls.__module__.split(".")[0] + "/msg/" + cls.__name__
    conn = writer.add_connection(topic, name, typestore=store)
    def write(raw, conn=conn):  # log time: this node's clock when the message arrived
        writer.write(conn, node.get_clock().now().nanoseconds, raw)
    qos = qos_profile_sensor_data if sensor else QoSProfile(depth=10)
    node.create_subscription(cls, topic, write, qos, raw=True)
while not stop.is_set():
    rclpy.spin_once(node, timeout_sec=0.05)
writer.close()
node.destroy_node()
rclpy.shutdown()  # Fast DDS removes its shared-memory files
print("bag closed", flush=True)
"""


def done_episodes(path: Path) -> list[dict]:
    with EpisodeReader(path) as r:
        return [
            r.read_episode(e) for e in r.episodes if r.episode_metadata(e)["end_reason"] == "done"
        ]


def test_bag_of_a_live_run_imports_as_the_recorder_recorded_it(tmp_path, ros_env):
    # One parameter file for the live recorder and for the import.
    doc = yaml.safe_load(TOPICS_YAML.read_text())
    doc["/**"]["ros__parameters"].update(
        output_path=str(tmp_path / "live.hdf5"),
        shapes=["10", f"{CAMERA},{CAMERA},3", "2", "", ""],
        env_args_json=json.dumps({"env_name": "Reacher-v5", "env_kwargs": {"camera": CAMERA}}),
        real_time_factor=REAL_TIME_FACTOR,
        max_age_s=0.4 / RATE,
        fsync=False,
    )
    params = tmp_path / "recorder.yaml"
    params.write_text(yaml.safe_dump(doc))
    bag = tmp_path / "bag"
    log = tmp_path / "bag_recorder.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", BAG_RECORDER, str(bag)],
            stdout=out, stderr=subprocess.STDOUT, env=ros_env, start_new_session=True,
        )  # fmt: skip
    bagger = RosProcess(name="bag_recorder", popen=popen, log_path=log)
    STARTED.append(bagger)  # cleaned up like the nodes (tests/conftest.py)
    rec = start_node(
        "recorder", params_file=params, log_path=tmp_path / "recorder.log", env=ros_env
    )
    bridge = start_node(
        "sim_bridge",
        params_file=BRIDGE_YAML,
        params={
            "camera": CAMERA,
            "real_time_factor": REAL_TIME_FACTOR,
            "wait_for_subscribers": 2,  # the recorder and the bag recorder
            "action_source": "expert",
            "seed": 5,
        },
        log_path=tmp_path / "sim_bridge.log",
        env=ros_env,
    )
    procs = [rec, bridge]
    try:
        wait_until(lambda: "episode demo_2 written" in rec.log_text(), 90, "3 episodes", procs)
    finally:
        codes = [bridge.stop(), rec.stop(), bagger.stop()]
    assert codes == [0, 0, 0], [p.log_text()[-2000:] for p in (*procs, bagger)]
    assert "bag closed" in bagger.log_text()

    report = import_bag(bag, params, tmp_path / "bag.hdf5")
    validate_file(tmp_path / "bag.hdf5")
    live, imported = done_episodes(tmp_path / "live.hdf5"), done_episodes(tmp_path / "bag.hdf5")
    assert len(live) >= 3 and all(len(e["actions"]) == 50 for e in live)  # Reacher: 50 steps
    # The two recorders are separate processes: on a loaded machine one may stamp a message's
    # arrival late and lose a step the other kept (counted). Every episode both hold whole must
    # be the same, array for array, and on a quiet machine that is all of them.
    by_start = {e["obs"]["state"][0].tobytes(): e for e in live}
    whole = [e for e in imported if len(e["actions"]) == 50]
    assert len(whole) >= 2, report.summary()
    for a in whole:
        b = by_start[a["obs"]["state"][0].tobytes()]
        for key in ("actions", "rewards", "dones"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        for key in ("state", "image"):
            np.testing.assert_array_equal(a["obs"][key], b["obs"][key], err_msg=key)
