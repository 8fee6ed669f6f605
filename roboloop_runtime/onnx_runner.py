"""Run exported roboloop models with onnxruntime (torch-free: numpy + onnxruntime only).

    model = OnnxModel("policy.onnx", device="auto")    # .metadata, .provider, .fallback_reason
    out = model.run({"obs.state": x, "noise": z})      # checked against the metadata first
    policy = OnnxPolicy("policy.onnx", seed=0)          # policy / actor / best_of_n, stateful too
    critic = OnnxCritic("critic.onnx")                  # critic / critic_ensemble: .q(obs, a)
    runner = load_runner("any.onnx")                    # the RUNNERS entry of its model type

`OnnxModel` refuses a file whose metadata does not match its model type (contract
`check_metadata`: v1 files are upgraded, v2 checked) or whose graph has other tensors.

The contract (input names, shapes, metadata JSON) is documented in docs/export_contract.md.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from roboloop_runtime.contract import (
    ACTIONS_INPUT,
    ACTIONS_OUTPUT,
    METADATA_KEY,
    NOISE_INPUT,
    OBS_INPUT_PREFIX,
    Q_OUTPUT,
    STATE_IN_PREFIX,
    STATE_OUT_PREFIX,
    CriticMetadata,
    ModelInputError,
    ModelLoadError,
    PolicyMetadata,
    check_metadata,
    check_output,
)
from roboloop_runtime.policy import QueuedChunkPolicy, check_observation

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
        graph = {
            "inputs": {i.name for i in self.session.get_inputs()},
            "outputs": set(self.output_names),
        }
        for what, names in graph.items():
            if names != set(self.metadata[what]):
                raise ModelLoadError(
                    f"{self.path}: metadata {what} {sorted(self.metadata[what])} != graph "
                    f"{what} {sorted(names)}"
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
        try:
            return check_metadata(meta)  # v1 upgraded; inputs/outputs match the model type
        except ValueError as err:
            raise ModelLoadError(f"{self.path}: {err}") from None

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
    """An exported acting model (policy, actor, best_of_n) behind the `Policy` interface.

    Noise (from a seeded numpy Generator) is drawn and fed only when the model declares a noise
    input (`metadata.noise_shape`). A stateful model's `state_out.<name>` of one call is its
    `state_in.<name>` of the next; `reset()` restores the declared initial values. Every output
    of the last call (e.g. best_of_n's chosen `q`) is in `last_outputs`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        seed: int = 0,
        n_action_steps: int | None = None,
        threads: int | None = None,
    ) -> None:
        OnnxModel.__init__(self, path, device=device, threads=threads)
        if RUNNERS.get(self.model_type) is not OnnxPolicy:
            raise ModelLoadError(f"{self.path}: model_type {self.model_type!r} is not a policy")
        self.model_metadata = self.metadata  # full JSON; `.metadata` becomes PolicyMetadata
        try:
            meta = PolicyMetadata.from_dict(self.model_metadata)
        except ValueError as err:
            raise ModelLoadError(f"{self.path}: {err}") from None
        QueuedChunkPolicy.__init__(self, meta, seed=seed, n_action_steps=n_action_steps)
        self._state: dict[str, np.ndarray] | None = None
        self.last_outputs: dict[str, np.ndarray] = {}

    def reset(self, seed: int | None = None) -> None:
        """Episode start: history, queue and recurrent state back to their initial values."""
        QueuedChunkPolicy.reset(self, seed)
        self._state = None

    def _predict(self, obs_history: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        feeds = {OBS_INPUT_PREFIX + k: v for k, v in obs_history.items()}
        batch = next(iter(feeds.values())).shape[0]
        if self.metadata.noise_shape is not None:
            feeds[NOISE_INPUT] = noise
        feeds.update({STATE_IN_PREFIX + k: v for k, v in self._carried_state(batch).items()})
        out = self.run(feeds)
        self._state = {k: out[STATE_OUT_PREFIX + k] for k in self.metadata.state}
        self.last_outputs = out
        return out[ACTIONS_OUTPUT]

    def _carried_state(self, batch: int) -> dict[str, np.ndarray]:
        if self._state is None:
            return {k: s.initial_batch(batch) for k, s in self.metadata.state.items()}
        for name, value in self._state.items():
            if value.shape[0] != batch:
                raise ModelInputError(
                    f"{self.path}: batch {batch} != batch {value.shape[0]} of the carried state "
                    f"{name!r}; call reset() before changing the batch size"
                )
        return self._state


class OnnxCritic(OnnxModel):
    """An exported critic or critic ensemble: `q(obs_history, actions)` -> (B,) or (B, K)."""

    def __init__(
        self, path: str | os.PathLike, device: str = "auto", threads: int | None = None
    ) -> None:
        super().__init__(path, device=device, threads=threads)
        if RUNNERS.get(self.model_type) is not OnnxCritic:
            raise ModelLoadError(f"{self.path}: model_type {self.model_type!r} is not a critic")
        self.critic = CriticMetadata.from_dict(self.metadata)

    def q(self, obs_history: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """obs_history[key] (B, obs_steps, *shape), actions (B, horizon, A) -> q (B, *q_shape).

        Observations get the same checks and casts as a policy's; a non-finite or misshapen
        q is a ModelOutputError."""
        m = self.critic
        missing = sorted(set(m.observations) - set(obs_history))
        if missing:
            raise ModelInputError(
                f"observation {missing[0]!r} missing (got {sorted(obs_history)})"
            )
        feeds = {
            OBS_INPUT_PREFIX + key: check_observation(
                key, obs_history[key], spec, (-1, m.obs_steps)
            )
            for key, spec in m.observations.items()
        }
        feeds[ACTIONS_INPUT] = np.asarray(actions, dtype=np.float32)
        q = self.run(feeds)[Q_OUTPUT]
        return check_output(Q_OUTPUT, q, (feeds[ACTIONS_INPUT].shape[0], *m.q_shape))


# model_type -> runner class (extend here with the type's registration in contract.MODEL_TYPES);
# types without an entry (goal_generator, q_function) run as a plain OnnxModel.
RUNNERS: dict[str, type[OnnxModel]] = {
    "policy": OnnxPolicy,
    "actor": OnnxPolicy,
    "best_of_n": OnnxPolicy,
    "critic": OnnxCritic,
    "critic_ensemble": OnnxCritic,
}


def load_runner(path: str | os.PathLike, **kwargs: Any) -> OnnxModel:
    """The runner `RUNNERS` names for the file's model type (a plain OnnxModel otherwise)."""
    model_type = OnnxModel(path, device="cpu").model_type  # read once to choose
    return RUNNERS.get(model_type, OnnxModel)(path, **kwargs)
