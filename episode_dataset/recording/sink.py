"""Where a `RecordingSession` sends its episodes: the interface, and a synchronous sink.

The live recorder hands episodes to a writer thread (`roboloop_recorder.writer_thread`), which
may drop steps when its queue is full rather than block a ROS callback. A bag import has no
callback to protect and must not lose a step, so `DirectSink` writes in the caller's thread.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from episode_dataset.writer import EpisodeWriter


class WriteError(RuntimeError):
    """Writing the dataset failed; the episode being written is lost."""


@dataclass
class SinkStats:
    dropped_steps: int = 0


class EpisodeSink(Protocol):
    """What the session calls. `end` answers (episode name, steps), None when the episode had
    no steps (nothing written), or raises WriteError."""

    stats: Any  # has `dropped_steps`

    @property
    def failures(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    def begin(self, metadata: dict[str, Any]) -> None: ...

    def step(self, obs: dict[str, np.ndarray], action: Any, reward: Any, done: Any) -> bool: ...

    def end(self, metadata_update: dict[str, Any]) -> Future[tuple[str, int] | None]: ...

    def discard(self) -> None: ...


class DirectSink:
    """An `EpisodeSink` that writes in the caller's thread; a write error propagates to the
    caller (the committed episodes stay valid, the open one is discarded by the writer's close).

    Steps are gathered and handed to the writer `batch_steps` at a time (and at the end of the
    episode): one coerce and one write per key per batch instead of per step. The rows are
    referenced, not copied, until then: the session hands over arrays it does not reuse."""

    failures = 0
    last_error = None

    def __init__(self, writer: EpisodeWriter, batch_steps: int = 256) -> None:
        self.writer = writer
        self.stats = SinkStats()
        self.episodes_written: list[tuple[str, int]] = []
        self.batch_steps = batch_steps
        self._steps: list[tuple[dict[str, np.ndarray], Any, Any, Any]] = []

    def begin(self, metadata: dict[str, Any]) -> None:
        self._steps.clear()
        self.writer.discard_episode()  # an episode that never ended is not committed
        self.writer.begin_episode(metadata=metadata)

    def step(self, obs: dict[str, np.ndarray], action: Any, reward: Any, done: Any) -> bool:
        self._steps.append((obs, action, reward, done))
        if len(self._steps) >= self.batch_steps:
            self._write_steps()
        return True

    def _write_steps(self) -> None:
        if not self._steps:
            return
        steps, self._steps = self._steps, []
        obs, actions, rewards, dones = zip(*steps, strict=True)
        stacked = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        self.writer.append_steps(stacked, np.stack(actions), np.asarray(rewards), dones)

    def end(self, metadata_update: dict[str, Any]) -> Future[tuple[str, int] | None]:
        result: Future[tuple[str, int] | None] = Future()
        self._write_steps()
        steps = self.writer.current_steps
        if steps == 0:
            self.writer.discard_episode()
            result.set_result(None)
            return result
        update = {"recorder_dropped_steps": 0, **metadata_update}
        name = self.writer.end_episode(metadata_update=update)
        self.episodes_written.append((name, steps))
        result.set_result((name, steps))
        return result

    def discard(self) -> None:
        self._steps.clear()
        self.writer.discard_episode()
