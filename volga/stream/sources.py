"""Sources of the DataStream layer: collections, paced collections, text files, and a
wrapper that turns any ``volga.sources`` connector into a stream source.

The engine sees every stream source as an ordinary ``Source``/``SourceReader``: the
``SourceStage`` that polls it applies the same watermarks, lateness and late sink as for
the Entity API. The wrapper reader adds the event time: ``timestamp_assigner(fn)`` (after
any stateless steps written before it), the connector's timestamp column, or ingestion
time (the wall clock when the row was polled, never decreasing) when none is given.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from volga.api.entity import Schema
from volga.api.times import datetime_to_us, utc_us_series
from volga.api.types import TIMESTAMP_DTYPE
from volga.errors import Rejected
from volga.ops.frames import pick
from volga.sources.base import Source, SourceMode, SourceReader
from volga.sources.memory import MemoryReader
from volga.stream import nodes as sn

_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


def collection_frame(items: Any) -> tuple[pl.DataFrame, Schema]:
    """A list of values, a list of dicts (records) or a polars DataFrame, as one frame.

    A list of str/int/float/bool values also keeps the values themselves (``sn.OBJECTS``):
    row callables get the objects they were given, not copies rebuilt from Arrow."""
    objects = None
    if isinstance(items, pl.DataFrame):
        frame = items
    else:
        items = list(items)
        if items and all(isinstance(x, dict) for x in items):
            try:
                frame = pl.from_dicts(items, infer_schema_length=None)
            except Exception:  # heterogeneous dicts: keep them as Python objects
                frame = pl.DataFrame([pl.Series(sn.VALUE, items, dtype=sn.OBJECT)])
        else:
            try:
                series = pl.Series(sn.VALUE, items, strict=True)
                if series.dtype == pl.Null or isinstance(series.dtype, (pl.List, pl.Array, pl.Struct)):
                    raise TypeError("keep containers as Python objects")
                if series.dtype in (pl.String, pl.Int64, pl.Float64, pl.Boolean):  # immutable: safe to hand out
                    objects = pl.Series(sn.OBJECTS, items, dtype=sn.OBJECT)
            except Exception:
                series = pl.Series(sn.VALUE, items, dtype=sn.OBJECT)
            frame = pl.DataFrame([series])
    bad = [c for c in frame.columns if c.startswith("__")]
    if bad:
        raise ValueError(f"from_collection: column names starting with '__' are reserved: {bad}")
    schema = sn.make_schema("collection", dict(frame.schema))
    return (frame if objects is None else frame.hstack([objects])), schema


class FrameSource(Source):
    """Rows of one frame, at once or paced (``period_s`` between rows), optionally repeated forever."""

    def __init__(self, frame: pl.DataFrame, period_s: float | None = None, repeat: bool = False) -> None:
        self.frame, self.period_s, self.repeat = frame, period_s, repeat

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a Ray actor: polars cannot serialize Python-object columns, so they travel as lists.
        state = dict(self.__dict__)
        objects = {c: self.frame[c].to_list() for c, dt in self.frame.schema.items() if dt == pl.Object}
        if objects:
            state["frame"] = (self.frame.drop(list(objects)), objects, self.frame.columns)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["frame"], tuple):
            rest, objects, order = state["frame"]
            state["frame"] = rest.with_columns(pl.Series(c, v, dtype=pl.Object) for c, v in objects.items()).select(order)
        self.__dict__.update(state)

    @property
    def bounded(self) -> bool:
        return not self.repeat

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        rate = None if self.period_s is None else 1.0 / self.period_s
        if self.repeat:
            return _RepeatReader(self.frame, rate)
        return MemoryReader(self.frame, rate)

    def describe(self) -> str:
        pace = f", every {self.period_s:g}s" if self.period_s is not None else ""
        return f"{self.frame.height} items{pace}{', repeated' if self.repeat else ''}"


class _RepeatReader(SourceReader):
    """A paced frame read again and again; never finished."""

    def __init__(self, frame: pl.DataFrame, rate: float | None) -> None:
        super().__init__()
        self.frame, self.rate = frame, rate
        self.pos = 0
        self.start: float | None = None

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        if self.frame.height == 0:
            return None
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        due = self.pos + max_rows if self.rate is None else math.floor((now - self.start) * self.rate) + 1
        n = min(max_rows, due - self.pos)
        if n <= 0:
            return None
        offset = self.pos % self.frame.height
        idx = (np.arange(n) + offset) % self.frame.height
        self.entered_at = now if self.rate is None else self.start + self.pos / self.rate
        self.pos += n
        return self.frame[idx]

    @property
    def finished(self) -> bool:
        return False


class TextFileSource(Source):
    """Lines of a text file (without the newline) as a value stream of str.

    ``follow=True`` keeps reading lines appended to the file (unbounded)."""

    def __init__(self, path: str | Path, follow: bool = False, encoding: str = "utf-8") -> None:
        self.path, self.follow, self.encoding = Path(path), follow, encoding

    @property
    def bounded(self) -> bool:
        return not self.follow

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        if not self.path.is_file():
            raise FileNotFoundError(f"read_text_file '{name}': {str(self.path)!r} does not exist or is not a file")
        return _TextReader(self.path, self.follow, self.encoding)

    def describe(self) -> str:
        return f"{str(self.path)!r}{', follow' if self.follow else ''}"


class _TextReader(SourceReader):
    BLOCK_BYTES = 1 << 20

    def __init__(self, path: Path, follow: bool, encoding: str) -> None:
        super().__init__()
        self.file = path.open("rb")
        self.follow, self.encoding = follow, encoding
        self.carry = b""
        self.lines: list[str] = []
        self.eof = False

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        while len(self.lines) < max_rows and not self.eof:
            block = self.file.read(self.BLOCK_BYTES)
            if not block:
                if not self.follow:
                    self.eof = True
                    if self.carry:
                        self.lines.append(self.carry.decode(self.encoding, errors="replace").rstrip("\r"))
                        self.carry = b""
                break
            parts = (self.carry + block).split(b"\n")
            self.carry = parts.pop()
            self.lines.extend(p.decode(self.encoding, errors="replace").rstrip("\r") for p in parts)
        if not self.lines:
            return None
        out, self.lines = self.lines[:max_rows], self.lines[max_rows:]
        self.entered_at = time.perf_counter()
        self.rows_read += len(out)
        return pl.DataFrame([pl.Series(sn.VALUE, out, dtype=pl.String)])

    @property
    def finished(self) -> bool:
        return self.eof and not self.lines

    def close(self) -> None:
        self.file.close()


class StreamSource(Source):
    """A connector plus what the stream adds before the watermark: prelude steps and event time."""

    def __init__(self, node: sn.SourceNode, params: Any, keep_objects: bool = False) -> None:
        self.node, self.keep_objects = node, keep_objects
        self.inner, self.inner_schema = node.make_source(params)

    @property
    def bounded(self) -> bool:
        return bool(self.inner.bounded)

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        from volga.stream.ops import RowChain

        reader = self.inner.open(self.inner_schema, name=name, mode=mode)
        prelude = RowChain(list(self.node.prelude), f"source {name}") if self.node.prelude else None
        return StreamReader(self.node, reader, prelude, self.keep_objects)

    def describe(self) -> str:
        return f"{self.node.kind}({self.node.description})"


class StreamReader(SourceReader):
    def __init__(self, node: sn.SourceNode, reader: SourceReader, prelude: Any, keep_objects: bool = False) -> None:
        super().__init__()
        self.node, self.reader, self.prelude = node, reader, prelude
        self.names = [*node.schema.names, sn.OBJECTS] if keep_objects else node.schema.names
        self.base_ts = node.base_schema.timestamp
        self.last_us = 0
        self.calls_rejected: list[Rejected] = []

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        batch = self.reader.poll(max_rows)
        self.entered_at = self.reader.entered_at
        if batch is None or batch.height == 0:
            return None
        self.rows_read += batch.height
        if self.base_ts not in batch.columns:  # ingestion time, never decreasing
            self.last_us = max(self.last_us, time.time_ns() // 1000)
            batch = batch.hstack([pl.Series(sn.TS, np.full(batch.height, self.last_us, dtype=np.int64)).cast(TIMESTAMP_DTYPE)])
        if self.prelude is not None:
            batch = self.prelude.apply(batch)
        spec = self.node.timestamps
        if spec is not None and batch.height:
            batch = self._assign(batch, spec)
        return pick(batch, self.names if sn.OBJECTS in batch.columns else self.node.schema.names)

    def _assign(self, batch: pl.DataFrame, spec: sn.TimestampSpec) -> pl.DataFrame:
        unit = _UNIT_US[spec.unit]
        if spec.column is not None:
            col = batch[spec.column]
            if col.dtype.is_temporal():
                ts = utc_us_series(col if isinstance(col.dtype, pl.Datetime) else col.cast(pl.Datetime("us")))
            else:
                ts = (col.cast(pl.Float64) * unit).cast(pl.Int64).cast(TIMESTAMP_DTYPE)
            return batch.with_columns(ts.alias(sn.TS))
        from volga.stream.ops import items_of

        assert spec.fn is not None
        items = items_of(batch, self.node.prelude[-1].schema if self.node.prelude else self.node.base_schema)
        out: list[int] = []
        failed: list[int] = []
        for pos, item in enumerate(items):
            try:
                value = spec.fn(item)
                out.append(datetime_to_us(value) if isinstance(value, datetime.datetime) else int(value * unit))
            except Exception as e:
                failed.append(pos)
                row = item if isinstance(item, dict) else {"value": item}
                self.calls_rejected.append(Rejected(f"source {self.node.name} {spec.label()}", f"{type(e).__name__}: {e}", row))
        if failed:
            keep = np.ones(batch.height, dtype=bool)
            keep[failed] = False
            batch = batch.filter(pl.Series(keep))
        return batch.with_columns(pl.Series(sn.TS, out, dtype=pl.Int64).cast(TIMESTAMP_DTYPE))

    @property
    def finished(self) -> bool:
        return bool(self.reader.finished)

    def commit(self, position: dict[str, int] | None = None) -> None:
        self.reader.commit(position)

    def close(self) -> None:
        self.reader.close()

    def drain_rejected(self) -> list[Rejected]:
        out = self.reader.drain_rejected() + self.calls_rejected
        self.calls_rejected = []
        if self.prelude is not None:
            out += self.prelude.rejected
            self.prelude.rejected = []
        return out


@dataclasses.dataclass(eq=False)
class SourceSpec:
    """What the engine's source step and ``SourceStage`` need (duck-typed like ``SourceDef``)."""

    node: sn.SourceNode
    # (stateless steps from this source to a window, the window's late sink): the rows this
    # source sets aside as late never reach that window, so they go to its late sink too
    late_routes: list[tuple[Any, Any, Schema]] = dataclasses.field(default_factory=list)
    keep_objects: bool = False  # batches carry sn.OBJECTS for the row steps reading them next

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def schema(self) -> Schema:
        return self.node.schema

    @property
    def lateness_us(self) -> int:
        return self.node.lateness_us

    @property
    def idle_timeout_us(self) -> int | None:
        return self.node.idle_timeout_us

    @property
    def entity(self) -> type:
        return type(self.node.kind, (), {})

    def call(self, params: Any = None) -> StreamSource:
        return StreamSource(self.node, params, self.keep_objects)

    def on_late(self, rows: pl.DataFrame) -> None:
        rows = rows.drop(sn.OBJECTS, strict=False)
        if self.node.late_sink is not None:
            self.node.late_sink.write(rows, self.node.schema)
        for chain, sink, schema in self.late_routes:
            out = rows
            if chain is not None:
                out = chain.apply(rows)
                chain.rejected.clear()  # a late row is reported as late, not again as rejected
            if out.height:
                sink.write(out.select(schema.names), schema)
