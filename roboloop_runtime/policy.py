"""The one policy interface shared by sim evaluation, export and the ROS policy node (torch-free).

A policy maps an observation history to a chunk of future actions:

    obs_history[key]: (B, obs_steps, *shape)  ->  actions: (B, horizon, A)

Window convention (the same in the DataModule): frames t-obs_steps+1 .. t are observed, the
chunk holds actions for steps t .. t+horizon-1, and the first `n_action_steps` of it are executed
before the policy is queried again (receding horizon). `QueuedChunkPolicy` implements the
per-step `select_action` on top of `predict_action_chunk` with an observation history and an
action queue, so subclasses (`TorchPolicy`, `OnnxPolicy`) only implement the batched chunk call.
"""

from __future__ import annotations

import collections
from typing import Any, Protocol, runtime_checkable

import numpy as np

from roboloop_runtime.contract import ModelInputError, ObsSpec, PolicyMetadata


@runtime_checkable
class Policy(Protocol):
    """What sim evaluation, the ROS node and benchmarks drive."""

    metadata: PolicyMetadata

    def reset(self) -> None:
        """Forget observation history and queued actions (call at episode start)."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One step: obs[key] (*shape) -> action (A,) float32."""

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


class QueuedChunkPolicy:
    """Per-step acting on top of chunk prediction: observation history + action queue.

    At the first step of an episode the history is padded by repeating the first frame
    (as the DataModule does at episode start). When the queue is empty the policy predicts
    a chunk of `horizon` actions and queues the first `n_action_steps` of them.
    Noise for the sampler comes from a seeded numpy Generator, so two implementations of the
    same model (torch, onnxruntime) given the same seed act identically.
    """

    metadata: PolicyMetadata

    def __init__(
        self, metadata: PolicyMetadata, seed: int = 0, n_action_steps: int | None = None
    ) -> None:
        if n_action_steps is not None:
            metadata = PolicyMetadata(
                **{**metadata.__dict__, "n_action_steps": int(n_action_steps)}
            )
        self.metadata = metadata
        self.rng = np.random.default_rng(seed)
        self._history: dict[str, collections.deque[np.ndarray]] = {}
        self._queue: collections.deque[np.ndarray] = collections.deque()

    # ---- the part subclasses implement -------------------------------------------------
    def _predict(self, obs_history: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """obs_history[key] (B, obs_steps, *shape), noise (B, horizon, A) -> (B, horizon, A)."""
        raise NotImplementedError

    # ---- the interface -----------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Clear history and queue; with `seed`, also restart the noise generator."""
        self._history = {}
        self._queue.clear()
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def sample_noise(self, batch: int) -> np.ndarray:
        """Sampler start point x0 ~ N(0, I): (B, horizon, A) float32."""
        m = self.metadata
        return self.rng.standard_normal((batch, m.horizon, m.action_dim), dtype=np.float32)

    def predict_action_chunk(
        self, obs_history: dict[str, np.ndarray], noise: np.ndarray | None = None
    ) -> np.ndarray:
        m = self.metadata
        checked = {
            key: check_observation(key, _get(obs_history, key), spec, (-1, m.obs_steps))
            for key, spec in m.observations.items()
        }
        batch = {a.shape[0] for a in checked.values()}
        if len(batch) != 1:
            raise ModelInputError(f"observations disagree on batch size: {sorted(batch)}")
        (b,) = batch
        if noise is None:
            noise = self.sample_noise(b)
        elif noise.shape != (b, m.horizon, m.action_dim):
            raise ModelInputError(
                f"input 'noise': shape {noise.shape} != {(b, m.horizon, m.action_dim)}"
            )
        return self._predict(checked, np.asarray(noise, dtype=np.float32))

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        m = self.metadata
        # Check every key before touching the history, and copy: callers may reuse buffers.
        frames = {
            key: np.array(check_observation(key, _get(obs, key), spec), copy=True)
            for key, spec in m.observations.items()
        }
        for key, frame in frames.items():
            hist = self._history.get(key)
            if hist is None:
                # Episode start: pad by repeating the first frame, as in training windows.
                hist = self._history[key] = collections.deque(
                    [frame] * m.obs_steps, maxlen=m.obs_steps
                )
            else:
                hist.append(frame)
        if not self._queue:
            batch = {key: np.stack(h)[None] for key, h in self._history.items()}
            chunk = self.predict_action_chunk(batch)[0]  # (horizon, A)
            self._queue.extend(chunk[: m.n_action_steps])
        return self._queue.popleft()


def _get(obs: dict[str, np.ndarray], key: str) -> np.ndarray:
    try:
        return obs[key]
    except KeyError:
        raise ModelInputError(f"observation {key!r} missing (got keys {sorted(obs)})") from None
