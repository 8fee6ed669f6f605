"""Episode writing off the ROS callback thread: a bounded queue feeding one writer thread.

The node only enqueues (`begin`, `step`, `end`, `discard`); the thread owns the
`episode_dataset.EpisodeWriter` (streaming API), so HDF5 writes and fsyncs never block an
executor callback. A full queue drops the step (counted), never blocks the caller; control
commands (begin/end/discard) wait for room because losing one would corrupt episode bounds.

A failed write (a full disk, a file-size limit) loses the open episode, never the committed
ones: the writer discards it, counts the failure (`failures`, `last_error`: one line naming the
dataset and the error), calls `on_error`, and fails that episode's `end` future with
`WriteError`. Later steps of the lost episode are ignored; the next `begin` starts afresh.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset import EpisodeWriter, KeySpec
from episode_dataset.recording.sink import WriteError

_CLOSE = ("close",)


@dataclass
class WriterStats:
    enqueued_steps: int = 0
    dropped_steps: int = 0  # queue full
    written_steps: int = 0
    # counts and the last ones, not lists: a recorder that runs for weeks keeps its size
    episodes_written: int = 0
    last_episode: str | None = None
    errors: int = 0
    last_error: str | None = None
    bytes_written: int = 0


class EpisodeWriterThread:
    """Own an EpisodeWriter on a daemon thread; methods are safe to call from any one thread."""

    def __init__(
        self,
        path: str | Path,
        obs_specs: dict[str, KeySpec],
        action_spec: KeySpec,
        env_args: dict[str, Any],
        *,
        queue_size: int = 256,
        fsync: bool = True,
        on_episode_written: Callable[[str, int, str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        # Opened here (caller's thread) so that a bad path/spec fails at configure time.
        self._writer = EpisodeWriter(path, obs_specs, action_spec, env_args, fsync=fsync)
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=queue_size)
        self._on_written = on_episode_written
        self._on_error = on_error
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._episode_dropped = 0
        self._episode = ""  # name of the open episode
        self._lost: str | None = None  # why the episode begun last was lost
        self._thread = threading.Thread(target=self._run, name="episode-writer", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        return self._writer.path

    @property
    def failures(self) -> int:
        with self._lock:
            return self.stats.errors

    @property
    def last_error(self) -> str | None:
        with self._lock:
            return self.stats.last_error

    def begin(self, metadata: dict[str, Any]) -> None:
        self._queue.put(("begin", metadata))

    def step(self, obs: dict[str, np.ndarray], action: Any, reward: Any, done: Any) -> bool:
        """Queue one step; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(("step", obs, action, reward, done))
        except queue.Full:
            with self._lock:
                self.stats.dropped_steps += 1
                self._episode_dropped += 1
            return False
        with self._lock:
            self.stats.enqueued_steps += 1
        return True

    def end(self, metadata_update: dict[str, Any]) -> Future[tuple[str, int] | None]:
        """Queue the commit; the future gives (name, steps), None (no steps: nothing written)
        or raises WriteError."""
        done: Future[tuple[str, int] | None] = Future()
        self._queue.put(("end", metadata_update, done))
        return done

    def discard(self) -> None:
        self._queue.put(("discard",))

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Drain the queue, discard an episode still open, release the dataset lock."""
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.path}: writer thread did not finish in {timeout} s")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _CLOSE:
                    self._writer.discard_episode()
                    self._writer.close()
                    return
                self._handle(item)
            except Exception as e:  # the thread lives on; the episode is lost and reported
                self._fail(item, e)
                if item is _CLOSE:
                    return

    def _fail(self, item: tuple[Any, ...], error: Exception) -> None:
        detail = " ".join(str(error).split())  # h5py's messages span lines
        where = f"{self._episode} " if self._episode else ""
        msg = f"{self.path}: writing {where}failed: {type(error).__name__}: {detail}"
        self._episode = ""
        self._writer.discard_episode()
        with self._lock:
            self.stats.errors += 1
            self.stats.last_error = msg
        self._lost = msg
        if item[0] == "end":
            item[2].set_exception(WriteError(msg))
        if self._on_error is not None:
            self._on_error(msg)

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        w = self._writer
        if kind == "begin":
            w.discard_episode()  # a previous episode that never ended is not committed
            with self._lock:
                self._episode_dropped = 0
            self._lost = None
            self._episode = w.begin_episode(metadata=item[1])
        elif kind == "step":
            if not w.in_episode:
                return  # the episode was lost to an error: ignore its remaining steps
            _, obs, action, reward, done = item
            w.append_step(obs=obs, action=action, reward=reward, done=done)
            with self._lock:
                self.stats.written_steps += 1
                self.stats.bytes_written += sum(np.asarray(v).nbytes for v in obs.values())
        elif kind == "end":
            future = item[2]
            if not w.in_episode:
                if self._lost is not None:
                    future.set_exception(WriteError(self._lost))
                else:
                    future.set_result(None)
                return
            update = dict(item[1])
            with self._lock:
                update.setdefault("recorder_dropped_steps", self._episode_dropped)
            steps = w.current_steps
            if steps == 0:
                w.discard_episode()
                self._episode = ""
                future.set_result(None)
                return
            name = w.end_episode(metadata_update=update)
            self._episode = ""
            with self._lock:
                self.stats.episodes_written += 1
                self.stats.last_episode = name
            future.set_result((name, steps))
            if self._on_written is not None:
                self._on_written(name, steps, update.get("end_reason", ""))
        elif kind == "discard":
            w.discard_episode()
            self._episode = ""
