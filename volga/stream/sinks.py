"""Where a stream's elements go: a callable (``print``), a list, a store, a file.

Every sink receives micro-batches (``write(rows, schema)``) on the job's thread;
``ListSink`` and ``BatchSink`` also suit columnar consumers.

**Checkpoints** (``ctx.execute(checkpoint_dir=...)``): the job numbers each sink's rows
(0, 1, ... in the order it delivers them; a job resumed from a checkpoint delivers the
same rows under the same numbers) and every checkpoint records how many rows each sink
had been given, with the sink's own state. What a sink guarantees after a crash and a
restart from the checkpoint (its ``guarantee``):

* ``ListSink``, ``FileSink``, ``StoreSink``: exactly-once effect. A ``ListSink``'s
  contents and a ``.csv``/``.parquet`` file's pending rows are part of the checkpoint; a
  ``.jsonl``/text file is cut back to the bytes written at the checkpoint; a store sink
  works as ``materialize(checkpoint_dir=...)`` does (``volga.storage.checkpointed``).
* ``CallableSink``, ``BatchSink``: at-least-once. A callable cannot be rolled back: the
  rows delivered after the last checkpoint are delivered again. ``numbered=True`` passes
  each row's number too, so a consumer that remembers the last number it applied can skip
  the replayed ones.

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
from typing import Any, ClassVar, Literal

import polars as pl

from volga.api.entity import Schema
from volga.ops.protocol import State
from volga.stream import nodes as sn

Guarantee = Literal["exactly-once", "at-least-once"]


class Sink:
    #: What a job resumed from a checkpoint guarantees this sink (module docstring).
    guarantee: ClassVar[Guarantee] = "at-least-once"

    def open(self) -> None:
        """Called when a job starts."""

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called when a job ends (files are flushed here)."""

    def deliver(self, rows: pl.DataFrame, schema: Schema, first_row: int) -> None:
        """``write``, with the number of the first row (the job numbers each sink's rows)."""
        self.write(rows, schema)

    # -- checkpoints (a job with checkpoint_dir calls these instead of ``open``) -----------
    def describe(self) -> str:
        """What this sink is, for the checkpoint's definition fingerprint."""
        return type(self).__name__

    def check_checkpointable(self, schema: Schema) -> None:
        """Raise a clear error if a checkpointed job cannot keep this sink's guarantee."""

    def checkpoint_start(self, schema: Schema, state: State | None) -> None:
        """Open for a checkpointed job: ``state`` is what :meth:`checkpoint_state` returned
        at the checkpoint the job resumes from (None: the job starts without one). May be
        called again on an open sink (a Ray job restarting after a failure)."""
        self.open()

    def checkpoint_state(self) -> State:
        """This sink's part of a checkpoint, taken between micro-batches."""
        return {}

    def checkpoint_reset(self, schema: Schema) -> None:
        """The definition changed and the job rebuilds from the sources' history: drop the
        outputs it wrote (a store sink clears its feature)."""


def _items(rows: pl.DataFrame, schema: Schema) -> list[Any]:
    from volga.stream.ops import items_of

    return items_of(rows, schema)


def _one_frame(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    """The frames as one (and the list reduced to it: the next snapshot concatenates less)."""
    if len(frames) > 1:
        frames[:] = [pl.concat(frames, how="vertical_relaxed")]
    return frames[0] if frames else None


class ListSink(Sink):
    """Collects elements in ``items`` (values, or dicts for record streams) and the
    batches, with event times, in ``frame()``. Thread-safe; survives several runs.

    With ``checkpoint_dir`` its contents are part of each checkpoint: a job resumed from
    one first sets the sink's contents to what it held at the checkpoint (replacing what
    it holds), so it ends holding what an uninterrupted run's sink holds."""

    guarantee = "exactly-once"

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

    def checkpoint_start(self, schema: Schema, state: State | None) -> None:
        if state is None:
            return
        rows = state["rows"]
        with self._lock:
            self.items[:] = _items(rows, schema) if rows is not None else []  # in place: sink(a_list)
            self.frames[:] = [rows] if rows is not None else []

    def checkpoint_state(self) -> State:
        with self._lock:
            return {"rows": _one_frame(self.frames)}

    def checkpoint_reset(self, schema: Schema) -> None:
        self.clear()

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
    """Calls ``fn(element)`` for every element (``sink(print)``).

    With ``checkpoint_dir``: at-least-once. A call cannot be taken back, so the elements
    delivered after the last checkpoint before a crash are delivered again by the resumed
    job. ``numbered=True`` calls ``fn(element, n)`` with the element's number in this
    sink's output (0, 1, ...; a resumed job gives a replayed element the number it had),
    so a consumer that remembers the last number it applied can skip the replayed ones.

    >>> import polars as pl
    >>> from volga.stream.nodes import value_schema
    >>> seen = []
    >>> sink = CallableSink(lambda x, n: seen.append((n, x)), numbered=True)
    >>> sink.deliver(pl.DataFrame({"value": ["a", "b"]}), value_schema("s", pl.String()), 7)
    >>> seen
    [(7, 'a'), (8, 'b')]
    """

    def __init__(self, fn: Callable[..., Any], *, numbered: bool = False) -> None:
        self.fn, self.numbered = fn, numbered
        self._next = 0  # the number of the next row written without one (a late sink)

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        self.deliver(rows, schema, self._next)

    def deliver(self, rows: pl.DataFrame, schema: Schema, first_row: int) -> None:
        fn = self.fn
        if not self.numbered:
            for item in _items(rows, schema):
                fn(item)
            return
        for n, item in enumerate(_items(rows, schema), first_row):
            fn(item, n)
        self._next = first_row + rows.height

    def describe(self) -> str:
        return f"CallableSink {sn.fn_name(self.fn)}{' numbered' if self.numbered else ''}"

    def __repr__(self) -> str:
        return sn.fn_name(self.fn)


class BatchSink(Sink):
    """Calls ``fn(frame)`` once per micro-batch with the polars DataFrame (the fast path).

    With ``checkpoint_dir``: at-least-once (the batches after the last checkpoint are
    delivered again after a crash). ``numbered=True`` calls ``fn(frame, first_row)``, the
    number of the frame's first row (see :class:`CallableSink`)."""

    def __init__(self, fn: Callable[..., Any], *, numbered: bool = False) -> None:
        self.fn, self.numbered = fn, numbered
        self._next = 0

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        self.deliver(rows, schema, self._next)

    def deliver(self, rows: pl.DataFrame, schema: Schema, first_row: int) -> None:
        if self.numbered:
            self.fn(rows, first_row)
            self._next = first_row + rows.height
        else:
            self.fn(rows)

    def describe(self) -> str:
        return f"BatchSink {sn.fn_name(self.fn)}{' numbered' if self.numbered else ''}"

    def __repr__(self) -> str:
        return f"batches:{sn.fn_name(self.fn)}"


class StoreSink(Sink):
    """Writes a keyed record stream to a Volga online store (``write``) or offline store
    (``append``) under ``name``. Internal columns are dropped; an internal event time
    becomes a ``timestamp`` column.

    With ``checkpoint_dir``: exactly-once effect, as ``materialize(checkpoint_dir=...)``
    gives (``volga.storage.checkpointed``): the in-memory online store's rows are part of
    the checkpoint, Redis skips replayed rows it applied already (by their numbers), and an
    offline store's table is cut back to its rows at the checkpoint."""

    guarantee = "exactly-once"

    def __init__(self, store: Any, name: str) -> None:
        if not (hasattr(store, "write") or hasattr(store, "append")):
            raise TypeError(f"sink: {type(store).__name__} is not a Volga online or offline store")
        self.store, self.name = store, name
        self._schema: Schema | None = None
        self._online = hasattr(store, "write")
        self._checkpointed: Any = None  # a CheckpointedSink (online store) in a checkpointed job
        self._offline_rows: int | None = None  # an offline table's row count (checkpointed job)

    def open(self) -> None:  # a job without checkpoints writes the store directly
        self._checkpointed = self._offline_rows = None

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

    def _rows(self, rows: pl.DataFrame, schema: Schema) -> tuple[pl.DataFrame, Schema]:
        target = self._store_schema(schema)
        if schema.timestamp.startswith("__"):
            rows = rows.rename({schema.timestamp: "timestamp"})
        return rows.select(target.names), target

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        rows, target = self._rows(rows, schema)
        if self._checkpointed is not None:
            self._checkpointed(self.name, rows)
        elif self._online:
            self.store.write(self.name, target, rows)
        else:
            self.store.append(self.name, target, rows)
            if self._offline_rows is not None:
                self._offline_rows += rows.height

    # -- checkpoints -------------------------------------------------------------------
    def describe(self) -> str:
        return f"StoreSink {type(self.store).__name__}[{self.name}]"

    def check_checkpointable(self, schema: Schema) -> None:
        target = self._store_schema(schema)
        if self._online and self._checkpointed is None:
            from volga.storage.checkpointed import CheckpointedSink  # raises for a store it cannot keep exactly-once

            self._checkpointed = CheckpointedSink(self.store, None, {self.name: target})

    def checkpoint_start(self, schema: Schema, state: State | None) -> None:
        self.check_checkpointable(schema)
        target = self._store_schema(schema)
        if self._checkpointed is not None:
            if state is None:
                self._checkpointed.start_fresh()
            else:
                if "online" in state and self.name not in state["online"]:
                    self.store.clear(self.name)  # nothing stored at the checkpoint: drop rows written since
                self._checkpointed.restore(state)
            return
        # an offline store: its table is cut back to the rows it held at the checkpoint
        stored = self.store.scan(self.name)
        if state is None:  # rows already there stay (a job appends): count them
            self._offline_rows = 0 if stored is None else stored.select(pl.len()).collect().item()
            return
        self._offline_rows = state["rows"]
        have = 0 if stored is None else stored.select(pl.len()).collect().item()
        if have < self._offline_rows:
            raise ValueError(
                f"sink to store {self.name!r}: the offline table has {have} rows but the checkpoint counted "
                f"{self._offline_rows}; it was changed outside the job. Use a new checkpoint_dir"
            )
        if have > self._offline_rows:
            assert stored is not None
            self.store.replace(self.name, target, stored.head(self._offline_rows).collect())

    def checkpoint_state(self) -> State:
        if self._checkpointed is not None:
            state: State = self._checkpointed.snapshot()
            return state
        return {"rows": self._offline_rows}

    def checkpoint_reset(self, schema: Schema) -> None:
        self.check_checkpointable(schema)
        if self._checkpointed is not None:
            self._checkpointed.reset()
        else:
            self.store.replace(self.name, self._store_schema(schema), pl.DataFrame(schema=self._store_schema(schema).polars_schema()))

    def __repr__(self) -> str:
        return f"{type(self.store).__name__}[{self.name}]"


class FileSink(Sink):
    """A file, by suffix: ``.jsonl`` (one JSON element per line), ``.csv``, ``.parquet``,
    anything else: ``str(element)`` per line. The file is replaced at each job start.

    With ``checkpoint_dir``: exactly-once effect. A ``.jsonl``/text file is flushed at each
    checkpoint, which records its size; a resumed job cuts the file back to that size and
    appends from there. A ``.csv``/``.parquet`` file is written when the job ends: its rows
    until then are part of each checkpoint."""

    guarantee = "exactly-once"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.kind = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(self.path.suffix, "text")
        self._file: Any = None
        self._bytes = 0  # written to the text file so far
        self._frames: list[pl.DataFrame] = []

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._frames = []
        if self.kind in ("jsonl", "text"):
            self._file = self.path.open("wb")
            self._bytes = 0

    def write(self, rows: pl.DataFrame, schema: Schema) -> None:
        if self.kind in ("csv", "parquet"):
            if sn.OBJECT in rows.dtypes:
                raise TypeError(f"sink {self.path}: {self.kind} needs typed columns; this stream holds Python objects (use .jsonl or .txt)")
            self._frames.append(rows.select(sn.data_columns(schema)))
            return
        if self._file is None:
            self.open()
        lines = [json.dumps(item, default=str) if self.kind == "jsonl" else str(item) for item in _items(rows, schema)]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        self._file.write(data)
        self._bytes += len(data)

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

    # -- checkpoints -------------------------------------------------------------------
    def describe(self) -> str:
        return f"FileSink {self.path} ({self.kind})"

    def checkpoint_start(self, schema: Schema, state: State | None) -> None:
        if state is None:
            self.open()
            return
        if self.kind in ("csv", "parquet"):
            self._frames = [state["rows"]] if state["rows"] is not None else []
            return
        if self._file is not None:
            self._file.close()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < state["bytes"]:
            raise ValueError(
                f"sink {self.path}: the file has {size} bytes, but {state['bytes']} were written at the checkpoint; "
                "it was changed or replaced since. Use a new checkpoint_dir"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("r+b" if self.path.exists() else "wb")  # (gone: 0 bytes were written)
        self._file.truncate(state["bytes"])  # the rows written after the checkpoint are written again
        self._file.seek(state["bytes"])
        self._bytes = state["bytes"]

    def checkpoint_state(self) -> State:
        if self.kind in ("csv", "parquet"):
            return {"rows": _one_frame(self._frames)}
        if self._file is not None:
            self._file.flush()  # to the OS: the checkpoint's size is in the file if this process dies
        return {"bytes": self._bytes}

    def __repr__(self) -> str:
        return f"file:{self.path}"


class SinkSet:
    """The sinks of a DataStream job, fed as ``sink(output, rows)`` by the runtime: numbers
    each sink's rows and, for a checkpointed job, is the runtime's ``SinkState`` (rows
    delivered per sink, and each sink's own state).

    A sink object that several streams feed is one sink: its rows are numbered together
    and its state is taken once, under its first output.
    """

    def __init__(self, sinks: dict[str, Sink], schemas: dict[str, Schema]) -> None:
        self.sinks, self.schemas = sinks, schemas
        owners: dict[int, str] = {}
        self.owner = {name: owners.setdefault(id(sink), name) for name, sink in sinks.items()}
        self.delivered = dict.fromkeys(owners.values(), 0)

    def __call__(self, name: str, rows: pl.DataFrame) -> None:
        owner = self.owner[name]
        first = self.delivered[owner]
        self.sinks[name].deliver(rows, self.schemas[name], first)
        self.delivered[owner] = first + rows.height

    def _owned(self) -> list[tuple[str, Sink, Schema]]:
        return [(name, self.sinks[name], self.schemas[name]) for name in self.delivered]

    def open(self) -> None:
        for sink in {id(s): s for s in self.sinks.values()}.values():
            sink.open()

    def close(self) -> None:
        for sink in {id(s): s for s in self.sinks.values()}.values():
            sink.close()

    # -- checkpoints ---------------------------------------------------------------------
    def fingerprint(self) -> dict[str, str]:
        """One line per sink: a checkpoint restores into sinks of the same kinds."""
        return {
            f"sink {name}": sink.describe() + ("" if self.owner[name] == name else f" (the sink of {self.owner[name]} too)")
            for name, sink in self.sinks.items()
        }

    def check_checkpointable(self) -> None:
        for name, sink, schema in self._owned():
            shared = [n for n, o in self.owner.items() if o == name and n != name]
            if shared and isinstance(sink, StoreSink):
                raise ValueError(
                    f"checkpoint_dir: {sink.describe()} is the sink of several streams ({', '.join([name, *shared])}); "
                    "a store sink replays rows by their numbers, so give each stream its own store sink (another name=)"
                )
            other = next((n for n in shared if self.schemas[n].polars_schema() != schema.polars_schema()), None)
            if other is not None:  # its checkpointed rows are one frame, read back with one schema
                raise ValueError(
                    f"checkpoint_dir: {sink.describe()} is the sink of streams with different columns ({name}: "
                    f"{schema.names}, {other}: {self.schemas[other].names}); give each stream its own sink"
                )
            sink.check_checkpointable(schema)

    def snapshot(self) -> State:
        return {
            "delivered": dict(self.delivered),
            "sinks": {name: sink.checkpoint_state() for name, sink, _ in self._owned()},
        }

    def restore(self, state: State) -> None:
        self.delivered.update(state["delivered"])
        for name, sink, schema in self._owned():
            sink.checkpoint_start(schema, state["sinks"].get(name) or {})

    def start_fresh(self) -> None:
        for name in self.delivered:
            self.delivered[name] = 0
        for _, sink, schema in self._owned():
            sink.checkpoint_start(schema, None)

    def reset(self) -> None:
        for _, sink, schema in self._owned():
            sink.checkpoint_reset(schema)


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
