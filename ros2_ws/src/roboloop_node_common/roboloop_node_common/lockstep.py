"""Lockstep on simulated time, without rclpy: when the sim may go on, and when a reader says so.

A sim bridge that keeps simulated time (`publish_clock`, `lockstep`) runs each step in two
phases, so that every message of step k reaches a `use_sim_time` reader at node time t_k (its
arrival times then match the stamps, whatever order DDS delivers topics in):

  1. publish `/clock` t_k (then step the env while it travels); wait until every reader's clock
     has reached t_k;
  2. publish the step's messages (applied action, reward, done, the next observation, stamped
     t_k); wait until every reader has received all of them (and, with actions from a topic,
     the action stamped t_k has arrived).

Readers (`StepAcknowledger`, e.g. the recorder) acknowledge on `<namespace>/step_ack`
(std_msgs/Header: stamp = a time, frame_id = the reader's node name): once when their clock
moves forward (phase 1), once when a step's messages are complete (phase 2). A step is complete
when every observation topic and every step-event topic has delivered a message since the last
acknowledgement; the first step of a run is observations alone. The bridge (`LockstepGate`)
counts an acknowledgement for the phase it is waiting in when it is for that step's time or later
and came after the phase began. A reader that misses the deadline is stepped past and counted:
a stopped reader must not stop the sim for good.
"""

from __future__ import annotations

from collections.abc import Iterable


class StepAcknowledger:
    """Reader side: which acknowledgements to send (`on_clock`, `on_message`)."""

    def __init__(self, observation_topics: Iterable[str], event_topics: Iterable[str]) -> None:
        self.observation_topics = frozenset(observation_topics)
        self.event_topics = frozenset(event_topics)
        if not self.observation_topics:
            raise ValueError("lockstep acknowledgement needs at least one observation topic")
        self._heard: set[str] = set()  # topics heard from since the last step acknowledgement
        self._newest_ns = -1  # newest observation stamp
        self.acknowledged_ns = -1  # stamp of the last complete step

    def on_clock(self, now_ns: int) -> int:
        """The node clock moved forward: acknowledge the new time (phase 1)."""
        return now_ns

    def on_message(self, topic: str, stamp_ns: int | None) -> int | None:
        """A message arrived (its header stamp, if any): the step stamp to acknowledge if this
        completed a step (phase 2), else None."""
        if topic in self.observation_topics:
            if stamp_ns is not None:
                self._newest_ns = max(self._newest_ns, stamp_ns)
        elif topic not in self.event_topics:
            return None
        self._heard.add(topic)
        needed = self.observation_topics
        if self.acknowledged_ns >= 0:  # after the first observation every step has events
            needed = needed | self.event_topics
        if not needed <= self._heard or self._newest_ns <= self.acknowledged_ns:
            return None
        self._heard.clear()
        self.acknowledged_ns = self._newest_ns
        return self._newest_ns


class LockstepGate:
    """Bridge side: which readers the current phase still waits for."""

    def __init__(self) -> None:
        self.readers: frozenset[str] = frozenset()
        self.step_ns = -1  # time of the step the current phase is for
        self._heard: set[str] = set()  # readers acknowledged in the current phase
        self.timeouts = 0  # phases ended by the deadline, not by every reader

    def set_readers(self, readers: Iterable[str]) -> None:
        """The readers that acknowledge (publishers of the ack topic, from the ROS graph)."""
        self.readers = frozenset(readers)

    def begin(self, step_ns: int) -> None:
        """A phase for step time `step_ns` begins: its clock or its messages were published."""
        self.step_ns = step_ns
        self._heard = set()

    def acknowledge(self, reader: str, stamp_ns: int) -> None:
        if stamp_ns >= self.step_ns:
            self._heard.add(reader)

    def waiting_for(self) -> list[str]:
        """Readers that have not acknowledged the current phase yet."""
        return sorted(self.readers - self._heard)
