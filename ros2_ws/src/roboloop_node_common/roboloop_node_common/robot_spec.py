"""The robot spec a sim bridge latches on `<namespace>/spec`: written once, read by every node.

std_msgs/String JSON, transient local (a late reader still gets it, like /robot_description):

    {"obs_specs": {key: KeySpec dict with the key's source_topic},
     "action_spec": KeySpec dict,
     "env_args": {"control_rate_hz": 50.0, ...},   # robot steps per second (robot time)
     "real_time_factor": 0.4}                      # robot seconds per wall-clock second

The sim bridge writes it (`spec_message`); the recorder (topic map, env_args, rates) and the
policy node (real-time factor, which observation keys the robot publishes) read it with
`wait_for_spec`, so neither retypes what the bridge already knows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.wait_for_message import wait_for_message
from std_msgs.msg import String

from episode_dataset import KeySpec
from roboloop_node_common.entry import STOP

SPEC_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
SPEC_POLL_S = 0.2  # wait in slices this long, checking for a stop signal


class SpecError(ValueError):
    """No spec, or not a spec (one line naming the topic)."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset or a robot holds per step: observation KeySpecs, the action KeySpec,
    env_args, and (a live robot's) real-time factor."""

    obs_specs: dict[str, KeySpec]
    action_spec: KeySpec
    env_args: dict[str, Any] = field(default_factory=dict)
    real_time_factor: float | None = None


def spec_message(spec: Any, topics: dict[str, str], real_time_factor: float) -> str:
    """The latched JSON of an env's dataset spec (`sim.spec.EnvSpec`: KeySpecs, env_args with
    the control rate), with the topic each observation key is published on and how fast it runs."""
    obs = {key: {**s.to_dict(), "source_topic": topics[key]} for key, s in spec.obs_specs.items()}
    return json.dumps(
        {
            "obs_specs": obs,
            "action_spec": spec.action_spec.to_dict(),
            "env_args": spec.env_args,
            "real_time_factor": real_time_factor,
        }
    )


def parse_spec_message(text: str, topic: str) -> DatasetSpec:
    """The JSON latched on `topic` -> DatasetSpec (SpecError, one line, otherwise)."""
    try:
        data = json.loads(text)
        obs = {k: KeySpec.from_dict(v) for k, v in data["obs_specs"].items()}
        action = KeySpec.from_dict(data["action_spec"])
        env_args = dict(data.get("env_args") or {})
        rtf = data.get("real_time_factor")
        return DatasetSpec(obs, action, env_args, None if rtf is None else float(rtf))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SpecError(f"spec on {topic} is not a dataset spec: {err}") from None


def wait_for_spec(node: Node, topic: str, timeout_s: float) -> DatasetSpec:
    """The spec latched on `topic`, waited for up to `timeout_s` (a stop signal ends the wait
    at once); SpecError naming the topic when none comes."""
    node.get_logger().info(f"waiting up to {timeout_s:g} s for {topic}")
    deadline = time.monotonic() + timeout_s
    # Short waits: a stop signal (STOP, set by the entry point) must not wait for the spec.
    while not STOP.is_set() and time.monotonic() < deadline:
        ok, msg = wait_for_message(
            String, node, topic, qos_profile=SPEC_QOS, time_to_wait=SPEC_POLL_S
        )
        if ok:
            return parse_spec_message(msg.data, topic)
    if STOP.is_set():
        raise SpecError(f"stopped while waiting for {topic}")
    raise SpecError(
        f"no spec on {topic} within {timeout_s:g} s (spec_timeout_s); is the sim bridge running?"
    )
