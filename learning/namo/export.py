"""Export a QFunctionNet checkpoint to ONNX with the roboloop metadata block.

    python -m learning.namo.export ckpt=outputs/.../last.ckpt out=q_function.onnx \
        [height=H] [width=W] [opset=18]
    python -m learning.export ckpt=... out=...   # the generic path works too (export hooks on
                                                 # QFunctionNet; needs image_size dividing H, W)

Graph: inputs `state_masks` (B, 11, H, W) float32 and `action_masks` (B, 2, H, W) float32,
output `q_values` (B, 1) float32; B is dynamic, H, W are fixed at export (default: the mask
size the model was trained on, `input_shape`); the network area-averages them to its own
`image_size` inside the graph. This path uses the dynamo exporter, which also handles an
`image_size` that does not divide H, W.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import onnx
import torch

from learning.checkpoint import CheckpointError, load_lightning
from learning.export import code_version
from learning.namo.model import ACTION_INPUT, Q_OUTPUT, STATE_INPUT, QFunctionNet
from roboloop_runtime import FORMAT_VERSION, METADATA_KEY
from sim.namo.keys import ACTION_CHANNELS, STATE_CHANNELS

USAGE = (
    "usage: python -m learning.namo.export ckpt=PATH out=FILE.onnx [height=H] [width=W] [opset=18]"
)


def q_function_metadata(model: QFunctionNet, height: int, width: int) -> dict[str, Any]:
    """The SPEC `roboloop` JSON for a Q-function export."""
    return {
        "format_version": FORMAT_VERSION,
        **model.export_metadata(),
        "inputs": {
            STATE_INPUT: {"shape": [-1, STATE_CHANNELS, height, width], "dtype": "float32"},
            ACTION_INPUT: {"shape": [-1, ACTION_CHANNELS, height, width], "dtype": "float32"},
        },
        "outputs": {Q_OUTPUT: {"shape": [-1, 1], "dtype": "float32"}},
        "training_config": json.loads(json.dumps(dict(model.hparams), default=str)),
        "code_version": code_version(),
    }


def export_q_function(
    model: QFunctionNet,
    out: str | Path,
    height: int | None = None,
    width: int | None = None,
    opset: int = 18,
) -> Path:
    """Write `out` (.onnx) with dynamic batch and the metadata; returns the path."""
    h0, w0 = (int(d) for d in model.hparams.input_shape)
    height, width = height or h0, width or w0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    example = (
        torch.rand(2, STATE_CHANNELS, height, width),
        torch.rand(2, ACTION_CHANNELS, height, width),
    )
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        example,
        input_names=[STATE_INPUT, ACTION_INPUT],
        output_names=[Q_OUTPUT],
        dynamic_shapes=({0: batch}, {0: batch}),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto, {METADATA_KEY: json.dumps(q_function_metadata(model, height, width))}
    )
    onnx.save_model(proto, str(out))  # weights inline: the model is a few MB
    return out


def main(argv: list[str] | None = None) -> None:
    items = sys.argv[1:] if argv is None else argv
    args = dict(a.split("=", 1) for a in items if "=" in a)
    if len(args) != len(items) or not {"ckpt", "out"} <= set(args):
        sys.exit(USAGE)
    try:
        model = load_lightning(QFunctionNet, args["ckpt"])
    except CheckpointError as err:
        sys.exit(f"learning.namo.export: {err}")
    path = export_q_function(
        model,
        args["out"],
        int(args["height"]) if "height" in args else None,
        int(args["width"]) if "width" in args else None,
        int(args.get("opset", 18)),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
