"""A tiny goal generator in the roboloop ONNX contract, for tests and bring-up (no torch).

    goal_masks[b, 0] = sigmoid(noise[b, 0] + target_object[b])      (B, 1, S, S) in [0, 1]

Built with `onnx.helper`; its `roboloop` metadata comes from the contract's
`build_metadata` (inputs/outputs derived from the goal_generator model type), as
`learning.export` writes it (docs/generative.md). `fault="nan_without_robot"`
makes the masks NaN whenever the scene's robot mask is empty (a finite scene with a NaN
output, for the output checks). `python -m roboloop_goal_generator.reference_model OUT.onnx`.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from episode_dataset.ranges import POSITIVE_INT, HelpFormatter
from roboloop_runtime import METADATA_KEY, ObsSpec, build_metadata
from sim.namo.keys import CONTEXT_KEYS

FAULTS = {"nan_without_robot": "goal masks are NaN when the robot mask is empty"}


def make_reference_generator(
    path: str | os.PathLike, image_size: int = 16, fault: str | None = None
) -> str:
    """Write the ONNX file at `path`; returns the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault {fault!r} is not one of {sorted(FAULTS)}")
    f32, s = TensorProto.FLOAT, image_size
    inputs = [helper.make_tensor_value_info(f"obs.{k}", f32, ["B", s, s]) for k in CONTEXT_KEYS]
    inputs.append(helper.make_tensor_value_info("noise", f32, ["B", 1, s, s]))
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    healthy = "goal_masks" if fault is None else "healthy"
    nodes = [
        helper.make_node("Unsqueeze", ["obs.target_object", "axis1"], ["target"]),
        helper.make_node("Add", ["noise", "target"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], [healthy]),
    ]
    if fault == "nan_without_robot":  # + 0 * sqrt(mean(robot) - eps): NaN for an empty mask
        inits += [
            numpy_helper.from_array(np.float32(1e-3), "eps"),
            numpy_helper.from_array(np.float32(0.0), "zero"),
        ]
        nodes += [
            helper.make_node("Unsqueeze", ["obs.robot_image", "axis1"], ["robot"]),
            helper.make_node("ReduceMean", ["robot"], ["robot_mean"], axes=[2, 3], keepdims=1),
            helper.make_node("Sub", ["robot_mean", "eps"], ["margin"]),
            helper.make_node("Sqrt", ["margin"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
            helper.make_node("Add", [healthy, "nan_or_zero"], ["goal_masks"]),
        ]
    output = helper.make_tensor_value_info("goal_masks", f32, ["B", 1, s, s])
    model = helper.make_model(
        helper.make_graph(nodes, "reference_goal_generator", inputs, [output], inits),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    metadata = build_metadata(
        "goal_generator",
        {
            "observations": {
                k: ObsSpec((s, s), "float32", "image").to_dict() for k in CONTEXT_KEYS
            },
            "context_keys": list(CONTEXT_KEYS),
            "image_size": s,
            "mask_threshold": 0.5,
            "normalization": {"baked": True, "stats": {}},
        },
        training_config={"reference_generator": True},
        code_version="reference",
    )
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))
    return os.fspath(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m roboloop_goal_generator.reference_model",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--image-size", type=POSITIVE_INT, default=16, help="mask side S (S x S)")
    parser.add_argument("--fault", choices=sorted(FAULTS), help="a broken model (tests)")
    args = parser.parse_args(argv)
    print(make_reference_generator(args.out, args.image_size, args.fault))


if __name__ == "__main__":
    main()
