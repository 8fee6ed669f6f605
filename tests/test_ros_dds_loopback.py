"""DDS bound to loopback (issue 8, defect 10): the sockets of running nodes.

The sim bridge and the recorder run as `ros2 launch` would start them (record.launch.py,
sim.launch.py through the launch stand-in, with the environment those files set) from a
directory without data/ (the default output path, defect 9) and record an episode, so messages
flow. Then every socket each process owns is read from /proc: its socket inodes
(/proc/<pid>/fd -> socket:[inode]) looked up in /proc/<pid>/net/{udp,udp6,tcp,tcp6}, which list
every socket of the network namespace. Every one must be bound to 127.0.0.1; with
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST alone, Fast DDS bound 0.0.0.0 and the external address.
Last, SIGTERM (docker stop, launch's escalation) closes both nodes like SIGINT.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from pathlib import Path

import pytest
from roboloop_bringup.launch_standin import load_launch_file

from episode_dataset import EpisodeReader, validate_file

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("ros")]

REPO = Path(__file__).resolve().parents[1]


def owned_inet_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, local address, port) of every IPv4/IPv6 socket process `pid` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for protocol in ("udp", "udp6", "tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((protocol, _address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    """/proc/net's hex address: IPv4 in host (little-endian) order, IPv6 as four such words."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def test_nodes_bind_loopback_only_talk_record_by_default_and_stop_on_sigterm(
    tmp_path, ros_env, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # launch runs here; no data/ yet
    sim = load_launch_file(REPO / "launch/sim.launch.py")
    record = load_launch_file(REPO / "launch/record.launch.py")
    sim.nodes[0].params["wait_for_subscribers"] = 1
    record.nodes[0].params["fsync"] = False
    procs = [
        record.start(0, log_path=tmp_path / "recorder.log", env=ros_env),
        sim.start(0, log_path=tmp_path / "sim.log", env=ros_env),
    ]
    try:
        deadline = time.monotonic() + 60
        while "episode demo_0 written" not in procs[0].log_text():
            assert all(p.alive() for p in procs), [p.log_text()[-2000:] for p in procs]
            assert time.monotonic() < deadline, procs[0].log_text()[-2000:]
            time.sleep(0.05)
        sockets = {p.name: owned_inet_sockets(p.pid) for p in procs}
        for p in procs:
            p.popen.send_signal(signal.SIGTERM)
        codes = [p.popen.wait(30) for p in procs]
    finally:
        for p in procs:
            p.stop()
    assert codes == [0, 0], [p.log_text()[-2000:] for p in procs]
    for name, owned in sockets.items():
        assert owned, f"{name} holds no socket: is /proc readable?"
        elsewhere = [s for s in owned if s[1] != "127.0.0.1"]
        assert not elsewhere, f"{name} binds beyond loopback: {elsewhere}"
    out = Path(record.nodes[0].params["output_path"])
    assert not out.is_absolute()  # the default, relative to where launch runs
    validate_file(tmp_path / out)
    with EpisodeReader(tmp_path / out) as r:  # messages flowed over DDS
        assert r.episodes[0] == "demo_0" and r.num_steps("demo_0") > 0
