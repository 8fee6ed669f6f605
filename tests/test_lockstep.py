"""Lockstep on sim time without rclpy: the reader's acknowledgements and the bridge's gate."""

from __future__ import annotations

from roboloop_node_common.lockstep import LockstepGate, StepAcknowledger

OBS = ["/sim/state", "/sim/image"]
EVENTS = ["/sim/applied_action", "/sim/reward", "/sim/done"]


def test_first_step_is_observations_alone_then_every_step_needs_all_topics() -> None:
    ack = StepAcknowledger(OBS, EVENTS)
    assert ack.on_message("/sim/state", 20) is None  # the image of the step is still missing
    assert ack.on_message("/sim/image", 20) == 20
    # Step 2 in DDS's order, not the bridge's: complete only with its last message.
    assert ack.on_message("/sim/image", 40) is None
    assert ack.on_message("/sim/applied_action", 20) is None
    assert ack.on_message("/sim/state", 40) is None
    assert ack.on_message("/sim/reward", None) is None
    assert ack.on_message("/sim/done", None) == 40
    assert ack.on_message("/not/recorded", 60) is None
    assert ack.on_clock(60) == 60


def test_gate_waits_for_every_reader_in_each_phase() -> None:
    gate = LockstepGate()
    gate.set_readers(["/recorder", "/other"])
    gate.begin(20)  # the clock of step 1 went out
    gate.acknowledge("/recorder", 20)
    assert gate.waiting_for() == ["/other"]
    gate.acknowledge("/other", 0)  # an older acknowledgement does not count
    assert gate.waiting_for() == ["/other"]
    gate.acknowledge("/other", 20)
    assert gate.waiting_for() == []
    gate.begin(20)  # the step's messages went out: the clock acks above are not enough
    assert gate.waiting_for() == ["/other", "/recorder"]
    gate.acknowledge("/recorder", 20)
    gate.acknowledge("/other", 20)
    assert gate.waiting_for() == []
    gate.set_readers([])
    gate.begin(40)
    assert gate.waiting_for() == []
