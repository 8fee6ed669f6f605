"""The torch-free runtime: export contract, ONNX runner, policy interface, message codecs.

Imported by `learning`, `sim`, the ROS packages and the benchmarks; it needs numpy (and
onnxruntime to run models), never torch, rclpy or MuJoCo (tests/test_layering.py proves it).

    from roboloop_runtime import OnnxPolicy
    policy = OnnxPolicy("policy.onnx", device="auto", seed=0)
    action = policy.select_action({"state": obs})
"""

from roboloop_runtime.contract import (
    ACTION_BOUNDS_SOURCES,
    ACTIONS_OUTPUT,
    FORMAT_VERSION,
    MAX_CONTROL_RATE_HZ,
    METADATA_KEY,
    NOISE_INPUT,
    OBS_INPUT_PREFIX,
    SCALE_EPS,
    ActionBounds,
    ModelInputError,
    ModelLoadError,
    ModelOutputError,
    ObsSpec,
    PolicyMetadata,
    check_control_rate,
    check_output,
    observation_affine,
)
from roboloop_runtime.onnx_runner import OnnxModel, OnnxPolicy
from roboloop_runtime.policy import (
    ActingBuffer,
    ChunkPolicy,
    Policy,
    QueuedAction,
    QueuedChunkPolicy,
    check_observation,
)

__all__ = [
    "ACTIONS_OUTPUT",
    "ACTION_BOUNDS_SOURCES",
    "FORMAT_VERSION",
    "MAX_CONTROL_RATE_HZ",
    "METADATA_KEY",
    "NOISE_INPUT",
    "OBS_INPUT_PREFIX",
    "SCALE_EPS",
    "ActingBuffer",
    "ActionBounds",
    "ChunkPolicy",
    "ModelInputError",
    "ModelLoadError",
    "ModelOutputError",
    "ObsSpec",
    "OnnxModel",
    "OnnxPolicy",
    "Policy",
    "PolicyMetadata",
    "QueuedAction",
    "QueuedChunkPolicy",
    "check_control_rate",
    "check_observation",
    "check_output",
    "observation_affine",
]
