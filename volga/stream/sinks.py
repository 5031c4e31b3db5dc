"""Where a stream's elements go: a callable (``print``), a list, a store, a file.

Every sink receives micro-batches (``write(rows, schema)``) on the job's thread;
``ListSink`` and ``BatchSink`` also suit columnar consumers.

>>> sink = ListSink()
>>> import polars as pl
>>> from volga.stream.nodes import value_schema
>>> sink.write(pl.DataFrame({"value": [1, 2]}), value_schema("s", pl.Int64()))
>>> sink.items
[1, 2]
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from volga.api.entity import Schema
from volga.stream import nodes as sn


class Sink:
    def open(self) -> None:
        """Called when a job starts."""

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called when a job ends (files are flushed here)."""


def _items(rows: pl.DataFrame, schema: Schema) -> list[Any]:
    from volga.stream.ops import items_of

    return items_of(rows, schema)


class ListSink(Sink):
    """Collects elements in ``items`` (values, or dicts for record streams) and the
    batches, with event times, in ``frame()``. Thread-safe; survives several runs."""

    def __init__(self, items: list[Any] | None = None) -> None:
        self.items: list[Any] = items if items is not None else []  # sink(a_list) fills that list
        self.frames: list[pl.DataFrame] = []
        self._lock = threading.Lock()

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        items = _items(rows, schema)
        with self._lock:
            self.items.extend(items)
            self.frames.append(rows)

    def __getstate__(self) -> dict[str, Any]:
        # A copy sent to another process (a Ray actor) starts empty: what it collects stays there.
        return {"items": [], "frames": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def frame(self) -> pl.DataFrame:
        """Everything written so far as one polars DataFrame (internal columns included)."""
        with self._lock:
            return pl.concat(self.frames, how="vertical_relaxed") if self.frames else pl.DataFrame()

    def clear(self) -> None:
        with self._lock:
            self.items.clear()
            self.frames.clear()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        """The collected elements, in arrival order (a snapshot: safe while a job runs).

        >>> sink = ListSink([1, 2])
        >>> list(sink), sink[0], sink[-1]
        ([1, 2], 1, 2)
        """
        with self._lock:
            return iter(list(self.items))

    def __getitem__(self, index: Any) -> Any:
        with self._lock:
            return self.items[index]

    def __repr__(self) -> str:
        return f"ListSink({len(self.items)} items)"


class CallableSink(Sink):
    """Calls ``fn(element)`` for every element (``sink(print)``)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        fn = self.fn
        for item in _items(rows, schema):
            fn(item)

    def __repr__(self) -> str:
        return sn.fn_name(self.fn)


class BatchSink(Sink):
    """Calls ``fn(frame)`` once per micro-batch with the polars DataFrame (the fast path)."""

    def __init__(self, fn: Callable[[pl.DataFrame], Any]) -> None:
        self.fn = fn

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        self.fn(rows)

    def __repr__(self) -> str:
        return f"batches:{sn.fn_name(self.fn)}"


class StoreSink(Sink):
    """Writes a keyed record stream to a Volga online store (``write``) or offline store
    (``append``) under ``name``. Internal columns are dropped; an internal event time
    becomes a ``timestamp`` column."""

    def __init__(self, store: Any, name: str) -> None:
        if not (hasattr(store, "write") or hasattr(store, "append")):
            raise TypeError(f"sink: {type(store).__name__} is not a Volga online or offline store")
        self.store, self.name = store, name
        self._schema: Schema | None = None

    def _store_schema(self, schema: Schema) -> Schema:
        if self._schema is None:
            if not schema.keys or any(k.startswith("__") for k in schema.keys):
                raise ValueError(
                    f"sink to store {self.name!r}: the stream must be keyed by columns (key_by('col')), "
                    f"not {list(schema.keys) or 'unkeyed'}"
                )
            cols = {n: schema.field(n).dtype for n in sn.data_columns(schema)}
            ts = schema.timestamp
            if ts.startswith("__"):
                cols["timestamp"] = schema.field(ts).dtype
                ts = "timestamp"
            self._schema = sn.make_schema(self.name, cols, schema.keys, ts)
        return self._schema

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        target = self._store_schema(schema)
        if schema.timestamp.startswith("__"):
            rows = rows.rename({schema.timestamp: "timestamp"})
        rows = rows.select(target.names)
        if hasattr(self.store, "write"):
            self.store.write(self.name, target, rows)
        else:
            self.store.append(self.name, target, rows)

    def __repr__(self) -> str:
        return f"{type(self.store).__name__}[{self.name}]"


class FileSink(Sink):
    """A file, by suffix: ``.jsonl`` (one JSON element per line), ``.csv``, ``.parquet``,
    anything else: ``str(element)`` per line. The file is replaced at each job start."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.kind = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(self.path.suffix, "text")
        self._file: Any = None
        self._frames: list[pl.DataFrame] = []

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._frames = []
        if self.kind in ("jsonl", "text"):
            self._file = self.path.open("w", encoding="utf-8")

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        if self.kind in ("csv", "parquet"):
            if sn.OBJECT in rows.dtypes:
                raise TypeError(f"sink {self.path}: {self.kind} needs typed columns; this stream holds Python objects (use .jsonl or .txt)")
            self._frames.append(rows.select(sn.data_columns(schema)))
            return
        if self._file is None:
            self.open()
        lines = [json.dumps(item, default=str) if self.kind == "jsonl" else str(item) for item in _items(rows, schema)]
        self._file.write("\n".join(lines) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._frames:
            frame = pl.concat(self._frames)
            if self.kind == "csv":
                frame.write_csv(self.path)
            else:
                frame.write_parquet(self.path)
            self._frames = []

    def __repr__(self) -> str:
        return f"file:{self.path}"


def as_sink(target: Any, name: str | None = None) -> Sink:
    if isinstance(target, Sink):
        return target
    if isinstance(target, (str, Path)):
        return FileSink(target)
    if isinstance(target, list):
        return ListSink(target)
    if hasattr(target, "get_latest") or hasattr(target, "scan"):
        return StoreSink(target, name or "stream")
    if callable(target):
        return CallableSink(target)
    raise TypeError(f"sink: expected a callable, a list, a ListSink, a store or a file path, got {type(target).__name__}")
