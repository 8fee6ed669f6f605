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
    """An `EpisodeSink` that writes at once; a write error propagates to the caller (the
    committed episodes stay valid, the open one is discarded by the writer's close)."""

    failures = 0
    last_error = None

    def __init__(self, writer: EpisodeWriter) -> None:
        self.writer = writer
        self.stats = SinkStats()
        self.episodes_written: list[tuple[str, int]] = []

    def begin(self, metadata: dict[str, Any]) -> None:
        self.writer.discard_episode()  # an episode that never ended is not committed
        self.writer.begin_episode(metadata=metadata)

    def step(self, obs: dict[str, np.ndarray], action: Any, reward: Any, done: Any) -> bool:
        self.writer.append_step(obs=obs, action=action, reward=reward, done=done)
        return True

    def end(self, metadata_update: dict[str, Any]) -> Future[tuple[str, int] | None]:
        result: Future[tuple[str, int] | None] = Future()
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
        self.writer.discard_episode()
