"""The DataStream graph: frozen nodes built by ``DataStream`` methods. Nothing runs here.

They are nodes of the one logical family (``volga.api.nodes.Node``; the Entity API's
nodes are a subset, and ``from_pipeline`` puts a pipeline's own nodes in a DataStream
graph); each says how it compiles (``lower()``) to ``volga.plan.compile``'s one compiler.

Every stream is a sequence of polars micro-batches with a known schema. A **value
stream** has one data column, ``value`` (Python callables get the bare value); a
**record stream** has named, typed columns (callables get a dict per row). Columns whose
names start with ``__`` are internal: ``__ts`` (the event time when it is not a data
column) and ``__key`` (a key computed by ``key_by(fn)``); callables never see them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from volga.api import nodes as api
from volga.api.aggregates import Aggregate
from volga.api.entity import FieldSpec, Schema
from volga.api.types import TIMESTAMP_DTYPE, dtype_of
from volga.plan.compile import Lowering

TS = "__ts"
KEY = "__key"
VALUE = "value"
# The Python objects a collection was given (same rows as its typed ``value`` column), so
# that row callables get those very objects instead of copies rebuilt from Arrow. Only
# read by the row steps right after the source; never in a schema.
OBJECTS = "__volga_objects"
OBJECT = pl.Object()


def make_schema(name: str, columns: dict[str, pl.DataType], keys: tuple[str, ...] = (), timestamp: str = TS) -> Schema:
    """A stream schema (every column nullable; the timestamp column is added if missing)."""
    columns = dict(columns)
    columns.setdefault(timestamp, TIMESTAMP_DTYPE)
    fields = tuple(FieldSpec(n, dt, optional=True, key=n in keys, timestamp=n == timestamp) for n, dt in columns.items())
    return Schema(name, fields, tuple(keys), timestamp)


def value_schema(name: str, dtype: pl.DataType = OBJECT, keys: tuple[str, ...] = (), extra: dict[str, pl.DataType] | None = None) -> Schema:
    columns = {VALUE: dtype, **(extra or {})}
    return make_schema(name, columns, keys)


def data_columns(schema: Schema) -> list[str]:
    """The columns user code sees (internal ``__`` columns excluded)."""
    return [n for n in schema.names if not n.startswith("__")]


def is_value_stream(schema: Schema) -> bool:
    return data_columns(schema) == [VALUE]


def to_dtype(spec: Any) -> pl.DataType:
    """A polars dtype from a polars dtype or a Python annotation (str, int, list[float]...)."""
    if isinstance(spec, pl.DataType):
        return spec
    if isinstance(spec, type) and issubclass(spec, pl.DataType):
        return spec()
    return dtype_of(spec)


def fmt_us(us: int) -> str:
    """Microseconds as the duration strings users write (``"10s"``, ``"-5s"``, ``"1h30m"``)."""
    if us == 0:
        return "0s"
    sign, us = ("-" if us < 0 else ""), abs(us)
    parts = []
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000), ("us", 1)):
        if us >= size:
            parts.append(f"{us // size}{unit}")
            us %= size
    return sign + "".join(parts)


def fn_name(fn: Any) -> str:
    if isinstance(fn, pl.Expr):
        return str(fn)
    return getattr(fn, "__name__", None) or type(fn).__name__


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class StreamNode(api.Node):
    """A DataStream operator's node (``parallelism``: ``set_parallelism(n)``, on ``api.Node``)."""


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Unary(StreamNode):
    input: api.Node

    @property
    def inputs(self) -> tuple[api.Node, ...]:
        return (self.input,)


def keyed(node: Unary) -> list[tuple[str, ...]]:
    """A keyed operator's input is partitioned by its ``key_by`` key."""
    return [tuple(node.input.schema.keys)]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class TimestampSpec:
    """Where event time comes from: a row function or a column; numbers are in ``unit``."""

    fn: Callable[[Any], Any] | None = None
    column: str | None = None
    unit: Literal["s", "ms", "us"] = "s"

    def label(self) -> str:
        return f"timestamp_assigner({self.column!r})" if self.column else f"timestamp_assigner({fn_name(self.fn)})"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class SourceNode(StreamNode):
    """A connector read by one ``SourceStage`` (watermarks, lateness, late sink).

    ``prelude`` holds stateless steps that run inside the reader before event time is
    assigned (``from_collection(...).map(parse).timestamp_assigner(fn)``)."""

    name: str
    kind: str  # from_collection, read_text_file, from_source...
    make_source: Callable[[Any], Any]  # params -> (volga Source, schema to open it with)
    base_schema: Schema
    description: str = ""
    timestamps: TimestampSpec | None = None
    lateness_us: int = 0
    idle_timeout_us: int | None = None
    late_sink: Any = None
    prelude: tuple[api.Node, ...] = ()

    def lower(self) -> Lowering:
        from volga.stream.sources import SourceSpec

        return Lowering("source", source=SourceSpec(self))

    def label(self) -> str:
        parts = [f"{self.kind}({self.description})" if self.description else f"{self.kind}()"]
        parts += [stream_label(p) for p in self.prelude]
        if self.timestamps is not None:
            parts.append(self.timestamps.label())
        if self.lateness_us or self.late_sink is not None:
            parts.append(f"with_lateness({fmt_us(self.lateness_us)!r})")
        return " -> ".join(parts)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class RowNode(Unary):
    """A Python callable per element: map, flat_map, filter, key_by(fn)."""

    op: Literal["map", "flat_map", "filter", "key_by"]
    fn: Callable[[Any], Any]
    output: Literal["value", "records"] = "value"  # map(fn, schema=...) builds records

    def lower(self) -> Lowering:
        return Lowering("chain")  # stateless: fused into a RowChain

    def label(self) -> str:
        schema = f", schema={data_columns(self.schema)}" if self.output == "records" else ""
        return f"{self.op}({fn_name(self.fn)}{schema})"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BatchNode(Unary):
    """A columnar step: map_batches, polars-expression filter/select/with_columns, key_by(columns)."""

    op: Literal["map_batches", "filter", "select", "with_columns", "key_by"]
    payload: Any = None

    def lower(self) -> Lowering:
        return Lowering("chain")  # stateless: fused into a RowChain

    def label(self) -> str:
        if self.op == "key_by":
            return f"key_by({list(self.schema.keys)})"
        if self.op == "map_batches":
            return f"map_batches({fn_name(self.payload)})"
        exprs = self.payload if isinstance(self.payload, tuple) else (self.payload,)
        return f"{self.op}({', '.join(str(e) for e in exprs)})"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ReduceNode(Unary):
    fn: Callable[[Any, Any], Any]

    def lower(self) -> Lowering:
        from volga.stream import ops
        from volga.stream.rescaling import split_reduce

        spec = ops.StreamOpSpec(ops.KeyedReduceOp, self, keyed(self), "stream", split_reduce)
        return Lowering("window", spec, absorb=lambda prev: ops.fuse_reduce(prev, self))

    def label(self) -> str:
        return f"reduce({fn_name(self.fn)})"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class AggregateNode(Unary):
    """Per-event sliding aggregation (DESIGN.md): the engine's ``WindowAggregateOp``."""

    aggregates: tuple[Aggregate, ...]
    key_alias: str | None = None  # output name of a key_by(fn) key

    def lower(self) -> Lowering:
        from volga.stream import ops
        from volga.stream.rescaling import split_aggregate

        return Lowering("window", ops.StreamOpSpec(ops.AggregateOp, self, keyed(self), f"stream step {self.label()}", split_aggregate))

    def label(self) -> str:
        return f"aggregate([{', '.join(_agg_label(a) for a in self.aggregates)}])"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class WindowNode(Unary):
    """Tumbling (slide == size) or hopping windows, emitted when the watermark passes their end."""

    size_us: int
    slide_us: int
    aggregates: tuple[Aggregate, ...] | None = None
    reduce_fn: Callable[[Any, Any], Any] | None = None
    late_sink: Any = None
    key_alias: str | None = None

    def lower(self) -> Lowering:
        from volga.stream import ops
        from volga.stream.rescaling import split_windows

        return Lowering("join", ops.StreamOpSpec(ops.EventWindowOp, self, keyed(self), f"stream step {self.label()}", split_windows))

    def label(self) -> str:
        size, slide = fmt_us(self.size_us), fmt_us(self.slide_us)
        kind = f"TumblingWindow({size!r})" if self.size_us == self.slide_us else f"HoppingWindow({size!r}, {slide!r})"
        what = f"reduce({fn_name(self.reduce_fn)})" if self.reduce_fn else f"aggregate([{', '.join(_agg_label(a) for a in self.aggregates or ())}])"
        return f"window({kind}).{what}"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class JoinNode(StreamNode):
    left: api.Node
    right: api.Node
    kind: Literal["asof", "interval"]
    how: Literal["left", "inner"]
    lower_us: int = 0
    upper_us: int = 0
    right_columns: tuple[tuple[str, str], ...] = ()  # right column -> output column

    @property
    def inputs(self) -> tuple[api.Node, ...]:
        return (self.left, self.right)

    def lower(self) -> Lowering:
        from volga.stream import ops

        make = ops.AsOfJoin if self.kind == "asof" else ops.IntervalJoinOp
        sides = [tuple(self.left.schema.keys), tuple(self.right.schema.keys)]
        return Lowering("join", ops.StreamOpSpec(make, self, sides))

    def label(self) -> str:
        between = f", between=({fmt_us(self.lower_us)!r}, {fmt_us(self.upper_us)!r})" if self.kind == "interval" else ""
        return f"join(kind={self.kind!r}, how={self.how!r}{between})"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class UnionNode(StreamNode):
    members: tuple[api.Node, ...]

    @property
    def inputs(self) -> tuple[api.Node, ...]:
        return self.members

    def lower(self) -> Lowering:
        from volga.stream import ops

        merged: list[tuple[str, ...]] = [() for _ in self.members]  # one partition merges them by event time
        return Lowering("join", ops.StreamOpSpec(ops.UnionOp, self, merged))

    def label(self) -> str:
        return f"union({len(self.members)} inputs)"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class SinkNode(Unary):
    sink: Any

    def label(self) -> str:
        return f"sink({self.sink!r})"


STATELESS = (RowNode, BatchNode, *api.STATELESS)  # what a RowChain runs


def _agg_label(agg: Aggregate) -> str:
    on = f"on={agg.on!r}, " if agg.on else ""
    return f"{type(agg).__name__}({on}window={agg.window!r}, into={agg.into!r})"


def stream_label(node: api.Node) -> str:
    """A node as the DataStream operator it is (``explain()``): an Entity API node too."""
    if isinstance(node, StreamNode):
        return node.label()
    if isinstance(node, api.FilterNode):
        return f"filter({fn_name(node.predicate)})"
    if isinstance(node, api.TransformNode):
        if isinstance(node.fn, tuple):
            return f"with_columns({', '.join(str(e) for e in node.fn)})"
        return f"map({fn_name(node.fn)}, schema={node.schema.names})"
    if isinstance(node, api.AssignNode):
        if isinstance(node.fn, pl.Expr):
            return f"with_columns({node.fn}.alias({node.column!r}))"
        return f"with_columns({node.column}={fn_name(node.fn)})"
    if isinstance(node, api.RenameNode):
        return f"select(rename {dict(node.mapping)})"
    if isinstance(node, api.SelectNode):
        return f"select({list(node.columns)})"
    if isinstance(node, api.DropNullNode):
        return f"filter(not_null({list(node.columns)}))"
    if isinstance(node, api.AggregateNode):  # keyed by its keys, as key_by(columns).aggregate(...)
        return f"key_by({list(node.keys)}) -> aggregate([{', '.join(_agg_label(a) for a in node.aggregates)}])"
    if isinstance(node, api.JoinNode):
        return f"join(kind='asof', how={node.how!r})"
    return node.label()
