"""``DataStream``, ``KeyedStream`` and ``WindowedStream``: the operators users chain.

Each method returns a new stream wrapping a new frozen node; nothing runs until
``ctx.execute()``/``ctx.submit()``. Mistakes (unknown columns, a window spec that leaves
gaps, a join of differently keyed streams) raise here, when the stream is defined.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union

import polars as pl

from volga.api import nodes as api
from volga.api.aggregates import Aggregate, LastN
from volga.api.entity import Schema, entity_schema, is_entity
from volga.api.types import Duration, parse_duration_us
from volga.stream import nodes as sn
from volga.stream.sinks import BatchSink, Sink, as_sink

if TYPE_CHECKING:
    from volga.stream.context import StreamingContext

SchemaSpec = Union[dict[str, Any], type]


@dataclasses.dataclass(frozen=True)
class TumblingWindow:
    """Fixed, non-overlapping windows ``[k*size, (k+1)*size)`` of event time."""

    size: Duration

    def __post_init__(self) -> None:
        if parse_duration_us(self.size, what="TumblingWindow size") <= 0:
            raise ValueError("TumblingWindow: size must be positive")


@dataclasses.dataclass(frozen=True)
class HoppingWindow:
    """Windows of length ``size`` starting every ``slide`` (an event is in size/slide of them)."""

    size: Duration
    slide: Duration

    def __post_init__(self) -> None:
        size = parse_duration_us(self.size, what="HoppingWindow size")
        slide = parse_duration_us(self.slide, what="HoppingWindow slide")
        if size <= 0 or slide <= 0:
            raise ValueError("HoppingWindow: size and slide must be positive")
        if slide > size:
            raise ValueError(
                f"HoppingWindow: slide {self.slide!r} can't be longer than size {self.size!r}; "
                "there would be gaps between windows (use TumblingWindow for slide == size)"
            )


@dataclasses.dataclass(frozen=True)
class SlidingWindow:
    """Per-event sliding window (DESIGN.md): for every event at t, the key's events in
    ``[t - size, t]``. Runs on the engine's ``WindowAggregateOp``."""

    size: Duration

    def __post_init__(self) -> None:
        parse_duration_us(self.size, what="SlidingWindow size")


WindowSpec = Union[TumblingWindow, HoppingWindow, SlidingWindow]


def _with_window(agg: Aggregate, size: Duration) -> Aggregate:
    if not isinstance(agg, Aggregate):
        raise TypeError(f"window aggregate: expected aggregates (Count, Sum, ...), got {agg!r}")
    if isinstance(agg, LastN):
        return LastN(agg.n, on=agg.on, window=size, into=agg.into)
    return dataclasses.replace(agg, window=size)


def resolve_schema(spec: SchemaSpec, where: str) -> dict[str, pl.DataType]:
    if is_entity(spec):
        return entity_schema(spec).polars_schema()
    if not isinstance(spec, dict) or not spec:
        raise TypeError(f"{where}: schema must be a dict of column -> type (str, int, polars dtype...) or an @entity class")
    out = {}
    for name, t in spec.items():
        if not isinstance(name, str) or name.startswith("__"):
            raise ValueError(f"{where}: bad column name {name!r} (names starting with '__' are reserved)")
        try:
            out[name] = sn.to_dtype(t)
        except TypeError as e:
            raise TypeError(f"{where}: column {name!r}: {e}") from None
    return out


def _signed_us(value: Duration | int, what: str) -> int:
    if isinstance(value, datetime.timedelta):
        sign = -1 if value < datetime.timedelta(0) else 1
        return sign * parse_duration_us(abs(value), what=what)
    if isinstance(value, str) and value.strip().startswith("-"):
        return -parse_duration_us(value.strip()[1:], what=what)
    return parse_duration_us(value, what=what)


def _exprs(exprs: Sequence[Any], where: str) -> tuple[pl.Expr, ...]:
    flat: list[Any] = []
    for e in exprs:
        flat.extend(e if isinstance(e, (list, tuple)) else [e])
    for e in flat:
        if not isinstance(e, pl.Expr):
            raise TypeError(f"{where}: expected polars expressions, got {type(e).__name__}")
    return tuple(flat)


class DataStream:
    """A stream of elements with event times. See ``volga.stream`` for the model."""

    def __init__(self, ctx: StreamingContext, node: api.Node) -> None:
        self._ctx = ctx
        self._node = node

    # -- introspection -----------------------------------------------------------------
    @property
    def node(self) -> api.Node:
        return self._node

    @property
    def schema(self) -> Schema:
        return self._node.schema

    @property
    def columns(self) -> list[str]:
        """The data columns (``["value"]`` for a value stream)."""
        return sn.data_columns(self.schema)

    def __repr__(self) -> str:
        cols = ", ".join(f"{c}: {self.schema.field(c).dtype}" for c in self.columns)
        keyed = f"; keyed by {list(self.schema.keys)}" if self.schema.keys else ""
        return f"<{type(self).__name__} {sn.stream_label(self._node)} ({cols}{keyed})>"

    def _new(self, node: api.Node) -> DataStream:
        return (KeyedStream if node.schema.keys else DataStream)(self._ctx, node)

    def _where(self, op: str) -> str:
        return f"{op} on {sn.stream_label(self._node)}"

    def _require(self, columns: Sequence[str], op: str) -> None:
        missing = [c for c in columns if not self.schema.has(c)]
        if missing:
            raise ValueError(f"{self._where(op)}: unknown column(s) {missing}; the stream has {self.columns}")

    def _infer(self, build: Callable[[pl.LazyFrame], pl.LazyFrame], op: str) -> dict[str, pl.DataType]:
        try:
            return dict(build(pl.LazyFrame(schema=self.schema.polars_schema())).collect_schema())
        except Exception as e:
            raise ValueError(f"{self._where(op)}: {type(e).__name__}: {e}") from None

    def _unkeyed(self, columns: dict[str, pl.DataType], keys: tuple[str, ...] = ()) -> Schema:
        return sn.make_schema(self.schema.name, columns, keys, self.schema.timestamp)

    # -- stateless -----------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any] | pl.Expr | Sequence[pl.Expr], *, schema: SchemaSpec | None = None) -> DataStream:
        """One output element per element.

        ``fn`` gets the value (value stream) or a dict (record stream). Without ``schema``
        the results are Python objects (a value stream); with ``schema={"col": type}`` (or
        an @entity) ``fn`` returns dicts or tuples and the result is a record stream.
        Polars expressions (the fast path) are evaluated like ``select``.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> _ = ctx.from_collection([1, 2]).map(lambda x: {"n": x, "sq": x * x}, schema={"n": int, "sq": int}).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        [{'n': 1, 'sq': 1}, {'n': 2, 'sq': 4}]
        """
        if isinstance(fn, pl.Expr) or (isinstance(fn, (list, tuple)) and fn and all(isinstance(e, pl.Expr) for e in fn)):
            return self.select(fn)
        if not callable(fn):
            raise TypeError(f"{self._where('map')}: expected a callable or polars expressions, got {type(fn).__name__}")
        if schema is None:
            out = sn.value_schema(self.schema.name)
            return self._new(sn.RowNode(schema=out, input=self._node, op="map", fn=fn))
        cols = resolve_schema(schema, self._where("map"))
        return self._new(sn.RowNode(schema=sn.make_schema(self.schema.name, cols), input=self._node, op="map", fn=fn, output="records"))

    def flat_map(self, fn: Callable[[Any], Any]) -> DataStream:
        """Zero or more elements per element (``fn`` returns an iterable), each with its input's event time.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> _ = ctx.from_collection(["a b", "c"]).flat_map(str.split).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        ['a', 'b', 'c']
        """
        if not callable(fn):
            raise TypeError(f"{self._where('flat_map')}: expected a callable, got {type(fn).__name__}")
        return self._new(sn.RowNode(schema=sn.value_schema(self.schema.name), input=self._node, op="flat_map", fn=fn))

    def filter(self, predicate: Callable[[Any], Any] | pl.Expr) -> DataStream:
        """Keep elements where ``predicate`` is true (a callable, or a polars expression: faster).

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> _ = ctx.from_collection([{"n": 1}, {"n": 5}]).filter(pl.col("n") > 2).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        [{'n': 5}]
        """
        if isinstance(predicate, pl.Expr):
            self._infer(lambda lf: lf.filter(predicate), "filter")
            return self._new(sn.BatchNode(schema=self.schema, input=self._node, op="filter", payload=predicate))
        if not callable(predicate):
            raise TypeError(f"{self._where('filter')}: expected a callable or a polars expression, got {type(predicate).__name__}")
        return self._new(sn.RowNode(schema=self.schema, input=self._node, op="filter", fn=predicate))

    def with_columns(self, *exprs: pl.Expr | Sequence[pl.Expr]) -> DataStream:
        """Add or replace columns with polars expressions (columnar).

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> _ = ctx.from_collection([{"n": 1}, {"n": 5}]).with_columns((pl.col("n") * 2).alias("twice")).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        [{'n': 1, 'twice': 2}, {'n': 5, 'twice': 10}]
        """
        flat = _exprs(exprs, self._where("with_columns"))
        cols = self._infer(lambda lf: lf.with_columns(*flat), "with_columns")
        keys = self.schema.keys if all(cols.get(k) == self.schema.field(k).dtype for k in self.schema.keys) else ()
        return self._new(sn.BatchNode(schema=self._unkeyed(cols, keys), input=self._node, op="with_columns", payload=flat))

    def select(self, *exprs: pl.Expr | str | Sequence[pl.Expr | str]) -> DataStream:
        """Keep/compute these columns (polars expressions or names); event time is kept.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> _ = ctx.from_collection([{"n": 1, "s": "x"}]).select("s", (pl.col("n") + 1).alias("m")).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        [{'s': 'x', 'm': 2}]
        """
        flat = tuple(pl.col(e) if isinstance(e, str) else e for e in exprs)
        flat = _exprs(flat, self._where("select"))
        internal = [c for c in self.schema.names if c.startswith("__")]
        cols = self._infer(lambda lf: lf.select(*flat, *internal), "select")
        if self.schema.timestamp not in cols:
            cols[self.schema.timestamp] = self.schema.field(self.schema.timestamp).dtype
            flat = (*flat, pl.col(self.schema.timestamp))
        keys = self.schema.keys if all(k in cols for k in self.schema.keys) else ()
        return self._new(sn.BatchNode(schema=self._unkeyed(cols, keys), input=self._node, op="select", payload=flat))

    def map_batches(self, fn: Callable[[pl.DataFrame], pl.DataFrame], *, schema: SchemaSpec | None = None) -> DataStream:
        """``fn`` over each micro-batch as a polars DataFrame (the fast path for custom code).

        The result must keep the timestamp column (or the batch's height, in which case
        the event times are carried over). ``schema`` declares the output columns when
        they change (as in ``polars.LazyFrame.map_batches``: unchanged by default).
        """
        if not callable(fn):
            raise TypeError(f"{self._where('map_batches')}: expected a callable, got {type(fn).__name__}")
        if schema is None:
            out = self.schema
        else:
            cols = resolve_schema(schema, self._where("map_batches"))
            out = self._unkeyed(cols, self.schema.keys if all(k in cols for k in self.schema.keys) else ())
        return self._new(sn.BatchNode(schema=out, input=self._node, op="map_batches", payload=fn))

    def key_by(self, key: Callable[[Any], Any] | str | Sequence[str]) -> KeyedStream:
        """Partition by key: column name(s) (columnar) or a function of the element.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> _ = ctx.from_collection([("a", 1), ("b", 2), ("a", 3)]).key_by(lambda kv: kv[0]).reduce(lambda acc, kv: (kv[0], acc[1] + kv[1])).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        [('a', 1), ('b', 2), ('a', 4)]
        """
        if isinstance(key, str):
            key = [key]
        if isinstance(key, (list, tuple)):
            self._require(key, "key_by")
            for k in key:
                if self.schema.field(k).dtype == sn.OBJECT:
                    raise TypeError(f"{self._where('key_by')}: column {k!r} holds Python objects; key by a function instead")
            out = dataclasses.replace(self.schema, keys=tuple(key))
            return KeyedStream(self._ctx, sn.BatchNode(schema=out, input=self._node, op="key_by", payload=tuple(key)))
        if not callable(key):
            raise TypeError(f"{self._where('key_by')}: expected a function or column name(s), got {type(key).__name__}")
        cols = {**self.schema.polars_schema(), sn.KEY: sn.OBJECT}
        out = sn.make_schema(self.schema.name, cols, (sn.KEY,), self.schema.timestamp)
        return KeyedStream(self._ctx, sn.RowNode(schema=out, input=self._node, op="key_by", fn=key))

    # -- event time ------------------------------------------------------------------------
    def _source_path(self, op: str) -> tuple[sn.SourceNode, list[api.Node]]:
        """The source this stream reads and the stateless steps in between (source first)."""
        path: list[api.Node] = []
        node = self._node
        while not isinstance(node, sn.SourceNode):
            if not isinstance(node, sn.STATELESS):
                raise ValueError(
                    f"{self._where(op)}: event time and lateness belong to a source; call {op} right after "
                    f"ctx.from_...() or after stateless steps (map/filter/flat_map), not after {sn.stream_label(node)}"
                )
            path.append(node)
            node = node.input
        return node, path[::-1]

    def timestamp_assigner(self, assigner: Callable[[Any], Any] | str, *, unit: Literal["s", "ms", "us"] = "s") -> DataStream:
        """Take event time from each element: a function returning a datetime (naive = UTC)
        or a number of ``unit`` since the epoch, or a column name. Without one, a stream's
        event time is its connector's timestamp column, or the ingestion time.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> events = ctx.from_collection([{"t": 60, "n": 1}, {"t": 0, "n": 2}], name="events")
        >>> _ = events.timestamp_assigner("t").sink(out)  # t in seconds; no lateness allowed
        >>> job = ctx.execute()
        >>> out.items, job.late_events("events")["n"].to_list()  # the row at t=0 came after t=60
        ([{'t': 60, 'n': 1}], [2])
        """
        source, path = self._source_path("timestamp_assigner")
        if source.timestamps is not None:
            raise ValueError(f"{self._where('timestamp_assigner')}: the stream already has a timestamp_assigner")
        if unit not in ("s", "ms", "us"):
            raise ValueError(f"timestamp_assigner: unit must be 's', 'ms' or 'us', not {unit!r}")
        if isinstance(assigner, str):
            self._require([assigner], "timestamp_assigner")
            spec = sn.TimestampSpec(column=assigner, unit=unit)
        elif callable(assigner):
            spec = sn.TimestampSpec(fn=assigner, unit=unit)
        else:
            raise TypeError(f"timestamp_assigner: expected a function or a column name, got {type(assigner).__name__}")
        cols = {**self.schema.polars_schema(), sn.TS: sn.make_schema("t", {}).field(sn.TS).dtype}
        out = sn.make_schema(self.schema.name, cols, self.schema.keys, sn.TS)
        node = dataclasses.replace(source, schema=out, prelude=source.prelude + tuple(path), timestamps=spec)
        return self._new(node)

    def with_lateness(self, lateness: Duration, *, late_sink: Any = None, idle_timeout: Duration | None = None) -> DataStream:
        """Allow events up to ``lateness`` out of event-time order (watermark = max seen -
        lateness). Later events go to ``late_sink`` (and ``job.late_events(source)``), never
        silently dropped. ``idle_timeout`` stops a silent source from holding others back."""
        source, path = self._source_path("with_lateness")
        node: api.Node = dataclasses.replace(
            source,
            lateness_us=parse_duration_us(lateness, what="with_lateness"),
            late_sink=None if late_sink is None else as_sink(late_sink),
            idle_timeout_us=None if idle_timeout is None else parse_duration_us(idle_timeout, what="idle_timeout"),
        )
        for step in path:  # the same steps, reading the new source
            assert isinstance(step, (sn.Unary, api.UnaryNode))
            node = dataclasses.replace(step, input=node)
        return self._new(node)

    # -- several streams -------------------------------------------------------------------
    def union(self, *others: DataStream) -> DataStream:
        """All elements of these streams in event-time order; elements with equal times come
        in argument order (this stream first), then arrival order."""
        members = [self, *others]
        for other in others:
            if not isinstance(other, DataStream):
                raise TypeError(f"union: expected DataStreams, got {type(other).__name__}")
            if other.columns != self.columns:
                raise ValueError(f"union: streams must have the same columns; {self.columns} vs {other.columns}")
        cols: dict[str, pl.DataType] = {}
        for c in self.columns:
            dtypes = {m.schema.field(c).dtype for m in members}
            if len(dtypes) > 1 and not (c == sn.VALUE and len(self.columns) == 1):
                raise TypeError(f"union: column {c!r} has different types {sorted(map(str, dtypes))}; cast them first")
            cols[c] = dtypes.pop() if len(dtypes) == 1 else sn.OBJECT
        ts_names = {m.schema.timestamp for m in members}
        ts = ts_names.pop() if len(ts_names) == 1 else sn.TS
        keys = self.schema.keys if all(m.schema.keys == self.schema.keys for m in members) else ()
        for k in keys:
            cols.setdefault(k, self.schema.field(k).dtype)
        schema = sn.make_schema(self.schema.name, cols, keys, ts)
        return self._new(sn.UnionNode(schema=schema, members=tuple(m._node for m in members)))

    # -- execution -------------------------------------------------------------------------
    def set_parallelism(self, n: int) -> DataStream:
        """How many instances run this operator on a distributed runtime (the embedded
        runtime runs one instance per operator; results are the same)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"set_parallelism: n must be a positive int, got {n!r}")
        return self._new(dataclasses.replace(self._node, parallelism=n))

    def sink(self, target: Sink | Callable[[Any], Any] | Any, *, name: str | None = None) -> DataStream:
        """Send every element to ``target``: a callable (``print``), a ``ListSink``, a
        Volga store (``name=`` the feature name) or a file path. Returns this stream."""
        self._ctx._add_sink(sn.SinkNode(schema=self.schema, input=self._node, sink=as_sink(target, name)))
        return self

    def sink_batches(self, fn: Callable[[pl.DataFrame], Any]) -> DataStream:
        """Call ``fn`` with each micro-batch as a polars DataFrame (columnar sink)."""
        return self.sink(BatchSink(fn))


class KeyedStream(DataStream):
    """A stream partitioned by key: stateful operators keep state per key."""

    def _key_alias(self) -> str | None:
        return "key" if sn.KEY in self.schema.keys else None

    def _out_keys(self) -> dict[str, pl.DataType]:
        alias = self._key_alias()
        return {(alias if k == sn.KEY and alias else k): self.schema.field(k).dtype for k in self.schema.keys}

    def reduce(self, fn: Callable[[Any, Any], Any]) -> KeyedStream:
        """Rolling reduce: each element emits ``fn(key's reduced value so far, element)``
        (the first element of a key is emitted as is)."""
        if not callable(fn):
            raise TypeError(f"{self._where('reduce')}: expected a callable, got {type(fn).__name__}")
        schema = self.schema
        if sn.is_value_stream(schema):
            schema = sn.make_schema(schema.name, {**schema.polars_schema(), sn.VALUE: sn.OBJECT}, schema.keys, schema.timestamp)
        return KeyedStream(self._ctx, sn.ReduceNode(schema=schema, input=self._node, fn=fn))

    def _check_aggregates(self, aggregates: Sequence[Aggregate], op: str) -> tuple[Aggregate, ...]:
        from volga.stream.ops import _prepare_values

        aggs = tuple(aggregates)
        if not aggs or not all(isinstance(a, Aggregate) for a in aggs):
            raise TypeError(f"{self._where(op)}: expected a list of aggregates (Count, Sum, Avg, ...), got {aggregates!r}")
        names = [a.into for a in aggs]
        taken = set(self._out_keys()) | {"window_start", "window_end"}
        clash = sorted({n for n in names if names.count(n) > 1 or n in taken})
        if clash:
            raise ValueError(f"{self._where(op)}: output column(s) {clash} are taken (by another aggregate, a key or a window bound)")
        _prepare_values(self.schema, aggs, self._where(op))
        return aggs

    def _agg_columns(self, aggs: tuple[Aggregate, ...]) -> dict[str, pl.DataType]:
        from volga.stream.ops import _prepare_values

        prepared, _ = _prepare_values(self.schema, aggs, self._where("aggregate"))
        return {a.into: a.output_dtype(prepared.field(a.on).dtype if a.on else None) for a in aggs}

    def aggregate(self, aggregates: Sequence[Aggregate]) -> KeyedStream:
        """The Entity API's aggregates, per event: for each element, one row with the key,
        its event time and each aggregate over the key's events in the aggregate's window
        (``window=`` on each; default "forever"). Output: a record stream.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> from volga import Count, Sum
        >>> rows = [{"user": "u", "amount": 5.0, "t": 0}, {"user": "u", "amount": 7.0, "t": 30}, {"user": "u", "amount": 1.0, "t": 90}]
        >>> per_user = ctx.from_collection(rows).timestamp_assigner("t").key_by("user")
        >>> _ = per_user.aggregate([Count(window="1m", into="n"), Sum(on="amount", window="1m", into="total")]).sink(out)
        >>> _ = ctx.execute()
        >>> out.items
        [{'user': 'u', 'n': 1, 'total': 5.0}, {'user': 'u', 'n': 2, 'total': 12.0}, {'user': 'u', 'n': 2, 'total': 8.0}]
        """
        aggs = self._check_aggregates(aggregates, "aggregate")
        keys = self._out_keys()
        ts = self.schema.timestamp
        schema = sn.make_schema(self.schema.name, {**keys, ts: self.schema.field(ts).dtype, **self._agg_columns(aggs)}, tuple(keys), ts)
        return KeyedStream(self._ctx, sn.AggregateNode(schema=schema, input=self._node, aggregates=aggs, key_alias=self._key_alias()))

    def window(
        self, spec: WindowSpec | Duration | None = None, *, size: Duration | None = None, slide: Duration | None = None,
        late_sink: Any = None,
    ) -> WindowedStream:
        """Keyed event-time windows: ``TumblingWindow``, ``HoppingWindow`` (emitted when the
        watermark passes their end) or ``SlidingWindow`` (one output per event).

        Shorthands: ``window("1m")`` or ``window(size="1m")`` is ``TumblingWindow("1m")``;
        ``window("1m", slide="10s")`` or ``window(size="1m", slide="10s")`` is
        ``HoppingWindow("1m", "10s")``.

        >>> from volga.stream import ListSink, StreamingContext
        >>> ctx, out = StreamingContext(), ListSink()
        >>> from volga import Sum
        >>> rows = [{"user": "u", "amount": 5.0, "t": 0}, {"user": "u", "amount": 7.0, "t": 30}, {"user": "u", "amount": 1.0, "t": 90}]
        >>> per_minute = ctx.from_collection(rows).timestamp_assigner("t").key_by("user").window("1m")
        >>> _ = per_minute.aggregate([Sum(on="amount", into="total")]).select("window_start", "total").sink(out)
        >>> _ = ctx.execute()
        >>> [(row["window_start"].minute, row["total"]) for row in out.items]
        [(0, 12.0), (1, 1.0)]
        """
        if spec is None and size is not None:
            spec = size
        elif size is not None:
            raise TypeError(f"{self._where('window')}: give the window once (a spec or size=), not both")
        if isinstance(spec, (str, datetime.timedelta)):
            spec = TumblingWindow(spec) if slide is None or slide == spec else HoppingWindow(spec, slide)
        elif slide is not None:
            raise TypeError(f"{self._where('window')}: slide= goes with a size, e.g. window('1m', slide='10s')")
        if not isinstance(spec, (TumblingWindow, HoppingWindow, SlidingWindow)):
            raise TypeError(f"{self._where('window')}: expected TumblingWindow, HoppingWindow or SlidingWindow, got {spec!r}")
        return WindowedStream(self, spec, None if late_sink is None else as_sink(late_sink))

    def join(
        self,
        other: KeyedStream,
        *,
        kind: Literal["asof", "interval"] = "asof",
        how: Literal["left", "inner"] = "left",
        between: tuple[Duration, Duration] | None = None,
        suffix: str = "_right",
    ) -> KeyedStream:
        """Join with another stream keyed the same way.

        ``kind="asof"``: each element at t gets ``other``'s latest element of its key at or
        before t (``how="left"`` keeps unmatched elements with nulls). ``kind="interval"``
        (inner): each element at t is paired with every element of ``other`` of its key
        at ``t + lower <= ts <= t + upper`` where ``between=(lower, upper)``, e.g.
        ``("-5s", "5s")``. Value streams give ``(left, right)`` pairs; record streams give
        this stream's columns then ``other``'s (a taken name gets ``suffix``).
        """
        where = self._where("join")
        if not isinstance(other, KeyedStream):
            raise TypeError(f"{where}: the other stream must be keyed too (other.key_by(...))")
        if kind not in ("asof", "interval"):
            raise ValueError(f"{where}: kind must be 'asof' or 'interval', not {kind!r}")
        if how not in ("left", "inner"):
            raise ValueError(f"{where}: how must be 'left' or 'inner', not {how!r}")
        fn_keys = (sn.KEY in self.schema.keys, sn.KEY in other.schema.keys)
        if fn_keys[0] != fn_keys[1]:
            raise ValueError(f"{where}: key both streams the same way (both by a function, or both by columns)")
        if len(self.schema.keys) != len(other.schema.keys):
            raise ValueError(f"{where}: key arity differs: {list(self.schema.keys)} vs {list(other.schema.keys)}")
        for lk, rk in zip(self.schema.keys, other.schema.keys):
            if self.schema.field(lk).dtype != other.schema.field(rk).dtype:
                raise TypeError(f"{where}: key types differ: {lk!r} is {self.schema.field(lk).dtype}, {rk!r} is {other.schema.field(rk).dtype}")
        lower = upper = 0
        if kind == "interval":
            if how != "inner":
                raise ValueError(f"{where}: an interval join is inner (pass how='inner')")
            if between is None or len(between) != 2:
                raise ValueError(f"{where}: an interval join needs between=(lower, upper), e.g. ('-5s', '5s')")
            lower, upper = (_signed_us(b, "join between") for b in between)
            if lower > upper:
                raise ValueError(f"{where}: between=({between[0]!r}, {between[1]!r}) is empty (lower > upper)")
        elif between is not None:
            raise ValueError(f"{where}: between= is for kind='interval'")
        pairs = sn.is_value_stream(self.schema) and sn.is_value_stream(other.schema)
        taken = set(self.schema.names) | {"__kid"}
        right_keys = {"__kid" if k == sn.KEY else k for k in other.schema.keys} | ({sn.KEY} if fn_keys[1] else set())
        right_columns: list[tuple[str, str]] = []
        cols = dict(self.schema.polars_schema())
        for f in other.schema.fields:
            if f.name in right_keys:
                continue
            if f.name == other.schema.timestamp and f.name.startswith("__"):
                out = "__right_ts"
            elif pairs and f.name == sn.VALUE:
                out = "__right_value"
            else:
                out = f.name
                if out in taken:
                    out = f.name + suffix
                    if out in taken:
                        raise ValueError(f"{where}: right column {f.name!r} collides with {f.name!r} and {out!r}; rename it first")
            taken.add(out)
            right_columns.append((f.name, out))
            if not out.startswith("__"):
                cols[out] = f.dtype
        if pairs:
            cols = {sn.VALUE: sn.OBJECT, **{k: self.schema.field(k).dtype for k in self.schema.keys}}
        schema = sn.make_schema(self.schema.name, cols, self.schema.keys, self.schema.timestamp)
        node = sn.JoinNode(schema=schema, left=self._node, right=other._node, kind=kind, how=how, lower_us=lower, upper_us=upper,
                           right_columns=tuple(right_columns))
        return KeyedStream(self._ctx, node)


class WindowedStream:
    """A keyed stream cut into windows; finish it with ``aggregate`` or ``reduce``."""

    def __init__(self, stream: KeyedStream, spec: WindowSpec, late_sink: Sink | None) -> None:
        self.stream, self.spec, self.late_sink = stream, spec, late_sink

    def _sizes(self) -> tuple[int, int]:
        size = parse_duration_us(self.spec.size)
        slide = parse_duration_us(self.spec.slide) if isinstance(self.spec, HoppingWindow) else size
        return size, slide

    def aggregate(self, aggregates: Sequence[Aggregate]) -> KeyedStream:
        """Aggregates per key and window. Tumbling/hopping: one row per (key, window) with
        ``window_start``, ``window_end`` and the aggregates (their own ``window=`` is
        ignored). Sliding: one row per event, every aggregate over ``[t - size, t]``."""
        s = self.stream
        if isinstance(self.spec, SlidingWindow):
            return s.aggregate([_with_window(a, self.spec.size) for a in aggregates])
        aggs = s._check_aggregates(aggregates, "window aggregate")
        keys = s._out_keys()
        ts_dtype = s.schema.field(s.schema.timestamp).dtype
        cols = {**keys, "window_start": ts_dtype, "window_end": ts_dtype, **s._agg_columns(aggs)}
        schema = sn.make_schema(s.schema.name, cols, tuple(keys), sn.TS)
        size, slide = self._sizes()
        node = sn.WindowNode(schema=schema, input=s.node, size_us=size, slide_us=slide, aggregates=aggs, late_sink=self.late_sink, key_alias=s._key_alias())
        return KeyedStream(s._ctx, node)

    def reduce(self, fn: Callable[[Any, Any], Any]) -> KeyedStream:
        """Reduce each (key, window)'s elements in processing order; one element per window
        with event time ``window end - 1us``."""
        s = self.stream
        if isinstance(self.spec, SlidingWindow):
            raise ValueError(
                "SlidingWindow(...).reduce: a per-event sliding window needs aggregates that can drop "
                "old events; use .aggregate([...]) or a Tumbling/HoppingWindow"
            )
        if not callable(fn):
            raise TypeError(f"window reduce: expected a callable, got {type(fn).__name__}")
        cols = {c: (sn.OBJECT if c == sn.VALUE and sn.is_value_stream(s.schema) else s.schema.field(c).dtype) for c in s.columns}
        cols.update({k: s.schema.field(k).dtype for k in s.schema.keys})
        schema = sn.make_schema(s.schema.name, cols, s.schema.keys, sn.TS)
        size, slide = self._sizes()
        node = sn.WindowNode(schema=schema, input=s.node, size_us=size, slide_us=slide, reduce_fn=fn, late_sink=self.late_sink)
        return KeyedStream(s._ctx, node)
