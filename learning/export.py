"""Export a trained checkpoint to ONNX: `python -m learning.export ckpt=PATH out=FILE.onnx`.

Generic over algorithms: the LightningModule provides
  `export_graph() -> (module, example inputs by ONNX name, output names)`  (batch axis 0)
  `export_metadata() -> dict`  (model_type, observations, shapes, normalization, sampler, ...)
and this module adds the contract fields (format_version, inputs/outputs, training_config,
code_version), marks axis 0 of every input/output dynamic, and checks onnxruntime against
torch on random inputs (docs/export_contract.md). A model whose outputs are not finite is
refused: nothing is written when torch gives NaN/Inf, and the CLI removes a file that fails the
parity check (a NaN anywhere fails it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from learning.checkpoint import CheckpointError, load_model
from roboloop_runtime import FORMAT_VERSION, METADATA_KEY, OnnxModel

REPO_ROOT = Path(__file__).resolve().parents[1]
OPSET = 17


def code_version() -> str:
    """Git sha of the workspace (with "-dirty" for uncommitted changes), or "unknown"."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


class ExportError(ValueError):
    """The model cannot be exported as it is (non-finite outputs, parity failure)."""


def _spec(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": [-1, *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}


def _outputs(module: torch.nn.Module, feeds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module(*feeds)
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def check_finite(where: str, name: str, values: np.ndarray | torch.Tensor, side: str) -> None:
    """ExportError unless every value of output `name` is finite (`side`: who computed it)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    if values.dtype.kind != "f":
        return
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ExportError(
            f"{where}: output {name!r} is not finite ({bad} of {values.size} values NaN/Inf "
            f"from {side})"
        )


def export_model(
    model: torch.nn.Module, out: str | Path, training_config: dict[str, Any], opset: int = OPSET
) -> dict[str, Any]:
    """Write `out` (ONNX with `roboloop` metadata); returns the metadata dict."""
    for hook in ("export_graph", "export_metadata"):
        if not hasattr(model, hook):
            raise TypeError(f"{type(model).__name__} has no {hook}(): it cannot be exported")
    module, example, output_names = model.export_graph()
    module.eval()
    inputs = {name: _spec(t) for name, t in example.items()}
    outputs = _outputs(module, list(example.values()))
    feeds = random_feeds({"inputs": inputs}, batch=2)
    sampled = _outputs(module, [torch.from_numpy(v) for v in feeds.values()])
    for name, on_example, on_random in zip(output_names, outputs, sampled, strict=True):
        check_finite(f"{out}", name, on_example, "torch on the example inputs; nothing written")
        check_finite(f"{out}", name, on_random, "torch on random inputs; nothing written")
    names = [*example, *output_names]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module,
        tuple(example.values()),
        str(out),
        input_names=list(example),
        output_names=output_names,
        dynamic_axes={n: {0: "batch"} for n in names},
        opset_version=opset,
        dynamo=False,
    )
    metadata = {
        "format_version": FORMAT_VERSION,
        **model.export_metadata(),
        "inputs": inputs,
        "outputs": {n: _spec(t) for n, t in zip(output_names, outputs, strict=True)},
        "training_config": training_config,
        "code_version": code_version(),
    }
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return metadata


def random_feeds(metadata: dict[str, Any], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the metadata (uint8 over 0..255, floats ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, spec in metadata["inputs"].items():
        shape = [batch if d == -1 else d for d in spec["shape"]]
        if spec["dtype"] == "uint8":
            feeds[name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            feeds[name] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def parity(
    model: torch.nn.Module, onnx_path: str | Path, batch_sizes: Sequence[int] = (1, 7)
) -> float:
    """Max |onnxruntime - torch| over all outputs on random inputs at each batch size.

    ExportError when either side gives a NaN/Inf (`max` alone would skip a NaN difference).
    """
    runner = OnnxModel(onnx_path, device="cpu")
    module, _, output_names = model.export_graph()
    module.eval()
    worst = 0.0
    for b in batch_sizes:
        feeds = random_feeds(runner.metadata, b, seed=b)
        got = runner.run(feeds)
        ref = _outputs(module, [torch.from_numpy(v) for v in feeds.values()])
        for name, r in zip(output_names, ref, strict=True):
            check_finite(f"{onnx_path}", name, got[name], f"onnxruntime at batch {b}")
            check_finite(f"{onnx_path}", name, r.numpy(), f"torch at batch {b}")
            worst = max(worst, float(np.abs(got[name] - r.numpy()).max()))
    return worst


def export_checkpoint(ckpt: str | Path, out: str | Path, opset: int = OPSET) -> dict[str, Any]:
    model, cfg = load_model(ckpt)
    return export_model(model, out, training_config=cfg, opset=opset)


def _parse(argv: Sequence[str]) -> dict[str, str]:
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ("ckpt", "out", "opset", "parity"):
            raise SystemExit(
                f"bad argument {item!r}: expected ckpt=PATH out=FILE.onnx [opset=17] [parity=true]"
            )
        args[key] = value
    for key in ("ckpt", "out"):
        if key not in args:
            raise SystemExit(f"missing {key}=...: python -m learning.export ckpt=PATH out=FILE")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        model, cfg = load_model(args["ckpt"])
    except CheckpointError as err:
        raise SystemExit(f"learning.export: {err}") from None
    try:
        meta = export_model(model, args["out"], cfg, opset=int(args.get("opset", OPSET)))
    except ExportError as err:
        raise SystemExit(f"learning.export: {err}") from None
    print(f"wrote {args['out']}: inputs {meta['inputs']} outputs {meta['outputs']}")
    if args.get("parity", "true").lower() == "true":
        try:
            err = parity(model, args["out"])
            print(f"parity onnxruntime vs torch at batch 1 and 7: max abs error {err:.2e}")
            if err > 1e-4:
                raise ExportError(f"{args['out']}: parity check failed ({err:.2e} > 1e-4)")
        except ExportError as error:  # a model that fails its check must not look deployable
            Path(args["out"]).unlink(missing_ok=True)
            raise SystemExit(f"learning.export: {error}; removed it") from None


if __name__ == "__main__":
    main()
