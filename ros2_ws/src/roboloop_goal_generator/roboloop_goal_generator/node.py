"""goal_generator: a `ModelNode` (roboloop_node_common.model_node) over `generator.GoalGenerator`.

Subscribes a scene (sensor_msgs/Image 32FC5), publishes K goal proposals (Image 32FC<K>, same
header). The subscription only stores the newest scene; a worker thread runs inference, so a
scene arriving during inference replaces any older pending one (no backlog). Replaced scenes and
scenes DDS dropped (gaps in the publisher's sequence numbers) are counted as dropped; scenes that
cannot be used (malformed, empty, non-finite, beyond `max_request_bytes`) and model outputs that
are not finite are counted per reason and reported (ERROR while recent), never published.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from roboloop_node_common.faults import SequenceGaps
from roboloop_node_common.model_node import ModelNode, ModelParams, model_parameters
from roboloop_node_common.runtime import run_node
from sensor_msgs.msg import Image

from episode_dataset.codecs import MessageError, encode_image
from episode_dataset.ranges import SEED, count
from roboloop_goal_generator.generator import GoalGenerator, SceneError, generate
from roboloop_runtime import ModelOutputError, OnnxModel

NODE_NAME = "goal_generator"
# Scenes are requests: reliable, only the newest matters.
REQUEST_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
PARAMETERS: dict[str, tuple[Any, ...]] = {
    **model_parameters("ONNX file exported with model_type goal_generator"),
    "num_proposals": (8, "K goal proposals per scene", count(1, high=4096)),
    "seed": (0, "seed of the noise generator", SEED),
    "scene_topic": ("/namo/scene_masks", "sensor_msgs/Image 32FC5 scene masks"),
    "proposals_topic": ("/namo/goal_proposals", "sensor_msgs/Image 32FC<K> proposals"),
    "max_request_bytes": (
        16 << 20,
        "largest scene data (step * height); larger is refused",
        count(1, high=2**31 - 1),
    ),
}


@dataclass(frozen=True)
class GeneratorParams(ModelParams):
    num_proposals: int
    seed: int
    scene_topic: str
    proposals_topic: str
    max_request_bytes: int


class GoalGeneratorNode(ModelNode):
    NAME, WHAT, PARAMETERS, Params = NODE_NAME, "goal generator", PARAMETERS, GeneratorParams

    def __init__(self, **kwargs: Any) -> None:
        self._generator: GoalGenerator | None = None
        self._pub: Any = None
        self._sub: Any = None
        self._pending: Image | None = None
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running = False
        self._gaps = SequenceGaps()
        self._processed = 0
        self._last_ms = float("nan")
        super().__init__(**kwargs)

    # ---- model node hooks -----------------------------------------------------------------
    def load(self, params: GeneratorParams) -> OnnxModel:
        if params.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes={params.max_request_bytes} must be >= 1")
        self._generator = GoalGenerator(
            params.model_path,
            num_proposals=params.num_proposals,
            seed=params.seed,
            device=params.device,
            threads=params.inference_threads or None,
        )
        return self._generator.model

    def configured(self, params: GeneratorParams) -> str:
        self._pub = self.create_lifecycle_publisher(Image, params.proposals_topic, REQUEST_QOS)
        model = self._generator.model
        return (
            f"configured: {params.model_path} on {model.provider}"
            + (f" (fallback: {model.fallback_reason})" if model.fallback_reason else "")
            + f", K={params.num_proposals}, {self._generator.image_size}px"
        )

    def start(self, params: GeneratorParams) -> None:
        self._running = True
        self._gaps.reset()  # sequence numbers restart with the new subscription
        self._worker = threading.Thread(target=self._work, name="goal_generator", daemon=True)
        self._worker.start()
        self._sub = self.create_subscription(
            Image, params.scene_topic, self._on_scene, REQUEST_QOS
        )
        self.get_logger().info(f"active: {params.scene_topic} -> {params.proposals_topic}")

    def stop(self) -> None:
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        with self._wake:
            self._running = False
            self._pending = None
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def release(self) -> None:
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        self._generator = None

    # ---- data path ------------------------------------------------------------------------
    def _on_scene(self, msg: Image, info: dict) -> None:
        """Store only; the worker thread generates. Replaced and lost scenes are dropped."""
        dropped = self._gaps.take(info)
        with self._wake:
            dropped += self._pending is not None
            self._pending = msg
            self._wake.notify()
        if dropped:
            self.faults.count("dropped_scenes", dropped)

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._running and self._pending is None:
                    self._wake.wait()
                if not self._running:
                    return
                msg, self._pending = self._pending, None
            self._generate(msg)

    def _generate(self, msg: Image) -> None:
        generator, pub = self._generator, self._pub
        if generator is None or pub is None:
            return
        start = time.perf_counter()
        topic = self.params.scene_topic
        try:
            proposals = generate(generator, msg, self.params.max_request_bytes)
        except MessageError as err:
            return self.error(f"bad_scenes:{err.reason}", f"{topic}: bad scene: {err}")
        except SceneError as err:
            return self.error("bad_scenes:scene", f"{topic}: bad scene: {err}")
        except ModelOutputError as err:
            return self.error(f"bad_outputs:{err.reason}", f"{topic}: not published: {err}")
        if proposals.clipped:
            text = f"{topic}: {proposals.clipped} proposal values outside [0, 1] clipped"
            self.warn("scenes_clipped", text)
        self._processed += 1
        self._last_ms = 1e3 * (time.perf_counter() - start)
        out = Image()
        out.header = msg.header
        out.height, out.width, out.encoding, out.step, out.data = encode_image(proposals.hwk)
        out.is_bigendian = 0
        pub.publish(out)

    # ---- diagnostics ----------------------------------------------------------------------
    def status(self, values: dict[str, str], level: int, message: str) -> tuple[int, str]:
        p = self.params
        values.update(
            scene_topic=p.scene_topic,
            proposals_topic=p.proposals_topic,
            num_proposals=str(p.num_proposals),
            scenes_processed=str(self._processed),
            bad_scenes=str(self.faults.total("bad_scenes:")),
            bad_outputs=str(self.faults.total("bad_outputs:")),
            dropped_scenes=str(self.faults.total("dropped_scenes")),
            dropped_scenes_counted=str(self._gaps.supported).lower(),
            last_inference_ms=f"{self._last_ms:.2f}",
        )
        if self._generator is not None:
            values["image_size"] = str(self._generator.image_size)
        return level, message


def main(args: list[str] | None = None) -> int:
    return run_node(GoalGeneratorNode, args, on_exit=lambda node: node.stop())


if __name__ == "__main__":
    sys.exit(main())
