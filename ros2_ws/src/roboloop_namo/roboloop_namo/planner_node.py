"""`namo_planner`: the learned NAMO planner (`dit_q`) acting through the goal_generator and
q_scorer nodes, with its decision time on /diagnostics.

    q_scorer --ros-args -p model_path:=q.onnx &
    goal_generator --ros-args -p model_path:=goal_generator.onnx &
    namo_planner --ros-args -p level:=hard -p scene_seed:=100000 -p q_mask_size:=56

Plans scene `generate_scene(scene_seed, level=level)` when it comes up (`scene_seed` >= 0) and
every scene seed sent on `~/plan` (std_msgs/Int64). Per decision (roboloop_namo.planning): the
scene masks of each reachable object go to the generator (`scene_topic`, Image 32FC5), its goal
masks come back (`proposals_topic`) and become moves, all valid moves go to the scorer in one
request (`request_topic`, Image 32FC<8+5K>), its Q-values come back (`response_topic`), the best
move is executed in the node's own transition model and published on `~/decision` (std_msgs/
String, JSON: move, pose, Q, generated/valid masks, fallback, decision_s, generator_s, scorer_s,
network_s, goal_reached). A reply that does not come within `reply_timeout_s` (the request is
sent again every `resend_s`) ends the episode with one ERROR line. /diagnostics: decisions,
last and mean decision time, of which waiting on the nodes (their inference + DDS), per node.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from roboloop_node_common.faults import ERROR, OK, FaultLog
from roboloop_node_common.runtime import (
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    TableParameters,
    publish_status,
    run_node,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, Int64, String

from episode_dataset.codecs import decode_image, encode_image
from episode_dataset.ranges import count, number
from roboloop_namo.planning import (
    PlannerStats,
    RemoteGenerator,
    RemoteScorer,
    make_remote_planner,
    plan_episode,
)
from sim.namo.layout import decode_response
from sim.namo.scene import generate_scene
from sim.namo.transition import TransitionModel

NODE_NAME = "namo_planner"
# Requests and replies: reliable; only the newest matters.
QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
PARAMETERS: dict[str, tuple[Any, ...]] = {
    "level": ("hard", "scene level: easy | medium | hard"),
    "scene_seed": (
        0,
        "scene planned at start (-1: none; seeds on ~/plan)",
        count(-1, high=2**32 - 1),
    ),
    "max_moves": (5, "decisions per episode at most", count(1, high=1000)),
    "proposals_per_object": (
        8,
        "uniform proposals per object when no generated move is valid",
        count(1, high=1024),
    ),
    "scene_size": (
        64,
        "side of the scene masks sent to the generator (it resizes them)",
        count(8, high=4096),
    ),
    "q_mask_size": (
        56,
        "side of the Q masks: the q_scorer model's input size",
        count(8, high=4096),
    ),
    "scene_topic": ("/namo/scene_masks", "goal_generator input (Image 32FC5)"),
    "proposals_topic": ("/namo/goal_proposals", "goal_generator output (Image 32FC<K>)"),
    "request_topic": ("/q_scorer/request", "q_scorer input (Image 32FC<8+5K>)"),
    "response_topic": ("/q_scorer/q_values", "q_scorer output (Float32MultiArray)"),
    "reply_timeout_s": (30.0, "a node's reply must come within this time", number(0.01, 3600)),
    "resend_s": (2.0, "a request without reply is sent again after this time", number(0.01, 3600)),
    "diagnostics_period_s": (1.0, "period of /diagnostics messages", number(0.01, 3600)),
    "autostart": (True, "plan scene_seed as soon as the node is up"),
}


@dataclass(frozen=True)
class PlannerParams:
    level: str
    scene_seed: int
    max_moves: int
    proposals_per_object: int
    scene_size: int
    q_mask_size: int
    scene_topic: str
    proposals_topic: str
    request_topic: str
    response_topic: str
    reply_timeout_s: float
    resend_s: float
    diagnostics_period_s: float
    autostart: bool


class _Exchange:
    """One outstanding request at a time: publish, resend until the reply with its key comes."""

    def __init__(self, publish: Any, what: str, params: PlannerParams) -> None:
        self.publish, self.what, self.params = publish, what, params
        self._reply: Any = None
        self._key = ""
        self._event = threading.Event()
        self.requests = 0

    def ask(self, msg: Any, key: str) -> Any:
        self._key, self._reply = key, None
        self._event.clear()
        self.requests += 1
        deadline = time.monotonic() + self.params.reply_timeout_s
        while True:
            self.publish(msg)
            if self._event.wait(min(self.params.resend_s, deadline - time.monotonic())):
                return self._reply
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no reply from the {self.what} within {self.params.reply_timeout_s} s"
                )

    def answer(self, key: str, reply: Any) -> None:
        if key == self._key and not self._event.is_set():
            self._reply = reply
            self._event.set()


class NamoPlannerNode(TableParameters, Node):
    PARAMETERS, Params = PARAMETERS, PlannerParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_params()
        p: PlannerParams = self.params
        self.autostart = p.autostart
        self.faults = FaultLog()
        self.stats = PlannerStats()
        self.state = "idle"
        self._counter = 0
        self._seeds: queue.Queue[int | None] = queue.Queue()
        self._scene_pub = self.create_publisher(Image, p.scene_topic, QOS)
        self._request_pub = self.create_publisher(Image, p.request_topic, QOS)
        self._decision_pub = self.create_publisher(String, "~/decision", 10)
        self._goals = _Exchange(self._scene_pub.publish, "goal_generator", p)
        self._scores = _Exchange(self._request_pub.publish, "q_scorer", p)
        self._goals_sub = self.create_subscription(Image, p.proposals_topic, self._on_goals, QOS)
        self._scores_sub = self.create_subscription(
            Float32MultiArray, p.response_topic, self._on_scores, QOS
        )
        self.create_subscription(Int64, "~/plan", lambda m: self._seeds.put(int(m.data)), 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self.create_timer(
            p.diagnostics_period_s,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        generator = RemoteGenerator(self._ask_goals, p.scene_size)
        scorer = RemoteScorer(self._ask_scores, (p.q_mask_size, p.q_mask_size))
        self.planner = make_remote_planner(generator, scorer, p.proposals_per_object)
        threading.Thread(target=self._work, name=NODE_NAME, daemon=True).start()

    def bring_up(self) -> None:
        p = self.params
        if p.scene_seed >= 0:
            self._seeds.put(p.scene_seed)
        self.get_logger().info(
            f"active: {p.level} scenes (~/plan) through {p.scene_topic} and {p.request_topic}"
        )

    def stop(self) -> None:
        self._seeds.put(None)

    # ---- transports (worker thread asks, executor thread answers) -------------------------
    def _key(self) -> str:
        self._counter += 1
        return f"{NODE_NAME}/{self._counter}"

    def _ask_goals(self, scene: np.ndarray) -> np.ndarray:
        msg = Image(is_bigendian=0)
        msg.header.frame_id = key = self._key()
        msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(scene)
        return self._goals.ask(msg, key)

    def _on_goals(self, msg: Image) -> None:
        try:
            self._goals.answer(msg.header.frame_id, decode_image(msg, dtype="float32"))
        except ValueError as err:
            self._error("bad_replies:goal_generator", f"{self.params.proposals_topic}: {err}")

    def _ask_scores(self, request: np.ndarray) -> np.ndarray:
        msg = Image(is_bigendian=0)
        msg.header.frame_id = key = self._key()
        msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(request)
        return self._scores.ask(msg, key)

    def _on_scores(self, msg: Float32MultiArray) -> None:
        try:
            dims = [(d.label, d.size, d.stride) for d in msg.layout.dim]
            reply = decode_response(dims, np.asarray(msg.data, np.float32))
        except ValueError as err:
            self._error("bad_replies:q_scorer", f"{self.params.response_topic}: {err}")
            return
        self._scores.answer(reply.frame_id, reply.q_values)

    # ---- planning -------------------------------------------------------------------------
    def _work(self) -> None:
        while (seed := self._seeds.get()) is not None:
            self._plan(seed)

    def _matched(self) -> bool:
        """Both nodes match both ways, so the first request of a decision is not resent."""
        return (
            self._scene_pub.get_subscription_count() > 0
            and self._request_pub.get_subscription_count() > 0
            and self._goals_sub.get_publisher_count() > 0
            and self._scores_sub.get_publisher_count() > 0
        )

    def _plan(self, seed: int) -> None:
        p = self.params
        self.state = "waiting for goal_generator and q_scorer"
        deadline = time.monotonic() + p.reply_timeout_s
        while not self._matched() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.state = f"planning {p.level} scene {seed}"
        try:
            model = TransitionModel(generate_scene(seed, level=p.level))
            reached = model.goal_reached(model.initial_state())
            for record in plan_episode(self.planner, model, p.max_moves, seed):
                self.stats.record(record)
                reached = record.goal_reached
                text = json.dumps({"level": p.level, "scene_seed": seed, **record.to_dict()})
                self._decision_pub.publish(String(data=text))
        except Exception as err:  # a node that never answers, a bad reply, a bad level
            self._error("failed_episodes", f"scene {seed}: {type(err).__name__}: {err}")
            self.state = "failed"
            return
        self.stats.episodes += 1
        self.stats.solved += bool(reached)
        self.state = f"done {p.level} scene {seed}: " + ("solved" if reached else "not solved")
        self.get_logger().info(self.state)

    # ---- diagnostics ----------------------------------------------------------------------
    def _error(self, counter: str, text: str) -> None:
        self.faults.record(counter, text, ERROR)
        self.get_logger().error(text, throttle_duration_sec=5.0)

    def _publish_diagnostics(self) -> None:
        values = {"state": self.state, "level": self.params.level, **self.stats.values()}
        values.update(
            generator_requests=str(self._goals.requests),
            scorer_requests=str(self._scores.requests),
        )
        values.update(self.faults.values())
        level, message = self.faults.status(OK, self.state)
        publish_status(self, self._diag_pub, "planner", bytes([level]), message, values)


def main(args: list[str] | None = None) -> int:
    return run_node(NamoPlannerNode, args, on_exit=lambda node: node.stop())


if __name__ == "__main__":
    sys.exit(main())
