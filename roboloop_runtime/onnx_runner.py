"""Run exported roboloop models with onnxruntime (torch-free: numpy + onnxruntime only).

    model = OnnxModel("policy.onnx", device="auto")    # .metadata, .provider, .fallback_reason
    out = model.run({"obs.state": x, "noise": z})      # checked against the metadata first
    policy = OnnxPolicy("policy.onnx", seed=0)          # policy / actor / best_of_n, stateful too
    critic = OnnxCritic("critic.onnx")                  # critic / critic_ensemble: .q(obs, a)
    runner = load_runner("any.onnx")                    # the RUNNERS entry of its model type
    world = WorldModelRunner("filter.onnx", imagine="imagine.onnx", decode="decode.onnx")
    world.reset(); world.step(obs, prev_action)          # the latent belief, batch 1
    reward, cont, next_latent = world.predict(action); frames = world.decode(next_latent)

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

from episode_dataset.ranges import SEED, checked, checked_bool, count
from roboloop_runtime.contract import (
    ACTIONS_INPUT,
    ACTIONS_OUTPUT,
    METADATA_KEY,
    NOISE_INPUT,
    OBS_INPUT_PREFIX,
    PREDICTION_OUTPUT_PREFIX,
    Q_OUTPUT,
    STATE_IN_PREFIX,
    STATE_OUT_PREFIX,
    CriticMetadata,
    ModelInputError,
    ModelLoadError,
    ObsSpec,
    PolicyMetadata,
    StateSpec,
    check_metadata,
    check_output,
)
from roboloop_runtime.policy import QueuedChunkPolicy, check_observation

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
THREADS = count(0, high=1024, nullable=True)  # intra-op threads, the nodes' range; 0, None: ort's


def _import_ort() -> Any:
    import onnxruntime

    return onnxruntime


class OnnxModel:
    """An onnxruntime session plus the roboloop metadata that describes its inputs.

    device: "auto" (CUDA if this onnxruntime build has it, else CPU), "cpu", or "cuda".
    A "cuda" request that ends up on CPU is reported in `.provider` / `.fallback_reason` and
    logged as a warning, never silent. `threads` sets intra-op threads (None or 0: ort default).
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        ort = _import_ort()
        self.path = os.fspath(path)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        # Before the session: onnxruntime takes -1, and 10**6 hangs making threads.
        threads = checked("threads", threads, THREADS)
        if os.path.isdir(self.path):
            raise ModelLoadError(f"{self.path}: a directory, not a model file")
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

        try:  # onnxruntime decodes the model's strings (names, metadata) only when asked
            self.metadata: dict[str, Any] = self._read_metadata()
            self.output_names = [o.name for o in self.session.get_outputs()]
            graph = {
                "inputs": {i.name for i in self.session.get_inputs()},
                "outputs": set(self.output_names),
            }
        except UnicodeError as err:
            raise ModelLoadError(f"{self.path}: damaged model: {err}") from None
        self.model_type: str = self.metadata["model_type"]
        self.input_specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            name: (tuple(int(d) for d in spec["shape"]), np.dtype(spec["dtype"]))
            for name, spec in self.metadata["inputs"].items()
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
        noise_scale: float = 1.0,
    ) -> None:
        OnnxModel.__init__(self, path, device=device, threads=threads)
        if RUNNERS.get(self.model_type) is not OnnxPolicy:
            raise ModelLoadError(f"{self.path}: model_type {self.model_type!r} is not a policy")
        self.model_metadata = self.metadata  # full JSON; `.metadata` becomes PolicyMetadata
        try:
            meta = PolicyMetadata.from_dict(self.model_metadata)
        except ValueError as err:
            raise ModelLoadError(f"{self.path}: {err}") from None
        QueuedChunkPolicy.__init__(
            self, meta, seed=seed, n_action_steps=n_action_steps, noise_scale=noise_scale
        )
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


Latent = dict[str, np.ndarray]  # state name (deter, stoch) -> (size,) float32, batch 1


class WorldModelRunner(OnnxModel):
    """An exported world model (model type `world_model`) run step by step on one stream.

    `self` is the filter graph (required); the optional imagine, decode and actor graphs (files
    of the same export, `python -m learning.export --step ...`) must agree with it on the latent
    sizes, action_dim and observations, else ModelLoadError naming both files and both values.
    It holds the latent belief s_t = (deter h, stoch z) of one stream (batch 1):

        reset()                        episode start: the declared initial latent (zeros)
        step(obs, prev_action)         filter o_t with a_{t-1} (None at episode start: zeros)
        predict(action)                imagine: (reward, continue probability, next latent)
        decode(latent=None)            {key: (*shape) float32}, observations in raw units
        act()                          the actor's action (A,) in env units

    Noise is 0 (the mode of every distribution) unless `sample`, then standard normal from a
    numpy Generator seeded with `seed` (reseeded by `reset(seed)`).
    """

    STEPS = ("filter", "imagine", "decode", "actor")

    def __init__(
        self,
        path: str | os.PathLike,
        imagine: str | os.PathLike | None = None,
        decode: str | os.PathLike | None = None,
        actor: str | os.PathLike | None = None,
        device: str = "auto",
        threads: int | None = None,
        sample: bool = False,
        seed: int = 0,
    ) -> None:
        # Before loading: seed=-1 was numpy's error at the first reset, sample="no" sampled.
        self.sample = checked_bool("sample", sample)
        self._seed = None if seed is None else checked("seed", seed, SEED)
        OnnxModel.__init__(self, path, device=device, threads=threads)
        self._require_step(self, "filter")
        meta = self.metadata
        self.state = {k: StateSpec.from_dict(v) for k, v in meta["state"].items()}
        self.observations = {k: ObsSpec.from_dict(v) for k, v in meta["observations"].items()}
        self.action_dim = int(meta["action_dim"])
        self.graphs: dict[str, OnnxModel] = {"filter": self}
        for step, other in (("imagine", imagine), ("decode", decode), ("actor", actor)):
            if other is not None:
                model = OnnxModel(other, device=device, threads=threads)
                self._require_step(model, step)
                self._check_agrees(model)
                self.graphs[step] = model
        self.reset()

    @staticmethod
    def _require_step(model: OnnxModel, step: str) -> None:
        got = model.metadata.get("step") if model.model_type == "world_model" else None
        if got != step:
            what = f"step {got!r}" if got else f"model_type {model.model_type!r}"
            raise ModelLoadError(
                f"{model.path}: {what} where the world model's {step} step is needed "
                f"(python -m learning.export --step {step})"
            )

    def _check_agrees(self, model: OnnxModel) -> None:
        """One line naming both files when `model` is not a graph of this filter's model."""
        meta = model.metadata
        theirs = {k: StateSpec.from_dict(v) for k, v in meta["state"].items()}  # deter, stoch
        pairs: dict[str, tuple[Any, Any]] = {
            f"latent {k!r} size": (list(s.shape), list(theirs[k].shape))
            for k, s in self.state.items()
        }
        pairs["action_dim"] = (self.action_dim, int(meta["action_dim"]))
        obs = {k: ObsSpec.from_dict(v) for k, v in meta["observations"].items()}
        pairs["observations"] = (_obs_text(self.observations), _obs_text(obs))
        for what, (mine, other) in pairs.items():
            if mine != other:
                raise ModelLoadError(
                    f"{model.path}: {what} {other} disagrees with the filter {self.path}'s "
                    f"{mine}: the graphs come from different models"
                )

    # ---- the latent ----------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Episode start: the initial latent, no previous action, the noise generator reseeded."""
        if seed is not None:
            self._seed = checked("seed", seed, SEED)
        self.rng = np.random.default_rng(self._seed)
        self._latent = {k: s.initial_batch(1).astype(np.float32) for k, s in self.state.items()}

    @property
    def latent(self) -> Latent:
        return {k: v[0].copy() for k, v in self._latent.items()}

    def set_latent(self, latent: Latent) -> None:
        """Continue from a given latent (e.g. one imagined ahead); ModelInputError (one line)
        for a missing state or one of another size than the graphs take."""
        self._latent = self._batched(latent)

    def _batched(self, latent: Latent) -> dict[str, np.ndarray]:
        out = {}
        for k, spec in self.state.items():
            if k not in latent:
                raise ModelInputError(
                    f"latent has no {k!r} (the graphs take {sorted(self.state)})"
                )
            value = np.asarray(latent[k], np.float32)
            if value.shape != spec.shape:
                raise ModelInputError(
                    f"latent {k!r} of shape {value.shape} fed to {self.path} and its graphs, "
                    f"which take {spec.shape}"
                )
            out[k] = value[None]
        return out

    def _noise(self, size: int) -> np.ndarray:
        if self.sample:
            return self.rng.standard_normal((1, size)).astype(np.float32)
        return np.zeros((1, size), np.float32)

    def _action(self, action: np.ndarray | None, name: str) -> np.ndarray:
        if action is None:
            return np.zeros((1, self.action_dim), np.float32)
        a = np.asarray(action, np.float32)
        if a.shape != (self.action_dim,):
            raise ModelInputError(f"{name} has shape {a.shape}, expected ({self.action_dim},)")
        return a[None]

    def _state_feeds(self, latent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {STATE_IN_PREFIX + k: v for k, v in latent.items()}

    def _state_out(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            k: check_output(STATE_OUT_PREFIX + k, out[STATE_OUT_PREFIX + k], (1, *s.shape))
            for k, s in self.state.items()
        }

    # ---- the steps -----------------------------------------------------------------------
    def step(self, obs: dict[str, np.ndarray], prev_action: np.ndarray | None) -> Latent:
        """Filter observation o_t (one value per key, no batch axis) after `prev_action`
        (a_{t-1}, env units; None: the zero action of an episode start) into the latent."""
        missing = sorted(set(self.observations) - set(obs))
        if missing:
            raise ModelInputError(f"observation {missing[0]!r} missing (got {sorted(obs)})")
        feeds = {
            OBS_INPUT_PREFIX + k: check_observation(k, obs[k], spec)[None]
            for k, spec in self.observations.items()
        }
        feeds["prev_action"] = self._action(prev_action, "prev_action")
        feeds[NOISE_INPUT] = self._noise(self.state["stoch"].shape[0])
        self._latent = self._state_out(self.run({**feeds, **self._state_feeds(self._latent)}))
        return self.latent

    def _graph(self, step: str) -> OnnxModel:
        if step not in self.graphs:
            raise ModelLoadError(f"{self.path}: no {step} graph given (WorldModelRunner({step}=))")
        return self.graphs[step]

    def predict(self, action: np.ndarray) -> tuple[float, float, Latent]:
        """Imagine one step of `action` from the held latent (which stays): the reward it
        earns, the probability that the episode goes on, and the prior latent after it."""
        feeds = {"action": self._action(action, "action")}
        feeds[NOISE_INPUT] = self._noise(self.state["stoch"].shape[0])
        out = self._graph("imagine").run({**feeds, **self._state_feeds(self._latent)})
        reward = check_output("reward", out["reward"], (1,))
        cont = check_output("continue", out["continue"], (1,))
        nxt = self._state_out(out)
        return float(reward[0]), float(cont[0]), {k: v[0] for k, v in nxt.items()}

    def decode(self, latent: Latent | None = None) -> dict[str, np.ndarray]:
        """The observation the latent (default: the held one) decodes to, raw units."""
        state = self._latent if latent is None else self._batched(latent)
        out = self._graph("decode").run(self._state_feeds(state))
        return {
            k: check_output(PREDICTION_OUTPUT_PREFIX + k, out[PREDICTION_OUTPUT_PREFIX + k],
                            (1, *spec.shape))[0]
            for k, spec in self.observations.items()
        }  # fmt: skip

    def act(self) -> np.ndarray:
        """The actor's action (A,) for the held latent, env units (noise 0: its mode)."""
        feeds = {NOISE_INPUT: self._noise(self.action_dim), **self._state_feeds(self._latent)}
        out = self._graph("actor").run(feeds)
        return check_output(ACTIONS_OUTPUT, out[ACTIONS_OUTPUT], (1, self.action_dim))[0]


def _obs_text(observations: dict[str, ObsSpec]) -> dict[str, str]:
    return {k: f"{s.feature_type} {s.dtype} {list(s.shape)}" for k, s in observations.items()}


# model_type -> runner class (extend here with the type's registration in contract.MODEL_TYPES);
# types without an entry (goal_generator, q_function) run as a plain OnnxModel.
RUNNERS: dict[str, type[OnnxModel]] = {
    "policy": OnnxPolicy,
    "actor": OnnxPolicy,
    "best_of_n": OnnxPolicy,
    "critic": OnnxCritic,
    "critic_ensemble": OnnxCritic,
    "world_model": WorldModelRunner,  # from the filter step's file; others join by keyword
}


def load_runner(path: str | os.PathLike, **kwargs: Any) -> OnnxModel:
    """The runner `RUNNERS` names for the file's model type (a plain OnnxModel otherwise)."""
    model_type = OnnxModel(path, device="cpu").model_type  # read once to choose
    return RUNNERS.get(model_type, OnnxModel)(path, **kwargs)
