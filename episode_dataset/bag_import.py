"""rosbag2 (MCAP or sqlite3) -> episode dataset, through the live recorder's own session.

A bag is replayed into `episode_dataset.recording.RecordingSession`, the state machine the
recorder node runs: the same validation (counted per topic and reason), the same headerless
stamping, the same alignment by `header.stamp`. A bag has no wall clock, so the session's clock
is the bag's log time (when rosbag2 received each message): lag, late and future-stamp rules act
as they did live. The recorder node's alignment timer (every half period) is replayed on the log
time too: between two messages nothing changes, so one tick at the last timer time before a
message stands for all the timer ticks since the previous one.

Episodes end on a done step (the session's rule) and, optionally:
- `services`: the recorded calls of the recorder's `~/start_episode` and `~/stop_episode`
  (`<services>/start_episode/_service_event`, the topics rosbag2 records in Kilted when service
  introspection is on, `ros2 bag record --all-services`); episodes then start only by those
  calls, each call acted on once, at its first request event (client or server side);
- `gap_s`: a pause in the bag's messages longer than this ends the open episode and a new one
  starts with the next message (unless episodes come from the services).
Otherwise recording starts with the bag's first message (`record_on_activate`) and restarts
after every done (`restart_after_done`), as the node does.

A message that cannot be deserialized (a corrupt record) is counted (`deserialize`), like a
message the session rejects; the rest of the bag is imported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from episode_dataset._files import shard_dir_for
from episode_dataset.cdr import Deserializer
from episode_dataset.recording.params import (
    read_params_file,
    recording_from_params,
    session_config,
)
from episode_dataset.recording.session import RecordingSession
from episode_dataset.recording.sink import DirectSink
from episode_dataset.recording.topics import RecorderConfigError, dataset_specs
from episode_dataset.writer import EpisodeWriter

SERVICE_EVENT = "/_service_event"
START, STOP = "start_episode", "stop_episode"
REQUEST_EVENTS = (0, 1)  # service_msgs/ServiceEventInfo REQUEST_SENT, REQUEST_RECEIVED


# An import can be rerun, so it lists its episodes in the index (after one sync of the disk)
# every this many seconds and at the end, not after each one: see EpisodeWriter.index_every_s.
INDEX_EVERY_S = 2.0


class BagImportError(ValueError):
    """A bag that cannot be imported as configured (one line naming the bag and topic)."""


@dataclass
class ImportReport:
    bag: str
    out: str
    messages: int = 0
    episodes: list[tuple[str, int]] = field(default_factory=list)  # (name, steps)
    counters: dict[str, Any] = field(default_factory=dict)  # the session's, over the bag
    service_calls: dict[str, int] = field(default_factory=dict)
    unreadable_service_events: int = 0
    gaps: int = 0

    @property
    def steps(self) -> int:
        return sum(n for _, n in self.episodes)

    def counts(self) -> str:
        """The session's counters in one line: what was rejected, and why."""
        c = self.counters
        invalid = {
            f"{topic} {reason}": n
            for topic, counts in c.get("topics", {}).items()
            for reason, n in counts["invalid"].items()
        }
        return (
            f"invalid {c.get('invalid_total', 0)}"
            + (f" ({', '.join(f'{k}: {n}' for k, n in invalid.items())})" if invalid else "")
            + f", stale steps {c.get('stale_steps', 0)}, relocks {c.get('relocks', 0)}, "
            f"time jumps {c.get('time_jumps', 0)}, lost dones {c.get('lost_dones', 0)}, "
            f"unanchored {c.get('unanchored', 0)}"
        )

    def summary(self) -> str:
        lines = [
            f"{self.bag}: {self.messages} messages -> {len(self.episodes)} episodes, "
            f"{self.steps} steps in {self.out}",
            f"  {self.counts()}",
        ]
        if self.service_calls or self.gaps or self.unreadable_service_events:
            lines.append(
                f"  service calls {self.service_calls} (unreadable events "
                f"{self.unreadable_service_events}), gaps {self.gaps}"
            )
        return "\n".join(lines)


def bag_typestore(connections: list[Any]) -> Any:
    """A rosbags Typestore for `connections`: the .msg definitions the bag carries (rosbag2
    writes them since Iron), or Kilted's types where a connection has none."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    msg = MessageDefinitionFormat.MSG
    own = all(c.msgdef.format == msg for c in connections)
    store = get_typestore(Stores.EMPTY if own else Stores.ROS2_KILTED)
    if own:
        for c in connections:
            store.register(get_types_from_msg(c.msgdef.data, c.msgtype))
    return store


class ServiceEvents:
    """Reads the `info` (service_msgs/ServiceEventInfo) of any `<service>/_service_event`
    message: it is the event's first field, so its CDR is the message's first bytes. (rosbags
    0.11.9 cannot name `*/srv/*` types, so the events are not deserialized whole.)"""

    TYPE = "service_msgs/msg/ServiceEventInfo"

    def __init__(self) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.store = get_typestore(Stores.ROS2_KILTED)
        info = self.store.types[self.TYPE]
        time = self.store.types["builtin_interfaces/msg/Time"]
        blank = info(event_type=0, stamp=time(sec=0, nanosec=0),
                     client_gid=np.zeros(16, np.uint8), sequence_number=0)  # fmt: skip
        self.size = len(self.store.serialize_cdr(blank, self.TYPE))

    def info(self, raw: bytes) -> Any:
        return self.store.deserialize_cdr(raw[: self.size], self.TYPE)


def import_bag(
    bag: str | Path,
    params_file: str | Path,
    out: str | Path,
    *,
    services: str | None = None,
    gap_s: float | None = None,
    fsync: bool = True,
    log: Callable[[str], None] | None = None,
) -> ImportReport:
    """Import `bag` into the dataset `out` (created, or appended to) as the recorder configured
    by `params_file` (its ROS parameter file) would have recorded it live.

    An import that yields no episode is a BagImportError with the session's counters (why
    every step was rejected); a dataset it created is then removed, one it appended to is as
    it was."""
    if gap_s is not None and not gap_s > 0:
        raise BagImportError(f"--gap-s must be positive, got {gap_s}")
    out = Path(out)
    params = read_params_file(params_file)
    recording = recording_from_params(params, source=str(params_file))
    config = session_config(params, recording, source=str(params_file))
    config.metadata = {"source_bag": str(bag)}
    try:
        session = RecordingSession(recording.topics, config, log=log)
    except ValueError as e:  # a setting the session refuses (e.g. reference_key)
        raise RecorderConfigError(f"{params_file}: {e}") from None
    if not services and not params["record_on_activate"]:
        raise RecorderConfigError(
            f"{params_file}: record_on_activate is false and no services are given: "
            "nothing would start an episode"
        )
    report = ImportReport(str(bag), str(out))
    created = not out.exists()
    written: list[tuple[str, int]] | None = None  # the episodes, once the writer is open
    try:
        with _open_bag(bag) as reader:
            connections = _connections(reader, session, bag)
            service_topics = _service_topics(reader, services)
            with _bag_errors(bag, "its message definitions are unreadable"):
                store = bag_typestore(connections)
            obs_specs, action_spec = dataset_specs(recording.topics)
            with EpisodeWriter(
                out,
                obs_specs,
                action_spec,
                recording.env_args,
                fsync=fsync,
                index_every_s=INDEX_EVERY_S,
            ) as w:
                sink = DirectSink(w)
                written = sink.episodes_written
                session.attach(sink)
                try:
                    _replay(
                        reader, store, session, connections, service_topics, report, gap_s,
                        services, log,
                    )  # fmt: skip
                except BagImportError as e:
                    # The writer discards the open episode and lists the finished ones.
                    if not written:
                        raise BagImportError(f"{e}; no episode before it") from None
                    kept = len(written)
                    raise BagImportError(
                        f"{e}; the {kept} episodes before it are in {out}"
                    ) from None
    finally:
        if written is not None and not written and created:
            _remove_new_dataset(out)
    report.episodes = list(written)
    report.counters = session.counters()
    if not report.episodes:
        where = f"{out} not written" if created else f"nothing added to {out}"
        raise BagImportError(
            f"{bag}: no episode in {report.messages} messages ({report.counts()}); {where}"
        )
    return report


def _remove_new_dataset(out: Path) -> None:
    """Remove the dataset this import created and wrote no episode to: its index and its shard
    directory (which then holds only the writer's lock file)."""
    out.unlink(missing_ok=True)
    shards = shard_dir_for(out)
    (shards / ".lock").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        shards.rmdir()


@contextmanager
def _bag_errors(bag: str | Path, what: str) -> Iterator[None]:
    """What rosbags raises on a damaged bag (its ReaderError, and struct, overflow, unicode,
    YAML or sqlite errors from the bytes it parses) as one BagImportError line."""
    try:
        yield
    except BagImportError:
        raise
    except Exception as e:  # only rosbags' own calls run inside
        raise BagImportError(f"{bag}: {what} ({_one_line(e)})") from None


@contextmanager
def _open_bag(bag: str | Path) -> Iterator[Any]:
    from rosbags.rosbag2 import Reader

    with _bag_errors(bag, "not a readable rosbag2 bag"):
        reader = Reader(Path(bag))
        reader.open()
    try:
        yield reader
    finally:
        reader.close()


def _messages(reader: Any, connections: list[Any], bag: str | Path) -> Iterator[Any]:
    """reader.messages(...), with a damaged record as one BagImportError line: a reader cannot
    resynchronize after one, so the import stops there."""
    messages = reader.messages(connections=connections)
    last = "its start"
    while True:
        with _bag_errors(bag, f"unreadable after {last}"):
            item = next(messages, None)
        if item is None:
            return
        last = f"t={item[1] * 1e-9:.3f} s"
        yield item


def _connections(reader: Any, session: RecordingSession, bag: str | Path) -> list[Any]:
    """The bag's connections of the recorded topics; a topic missing or of another type is an
    error (no step could be complete)."""
    by_topic: dict[str, list[Any]] = {}
    for conn in reader.connections:
        if conn.topic in session.specs:
            by_topic.setdefault(conn.topic, []).append(conn)
    for topic, spec in session.specs.items():
        conns = by_topic.get(topic)
        if not conns:
            raise BagImportError(f"{bag}: topic {topic} ({spec.key}) is not in the bag")
        other = {c.msgtype for c in conns} - {spec.type}
        if other:
            raise BagImportError(
                f"{bag}: topic {topic} holds {sorted(other)}, the config records {spec.type}"
            )
    return [c for conns in by_topic.values() for c in conns]


def _service_topics(reader: Any, services: str | None) -> dict[str, str]:
    """service event topic -> START or STOP (empty without `services`)."""
    if not services:
        return {}
    prefix = services.rstrip("/")
    wanted = {f"{prefix}/{name}{SERVICE_EVENT}": name for name in (START, STOP)}
    found = {c.topic for c in reader.connections if c.topic in wanted}
    if f"{prefix}/{START}{SERVICE_EVENT}" not in found:
        raise BagImportError(
            f"no {prefix}/{START}{SERVICE_EVENT} in the bag: record it with service "
            "introspection on (ros2 bag record --all-services), or leave out --services"
        )
    return {t: wanted[t] for t in found}


def _replay(
    reader: Any,
    store: Any,
    session: RecordingSession,
    connections: list[Any],
    service_topics: dict[str, str],
    report: ImportReport,
    gap_s: float | None,
    services: str | None,
    log: Callable[[str], None] | None,
) -> None:
    half = session.period / 2  # the recorder node's alignment timer
    deserialize = Deserializer(store)
    events = ServiceEvents() if service_topics else None
    extra = [c for c in reader.connections if c.topic in service_topics]
    calls_seen: set[tuple[bytes, int]] = set()
    next_tick = -math.inf
    last: float | None = None
    for conn, t_ns, raw in _messages(reader, connections + extra, report.bag):
        now = t_ns * 1e-9
        if last is None:
            next_tick = now + half
            if not services:
                session.start_episode()
        elif gap_s is not None and now - last > gap_s:
            report.gaps += 1
            session.finish(last, reason="gap")
            if not services:
                session.start_episode()
            next_tick = now + half
        if now >= next_tick:  # the timer ticks since the last message, as one
            ticks = math.floor((now - next_tick) / half)
            session.tick(next_tick + ticks * half)
            next_tick += (ticks + 1) * half
        last = now
        report.messages += 1
        if conn.topic in session.specs:
            try:
                msg = deserialize(raw, conn.msgtype)
            except Exception as e:  # a corrupt record: counted, the bag goes on
                session.count_undecodable(conn.topic, _one_line(e), now)
                continue
            session.on_message(conn.topic, msg, now)
            continue
        call = service_topics[conn.topic]
        try:
            info = events.info(raw)
        except Exception as e:  # counted and said once; the calls it held are lost
            report.unreadable_service_events += 1
            if report.unreadable_service_events == 1 and log is not None:
                log(f"{conn.topic}: a service event cannot be read: {_one_line(e)}")
            continue
        key = (bytes(info.client_gid), int(info.sequence_number))
        if info.event_type not in REQUEST_EVENTS or key in calls_seen:
            continue
        calls_seen.add(key)
        report.service_calls[call] = report.service_calls.get(call, 0) + 1
        if call == START:
            session.start_episode()
        else:
            session.stop_episode("service")
    if last is not None:
        session.finish(last, reason="end of bag")


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:200]
