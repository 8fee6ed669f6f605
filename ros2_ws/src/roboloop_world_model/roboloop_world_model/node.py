"""`world_model`: lifecycle adapter filtering observation topics into a world model's latent.

    world_model_node --ros-args --params-file config/world_model.yaml \
        -p model_path:=filter.onnx -p imagine_path:=imagine.onnx [-p decode_path:=decode.onnx] \
        [-p actor_path:=actor.onnx]

configure: load the graphs (`roboloop_runtime.WorldModelRunner`: they must agree on the latent,
the action and the observations), bind observation topics to model keys (the policy node's
binding: `<observation_namespace>/<key>` or hand-written lists), check them against the robot's
spec, run every graph once, create publishers and subscriptions. activate: start the timer.
The timer polls twice per control period; the ROS-free `belief.BeliefLoop` filters each new
observation once and says what to publish: the actor's action (with an actor graph only), the
predicted reward and continue probability of the last applied action (with an imagine graph),
the decoded prediction of the observation (`publish_prediction`, with imagine + decode).
A `true` on the done topic restarts the latent at the next observation (episode start).
Lifecycle, configure failures, faults and /diagnostics are `ModelNode`'s.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.qos import QoSProfile
from roboloop_node_common.faults import OK, WARN
from roboloop_node_common.model_node import model_parameters
from roboloop_node_common.runtime import run_node
from roboloop_policy.node import (
    COMMAND_QOS,
    ObservationParams,
    ObservingNode,
    observation_parameters,
)
from roboloop_policy.safety import ObservationRange
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32

from episode_dataset.codecs import (
    MessageError,
    decode_joint_state,
    encode_image,
    ns_to_stamp,
    stamp_to_ns,
)
from episode_dataset.ranges import SEED
from roboloop_runtime import WorldModelRunner, observation_affine
from roboloop_runtime.topics import IMAGE_FEATURE
from roboloop_world_model.belief import STALE, Belief, BeliefLoop

NODE_NAME = "world_model"
EVENT_QOS = QoSProfile(depth=10)  # applied actions, done, predictions: reliable, a few deep
POLLS_PER_PERIOD = 2  # each observation is filtered within half a control period of arriving

PARAMETERS: dict[str, tuple[Any, ...]] = {
    **model_parameters(
        "the world model's filter graph (learning.export --step filter)", inference_threads=0
    ),
    "imagine_path": ("", "imagine graph of the same export: reward and continue ('' = none)"),
    "decode_path": ("", "decode graph of the same export: observation predictions ('' = none)"),
    "actor_path": ("", "Dreamer actor graph on the latent: actions on action_topic ('' = none)"),
    "seed": (0, "seed of the noise generator (sample: true)", SEED),
    "sample": (False, "draw the latent and action noise (false: noise 0, the mode)"),
    "applied_action_topic": (
        "/sim/applied_action",
        "JointState (effort) of each action applied, stamped with its observation's stamp",
    ),
    "done_topic": ("/sim/done", "std_msgs/Bool: true ends the episode (the latent restarts)"),
    "action_topic": ("/sim/action", "JointState (effort) actor actions (with actor_path only)"),
    "reward_topic": ("~/reward", "std_msgs/Float32: predicted reward of the last applied action"),
    "continue_topic": ("~/continue", "std_msgs/Float32: predicted probability to go on"),
    "publish_prediction": (False, "publish decode(imagined latent) of every observation"),
    "prediction_namespace": (
        "~/prediction",
        "prediction of key k on <namespace>/<k>: Image rgb8 (images), JointState (low-dim)",
    ),
    **observation_parameters("actor action while stale: zeros | hold (last action)"),
}


@dataclass(frozen=True)
class WorldModelParams(ObservationParams):
    imagine_path: str
    decode_path: str
    actor_path: str
    sample: bool
    applied_action_topic: str
    done_topic: str
    reward_topic: str
    continue_topic: str
    publish_prediction: bool
    prediction_namespace: str


class WorldModelNode(ObservingNode):
    """Thin adapter: subscriptions, the timer, publishers of what `BeliefLoop.step` gives."""

    NAME, WHAT, PARAMETERS, Params = NODE_NAME, "world_model", PARAMETERS, WorldModelParams

    def __init__(self, **kwargs: Any) -> None:
        self._event_subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._timer: Any = None
        super().__init__(**kwargs)

    # ---- model node hooks -----------------------------------------------------------------
    def load(self, params: WorldModelParams) -> WorldModelRunner:
        world = WorldModelRunner(
            params.model_path,
            **{
                step: path or None
                for step, path in (
                    ("imagine", params.imagine_path),
                    ("decode", params.decode_path),
                    ("actor", params.actor_path),
                )
            },
            device=params.device,
            threads=params.inference_threads or None,
            sample=params.sample,
            seed=params.seed,
        )
        meta = world.metadata
        stats = (meta.get("normalization") or {}).get("stats") or {}
        limits = {
            key: ObservationRange(
                *observation_affine(stats[key], spec.shape), params.max_normalized_observation
            )
            for key, spec in world.observations.items()
            if key in stats and spec.feature_type != IMAGE_FEATURE
        }
        period_s = self.bind(params, world.observations, limits, meta.get("control_rate_hz"))
        try:
            loop = BeliefLoop(
                world,
                period_s,
                params.stale_periods,
                params.safe_action,
                predict_observations=params.publish_prediction,
            )
            loop.warm_up()
        except ValueError as err:  # ModelOutputError / ModelInputError are ValueErrors too
            raise ValueError(f"{params.model_path}: {err}") from None
        self._loop = loop
        return world

    def configured(self, params: WorldModelParams) -> str:
        loop = self._loop
        assert loop is not None
        world = loop.world
        self._pubs = {
            "reward": self.create_lifecycle_publisher(Float32, params.reward_topic, EVENT_QOS),
            "continue": self.create_lifecycle_publisher(Float32, params.continue_topic, EVENT_QOS),
        }
        if loop.guard is not None:
            self._pubs["action"] = self.create_lifecycle_publisher(
                JointState, params.action_topic, COMMAND_QOS
            )
        if loop.predict_observations:
            for key, spec in world.observations.items():
                msg_type = Image if spec.feature_type == IMAGE_FEATURE else JointState
                # <namespace>/<key>; a private (~/) namespace is the node's own
                topic = f"{params.prediction_namespace.rstrip('/')}/{key}"
                self._pubs[f"prediction:{key}"] = self.create_lifecycle_publisher(
                    msg_type, topic, EVENT_QOS
                )
        # The done subscription first: the executor serves ready subscriptions in creation
        # order, so an episode's end is seen before the next episode's first observation.
        self._event_subs.append(
            self.create_subscription(Bool, params.done_topic, self._on_done, EVENT_QOS)
        )
        self._event_subs.append(
            self.create_subscription(
                JointState, params.applied_action_topic, self._on_applied, EVENT_QOS
            )
        )
        self.subscribe_observations()
        sizes = {k: list(s.shape) for k, s in world.state.items()}
        return (
            f"configured {params.model_path} on {world.provider}: graphs {sorted(world.graphs)}, "
            f"latent {sizes}; "
            + ", ".join(f"{b.topic} -> {b.key} {list(b.spec.shape)}" for b in self._bindings)
            + f"; {self.rate_text(loop.period_s)}; publishing {sorted(self._pubs)}"
        )

    def start(self, params: WorldModelParams) -> None:
        assert self._loop is not None
        self._loop.episode_end()  # activation starts from the initial latent
        self._timer = self.create_timer(self._loop.period_s / POLLS_PER_PERIOD, self._on_tick)

    def stop(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def release(self) -> None:
        super().release()
        for sub in self._event_subs:
            self.destroy_subscription(sub)
        self._event_subs.clear()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}

    # ---- data path ------------------------------------------------------------------------
    def _on_applied(self, msg: JointState) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            action = decode_joint_state(msg, "effort", loop.world.action_dim)
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except MessageError as err:
            topic = self.params.applied_action_topic
            self.warn(f"malformed:{topic}:{err.reason}", f"dropped applied action: {err}")
            return
        loop.applied(np.asarray(action, np.float32), stamp_ns)

    def _on_done(self, msg: Bool) -> None:
        if msg.data and self._loop is not None:
            self._loop.episode_end()

    def _on_tick(self) -> None:
        with self.lock:
            loop = self._loop
            if loop is None or not self._pubs:
                return
            before = loop.state
            try:
                belief = loop.step(self.get_clock().now().nanoseconds, self._arrival_ns())
            except Exception as err:  # keep the node up; diagnostics turn ERROR
                self.error("control_tick_errors", f"tick failed: {type(err).__name__}: {err}")
                return
            if belief is not None:
                self._publish(belief)
        self._report(loop, belief, before)

    def _publish(self, belief: Belief) -> None:
        if belief.action is not None:
            msg = JointState()
            msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(belief.stamp_ns)
            msg.name = [f"action_{i}" for i in range(len(belief.action))]
            msg.effort = belief.action.tolist()
            self._pubs["action"].publish(msg)
        if belief.reward is not None and belief.cont is not None:
            self._pubs["reward"].publish(Float32(data=belief.reward))
            self._pubs["continue"].publish(Float32(data=belief.cont))
        for key, value in belief.prediction.items():
            pub = self._pubs[f"prediction:{key}"]
            if value.ndim == 3:  # an image: raw pixels as float -> rgb8
                msg = Image()
                pixels = np.clip(np.rint(value), 0, 255).astype(np.uint8)
                msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_image(pixels)
            else:
                msg = JointState()
                msg.position = value.astype(float).tolist()
            msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(belief.stamp_ns)
            pub.publish(msg)

    def _report(self, loop: BeliefLoop, belief: Belief | None, before: str) -> None:
        if belief is None:
            return
        if belief.fault is not None:
            text = f"model output rejected, latent restarted: {belief.fault}"
            self.error(f"bad_model_output:{belief.fault.reason}", text)
        if belief.clipped:
            self.warn("actions_clipped", "actor action outside its bounds, clipped")
        if belief.episode_start:
            self.get_logger().info(f"episode start: latent reset (stamp {belief.stamp_ns})")
        if loop.state == STALE and before != STALE:
            topics = [b.topic for b in self._bindings if b.key in belief.stale_keys]
            self.get_logger().warning(f"stale observations on {topics}: latent will restart")

    # ---- diagnostics ----------------------------------------------------------------------
    def status(self, values: dict[str, str], level: int, message: str) -> tuple[int, str]:
        loop = self._loop
        if loop is not None and self.model is not None:
            world = loop.world
            values.update(self.rate_values(loop.period_s))
            values.update(
                graphs=",".join(sorted(world.graphs)),
                **{f"latent_{k}": str(s.shape[0]) for k, s in world.state.items()},
            )
            values.update(loop.diagnostics())
            active = self.lifecycle == "active"
            if active and loop.state != "running":
                level, message = WARN, loop.state
            elif level == OK and active:
                message = loop.state
        values["malformed_observations"] = str(self.faults.total("malformed:"))
        return level, message


def main(args: list[str] | None = None) -> int:
    return run_node(WorldModelNode, args)


if __name__ == "__main__":
    sys.exit(main())
