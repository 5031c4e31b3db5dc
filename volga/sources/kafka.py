"""``KafkaSource``: JSON messages of a Kafka topic (confluent-kafka), read bounded or followed.

Two ways to read, chosen by ``follow`` or, when it is None, by the job's mode:

* **bounded** (offline, ``follow=False``): every partition from its earliest offset up to its
  high-water mark *at open*, then the source is finished. Nothing is committed: a backfill
  never moves a consumer group.
* **following** (online, ``follow=True``): every partition from the group's committed offset
  (``group_id``), else from ``start_from`` (``"earliest"`` by default), until the job stops.
  ``commit()`` (called by the runtime once a micro-batch is in the stores) commits the
  offsets of every message handed out so far: at-least-once delivery.

Partitions are assigned to this one reader (``assign``, no group rebalancing) and fetched
in parallel by librdkafka's threads; each partition's order is kept. The reader tells the
engine each row's partition and offset: the engine keeps a watermark per partition (the
source's is the minimum over partitions that are not idle), judges lateness per partition
and orders rows by event time, ties by (partition, offset), in both modes. A partition is
idle only once it has handed out everything the broker holds (end of partition) and sent
no row for the source's ``idle_timeout``.

A message is one JSON object (or what ``deserializer(bytes)`` returns). ``format`` names the
message encoding; ``"json"`` is the only one built (any other, e.g. ``"avro"``, is refused
when the source is made: give a ``deserializer`` that returns a dict per message instead).
A malformed message (invalid JSON, not an object, a missing or ill-typed field) never
stops the job: it is counted (``reader.malformed_count``), kept in ``reader.rejected`` and
written with its reason to ``dead_letter_topic`` (headers ``volga.reason``, ``volga.source``,
``volga.topic``, ``volga.partition``, ``volga.offset``) and/or ``dead_letter_path``
(JSON lines, see :class:`~volga.sources.messages.DeadLetterFile`).

Connection problems: ``open`` fails within ``connect_timeout`` with a ``ConnectionError``
naming the servers and librdkafka's reason (unreachable broker, failed SASL handshake), and
with a ``ValueError`` if the topic does not exist. Once running, a lost broker is retried by
librdkafka in the background (logged, never fatal); reading resumes when it is back.
SASL passwords are kept in a :class:`~volga.sources.messages.Secret` and never logged.

>>> src = KafkaSource("orders", "127.0.0.1:9092", group_id="features", sasl_username="svc",
...                   sasl_password="hunter2")
>>> src
KafkaSource(topic='orders', bootstrap_servers='127.0.0.1:9092', group_id='features')
>>> src.bounded  # follow=None: bounded in offline jobs, following in online ones
True
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from volga.api.entity import Schema
from volga.api.types import Duration, parse_duration_us
from volga.sources.base import Rejected, Source, SourceMode, SourceReader
from volga.sources.messages import (
    DeadLetter,
    DeadLetterFile,
    DeadLetterRecord,
    DeadLetters,
    JsonDecoder,
    Secret,
    as_secret,
    optional_import,
)

__all__ = ["SUPPORTED_FORMATS", "KafkaSource"]

# Message encodings KafkaSource decodes itself (``format=``). Avro is not built.
SUPPORTED_FORMATS: tuple[str, ...] = ("json",)

log = logging.getLogger("volga.sources.kafka")
_WARN_EVERY_S = 10.0
# How long a commit waits for dead letters to be acknowledged before holding back (the
# producer keeps retrying; the next commit looks again).
_DEAD_LETTER_FLUSH_S = 1.0


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class KafkaSource(Source):
    """A Kafka topic of JSON messages. See the module docstring for both ways of reading.

    ``config`` passes extra librdkafka consumer settings through (e.g. TLS options).
    """

    topic: str
    bootstrap_servers: str
    group_id: str | None = None
    format: str = "json"
    follow: bool | None = dataclasses.field(default=None, kw_only=True)
    start_from: Literal["earliest", "latest"] = dataclasses.field(default="earliest", kw_only=True)
    deserializer: Callable[[bytes], Any] | None = dataclasses.field(default=None, kw_only=True)
    dead_letter_topic: str | None = dataclasses.field(default=None, kw_only=True)
    dead_letter_path: str | Path | None = dataclasses.field(default=None, kw_only=True)
    sasl_username: str | None = dataclasses.field(default=None, kw_only=True)
    sasl_password: str | Secret | None = dataclasses.field(default=None, kw_only=True)
    sasl_mechanism: str = dataclasses.field(default="PLAIN", kw_only=True)
    security_protocol: str | None = dataclasses.field(default=None, kw_only=True)
    connect_timeout: Duration = dataclasses.field(default="10s", kw_only=True)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        owner = f"KafkaSource({self.topic!r})"
        if not self.topic or not isinstance(self.topic, str):
            raise ValueError(f"KafkaSource: topic must be a non-empty string, not {self.topic!r}")
        if self.format not in SUPPORTED_FORMATS:
            supported = ", ".join(repr(f) for f in SUPPORTED_FORMATS)
            raise ValueError(
                f"{owner}: format={self.format!r} is not supported; supported formats: {supported} "
                "(for another encoding, pass deserializer=<function(bytes) -> dict>)"
            )
        if not self.bootstrap_servers:
            raise ValueError(f"{owner}: bootstrap_servers is empty (e.g. 'broker1:9092,broker2:9092')")
        if self.start_from not in ("earliest", "latest"):
            raise ValueError(f"{owner}: start_from must be 'earliest' or 'latest', not {self.start_from!r}")
        if (self.sasl_username is None) != (self.sasl_password is None):
            raise ValueError(f"{owner}: give both sasl_username and sasl_password, or neither")
        parse_duration_us(self.connect_timeout, what=f"{owner}: connect_timeout")
        object.__setattr__(self, "sasl_password", as_secret(self.sasl_password))

    @property
    def bounded(self) -> bool:
        return self.follow is not True

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        follow = self.follow if self.follow is not None else mode == "online"
        return KafkaReader(self, schema, name=name, follow=follow)

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka settings shared by the consumer and the dead-letter producer."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "socket.connection.setup.timeout.ms": max(1000, parse_duration_us(self.connect_timeout) // 1000),
            "log.connection.close": False,
        }
        if self.sasl_username is not None:
            assert isinstance(self.sasl_password, Secret)
            conf.update(
                {
                    "security.protocol": self.security_protocol or "SASL_PLAINTEXT",
                    "sasl.mechanism": self.sasl_mechanism,
                    "sasl.username": self.sasl_username,
                    "sasl.password": self.sasl_password.get(),
                }
            )
        elif self.security_protocol:
            conf["security.protocol"] = self.security_protocol
        return conf

    def describe(self) -> str:
        follow = "" if self.follow is None else f", follow={self.follow}"
        group = f", group_id={self.group_id!r}" if self.group_id else ""
        return f"KafkaSource(topic={self.topic!r}, bootstrap_servers={self.bootstrap_servers!r}{group}{follow})"

    __repr__ = describe


class _CapturingLogger(logging.Logger):
    """librdkafka's log lines go to ``volga.sources.kafka`` at DEBUG; the last error is kept."""

    def __init__(self) -> None:
        super().__init__("volga.sources.kafka.librdkafka")
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg) % args if args else str(msg)
        if level >= logging.ERROR:
            self.last_error = text
        log.debug("librdkafka: %s", text)


class KafkaReader(SourceReader):
    def __init__(self, source: KafkaSource, schema: Schema, *, name: str, follow: bool) -> None:
        super().__init__()
        ck = optional_import("confluent_kafka", extra="kafka", what="KafkaSource")
        self._ck = ck
        self._source, self._name, self._follow = source, name, follow
        self._topic = source.topic
        self._decoder = JsonDecoder(schema, source.deserializer)
        self._timeout_s = parse_duration_us(source.connect_timeout) / 1e6
        self._librdkafka_log = _CapturingLogger()
        self._last_error: str | None = None
        self._warned_at = 0.0
        self._commits = source.group_id is not None and follow
        self._next: dict[int, int] = {}  # partition -> offset after the last message handed out
        self._committed: dict[int, int] = {}  # partition -> offset the broker acknowledged
        # a checkpointed job's: the offsets of its last written checkpoint, the only ones it commits
        self._checkpointed: dict[int, int] | None = None
        self._end: dict[int, int] = {}  # bounded: partition -> end offset, while still reading it
        self._frozen: set[int] = set()  # bounded: partitions whose end is fixed
        self._end_reached: set[int] = set()
        self._eof: dict[int, int] = {}  # partition -> offset of its last end-of-partition event
        self._partition_ids: tuple[int, ...] = ()
        self._start: dict[int, int] = {}
        self._consumer: Any = None
        self._producer: Any = None
        sinks: list[DeadLetter] = []
        try:
            self._consumer = ck.Consumer(self._consumer_config())
            partitions = self._partitions()
            self._partition_ids = tuple(partitions)
            self._assign(partitions)
            if source.dead_letter_topic:
                self._producer = ck.Producer({**source.consumer_config(), "logger": self._librdkafka_log})
                sinks.append(_DeadLetterTopic(self._producer, source.dead_letter_topic))
            if source.dead_letter_path is not None:
                sinks.append(DeadLetterFile(source.dead_letter_path))
        except BaseException:
            self.close()
            raise
        self._dead = DeadLetters(sinks)

    # -- setup ---------------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        source = self._source
        return {
            **source.consumer_config(),
            # librdkafka needs a group even with assign(); offsets are committed only for a
            # user-given group_id, and only when following.
            "group.id": source.group_id or f"volga-{self._name}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": source.start_from,
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
            "logger": self._librdkafka_log,
            # End-of-partition events tell a bounded read where to stop and a following
            # one which partitions are caught up (only those may be idle).
            "enable.partition.eof": True,
            **source.config,
        }

    def _where(self) -> str:
        return f"source '{self._name}': Kafka at {self._source.bootstrap_servers!r}"

    def _partitions(self) -> list[int]:
        ck, timeout = self._ck, self._timeout_s
        try:
            metadata = self._consumer.list_topics(self._topic, timeout=timeout)
        except ck.KafkaException as e:
            raise ConnectionError(f"{self._where()}: no answer within {timeout:g}s ({self._reason(e)})") from None
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            why = topic.error.str() if topic is not None and topic.error is not None else "not in the metadata"
            raise ValueError(f"{self._where()}: topic {self._topic!r} does not exist ({why})")
        return sorted(topic.partitions)

    def _reason(self, error: Exception) -> str:
        """librdkafka's own words for a failure: the last error it reported, else the exception."""
        self._consumer.poll(0)  # serve pending error callbacks
        detail = self._last_error or self._librdkafka_log.last_error
        text = error.args[0].str() if error.args and hasattr(error.args[0], "str") else str(error)
        return f"{text}; last error: {detail}" if detail else text

    def _assign(self, partitions: list[int]) -> None:
        ck, timeout = self._ck, self._timeout_s
        start: dict[int, int] = {}
        if self._follow:
            begin = ck.OFFSET_BEGINNING if self._source.start_from == "earliest" else ck.OFFSET_END
            start = dict.fromkeys(partitions, begin)
            if self._source.group_id is not None:
                tps = [ck.TopicPartition(self._topic, p) for p in partitions]
                try:
                    committed = self._consumer.committed(tps, timeout=timeout)
                except ck.KafkaException as e:
                    raise ConnectionError(f"{self._where()}: could not read committed offsets ({self._reason(e)})") from None
                for tp in committed:
                    if tp.offset >= 0:
                        start[tp.partition] = self._committed[tp.partition] = tp.offset
        else:
            for p in partitions:
                try:
                    _low, high = self._consumer.get_watermark_offsets(ck.TopicPartition(self._topic, p), timeout=timeout)
                except ck.KafkaException as e:
                    raise ConnectionError(f"{self._where()}: could not read offsets ({self._reason(e)})") from None
                start[p], self._end[p] = ck.OFFSET_BEGINNING, high
        self._start = start
        self._consumer.assign([ck.TopicPartition(self._topic, p, offset) for p, offset in start.items()])

    # -- callbacks (run inside consume()) --------------------------------------------------

    def _on_error(self, error: Any) -> None:
        self._last_error = error.str()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("%s: %s (retrying)", self._where(), self._last_error)

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        if error is not None:
            log.warning("%s: offset commit failed, will retry with the next batch: %s", self._where(), error.str())
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self._committed[tp.partition] = tp.offset

    # -- reading -------------------------------------------------------------------------

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        if self.finished:
            return None
        messages = self._consumer.consume(num_messages=max_rows, timeout=0)
        if not messages:
            return None
        values: list[bytes | None] = []
        kept: list[Any] = []
        parts: list[int] = []
        offsets: list[int] = []
        bounded, end, nxt = not self._follow, self._end, self._next
        eof: list[tuple[int, int]] = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == self._ck.KafkaError._PARTITION_EOF:
                    eof.append((m.partition(), m.offset()))
                else:
                    self._on_error(error)
                continue
            p, offset = m.partition(), m.offset()
            if bounded:
                if p not in self._frozen:
                    self._freeze_end(p)
                if offset >= end.get(p, 0):
                    continue  # produced after the read started: not part of the bounded read
            nxt[p] = offset + 1
            values.append(m.value())
            kept.append(m)
            parts.append(p)
            offsets.append(offset)
        for p, offset in eof:
            self._eof[p] = offset
        if bounded:
            self._stop_finished_partitions(eof)
        if not values:
            return None
        self.entered_at = time.perf_counter()
        df, bad = self._decoder.decode(values)
        part_arr, off_arr = np.asarray(parts, dtype=np.int32), np.asarray(offsets, dtype=np.int64)
        if bad:
            self._set_aside([(kept[i], reason) for i, reason in bad])
            good = np.ones(len(values), dtype=bool)
            good[[i for i, _ in bad]] = False
            part_arr, off_arr = part_arr[good], off_arr[good]
        self.last_partitions, self.last_offsets = part_arr, off_arr
        self.rows_read += df.height
        return df if df.height else None

    @property
    def partition_ids(self) -> tuple[int, ...]:
        return self._partition_ids

    def caught_up(self, partition: int) -> bool:
        """Every message the broker holds in ``partition`` has been handed out: known from an
        end-of-partition event at or after the next offset, or from the high-water mark the
        consumer last heard (cached, no request). Both, because librdkafka signals the end
        only when its fetch position equals the high-water mark, and a broker that reports
        a lower one (Tansu: the last batch's base offset) would otherwise never signal it."""
        if not self._follow and partition not in self._end:
            return True
        nxt = self._next.get(partition, 0)
        if self._eof.get(partition, -1) >= nxt:
            return True
        _low, high = self._consumer.get_watermark_offsets(self._ck.TopicPartition(self._topic, partition), cached=True)
        return high is not None and 0 <= high <= nxt

    def partition_finished(self, partition: int) -> bool:
        return not self._follow and partition not in self._end

    def position(self) -> dict[str, int]:
        """Per partition, the offset of the next message to hand out (only partitions read so far)."""
        return {str(p): offset for p, offset in self._next.items()}

    def rewind(self) -> None:
        """Every partition from its earliest offset (ignoring committed group offsets)."""
        self.seek({str(p): self._ck.OFFSET_BEGINNING for p in self._partition_ids})
        self._next.clear()

    def seek(self, position: dict[str, int]) -> None:
        """Re-assign every partition at its offset in ``position`` (others keep their start)."""
        ck = self._ck
        wanted = {int(p): int(o) for p, o in position.items()}
        unknown = sorted(set(wanted) - set(self._partition_ids))
        if unknown:
            raise ValueError(f"{self._where()}: cannot resume topic {self._topic!r} at partitions {unknown}: it has {list(self._partition_ids)}")
        self._next.update(wanted)
        assigned = []
        for p in self._partition_ids:
            if not self._follow:
                if p not in self._end:
                    continue
                if wanted.get(p, 0) >= self._end[p]:
                    del self._end[p]  # this partition's bounded read was already complete
                    continue
            assigned.append(ck.TopicPartition(self._topic, p, wanted.get(p, self._start[p])))
        self._consumer.assign(assigned)

    def backlog(self) -> int | None:
        """Offsets behind: per partition read so far, the high-water mark the consumer last
        heard from the broker (cached, no request) minus the next offset to hand out."""
        total, known = 0, False
        for p, nxt in list(self._next.items()):
            _low, high = self._consumer.get_watermark_offsets(self._ck.TopicPartition(self._topic, p), cached=True)
            if high is not None and high >= 0:
                known = True
                total += max(0, high - nxt)
        return total if known else None

    def _freeze_end(self, p: int) -> None:
        """Fix partition ``p``'s end when its first fetch answers: the high-water mark then.

        The end listed at open is a lower bound; some brokers (Tansu) list the last batch's
        base offset there, so the high-water mark of the first fetch response is used when
        it is higher. Either way the read is bounded: later messages are not waited for.
        """
        self._frozen.add(p)
        _low, high = self._consumer.get_watermark_offsets(self._ck.TopicPartition(self._topic, p), cached=True)
        if high is not None and high > self._end.get(p, 0):
            self._end[p] = high

    def _stop_finished_partitions(self, eof: list[tuple[int, int]]) -> None:
        for p, offset in eof:
            if p in self._end and p not in self._frozen:
                self._freeze_end(p)
            if p in self._end and offset >= self._end[p]:
                self._next.setdefault(p, offset)
                self._end_reached.add(p)
        done = [p for p, high in self._end.items() if p in self._end_reached or (p in self._frozen and self._next.get(p, 0) >= high)]
        if done:
            self._consumer.incremental_unassign([self._ck.TopicPartition(self._topic, p) for p in done])
            for p in done:
                del self._end[p]

    def _set_aside(self, bad: list[tuple[Any, str]]) -> None:
        records = []
        for m, reason in bad:
            where = {"topic": self._topic, "partition": m.partition(), "offset": m.offset()}
            records.append(DeadLetterRecord(self._name, reason, m.value(), where))
            self.rejected.append(Rejected(self._name, f"partition {m.partition()} offset {m.offset()}: {reason}", m.value()))
        self._dead.write(records)

    @property
    def finished(self) -> bool:
        return not self._follow and not self._end

    @property
    def malformed_count(self) -> int:
        """Messages set aside so far (dead-lettered, if a dead-letter sink is configured)."""
        return self._dead.count

    @property
    def positions(self) -> dict[int, int]:
        """Per partition, the offset after the last message handed out."""
        return dict(self._next)

    def commit(self, position: dict[str, int] | None = None) -> None:
        """Commit the group offsets: after every written micro-batch, of every message
        handed out; in a checkpointed job, of the last written checkpoint's ``position``
        only (from then on, also when the reader closes)."""
        if position is not None:
            self._checkpointed = {int(p): int(offset) for p, offset in position.items()}
        if not self._dead.flush() or not self._commits:
            return
        pending = [
            self._ck.TopicPartition(self._topic, p, offset)
            for p, offset in self._to_commit().items()
            if self._committed.get(p) != offset
        ]
        if pending:
            try:
                self._consumer.commit(offsets=pending, asynchronous=True)
            except self._ck.KafkaException as e:  # e.g. no broker right now: retried next batch
                log.warning("%s: offset commit failed, will retry: %s", self._where(), e)

    def _to_commit(self) -> dict[int, int]:
        return self._next if self._checkpointed is None else self._checkpointed

    def close(self) -> None:
        """Commit what is still uncommitted (waiting at most ``connect_timeout``), then disconnect."""
        try:
            if hasattr(self, "_dead"):
                self._final_commit()
                self._dead.close()
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()

    def _final_commit(self) -> None:
        if self._consumer is None or not self._commits:
            return
        self.commit()
        deadline = time.monotonic() + self._timeout_s
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)  # poll() below only serves the commit callbacks
        while time.monotonic() < deadline and any(self._committed.get(p) != o for p, o in self._to_commit().items()):
            self._consumer.poll(0.05)
            self.commit()  # a failed commit is sent again
        if any(self._committed.get(p) != o for p, o in self._to_commit().items()):
            log.warning("%s: offsets not committed before close; the next job re-reads from the last commit", self._where())


class _DeadLetterTopic:
    """Malformed messages produced, unchanged, to a Kafka topic, with the reason in headers."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer, self._topic = producer, topic
        self._failed: str | None = None

    def write(self, records: Sequence[DeadLetterRecord]) -> None:
        for r in records:
            headers = [("volga.reason", r.reason.encode()), ("volga.source", r.source.encode())]
            headers += [(f"volga.{k}", str(v).encode()) for k, v in r.origin.items()]
            raw = r.raw.encode() if isinstance(r.raw, str) else r.raw
            self._producer.produce(self._topic, value=raw, headers=headers, on_delivery=self._delivered)
        self._producer.poll(0)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failed = error.str()

    def flush(self) -> bool:
        left = self._producer.flush(_DEAD_LETTER_FLUSH_S)
        if self._failed:
            log.warning("dead-letter topic %r: delivery failed: %s", self._topic, self._failed)
            self._failed = None
        return left == 0

    def close(self) -> None:
        pass
