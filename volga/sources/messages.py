"""What the connectors to external systems (Kafka, Redis Streams, PostgreSQL) share.

* :func:`optional_import`: heavy client libraries are imported when a source is opened,
  with an error naming the extra to install (``pip install 'volga[kafka]'``).
* :class:`Secret`: a password that never shows in a ``repr``, a log line or an error.
* :class:`JsonDecoder`: a batch of raw messages (bytes) to a validated DataFrame plus the
  index and reason of every message that didn't fit (invalid JSON, not an object, a
  field of the wrong type...). Decoding is per message (msgspec, ~0.5 µs each); validation
  is columnar (:func:`~volga.sources.validation.conform_indexed`).
* :class:`DeadLetterFile` and the :class:`DeadLetter` protocol: where malformed messages
  go, with the reason and where they came from. Rows set aside are also kept in
  ``reader.rejected`` (and so in ``job.rejected``); the dead-letter sink is the durable copy.
* :class:`Backoff`: how long a reader waits before trying a lost connection again.

>>> import datetime
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Click:
...     user: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
>>> df, bad = JsonDecoder(entity_schema(Click)).decode(
...     [b'{"user": "u1", "at": "2024-01-01T00:00:00"}', b"oops", b'{"user": 7, "at": "2024-01-01"}'])
>>> df.height, bad
(1, [(1, 'invalid JSON: JSON is malformed: invalid character (byte 0)'), (2, "field 'user': expected str, got 7")])
>>> Secret("hunter2")
Secret('********')
"""

# No `from __future__ import annotations` here: the doctest above declares an @entity, whose
# annotations must resolve at class creation, which that import would defer.

import base64
import dataclasses
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from volga._optional import optional_import
from volga.api.entity import Schema
from volga.api.types import TIMESTAMP_DTYPE
from volga.sources.validation import conform_indexed

__all__ = ["Backoff", "DeadLetter", "DeadLetterFile", "DeadLetterRecord", "JsonDecoder", "Secret", "optional_import"]

log = logging.getLogger("volga.sources")

Problems = list[tuple[int, str]]


class Secret:
    """A secret string (a password): shown as ``********`` everywhere but ``get()``."""

    __slots__ = ("_value",)

    def __init__(self, value: "str | Secret") -> None:
        self._value = value.get() if isinstance(value, Secret) else str(value)

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def as_secret(value: "str | Secret | None") -> "Secret | None":
    return None if value is None else Secret(value)


# --------------------------------------------------------------------------- decoding


class JsonDecoder:
    """Raw messages to rows of ``schema``: JSON objects by default, or ``deserializer(bytes)``.

    ``deserializer`` (e.g. an Avro reader) returns a dict per message; an exception it
    raises rejects that message with the exception's text as the reason.

    Fast path (plain JSON): the whole batch is decoded in one msgspec call into typed structs
    (strict types: ``7`` is not a ``str``, ``1.0`` not an ``int``, ints are fine for floats;
    timestamps stay text and are parsed by the columnar validation), then turned into
    columns. If any message doesn't fit, each message is decoded on its own and only the
    misfits take the general path (dicts + :func:`conform_indexed`), which words the reasons.
    """

    def __init__(self, schema: Schema, deserializer: Callable[[bytes], Any] | None = None) -> None:
        self._schema = schema
        self._custom = deserializer
        msgspec = optional_import("msgspec", extra="kafka", what="decoding JSON messages")
        self._msgspec = msgspec
        self._decode = msgspec.json.Decoder().decode
        self._error = msgspec.DecodeError
        self._typed = _typed_decoders(msgspec, schema) if deserializer is None else None

    def decode(self, values: Sequence[bytes | str | None]) -> tuple[pl.DataFrame, Problems]:
        """The valid rows, in order, and ``(index, reason)`` for each message set aside."""
        if self._typed is not None and values:
            fast = self._decode_typed(values)
            if fast is not None:
                return fast
        return self._decode_general(values, range(len(values)))

    def _decode_typed(self, values: Sequence[bytes | str | None]) -> tuple[pl.DataFrame, Problems] | None:
        assert self._typed is not None
        one, many, getters = self._typed
        error = self._msgspec.MsgspecError
        if all(isinstance(v, bytes) for v in values):
            try:
                structs = many(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
                return self._frame(structs, getters, [])
            except (error, OverflowError, TypeError, pl.exceptions.PolarsError):
                pass
        structs, misfits = [], []
        for i, value in enumerate(values):
            try:
                if value is None:
                    raise TypeError
                structs.append(one(value))
            except (error, TypeError):
                misfits.append(i)
        kept = [i for i in range(len(values)) if i not in set(misfits)] if misfits else list(range(len(values)))
        try:
            df, problems = self._frame(structs, getters, kept)
        except (OverflowError, TypeError, pl.exceptions.PolarsError):
            return None
        if not misfits:
            return df, problems
        rest, rest_problems = self._decode_general(values, misfits)
        # Misfits are rare: put their rows (if any survived) back in arrival order.
        order = [i for i in kept if i not in {j for j, _ in problems}] + [
            i for i in misfits if i not in {j for j, _ in rest_problems}
        ]
        merged = pl.concat([df, rest]) if rest.height else df
        if rest.height:
            merged = merged.with_columns(pl.Series("__volga_order", order)).sort("__volga_order").drop("__volga_order")
        return merged, sorted(problems + rest_problems)

    def _frame(self, structs: list[Any], getters: list[Any], kept: list[int]) -> tuple[pl.DataFrame, Problems]:
        """Typed structs to a validated frame; problems (unparseable timestamps) by message index."""
        columns = [pl.Series(name, list(map(get, structs)), dtype=dtype, strict=True) for name, dtype, get in getters]
        df, problems = conform_indexed(pl.DataFrame(columns), self._schema)
        if kept:
            problems = [(kept[j], reason) for j, reason in problems]
        return df, problems

    def _decode_general(self, values: Sequence[bytes | str | None], indexes: Sequence[int]) -> tuple[pl.DataFrame, Problems]:
        records: list[Any] = []
        kept: list[int] = []
        bad: Problems = []
        decode, error, custom = self._decode, self._error, self._custom
        for i in indexes:
            value = values[i]
            if value is None:
                bad.append((i, "empty message (no value)"))
                continue
            try:
                record = custom(value) if custom is not None else decode(value)  # type: ignore[arg-type]
            except error as e:
                bad.append((i, f"invalid JSON: {e}"[:200]))
                continue
            except Exception as e:  # a user deserializer: any failure rejects the message
                bad.append((i, f"deserializer failed: {type(e).__name__}: {e}"[:200]))
                continue
            if not isinstance(record, dict):
                bad.append((i, f"expected a JSON object, got {type(record).__name__}"))
                continue
            records.append(record)
            kept.append(i)
        df, problems = conform_indexed(records, self._schema)
        bad += [(kept[j], reason) for j, reason in problems]
        bad.sort()
        return df, bad


def _python_type(dtype: pl.DataType) -> Any:
    """The strict msgspec type for a field's dtype (timestamps as text, parsed later)."""
    if isinstance(dtype, pl.List):
        return list[_python_type(dtype.inner)]  # type: ignore[misc, arg-type]
    if isinstance(dtype, pl.Datetime):
        return str
    return {pl.String(): str, pl.Int64(): int, pl.Float64(): float, pl.Boolean(): bool}[dtype]


def _typed_decoders(msgspec: Any, schema: Schema) -> tuple[Any, Any, list[Any]] | None:
    """(decode one, decode a JSON array of many, per-field (name, column dtype, getter)), or None."""
    import operator

    try:
        fields = []
        getters = []
        for i, f in enumerate(schema.fields):
            # epoch numbers (field(unit=...)) decode as float (msgspec takes JSON ints
            # there; exact below 2**53, i.e. epoch microseconds until year 2255)
            epoch = f.unit is not None and f.dtype == TIMESTAMP_DTYPE
            kind = float if epoch else _python_type(f.dtype)
            attr = f"f{i}"  # any field name (keywords, spaces) maps to a plain attribute
            fields.append((attr, kind | None, None) if f.optional else (attr, kind))
            column_dtype = pl.Float64() if epoch else pl.String() if isinstance(f.dtype, pl.Datetime) else f.dtype
            getters.append((f.name, column_dtype, operator.attrgetter(attr)))
        renames = {f"f{i}": f.name for i, f in enumerate(schema.fields)}
        row = msgspec.defstruct("Row", fields, kw_only=True, rename=renames)
    except (KeyError, TypeError):
        return None  # a dtype with no strict JSON type: the general path handles it
    return msgspec.json.Decoder(row).decode, msgspec.json.Decoder(list[row]).decode, getters  # type: ignore[valid-type]


# --------------------------------------------------------------------------- dead letters


@dataclasses.dataclass(frozen=True)
class DeadLetterRecord:
    """A message set aside: the raw bytes, why, and where it came from."""

    source: str
    reason: str
    raw: bytes | str | None
    origin: dict[str, Any]  # e.g. {"topic": "orders", "partition": 0, "offset": 17}

    def to_json(self) -> str:
        raw = self.raw
        if isinstance(raw, bytes):
            try:
                shown: Any = raw.decode("utf-8")
                encoding = "utf-8"
            except UnicodeDecodeError:
                shown, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        else:
            shown, encoding = raw, "utf-8"
        return json.dumps(
            {
                "source": self.source,
                "reason": self.reason,
                **self.origin,
                "raw": shown,
                "raw_encoding": encoding,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
            default=str,
        )


class DeadLetter(Protocol):
    """Where a reader writes malformed messages. ``flush`` makes them durable.

    ``flush`` returns False when some records are not durable yet; the reader then holds
    back its commit, so they are not lost if the job stops.
    """

    def write(self, records: Sequence[DeadLetterRecord]) -> None: ...

    def flush(self) -> bool: ...

    def close(self) -> None: ...


class DeadLetterFile:
    """Malformed messages appended to a JSON-lines file, one object per message.

    Each line has ``source``, ``reason``, the origin fields (``topic``/``partition``/
    ``offset``, ``stream``/``id``, ``row``...), ``raw`` (the message as text, or base64 with
    ``"raw_encoding": "base64"``) and ``at`` (when it was set aside, UTC).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, records: Sequence[DeadLetterRecord]) -> None:
        with self._lock:
            self._handle.writelines(r.to_json() + "\n" for r in records)

    def flush(self) -> bool:
        with self._lock:
            self._handle.flush()
        return True

    def close(self) -> None:
        with self._lock:
            self._handle.close()


class DeadLetters:
    """The dead-letter sinks of one reader (any number, possibly none) and their counter."""

    def __init__(self, sinks: Sequence[DeadLetter]) -> None:
        self.sinks = list(sinks)
        self.count = 0

    def write(self, records: Sequence[DeadLetterRecord]) -> None:
        if not records:
            return
        self.count += len(records)
        for sink in self.sinks:
            sink.write(records)

    def flush(self) -> bool:
        """True when every record written so far is durable in every sink."""
        return all([sink.flush() for sink in self.sinks])

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.flush()
            finally:
                sink.close()


# --------------------------------------------------------------------------- reconnects


class Backoff:
    """Exponential wait between reconnect attempts: ``first_s``, doubling, capped at ``max_s``.

    >>> b = Backoff(first_s=0.1, max_s=0.4)
    >>> [b.next_delay() for _ in range(4)]
    [0.1, 0.2, 0.4, 0.4]
    """

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._delay = first_s
        self.retry_at = 0.0  # perf_counter() before which no new attempt is made

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_s)
        self.retry_at = time.perf_counter() + delay
        return delay

    def waiting(self) -> bool:
        return time.perf_counter() < self.retry_at

    def reset(self) -> None:
        self._delay = self.first_s
        self.retry_at = 0.0
