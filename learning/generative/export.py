"""Export a goal generator with a chosen deterministic sampler (the one in the checkpoint may
be adaptive or stochastic, e.g. dopri5 or DDPM):

    python -m learning.generative.export ckpt=PATH out=FILE.onnx \
        [sampler.method=euler] [sampler.steps=10] [sampler.sampler_type=ddim] [sampler.eta=0.0]

Same graph and metadata as `python -m learning.export` (which uses the checkpoint's sampler);
prints the onnxruntime-vs-torch parity and fails above 1e-4.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

USAGE = (
    "usage: python -m learning.generative.export ckpt=PATH out=FILE.onnx [sampler.<arg>=VALUE ...]"
)


def export_goal_generator(
    ckpt: str | Path, out: str | Path, sampler_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], float]:
    """-> (metadata, max |onnxruntime - torch|)."""
    from learning.checkpoint import CheckpointError, instantiate_trusted, load_model
    from learning.export import ExportError, export_model, parity

    model, cfg = load_model(ckpt)
    cfg = copy.deepcopy(cfg)
    if sampler_overrides:
        sampler = cfg["model"].get("sampler")
        if not isinstance(sampler, dict):
            raise CheckpointError(f"{ckpt}: model config has no sampler to override")
        sampler.update(sampler_overrides)
        model.sampler = instantiate_trusted(sampler, str(ckpt), "model.sampler")
    meta = export_model(model, out, training_config=cfg)
    try:
        return meta, parity(model, out)
    except ExportError:  # NaN/Inf on either side: the file must not look deployable
        Path(out).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> None:
    args: dict[str, str] = {}
    for item in sys.argv[1:] if argv is None else argv:
        key, sep, value = item.partition("=")
        if not sep or not (key in ("ckpt", "out") or key.startswith("sampler.")):
            raise SystemExit(f"bad argument {item!r}; {USAGE}")
        args[key] = value
    if "ckpt" not in args or "out" not in args:
        raise SystemExit(USAGE)
    overrides = {
        k.removeprefix("sampler."): yaml.safe_load(v) for k, v in args.items() if "." in k
    }
    try:
        meta, err = export_goal_generator(args["ckpt"], args["out"], overrides)
    except ValueError as error:  # CheckpointError (missing, refused), ExportError (NaN/Inf)
        raise SystemExit(f"learning.generative.export: {error}") from None
    print(f"wrote {args['out']}: sampler {meta['sampler']}, parity max abs error {err:.2e}")
    if err > 1e-4:
        raise SystemExit(f"{args['out']}: parity check failed ({err:.2e} > 1e-4)")


if __name__ == "__main__":
    main()
