"""K goal proposals for one scene from an exported `goal_generator` ONNX model (torch-free).

Used by the ROS node (`roboloop_goal_generator`) and the `dit_q` planner (`learning.generative`).
The model's inputs and metadata are described in docs/generative.md ("Export").
"""

from __future__ import annotations

import os

import numpy as np

from roboloop_runtime import ModelLoadError, OnnxModel, check_output
from sim.namo.keys import CONTEXT_KEYS
from sim.namo.mask_files import resize_area

GOAL_MASKS_OUTPUT = "goal_masks"


class SceneError(ValueError):
    """A scene that cannot be used (wrong encoding, size, channels or values)."""


class GoalGenerator:
    """K goal proposals per scene from an exported `goal_generator` model."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        num_proposals: int = 8,
        seed: int = 0,
        device: str = "cpu",
        threads: int | None = 1,
    ):
        if num_proposals < 1:
            raise ValueError(f"num_proposals must be >= 1, got {num_proposals}")
        self.model = OnnxModel(model_path, device=device, threads=threads)
        meta = self.model.metadata
        if meta.get("model_type") != "goal_generator":
            raise ModelLoadError(
                f"{model_path}: model_type {meta.get('model_type')!r}, expected 'goal_generator'"
            )
        if list(meta.get("context_keys", [])) != list(CONTEXT_KEYS):
            raise ModelLoadError(
                f"{model_path}: context_keys {meta.get('context_keys')} != {list(CONTEXT_KEYS)}"
            )
        try:
            self.image_size = int(meta["image_size"])
            self.threshold = float(meta.get("mask_threshold", 0.5))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(
                f"{model_path}: metadata image_size / mask_threshold unusable ({err!r})"
            ) from None
        if self.image_size < 1 or not 0.0 <= self.threshold <= 1.0:
            raise ModelLoadError(
                f"{model_path}: metadata image_size {self.image_size} must be >= 1 and "
                f"mask_threshold {self.threshold} in [0, 1]"
            )
        self.num_proposals = num_proposals
        self.rng = np.random.default_rng(seed)

    def propose(self, scene: np.ndarray) -> np.ndarray:
        """scene (H, W, 5) in [0, 1] -> proposals (K, S, S) float32 (in [0, 1] for exports).

        SceneError for a scene of the wrong shape or with non-finite values; ModelOutputError
        when the model's output is not K finite S x S masks (it is never returned).
        """
        if scene.ndim != 3 or scene.shape[-1] != len(CONTEXT_KEYS):
            raise SceneError(
                f"scene has shape {scene.shape}, expected (H, W, {len(CONTEXT_KEYS)}) "
                f"channels {list(CONTEXT_KEYS)}"
            )
        if 0 in scene.shape[:2]:
            raise SceneError(f"scene is empty ({scene.shape[0]}x{scene.shape[1]})")
        if not np.isfinite(scene).all():
            raise SceneError("scene has non-finite values")
        size, k = self.image_size, self.num_proposals
        context = np.clip(resize_area(np.moveaxis(scene, -1, 0), size), 0.0, 1.0)
        feeds = {
            f"obs.{key}": np.ascontiguousarray(np.broadcast_to(context[i], (k, size, size)))
            for i, key in enumerate(CONTEXT_KEYS)
        }
        feeds["noise"] = self.rng.standard_normal((k, 1, size, size), dtype=np.float32)
        out = self.model.run(feeds)[GOAL_MASKS_OUTPUT]
        return check_output(GOAL_MASKS_OUTPUT, out, (k, 1, size, size))[:, 0]
