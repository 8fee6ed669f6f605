"""Run exported roboloop models with onnxruntime (torch-free: numpy + onnxruntime only).

    model = OnnxModel("policy.onnx", device="auto")    # .metadata, .provider, .fallback_reason
    out = model.run({"obs.state": x, "noise": z})      # checked against the metadata first
    policy = OnnxPolicy("policy.onnx", seed=0)          # implements roboloop_runtime.policy

The contract (input names, shapes, metadata JSON) is documented in docs/export_contract.md.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from roboloop_runtime.contract import (
    ACTIONS_OUTPUT,
    FORMAT_VERSION,
    METADATA_KEY,
    NOISE_INPUT,
    OBS_INPUT_PREFIX,
    ModelInputError,
    ModelLoadError,
)
from roboloop_runtime.policy import PolicyMetadata, QueuedChunkPolicy

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _import_ort() -> Any:
    import onnxruntime

    return onnxruntime


class OnnxModel:
    """An onnxruntime session plus the roboloop metadata that describes its inputs.

    device: "auto" (CUDA if this onnxruntime build has it, else CPU), "cpu", or "cuda".
    A "cuda" request that ends up on CPU is reported in `.provider` / `.fallback_reason` and
    logged as a warning, never silent. `threads` sets intra-op threads (None: ort default).
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        ort = _import_ort()
        self.path = os.fspath(path)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if not os.path.isfile(self.path):
            raise ModelLoadError(f"{self.path}: no such model file")
        self.device = device
        available = ort.get_available_providers()
        providers, self.fallback_reason = _choose_providers(device, available)

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as err:  # ort raises its own Fail/InvalidProtobuf/... types
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"{self.path}: cannot load ONNX model: {msg}") from err

        self.provider: str = self.session.get_providers()[0]
        if CUDA in providers and self.provider != CUDA and self.fallback_reason is None:
            # onnxruntime-gpu drops CUDA silently when its libraries fail to load.
            self.fallback_reason = (
                f"{CUDA} is in this build but the session runs on {self.provider} "
                "(CUDA/cuDNN libraries failed to load)"
            )
        if self.fallback_reason and device == "cuda":
            log.warning(
                "%s: cuda requested, running on %s: %s",
                self.path,
                self.provider,
                self.fallback_reason,
            )

        self.metadata: dict[str, Any] = self._read_metadata()
        self.model_type: str = self.metadata["model_type"]
        self.input_specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            name: (tuple(int(d) for d in spec["shape"]), np.dtype(spec["dtype"]))
            for name, spec in self.metadata["inputs"].items()
        }
        self.output_names = [o.name for o in self.session.get_outputs()]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        if graph_inputs != set(self.input_specs):
            raise ModelLoadError(
                f"{self.path}: metadata inputs {sorted(self.input_specs)} != graph inputs "
                f"{sorted(graph_inputs)}"
            )

    def _read_metadata(self) -> dict[str, Any]:
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ModelLoadError(
                f"{self.path}: no '{METADATA_KEY}' metadata_props entry (not a roboloop export)"
            )
        try:
            meta = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise ModelLoadError(
                f"{self.path}: '{METADATA_KEY}' metadata is not JSON: {err}"
            ) from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise ModelLoadError(
                f"{self.path}: metadata format_version {version!r}, expected {FORMAT_VERSION}"
            )
        for key in ("model_type", "inputs", "outputs"):
            if key not in meta:
                raise ModelLoadError(f"{self.path}: metadata lacks key {key!r}")
        return meta

    def check_feeds(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate names, dtypes (exact) and shapes (-1 = batch) and one shared batch size."""
        unexpected = sorted(set(feeds) - set(self.input_specs))
        if unexpected:
            raise ModelInputError(
                f"{self.path}: unexpected input {unexpected[0]!r} "
                f"(model inputs: {sorted(self.input_specs)})"
            )
        checked: dict[str, np.ndarray] = {}
        batch: int | None = None
        for name, (shape, dtype) in self.input_specs.items():
            if name not in feeds:
                raise ModelInputError(f"{self.path}: missing input {name!r}")
            arr = feeds[name]
            if not isinstance(arr, np.ndarray):
                raise ModelInputError(f"input {name!r}: expected numpy array, got {type(arr)}")
            if arr.dtype != dtype:
                raise ModelInputError(f"input {name!r}: dtype {arr.dtype} != expected {dtype}")
            if arr.ndim != len(shape) or any(
                s != -1 and s != a for s, a in zip(shape, arr.shape, strict=True)
            ):
                raise ModelInputError(
                    f"input {name!r}: shape {tuple(arr.shape)} != expected "
                    f"{tuple('B' if s == -1 else s for s in shape)}"
                )
            if shape and shape[0] == -1:
                if batch is None:
                    batch = arr.shape[0]
                elif arr.shape[0] != batch:
                    raise ModelInputError(
                        f"input {name!r}: batch {arr.shape[0]} != batch {batch} of other inputs"
                    )
            checked[name] = np.ascontiguousarray(arr)
        return checked

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feeds` against the metadata, run, return {output name: array}."""
        outputs = self.session.run(self.output_names, self.check_feeds(feeds))
        return dict(zip(self.output_names, outputs, strict=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, model_type={self.model_type!r}, "
            f"provider={self.provider!r})"
        )


def _choose_providers(device: str, available: list[str]) -> tuple[list[str], str | None]:
    """Providers to request and, when CUDA was asked for but can't be, the reason."""
    if device == "cpu":
        return [CPU], None
    if CUDA in available:
        return [CUDA, CPU], None
    if device == "cuda":
        return [CPU], f"{CUDA} not available in this onnxruntime build (available: {available})"
    return [CPU], None


class OnnxPolicy(OnnxModel, QueuedChunkPolicy):
    """An exported policy behind the `Policy` interface (noise from a seeded numpy Generator)."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        seed: int = 0,
        n_action_steps: int | None = None,
        threads: int | None = None,
    ) -> None:
        OnnxModel.__init__(self, path, device=device, threads=threads)
        self.model_metadata = self.metadata  # full JSON; `.metadata` becomes PolicyMetadata
        if self.model_metadata["model_type"] != "policy":
            raise ModelLoadError(
                f"{self.path}: model_type {self.model_metadata['model_type']!r} is not a policy"
            )
        try:
            meta = PolicyMetadata.from_dict(self.model_metadata)
        except ValueError as err:
            raise ModelLoadError(f"{self.path}: {err}") from None
        QueuedChunkPolicy.__init__(self, meta, seed=seed, n_action_steps=n_action_steps)

    def _predict(self, obs_history: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        feeds = {OBS_INPUT_PREFIX + k: v for k, v in obs_history.items()}
        feeds[NOISE_INPUT] = noise
        return self.run(feeds)[ACTIONS_OUTPUT]
