"""``RedisStreamSource``: entries of a Redis stream, read bounded (XRANGE) or followed (XREAD/XREADGROUP).

* **bounded** (offline, ``follow=False``): every entry up to the stream's last entry at open,
  then finished. Nothing is acknowledged.
* **following** (online, ``follow=True``): without ``group``, ``XREAD`` from the start
  (``start_from="earliest"``) or from the entries added after open (``"latest"``); the
  position lives in the reader only. With ``group``, ``XREADGROUP`` as consumer
  ``consumer`` (default ``volga-<source name>``), creating the group if needed: first the
  entries this consumer was given but never acknowledged (a restarted job re-reads what it
  had not written), then new ones. ``commit()`` (called by the runtime once a micro-batch is
  in the stores) ``XACK``s every entry handed out: at-least-once delivery.

An entry is a JSON object in the field ``json_field`` (``format="json"``, the default), or
its fields are the record (``format="fields"``: values are text and parsed like CSV cells).
A malformed entry never stops the job: it is counted (``reader.malformed_count``), kept in
``reader.rejected`` and written with its reason to ``dead_letter_stream`` (fields ``source``,
``reason``, ``stream``, ``id``, ``raw``) and/or ``dead_letter_path`` (JSON lines).

``open`` fails within ``connect_timeout`` with a ``ConnectionError`` naming the server
(never the password) when Redis is unreachable or refuses the credentials. Once running, a
lost connection is retried with backoff (logged, never fatal).

>>> RedisStreamSource("orders", "redis://:secret@127.0.0.1:6379/0", group="features")
RedisStreamSource(stream='orders', url='redis://127.0.0.1:6379/0', group='features')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from volga.api.entity import Schema
from volga.api.types import Duration, parse_duration_us
from volga.sources.base import Rejected, Source, SourceMode, SourceReader
from volga.sources.messages import (
    Backoff,
    DeadLetter,
    DeadLetterFile,
    DeadLetterRecord,
    DeadLetters,
    JsonDecoder,
    optional_import,
)
from volga.sources.validation import conform_indexed

__all__ = ["RedisStreamSource"]

log = logging.getLogger("volga.sources.redis_streams")


def redact_url(url: str) -> str:
    """A Redis URL without its user and password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class RedisStreamSource(Source):
    """A Redis stream. See the module docstring for both ways of reading."""

    stream: str
    url: str = "redis://127.0.0.1:6379/0"
    group: str | None = None
    consumer: str | None = dataclasses.field(default=None, kw_only=True)
    follow: bool | None = dataclasses.field(default=None, kw_only=True)
    start_from: Literal["earliest", "latest"] = dataclasses.field(default="earliest", kw_only=True)
    format: Literal["json", "fields"] = dataclasses.field(default="json", kw_only=True)
    json_field: str = dataclasses.field(default="data", kw_only=True)
    deserializer: Callable[[bytes], Any] | None = dataclasses.field(default=None, kw_only=True)
    dead_letter_stream: str | None = dataclasses.field(default=None, kw_only=True)
    dead_letter_path: str | Path | None = dataclasses.field(default=None, kw_only=True)
    poll_interval: Duration = dataclasses.field(default="5ms", kw_only=True)
    connect_timeout: Duration = dataclasses.field(default="5s", kw_only=True)

    def __post_init__(self) -> None:
        owner = f"RedisStreamSource({self.stream!r})"
        if not self.stream or not isinstance(self.stream, str):
            raise ValueError(f"RedisStreamSource: stream must be a non-empty string, not {self.stream!r}")
        if self.format not in ("json", "fields"):
            raise ValueError(f"{owner}: format must be 'json' or 'fields', not {self.format!r}")
        if self.start_from not in ("earliest", "latest"):
            raise ValueError(f"{owner}: start_from must be 'earliest' or 'latest', not {self.start_from!r}")
        parse_duration_us(self.poll_interval, what=f"{owner}: poll_interval")
        parse_duration_us(self.connect_timeout, what=f"{owner}: connect_timeout")

    @property
    def bounded(self) -> bool:
        return self.follow is not True

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        follow = self.follow if self.follow is not None else mode == "online"
        return RedisStreamReader(self, schema, name=name, follow=follow)

    def describe(self) -> str:
        group = f", group={self.group!r}" if self.group else ""
        follow = "" if self.follow is None else f", follow={self.follow}"
        return f"RedisStreamSource(stream={self.stream!r}, url={redact_url(self.url)!r}{group}{follow})"

    __repr__ = describe


class RedisStreamReader(SourceReader):
    def __init__(self, source: RedisStreamSource, schema: Schema, *, name: str, follow: bool) -> None:
        super().__init__()
        redis = optional_import("redis", extra="redis", what="RedisStreamSource")
        self._redis_mod = redis
        self._source, self._schema, self._name, self._follow = source, schema, name, follow
        self._stream = source.stream
        self._decoder = JsonDecoder(schema, source.deserializer) if source.format == "json" else None
        self._field = source.json_field.encode()
        self._interval_s = parse_duration_us(source.poll_interval) / 1e6
        timeout_s = parse_duration_us(source.connect_timeout) / 1e6
        self._client = redis.Redis.from_url(source.url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 5.0))
        self._backoff = Backoff()
        self._next_poll = 0.0
        self._unacked: list[bytes] = []  # entry ids handed out (or set aside) since the last commit
        self._last_id = b"0-0"  # position of XRANGE/XREAD; for XREADGROUP, of the pending re-read
        self._end_id: bytes | None = None  # bounded: the last entry at open (None = empty stream)
        self._finished = False
        self._pending = True  # group mode: still re-reading this consumer's unacknowledged entries
        self._group = source.group if follow else None
        self._consumer = source.consumer or f"volga-{name}"
        sinks: list[DeadLetter] = []
        try:
            self._start()
            if source.dead_letter_stream:
                sinks.append(_DeadLetterStream(self._client, source.dead_letter_stream))
            if source.dead_letter_path is not None:
                sinks.append(DeadLetterFile(source.dead_letter_path))
        except BaseException:
            self._client.close()
            raise
        self._dead = DeadLetters(sinks)

    def _where(self) -> str:
        return f"source '{self._name}': Redis at {redact_url(self._source.url)!r}"

    def _start(self) -> None:
        redis = self._redis_mod
        try:
            self._client.ping()
            last = self._client.xrevrange(self._stream, count=1)
            if self._group is not None:
                start = "0" if self._source.start_from == "earliest" else "$"
                try:
                    self._client.xgroup_create(self._stream, self._group, id=start, mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
        except redis.AuthenticationError as e:
            raise ConnectionError(f"{self._where()}: authentication failed ({e})") from None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise ConnectionError(f"{self._where()}: cannot connect ({e})") from None
        except redis.ResponseError as e:
            raise ConnectionError(f"{self._where()}: {e}") from None
        last_id = last[0][0] if last else None
        if not self._follow:
            self._end_id = last_id
            self._finished = last_id is None
        elif self._source.start_from == "latest" and last_id is not None:
            self._last_id = last_id

    # -- reading -------------------------------------------------------------------------

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        now = time.perf_counter()
        if self._finished or now < self._next_poll or self._backoff.waiting():
            return None
        redis = self._redis_mod
        try:
            entries = self._read(max_rows)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            delay = self._backoff.next_delay()
            log.warning("%s: %s; retrying in %.1fs", self._where(), e, delay)
            return None
        self._backoff.reset()
        if len(entries) < max_rows:
            self._next_poll = now + self._interval_s  # caught up: don't ask again right away
        if not entries:
            return None
        self.entered_at = now
        return self._rows(entries)

    def _read(self, max_rows: int) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        client = self._client
        if not self._follow:
            assert self._end_id is not None
            entries = client.xrange(self._stream, min=b"(" + self._last_id, max=self._end_id, count=max_rows)
            if entries:
                self._last_id = entries[-1][0]
            if not entries or self._last_id == self._end_id:
                self._finished = True
            return entries
        if self._group is None:
            reply = client.xread({self._stream: self._last_id}, count=max_rows)
            entries = reply[0][1] if reply else []
            if entries:
                self._last_id = entries[-1][0]
            return entries
        if self._pending:
            reply = client.xreadgroup(self._group, self._consumer, {self._stream: self._last_id}, count=max_rows)
            entries = reply[0][1] if reply else []
            if entries:
                self._last_id = entries[-1][0]
                return entries
            self._pending = False  # every unacknowledged entry re-read: now the new ones
        reply = client.xreadgroup(self._group, self._consumer, {self._stream: ">"}, count=max_rows)
        return reply[0][1] if reply else []

    def _rows(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> pl.DataFrame | None:
        ids = [entry_id for entry_id, _ in entries]
        if self._group is not None:
            self._unacked += ids
        if self._decoder is not None:
            raws: list[Any] = [fields.get(self._field) if fields else None for _, fields in entries]
            df, bad = self._decoder.decode(raws)
        else:
            raws = [{k.decode(): v.decode() for k, v in fields.items()} if fields else {} for _, fields in entries]
            df, bad = conform_indexed(raws, self._schema, parse_strings=True)
        if bad:
            self._set_aside([(ids[i], raws[i], reason) for i, reason in bad])
        self.rows_read += df.height
        return df if df.height else None

    def _set_aside(self, bad: list[tuple[bytes, Any, str]]) -> None:
        records = []
        for entry_id, raw, reason in bad:
            shown = json.dumps(raw) if isinstance(raw, dict) else raw
            where = {"stream": self._stream, "id": entry_id.decode()}
            records.append(DeadLetterRecord(self._name, reason, shown, where))
            self.rejected.append(Rejected(self._name, f"entry {entry_id.decode()}: {reason}", raw))
        self._dead.write(records)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def malformed_count(self) -> int:
        """Entries set aside so far (dead-lettered, if a dead-letter sink is configured)."""
        return self._dead.count

    def commit(self, position: dict[str, int] | None = None) -> None:
        if not self._dead.flush() or not self._unacked:
            return
        ids, self._unacked = self._unacked, []
        try:
            self._client.xack(self._stream, self._group, *ids)
        except (self._redis_mod.ConnectionError, self._redis_mod.TimeoutError) as e:
            self._unacked = ids + self._unacked  # acknowledged with the next batch
            log.warning("%s: XACK failed, will retry: %s", self._where(), e)

    def close(self) -> None:
        try:
            if hasattr(self, "_dead"):
                self._dead.close()
        finally:
            self._client.close()


class _DeadLetterStream:
    """Malformed entries appended (XADD) to a Redis stream with the reason."""

    def __init__(self, client: Any, stream: str) -> None:
        self._client, self._stream = client, stream
        self._failed: list[DeadLetterRecord] = []

    def write(self, records: Sequence[DeadLetterRecord]) -> None:
        self._failed += records
        self.flush()

    def flush(self) -> bool:
        if not self._failed:
            return True
        pipe = self._client.pipeline(transaction=False)
        for r in self._failed:
            raw = r.raw if r.raw is not None else b""
            pipe.xadd(self._stream, {"source": r.source, "reason": r.reason, **{k: str(v) for k, v in r.origin.items()}, "raw": raw})
        try:
            pipe.execute()
        except Exception as e:  # the server is away: kept, and sent with the next flush
            log.warning("dead-letter stream %r: XADD failed, will retry: %s", self._stream, e)
            return False
        self._failed = []
        return True

    def close(self) -> None:
        pass
