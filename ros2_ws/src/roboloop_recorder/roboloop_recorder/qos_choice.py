"""Pick a subscription QoS that matches every publisher offered on a topic (no rclpy).

Same rule as rosbag2: subscribe RELIABLE only when every publisher offers RELIABLE (a reliable
reader does not match a best-effort writer); TRANSIENT_LOCAL only when every publisher offers it
(then late-joining samples are received). Policies are passed as lowercase names so this module
stays ROS-free; the node maps them to rclpy enums.
"""

from __future__ import annotations

from dataclasses import dataclass

RELIABLE = "reliable"
BEST_EFFORT = "best_effort"
VOLATILE = "volatile"
TRANSIENT_LOCAL = "transient_local"


@dataclass(frozen=True)
class QosChoice:
    reliability: str
    durability: str
    depth: int

    def compatible_with(self, offered_reliability: str, offered_durability: str) -> bool:
        if self.reliability == RELIABLE and offered_reliability != RELIABLE:
            return False
        return not (self.durability == TRANSIENT_LOCAL and offered_durability != TRANSIENT_LOCAL)


def choose_qos(offered: list[tuple[str, str]], depth: int) -> QosChoice | None:
    """`offered`: (reliability, durability) of each publisher; None when there is none yet."""
    if not offered:
        return None
    reliability = RELIABLE if all(r == RELIABLE for r, _ in offered) else BEST_EFFORT
    durability = TRANSIENT_LOCAL if all(d == TRANSIENT_LOCAL for _, d in offered) else VOLATILE
    return QosChoice(reliability, durability, depth)


def needs_resubscribe(current: QosChoice, offered: list[tuple[str, str]]) -> bool:
    """A publisher appeared that the current subscription cannot match."""
    return any(not current.compatible_with(r, d) for r, d in offered)
