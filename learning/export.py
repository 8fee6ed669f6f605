"""Export a trained model of any type to ONNX (the one exporter).

    python -m learning.export --ckpt outputs/.../last.ckpt --out model.onnx
    python -m learning.export --ckpt q.ckpt --out q.onnx --mask-size 224 224      # q_function
    python -m learning.export --ckpt g.ckpt --out g.onnx --sampler method=euler --sampler steps=10

The checkpoint is read by `learning.checkpoint.load_model` (the one loader: plain data, trusted
`_target_`s). Every model provides two duck-typed hooks:
  `export_graph() -> (module, example inputs by ONNX name, output names)`  (batch axis 0)
  `export_metadata() -> dict`  (`model_type` and that type's fields: observations, horizon, ...)
`FAMILIES` holds what differs per model type (its options, e.g. the mask size of a NAMO
Q-function or the deterministic sampler of a goal generator); the metadata is built by the
contract (`roboloop_runtime.build_metadata`), which checks the traced inputs/outputs against
the model type's registry entry. Then onnxruntime is checked against torch on random inputs.

Export path, one for every type: the dynamo exporter (`torch.export` + onnxscript) at opset 18.
The TorchScript exporter (`dynamo=False`) is deprecated upstream and cannot export adaptive
pooling to a size that does not divide the input (the Q-function's mask pooling). Axis 0 of
every input and output is a symbolic `batch` dimension.

A model whose outputs are not finite is refused: nothing is written when torch gives NaN/Inf,
and a file that fails the parity check (a NaN anywhere fails it) is removed.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import logging
import subprocess
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml
from hydra.errors import InstantiationException

from episode_dataset import whole_or_absent
from episode_dataset.ranges import POSITIVE_INT, HelpFormatter
from learning.checkpoint import CheckpointError, instantiate_trusted, load_model
from roboloop_runtime import METADATA_KEY, OnnxModel, build_metadata, upgrade_v1
from roboloop_runtime.contract import PREDICTION_OUTPUT_PREFIX, WORLD_MODEL_STEPS

REPO_ROOT = Path(__file__).resolve().parents[1]
OPSET = 18
PARITY_TOLERANCE = 1e-4
Graph = tuple[torch.nn.Module, dict[str, torch.Tensor], list[str]]

log = logging.getLogger(__name__)


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
    """The model cannot be exported as it is (non-finite outputs, parity failure, options)."""


# ---- per-family hooks --------------------------------------------------------------------
@dataclass(frozen=True)
class ExportFamily:
    """What one model type adds to the generic export.

    `options`: option name -> help (keyword of `export_model`, `--kebab-name` on the CLI).
    `prepare(model, training_config, where, **options) -> (graph, training_config)`: applies
    the options and returns the graph to export and the config to record.
    """

    options: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[..., tuple[Graph, Any]] = lambda model, cfg, where: (
        model.export_graph(),
        cfg,
    )


def _prepare_q_function(
    model: Any, cfg: Any, where: str, mask_size: Sequence[int] | None = None
) -> tuple[Graph, Any]:
    """Masks of another (H, W) than the model was trained on (the network pools them)."""
    module, example, names = model.export_graph()
    if mask_size is not None:
        h, w = (int(d) for d in mask_size)
        example = {k: torch.rand(2, v.shape[1], h, w) for k, v in example.items()}
    return (module, example, names), cfg


def _prepare_goal_generator(
    model: Any, cfg: Any, where: str, sampler: Mapping[str, Any] | None = None
) -> tuple[Graph, Any]:
    """A deterministic fixed-step sampler instead of the checkpoint's (maybe adaptive) one."""
    if sampler:
        cfg = copy.deepcopy(cfg) if cfg is not None else {}
        stored = (cfg.get("model") or {}).get("sampler")
        if not isinstance(stored, dict):
            raise ExportError(f"{where}: the model config has no sampler to override")
        stored.update(sampler)
        try:
            model.sampler = instantiate_trusted(stored, where, "model.sampler")
        except InstantiationException as err:  # the sampler refusing an argument, one line
            cause = err.__cause__ or err
            first = (str(cause).splitlines() or [""])[0]
            raise ExportError(f"{where}: --sampler {sampler}: {first}") from None
    try:
        return model.export_graph(), cfg
    except ValueError as err:  # a stochastic or adaptive sampler cannot be unrolled
        raise ExportError(f"{where}: {err}") from None


def _prepare_world_model(
    model: Any, cfg: Any, where: str, step: str | None = None
) -> tuple[Graph, Any]:
    """One of the world model's graphs (`WORLD_MODEL_STEPS`; filter by default). A step the
    model cannot give (the actor of a world model trained alone) is one ExportError line."""
    if step is not None and step not in WORLD_MODEL_STEPS:
        raise ExportError(f"{where}: step {step!r} is not one of {list(WORLD_MODEL_STEPS)}")
    model.export_step = step or WORLD_MODEL_STEPS[0]
    try:
        return model.export_graph(), cfg
    except ValueError as err:
        raise ExportError(f"{where}: {err}") from None


# model_type -> its hooks; a type without an entry exports with the defaults.
FAMILIES: dict[str, ExportFamily] = {
    "q_function": ExportFamily(
        {"mask_size": "H W of the exported mask inputs (default: the size trained on)"},
        _prepare_q_function,
    ),
    "goal_generator": ExportFamily(
        {"sampler": "sampler argument KEY=VALUE, repeatable (e.g. method=euler steps=10)"},
        _prepare_goal_generator,
    ),
    "world_model": ExportFamily(
        {"step": "which graph: filter (obs + previous action -> latent), imagine, decode, actor"},
        _prepare_world_model,
    ),
}


# ---- the generic path --------------------------------------------------------------------
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


def with_feature_types(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` whose observations all declare a feature type. A model from before feature
    types were recorded gets the documented v1 rule (uint8 -> image), with a warning."""
    specs = fields.get("observations") or {}
    if all("feature_type" in s for s in specs.values()):
        return fields
    log.warning("observations without a feature_type: the v1 rule (uint8 -> image) applies")
    return {**fields, "observations": upgrade_v1(fields)["observations"]}


def export_model(
    model: torch.nn.Module,
    out: str | Path,
    training_config: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Write `out` (ONNX with `roboloop` metadata); returns the metadata dict.

    `training_config` is recorded as is (None: the model's hyperparameters, for a model built
    in code). `options` are the model type's `FAMILIES` options (e.g. mask_size, sampler).
    """
    for hook in ("export_graph", "export_metadata"):
        if not hasattr(model, hook):
            raise TypeError(f"{type(model).__name__} has no {hook}(): it cannot be exported")
    model = model.to("cpu").eval()
    where = str(out)
    if training_config is None:
        training_config = dict(getattr(model, "hparams", {}))
    model_type = model.export_metadata()["model_type"]
    family = FAMILIES.get(model_type, ExportFamily())
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise ExportError(
            f"{where}: option {unknown[0]!r} does not apply to a {model_type} "
            f"(its options: {sorted(family.options) or 'none'})"
        )
    (module, example, output_names), training_config = family.prepare(
        model, training_config, where, **{k: v for k, v in options.items() if v is not None}
    )
    module.eval()
    inputs = {name: _spec(t) for name, t in example.items()}
    outputs = _outputs(module, list(example.values()))
    feeds = random_feeds({"inputs": inputs}, batch=2)
    sampled = _outputs(module, [torch.from_numpy(v) for v in feeds.values()])
    for name, on_example, on_random in zip(output_names, outputs, sampled, strict=True):
        check_finite(where, name, on_example, "torch on the example inputs; nothing written")
        check_finite(where, name, on_random, "torch on random inputs; nothing written")
    fields = with_feature_types(model.export_metadata())  # after prepare: e.g. a new sampler
    try:
        metadata = build_metadata(
            model_type,
            fields,
            inputs=inputs,
            outputs={n: _spec(t) for n, t in zip(output_names, outputs, strict=True)},
            training_config=json.loads(json.dumps(training_config, default=str)),
            code_version=code_version(),
        )
    except ValueError as err:  # the graph does not match its declared model type
        raise ExportError(f"{where}: {err}") from None
    out = Path(out)
    with warnings.catch_warnings():  # torch.export's notes on internals are not for users
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example.values()),
            input_names=list(example),
            output_names=output_names,
            dynamic_shapes=_batch_axes(module, len(example)),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    _check_batch_axis(proto, where)
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(proto)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a file where a folder of the path should be: name it
        raise ExportError(f"{out}: cannot write it ({err.strerror}: {err.filename})") from None
    try:  # a half-written model must never be found at `out`
        with whole_or_absent(out) as tmp:
            onnx.save_model(proto, str(tmp))  # weights inline: models here are a few MB
    except OSError as err:
        raise ExportError(f"{out}: cannot write it ({err.strerror or err})") from None
    return metadata


def _batch_axes(module: torch.nn.Module, n_inputs: int) -> tuple[Any, ...]:
    """`dynamic_shapes` marking axis 0 of each of the `n_inputs` positional inputs as `batch`,
    shaped like `module.forward`'s parameters (a `*inputs` parameter takes a nested tuple)."""
    batch = torch.export.Dim("batch", min=1)
    shapes: list[Any] = []
    left = n_inputs
    for param in inspect.signature(module.forward).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            shapes.append(tuple({0: batch} for _ in range(left)))
            left = 0
        elif param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) and left:
            shapes.append({0: batch})
            left -= 1
    return tuple(shapes)


def _check_batch_axis(proto: onnx.ModelProto, where: str) -> None:
    """ExportError unless axis 0 of every graph input/output is symbolic. torch.onnx falls back
    to a fixed-shape trace when `torch.export` cannot keep the batch dynamic (code that
    specializes it), which would load fine and then fail at any other batch size."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            raise ExportError(
                f"{where}: the graph fixed the batch axis of {value.name!r} to "
                f"{dims[0].dim_value} (torch.export could not keep it dynamic: the model's code "
                "specializes the batch size); nothing written"
            )


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
    model: torch.nn.Module,
    onnx_path: str | Path,
    batch_sizes: Sequence[int] = (1, 7),
) -> float:
    """Max |onnxruntime - torch| / max(scale, |torch|) over all outputs on random inputs at
    each batch size: the absolute error, relative for values above 1; a decoded image
    (`prediction.<key>` of an image key, pixels 0..255) relative to its range, scale 255: its
    small pixel values come out of the decoder's full-range sums with their rounding.

    ExportError when either side gives a NaN/Inf (`max` alone would skip a NaN difference).
    The torch side is the module `export_graph()` returns now (the exported one).
    """
    runner = OnnxModel(onnx_path, device="cpu")
    module, _, output_names = model.export_graph()
    module.eval()
    observations = runner.metadata.get("observations") or {}
    images = {
        PREDICTION_OUTPUT_PREFIX + k
        for k, spec in observations.items()
        if spec.get("feature_type") == "image"
    }
    worst = 0.0
    for b in batch_sizes:
        feeds = random_feeds(runner.metadata, b, seed=b)
        got = runner.run(feeds)
        ref = _outputs(module, [torch.from_numpy(v) for v in feeds.values()])
        for name, r in zip(output_names, ref, strict=True):
            check_finite(f"{onnx_path}", name, got[name], f"onnxruntime at batch {b}")
            check_finite(f"{onnx_path}", name, r.numpy(), f"torch at batch {b}")
            scale = 255.0 if name in images else 1.0
            diff = np.abs(got[name] - r.numpy()) / np.maximum(scale, np.abs(r.numpy()))
            worst = max(worst, float(diff.max()))
    return worst


def export_checkpoint(ckpt: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """`load_model(ckpt)` then `export_model` with the checkpoint's training config."""
    model, cfg = load_model(ckpt)
    return export_model(model, out, training_config=cfg, **options)


# ---- CLI -------------------------------------------------------------------------------------
def _key_value(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m learning.export",
        description="Export a learning.train checkpoint (any model type) to ONNX with the "
        "roboloop metadata, and check onnxruntime against torch.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by learning.train")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument(
        "--no-parity",
        dest="parity",
        action="store_false",
        help=f"skip the onnxruntime-vs-torch check (fails above {PARITY_TOLERANCE:g})",
    )
    q = parser.add_argument_group("q_function")
    q.add_argument(
        "--mask-size",
        type=POSITIVE_INT,
        nargs=2,
        metavar=("H", "W"),
        help=FAMILIES["q_function"].options["mask_size"],
    )
    g = parser.add_argument_group("goal_generator")
    g.add_argument(
        "--sampler",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help=FAMILIES["goal_generator"].options["sampler"],
    )
    w = parser.add_argument_group("world_model")
    w.add_argument(
        "--step", choices=WORLD_MODEL_STEPS, help=FAMILIES["world_model"].options["step"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    options = {"mask_size": args.mask_size, "sampler": dict(args.sampler or []), "step": args.step}
    options = {k: v for k, v in options.items() if v}
    if Path(args.out).is_dir():
        raise SystemExit(f"learning.export: --out {args.out} is a directory; name the .onnx file")
    try:
        model, cfg = load_model(args.ckpt)
        meta = export_model(model, args.out, cfg, **options)
    except (CheckpointError, ExportError) as err:
        raise SystemExit(f"learning.export: {err}") from None
    print(f"wrote {args.out} ({meta['model_type']}): inputs {meta['inputs']}")
    print(f"  outputs {meta['outputs']}")
    if not args.parity:
        return
    try:
        err = parity(model, args.out)
        print(f"parity onnxruntime vs torch at batch 1 and 7: max error {err:.2e}")
        if err > PARITY_TOLERANCE:
            raise ExportError(f"{args.out}: parity check failed ({err:.2e} > {PARITY_TOLERANCE})")
    except ExportError as error:  # a model that fails its check must not look deployable
        Path(args.out).unlink(missing_ok=True)
        raise SystemExit(f"learning.export: {error}; removed it") from None


if __name__ == "__main__":
    main()
