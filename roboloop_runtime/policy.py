"""The one acting interface shared by sim evaluation, data collection, export and the ROS nodes.

Everything that acts implements `Policy` (`reset()` at episode start, `select_action(obs)` per
step): learned policies, the scripted experts (`sim.experts`) and the random baseline
(`sim.evaluate.RandomPolicy`). A learned policy is a `ChunkPolicy`: it maps an observation
history to a chunk of future actions,

    obs_history[key]: (B, obs_steps, *shape)  ->  actions: (B, horizon, A)

Window convention (the same in the DataModule): frames t-obs_steps+1 .. t are observed, the
chunk holds actions for steps t .. t+horizon-1, and the first `n_action_steps` of it are executed
before the policy is queried again (receding horizon). `ActingBuffer` is the one implementation
of that observation history and action queue: `QueuedChunkPolicy.select_action` (sim evaluation)
and the ROS policy node's `PolicyLoop` both act through it, so subclasses (`TorchPolicy`,
`OnnxPolicy`) only implement the batched chunk call.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from episode_dataset.ranges import SEED, checked, count, number
from roboloop_runtime.contract import (
    ACTIONS_OUTPUT,
    NOISE_INPUT,
    ModelInputError,
    ObsSpec,
    PolicyMetadata,
    check_output,
)


@runtime_checkable
class Policy(Protocol):
    """What acts in an episode: sim evaluation, collection and the sim bridge drive this."""

    def reset(self) -> None:
        """Episode start: forget observation history, queued actions and recurrent state."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One step: obs[key] (*shape) -> action (A,) float32."""


@runtime_checkable
class ChunkPolicy(Policy, Protocol):
    """A learned policy: metadata plus the batched chunk call (what the ROS policy node runs).

    `reset()` also restarts any recurrent state the model carries between chunk calls.
    """

    metadata: PolicyMetadata

    def predict_action_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """Batched: obs_history[key] (B, obs_steps, *shape) -> actions (B, horizon, A)."""


def check_observation(
    key: str, value: Any, spec: ObsSpec, leading: tuple[int, ...] = ()
) -> np.ndarray:
    """Return `value` as an array of `spec.dtype`, or raise a one-line ModelInputError.

    `leading` are the expected leading axes (-1 = any size). Lossless/same-kind casts
    (float64 -> float32) are accepted; unsafe ones (float -> uint8 image) are not.
    """
    arr = np.asarray(value)
    expected = np.dtype(spec.dtype)
    if arr.dtype != expected:
        if not np.can_cast(arr.dtype, expected, casting="same_kind"):
            raise ModelInputError(
                f"observation {key!r}: dtype {arr.dtype} cannot be cast to {expected}"
            )
        arr = arr.astype(expected)
    want = leading + spec.shape
    mismatch = arr.ndim != len(want) or any(
        w != -1 and w != a for w, a in zip(want, arr.shape, strict=True)
    )
    if mismatch:
        raise ModelInputError(
            f"observation {key!r}: shape {tuple(arr.shape)} != expected "
            f"{tuple('B' if w == -1 else w for w in want)}"
        )
    return arr


def _check_finite(key: str, arr: np.ndarray, what: str = "observation") -> None:
    """A one-line ModelInputError naming `key` when the float array `arr` holds NaN/Inf
    (integer arrays, e.g. uint8 images, are always finite: not scanned)."""
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)]
        raise ModelInputError(
            f"{what} {key!r} holds {bad.size} non-finite values ({bad.flat[0]}): not acted on"
        )


def _check_noise(noise: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Caller-drawn `noise` as float32 of `shape`, finite, else a one-line ModelInputError
    (a list is taken as an array; NaN noise would give NaN actions)."""
    try:
        arr = np.asarray(noise)
    except ValueError:  # a ragged nested list
        raise ModelInputError(f"input 'noise': not an array ({type(noise).__name__})") from None
    if arr.dtype.kind not in "iuf":
        raise ModelInputError(f"input 'noise': dtype {arr.dtype} is not a number type")
    if arr.shape != shape:
        raise ModelInputError(f"input 'noise': shape {arr.shape} != {shape}")
    with np.errstate(over="ignore"):  # a float64 too large for float32: inf, refused next
        arr = arr.astype(np.float32, copy=False)
    _check_finite(NOISE_INPUT, arr, "input")
    return arr


def _require_mapping(obs: Any, observations: Mapping[str, ObsSpec]) -> None:
    """A one-line ModelInputError unless `obs` is a mapping key -> array (not a bare array)."""
    if not isinstance(obs, Mapping):
        raise ModelInputError(
            f"observation must be a dict of arrays keyed {sorted(observations)}, "
            f"got {type(obs).__name__}"
        )


def _get(obs: Mapping[str, Any], key: str) -> Any:
    try:
        return obs[key]
    except KeyError:
        raise ModelInputError(f"observation {key!r} missing (got keys {sorted(obs)})") from None


@dataclass(frozen=True)
class QueuedAction:
    """One action of a queued chunk, with what the caller attached to the chunk."""

    action: np.ndarray  # (A,) float32
    stamp_ns: int = 0  # e.g. the stamp of the newest observation the chunk was computed from
    clipped: bool = False  # e.g. the action was outside the bounds and clipped into them


class ActingBuffer:
    """Observation history + action queue: the receding-horizon bookkeeping of acting.

        buffer = ActingBuffer(policy.metadata)
        buffer.push(obs)                      # obs[key] (*shape): checked, copied
        if buffer.needs_chunk:
            chunk = policy.predict_action_chunk(buffer.window())   # (1, horizon, A)
            buffer.queue(chunk[0], stamp_ns=stamp)                 # first n_action_steps
        action = buffer.pop().action

    At the first push after `reset()` the history is padded by repeating that frame (as the
    DataModule pads windows at episode start). The caller checks the chunk before `queue` (the
    ROS node's ActionGuard) and attaches per-action info (stamp, clipped) that `pop` returns.
    """

    def __init__(self, metadata: PolicyMetadata) -> None:
        self.observations: Mapping[str, ObsSpec] = metadata.observations
        self.obs_steps = metadata.obs_steps
        self.n_action_steps = metadata.n_action_steps
        self._history: dict[str, collections.deque[np.ndarray]] = {}
        self._queue: collections.deque[QueuedAction] = collections.deque()

    def reset(self) -> None:
        """Episode start (or a restart after stale data): empty history and queue."""
        self._history.clear()
        self._queue.clear()

    def push(self, obs: Mapping[str, Any]) -> None:
        """Append one frame per observation key (each checked against its spec, then copied).

        ModelInputError (one line, the history untouched) for an `obs` that is not a mapping,
        a missing key, a wrong shape or dtype, or a NaN/Inf value: such a frame is never acted
        on. Keys the policy does not take are ignored (an env may observe more than a policy
        was trained on: `data.obs_keys`, a camera added for recording)."""
        _require_mapping(obs, self.observations)
        # Check every key before touching the history, and copy: callers may reuse buffers.
        frames = {}
        for key, spec in self.observations.items():
            frame = np.array(check_observation(key, _get(obs, key), spec), copy=True)
            _check_finite(key, frame)
            frames[key] = frame
        for key, frame in frames.items():
            hist = self._history.get(key)
            if hist is None:
                # Window start: pad by repeating the first frame, as training windows do.
                self._history[key] = collections.deque(
                    [frame] * self.obs_steps, maxlen=self.obs_steps
                )
            else:
                hist.append(frame)

    @property
    def needs_chunk(self) -> bool:
        """True when the queue is empty: predict a chunk from `window()` and `queue` it."""
        return not self._queue

    def window(self) -> dict[str, np.ndarray]:
        """The observation history as one batch: obs_history[key] (1, obs_steps, *shape)."""
        if not self._history:
            raise ModelInputError("no observation pushed since reset: nothing to act on")
        return {key: np.stack(hist)[None] for key, hist in self._history.items()}

    def queue(
        self, actions: np.ndarray, stamp_ns: int = 0, clipped: Sequence[bool] | None = None
    ) -> None:
        """Queue the first n_action_steps of `actions` (horizon, A), with their info."""
        n = self.n_action_steps
        flags = [False] * n if clipped is None else [bool(c) for c in clipped[:n]]
        self._queue.extend(
            QueuedAction(action, stamp_ns, flag)
            for action, flag in zip(actions[:n], flags, strict=True)
        )

    def pop(self) -> QueuedAction:
        """The next queued action (IndexError when empty: check `needs_chunk` first)."""
        return self._queue.popleft()


class QueuedChunkPolicy:
    """Per-step acting on top of chunk prediction, through one `ActingBuffer`.

    Noise for the sampler comes from a seeded numpy Generator, so two implementations of the
    same model (torch, onnxruntime) given the same seed act identically. `noise_scale` scales
    the sampler's start points: 0 integrates the flow from the origin every time, a
    deterministic policy (for a deterministic expert the noise only adds spread).
    """

    metadata: PolicyMetadata

    def __init__(
        self,
        metadata: PolicyMetadata,
        seed: int = 0,
        n_action_steps: int | None = None,
        noise_scale: float = 1.0,
    ) -> None:
        if n_action_steps is not None:
            n = checked("n_action_steps", n_action_steps, count(1))  # 2.7 is no step count
            metadata = PolicyMetadata(**{**metadata.__dict__, "n_action_steps": n})
        self.metadata = metadata
        self.noise_scale = float(checked("noise_scale", noise_scale, number(0)))
        self.rng = np.random.default_rng(None if seed is None else checked("seed", seed, SEED))
        self.acting = ActingBuffer(metadata)

    # ---- the part subclasses implement -------------------------------------------------
    def _predict(self, obs_history: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """obs_history[key] (B, obs_steps, *shape), noise (B, *noise_shape) -> (B, horizon, A)."""
        raise NotImplementedError

    # ---- the interface -----------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Clear history and queue; with `seed`, also restart the noise generator."""
        self.acting.reset()
        if seed is not None:
            self.rng = np.random.default_rng(checked("seed", seed, SEED))

    def sample_noise(self, batch: int) -> np.ndarray:
        """Sampler start points ~ noise_scale N(0, I): (B, *noise_shape) float32; (B, 0)
        without noise."""
        shape = self.metadata.noise_shape
        if shape is None:
            return np.zeros((batch, 0), np.float32)  # a deterministic model: never fed
        noise = self.rng.standard_normal((batch, *shape), dtype=np.float32)
        return noise * np.float32(self.noise_scale)  # x 1.0 is exact: the default unchanged

    def predict_action_chunk(
        self, obs_history: dict[str, np.ndarray], noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Batched: obs_history[key] (B, obs_steps, *shape) -> actions (B, horizon, A), unchecked
        (the ROS node's ActionGuard classifies a bad chunk). The history is the model's input:
        exactly its observation keys, finite, else a one-line ModelInputError; so is `noise`
        (None: drawn from the seeded generator), real numbers of shape (B, *noise_shape)."""
        m = self.metadata
        _require_mapping(obs_history, m.observations)
        checked = {
            key: check_observation(key, _get(obs_history, key), spec, (-1, m.obs_steps))
            for key, spec in m.observations.items()
        }
        if len(obs_history) != len(checked):  # every key is there: the others are extra
            unexpected = sorted(set(obs_history) - set(checked))
            raise ModelInputError(
                f"unexpected observation {unexpected[0]!r} (the policy takes {sorted(checked)})"
            )
        for key, value in checked.items():
            _check_finite(key, value)
        batch = {a.shape[0] for a in checked.values()}
        if len(batch) != 1:
            raise ModelInputError(f"observations disagree on batch size: {sorted(batch)}")
        (b,) = batch
        if noise is None:
            noise = self.sample_noise(b)
        else:
            noise = _check_noise(noise, (b, *(m.noise_shape or (0,))))
        return self._predict(checked, noise)

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One step: obs[key] (*shape) -> action (A,) float32.

        ModelInputError (one line) for an observation `ActingBuffer.push` refuses (not a dict,
        a key missing, NaN/Inf, ...): nothing is pushed or predicted. ModelOutputError for a
        chunk of another shape than (1, horizon, A) or with NaN/Inf: nothing is queued, the
        next call predicts again. Keys the policy does not take are ignored (see `push`)."""
        self.acting.push(obs)
        if self.acting.needs_chunk:
            m = self.metadata
            chunk = self.predict_action_chunk(self.acting.window())
            self.acting.queue(check_output(ACTIONS_OUTPUT, chunk, (1, m.horizon, m.action_dim))[0])
        return self.acting.pop().action
