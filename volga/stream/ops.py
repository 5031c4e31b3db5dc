"""Physical operators of the DataStream layer, on polars micro-batches.

They plug into the embedded executors beside the Entity API's operators: one-input
operators offer ``apply(batch)`` (``RowChain``, ``KeyedReduceOp``, ``FusedKeyedReduce``,
``AggregateOp`` which wraps the engine's ``WindowAggregateOp``); operators driven by watermarks offer
``push(input, rows)`` / ``release(bound)`` / ``buffered_rows`` like the engine's
``AsOfJoinOp`` (``UnionOp``, ``EventWindowOp``, ``IntervalJoinOp``, ``AsOfJoin`` which
wraps ``AsOfJoinOp``). ``release(bound)`` hands out what is final for every event time
< bound (``None``: everything, the inputs are finished).

Python callables are the slow path: one call per element, from one generated loop per
run of row steps (``volga/stream/rowloop.py``). A callable that raises does not kill the
job: its element is set aside (``job.rejected``) with the error as the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from volga.api import nodes as api
from volga.api.aggregates import Aggregate
from volga.api.entity import Schema
from volga.errors import Rejected
from volga.ops.frames import assemble, epoch_us
from volga.ops.join import AsOfJoinOp, JoinShape, SeqJoin, take_before
from volga.ops.protocol import (
    FINISHED_WM,
    NO_WM,
    BufferedOperator,
    NotRescalable,
    Operator,
    OperatorSpec,
    RowOperator,
    State,
)
from volga.ops.routing import SEQ  # a distributed runtime's per-row arrival number: carried through, never in a schema
from volga.ops.row_predicates import RowPredicate, translate
from volga.ops.stateless import SeqChain, StatelessChain
from volga.ops.window import PerRowSequence, WindowAggregateOp
from volga.plan.compile import Step
from volga.stream import nodes as sn
from volga.stream.rowloop import RowLoop

log = logging.getLogger("volga.stream")
_MISSING: Any = object()


def with_seq(names: list[str], batch: pl.DataFrame) -> list[str]:
    """``names`` plus the sequence column when ``batch`` carries one."""
    return [*names, SEQ] if SEQ in batch.columns else list(names)


def empty(schema: Schema) -> pl.DataFrame:
    return pl.DataFrame(schema=schema.polars_schema())


def items_of(batch: pl.DataFrame, schema: Schema) -> list[Any]:
    """What user callables see: bare values of a value stream, dicts of a record stream."""
    if sn.is_value_stream(schema):
        return batch[sn.OBJECTS if sn.OBJECTS in batch.columns else sn.VALUE].to_list()
    return batch.select(sn.data_columns(schema)).to_dicts()


def key_values(batch: pl.DataFrame, keys: tuple[str, ...]) -> list[Any]:
    if len(keys) == 1:
        return batch[keys[0]].to_list()
    return list(zip(*(batch[k].to_list() for k in keys)))


def frame_of(items: list[Any], schema: Schema, output: str) -> pl.DataFrame:
    """Data columns of ``schema`` built from callable results (values, dicts or tuples)."""
    if output == "value":
        return pl.DataFrame([pl.Series(sn.VALUE, items, dtype=sn.OBJECT)])
    cols = {n: schema.field(n).dtype for n in sn.data_columns(schema)}
    if not items:
        return pl.DataFrame(schema=cols)
    if isinstance(items[0], dict):
        return pl.from_dicts(items, schema=cols, strict=False)
    return pl.DataFrame(items, schema=cols, orient="row", strict=False)


class _Calls:
    """Runs a callable over elements; an element whose call raises is set aside."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.rejected: list[Rejected] = []

    def _reject(self, what: str, e: Exception, item: Any) -> None:
        row = item if isinstance(item, dict) else {"value": item}
        self.rejected.append(Rejected(f"{self.where} {what}", f"{type(e).__name__}: {e}", row))

    def flat(self, what: str, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], list[int]]:
        """Flattened ``fn(x)`` results and how many each element produced (0 if it failed)."""
        out: list[Any] = []
        counts: list[int] = []
        start = 0
        while True:
            extend, count = out.extend, counts.append
            try:
                for x in items if start == 0 else itertools.islice(items, start, None):
                    n = len(out)
                    extend(fn(x))
                    count(len(out) - n)
                return out, counts
            except Exception as e:
                pos = len(counts)
                del out[sum(counts):]
                counts.append(0)
                self._reject(what, e, items[pos])
                start = pos + 1


def _segments(run: list[sn.RowNode]) -> list[list[sn.RowNode]]:
    """A run of row steps cut around each flat_map (which runs on its own)."""
    out: list[list[sn.RowNode]] = []
    for step in run:
        if step.op == "flat_map" or not out or out[-1][0].op == "flat_map":
            out.append([step])
        else:
            out[-1].append(step)
    return out


def _rows_of(batch: pl.DataFrame, col: str, idx: np.ndarray | None) -> pl.Series:
    """Column ``col`` at rows ``idx`` (None: every row, in order)."""
    return batch[col] if idx is None else batch[col].gather(idx)


def _keep(n: int, failed: list[int]) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[failed] = False
    return mask


class RowChain(_Calls, RowOperator):
    """Consecutive stateless steps fused into one operator. Runs of Python callables stay
    Python lists between steps (no frame is built until the run ends)."""

    def __init__(self, steps: list[api.Node], where: str) -> None:
        super().__init__(where)
        self.steps = steps
        # Entity API stateless nodes run as the engine's chain (the Entity API's own semantics)
        self.entity_ops = {id(s): StatelessChain([s], where) for s in steps if isinstance(s, api.STATELESS)}
        self.loops: dict[tuple[int, ...], RowLoop] = {}
        self.predicates: dict[int, RowPredicate | None] = {}

    @property
    def schema(self) -> Schema:
        return self.steps[-1].schema

    def snapshot(self) -> dict[str, Any]:
        return {}  # stateless (ops.protocol)

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def sequenced(self) -> RowChain:
        """Carries the column itself; its Entity API steps run as sequence-keeping chains."""
        self.entity_ops = {k: SeqChain(c.steps, c.where) for k, c in self.entity_ops.items()}
        return self

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        i, steps = 0, self.steps
        while i < len(steps):
            if batch.height == 0:
                return empty(self.schema)
            if isinstance(steps[i], sn.RowNode):
                j = i
                while j < len(steps) and isinstance(steps[j], sn.RowNode):
                    j += 1
                run: list[sn.RowNode] = steps[i:j]  # type: ignore[assignment]
                while run and (expr := self._filter_expr(run[0], batch)) is not None:
                    batch, run = batch.filter(expr), run[1:]  # a simple predicate on records: columnar
                if run:
                    batch = self._rows(run, batch)
                i = j
            elif id(steps[i]) in self.entity_ops:
                chain = self.entity_ops[id(steps[i])]
                batch = chain.apply(batch)
                self.rejected.extend(chain.rejected)
                chain.rejected = []
                i += 1
            else:
                batch = self._columnar(steps[i], batch)  # type: ignore[arg-type]
                i += 1
        return batch

    def _filter_expr(self, step: sn.RowNode, batch: pl.DataFrame) -> pl.Expr | None:
        """A record-stream filter's predicate as a polars expression, when it is a simple
        one (``volga.ops.row_predicates``) and this batch lets it keep the same rows."""
        if step.op != "filter" or sn.is_value_stream(step.input.schema):
            return None
        if id(step) not in self.predicates:
            dtypes = {n: step.input.schema.field(n).dtype for n in sn.data_columns(step.input.schema)}
            self.predicates[id(step)] = translate(step.fn, dtypes)
        predicate = self.predicates[id(step)]
        return predicate.expr if predicate is not None and predicate.applies_to(batch) else None

    def _loop(self, segment: list[sn.RowNode]) -> RowLoop:
        ident = tuple(id(s) for s in segment)
        loop = self.loops.get(ident)
        if loop is None:
            loop = self.loops[ident] = RowLoop([(s.op, s.fn) for s in segment])  # type: ignore[misc]
        return loop

    def _rows(self, run: list[sn.RowNode], batch: pl.DataFrame) -> pl.DataFrame:
        source_schema = run[0].input.schema
        items = items_of(batch, source_schema)
        idx: np.ndarray | None = None  # input row of each element; None: still one per input row, in order
        keys: list[Any] | None = None
        changed = False
        for segment in _segments(run):
            if segment[0].op == "flat_map":
                items, counts = self.flat(segment[0].label(), segment[0].fn, items)
                idx = np.repeat(np.arange(batch.height) if idx is None else idx, counts)
                changed, keys = True, None
                continue
            loop = self._loop(segment)
            values, new_keys, kept = loop.run(items, {}, lambda i, e, x, seg=segment: self._reject(seg[i].label(), e, x))  # type: ignore[misc]
            if kept is not None:
                idx = kept if idx is None else idx[kept]
                if not loop.changes_values:
                    items = [items[p] for p in kept]
                if keys is not None and not loop.emits_keys:
                    keys = [keys[p] for p in kept]
            if loop.changes_values:
                items, changed, keys = values, True, None
            if loop.emits_keys:
                keys = new_keys
        last = run[-1]
        if not changed:
            columns = {c.name: c for c in (batch if idx is None else batch[idx]).iter_columns()}
        else:
            output = next(s.output for s in reversed(run) if s.op in ("map", "flat_map"))
            columns = {c.name: c for c in frame_of(items, last.schema, output).iter_columns()}
            columns[sn.TS] = _rows_of(batch, source_schema.timestamp, idx)
        if keys is not None:
            columns[sn.KEY] = pl.Series(sn.KEY, keys, dtype=sn.OBJECT)
        if SEQ in batch.columns and SEQ not in columns:
            columns[SEQ] = _rows_of(batch, SEQ, idx)
        return assemble(columns, with_seq(last.schema.names, batch))

    def _columnar(self, step: sn.BatchNode, batch: pl.DataFrame) -> pl.DataFrame:
        if step.op == "key_by":
            return batch
        if step.op == "filter":
            return batch.filter(step.payload)
        if step.op == "with_columns":
            return batch.with_columns(*step.payload)
        if step.op == "select":
            return batch.select(*step.payload, *[c for c in with_seq(step.schema.names, batch) if c.startswith("__")])
        seq = batch[SEQ] if SEQ in batch.columns else None
        if seq is not None:
            batch = batch.drop(SEQ)  # user functions never see it
        out = step.payload(batch)  # map_batches
        if not isinstance(out, pl.DataFrame):
            raise TypeError(f"{self.where} {step.label()}: the function must return a polars DataFrame, got {type(out).__name__}")
        ts = step.schema.timestamp
        if ts not in out.columns and ts in batch.columns and out.height == batch.height:
            out = out.with_columns(batch[ts])  # a row-wise function may leave the event time out
        missing = [c for c in step.schema.names if c not in out.columns]
        if missing:
            raise ValueError(
                f"{self.where} {step.label()}: the result lacks column(s) {missing}; declare the output "
                "with map_batches(fn, schema={...}) and keep the timestamp column"
            )
        out = out.select(step.schema.names)
        if seq is not None:  # row-wise: each row keeps its own; otherwise the batch's first
            out = out.with_columns(seq if out.height == seq.len() else pl.repeat(seq[0] if seq.len() else 0, out.height, dtype=pl.Int64, eager=True).alias(SEQ))
        return out


class KeyedReduceOp(_Calls, RowOperator):
    """Rolling reduce per key: every element emits the key's reduced value so far."""

    def __init__(self, node: sn.ReduceNode, where: str) -> None:
        super().__init__(where)
        self.node = node
        self.keys = node.input.schema.keys
        self.fn = node.fn
        self.state: dict[Any, Any] = {}
        self.value = sn.is_value_stream(node.input.schema)

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        keys = key_values(batch, self.keys)
        items = items_of(batch, self.node.input.schema)
        state, fn, get = self.state, self.fn, self.state.get
        out: list[Any] = []
        failed: list[int] = []
        start = 0
        while True:
            append = out.append
            try:
                for k, v in zip(keys, items) if start == 0 else itertools.islice(zip(keys, items), start, None):
                    acc = get(k, _MISSING)
                    acc = v if acc is _MISSING else fn(acc, v)
                    state[k] = acc
                    append(acc)
                break
            except Exception as e:
                pos = len(out) + len(failed)
                failed.append(pos)
                self._reject(self.node.label(), e, items[pos])
                start = pos + 1
        if failed:
            batch = batch.filter(pl.Series(_keep(batch.height, failed)))
        if self.value:
            return batch.with_columns(pl.Series(sn.VALUE, out, dtype=sn.OBJECT))
        data = frame_of(out, self.node.schema, "records")
        return batch.with_columns(data).select(with_seq(self.node.schema.names, batch))

    def snapshot(self) -> dict[str, Any]:
        # keys and accumulators are the user's Python objects: the one pickled state
        return {"state": pickle.dumps(self.state)}

    def restore(self, snap: dict[str, Any]) -> None:
        self.state = pickle.loads(snap["state"])


class FusedKeyedReduce(_Calls, RowOperator):
    """``[stateless steps] -> map/filter -> key_by(fn) [-> filter] -> reduce(fn)`` as one operator: the
    row steps and the reduce run in one generated loop (``RowLoop``), so an element is
    never turned into a frame between them. Only where keys need no exchange (the embedded
    runtime); results are those of ``RowChain`` followed by ``KeyedReduceOp``."""

    def __init__(self, prefix: list[api.Node], tail: list[sn.RowNode], node: sn.ReduceNode, where: str) -> None:
        super().__init__(where)
        self.prefix = RowChain(prefix, where) if prefix else None
        self.tail, self.node = tail, node
        self.loop = RowLoop([*((s.op, s.fn) for s in tail), ("reduce", node.fn)])  # type: ignore[list-item]  # tail holds no flat_map
        self.labels = [*(s.label() for s in tail), node.label()]
        self.state: dict[Any, Any] = {}

    @property
    def schema(self) -> Schema:
        return self.node.schema

    def _reject_step(self, step: int, e: Exception, item: Any) -> None:
        self._reject(self.labels[step], e, item)

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.prefix is not None:
            batch = self.prefix.apply(batch)
            self.rejected.extend(self.prefix.rejected)
            self.prefix.rejected = []
        if batch.height == 0:
            return empty(self.schema)
        in_schema = self.tail[0].input.schema
        values, keys, idx = self.loop.run(items_of(batch, in_schema), self.state, self._reject_step)

        out = frame_of(values, self.schema, "value" if sn.is_value_stream(self.schema) else "records")
        columns = {c.name: c for c in out.iter_columns()}
        columns[sn.KEY] = pl.Series(sn.KEY, keys, dtype=sn.OBJECT)
        if self.schema.timestamp not in columns:
            columns[self.schema.timestamp] = _rows_of(batch, in_schema.timestamp, idx)
        if SEQ in batch.columns:
            columns[SEQ] = _rows_of(batch, SEQ, idx)
        return assemble(columns, with_seq(self.schema.names, batch))

    def snapshot(self) -> dict[str, Any]:
        # keys and accumulators are the user's Python objects: the one pickled state
        return {"state": pickle.dumps(self.state)}

    def restore(self, snap: dict[str, Any]) -> None:
        self.state = pickle.loads(snap["state"])


def _prepare_values(schema: Schema, aggregates: tuple[Aggregate, ...], where: str) -> tuple[Schema, list[pl.Expr]]:
    """Object columns that numeric aggregates read are cast to Float64."""
    casts = []
    fields = list(schema.fields)
    for agg in aggregates:
        if agg.on is None:
            continue
        if not schema.has(agg.on):
            raise ValueError(f"{where}: {type(agg).__name__}(into={agg.into!r}) reads column {agg.on!r}, "
                             f"which the stream lacks (columns: {sn.data_columns(schema)})")
        dtype = schema.field(agg.on).dtype
        if dtype == sn.OBJECT:
            if not agg.reads_objects_as_float:
                raise TypeError(
                    f"{where}: {type(agg).__name__}(on={agg.on!r}) needs a typed column, but {agg.on!r} holds Python "
                    "objects; build a record stream first, e.g. map(fn, schema={...})"
                )
            fields = [f if f.name != agg.on else type(f)(f.name, pl.Float64(), True, f.key, f.timestamp) for f in fields]
            casts.append(pl.col(agg.on).map_elements(float, return_dtype=pl.Float64, skip_nulls=True))
        else:
            agg.check_input(dtype, where)
    return Schema(schema.name, tuple(fields), schema.keys, schema.timestamp), casts


def aggregate_output(input_schema: Schema, aggregates: tuple[Aggregate, ...], keys: tuple[str, ...], name: str) -> dict[str, pl.DataType]:
    return {
        a.into: a.output_dtype(input_schema.field(a.on).dtype if a.on else None)
        for a in aggregates
    }


class AggregateOp(RowOperator):
    """``aggregate([...])`` on a keyed stream: the engine's per-event sliding
    ``WindowAggregateOp``, with ``key_by(fn)`` keys and Object values adapted to it."""

    def __init__(self, node: sn.AggregateNode, where: str) -> None:
        self.node, self.where = node, where
        in_schema = node.input.schema
        prepared, self.casts = _prepare_values(in_schema, node.aggregates, where)
        keys = in_schema.keys
        out_cols = {k: prepared.field(k).dtype for k in keys}
        out_cols.update(aggregate_output(prepared, node.aggregates, keys, where))
        op_out = sn.make_schema(node.schema.name, out_cols, keys, in_schema.timestamp)
        self.op = WindowAggregateOp(prepared, op_out, keys, node.aggregates)
        if any(prepared.field(k).dtype == sn.OBJECT for k in keys):
            self.op.key_index.DICT_BELOW_ROWS = 1 << 62  # Python-object keys: always the dict path
        self.rename = {sn.KEY: node.key_alias} if node.key_alias else {}
        self.schema = node.schema

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.casts:
            batch = batch.with_columns(self.casts)
        return self.op.apply(batch).rename(self.rename).select(self.schema.names)

    def snapshot(self) -> dict[str, Any]:
        return self.op.snapshot()

    def restore(self, snap: dict[str, Any]) -> None:
        self.op.restore(snap)

    def sequenced(self) -> Operator:
        return PerRowSequence(self)



def _frame_or_none(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    """A list of buffered frames as one frame for a snapshot (None if empty)."""
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def _frames(frame: pl.DataFrame | None) -> list[pl.DataFrame]:
    return [] if frame is None else [frame]


def _sort_by_time(rows: pl.DataFrame, ts_col: str) -> pl.DataFrame:
    ts = rows[ts_col]
    if ts.is_sorted():
        return rows
    return rows[np.argsort(epoch_us(ts), kind="stable")]


class UnionOp(BufferedOperator):
    """Merge inputs in event-time order; equal times keep input order (the order of the
    ``union`` arguments), then arrival order. Released only up to the slowest watermark,
    so the order does not depend on micro-batch sizes."""

    def __init__(self, node: sn.UnionNode) -> None:
        self.node = node
        self.schema = node.schema
        self.ts = node.schema.timestamp
        self.buffers: list[list[pl.DataFrame]] = [[] for _ in node.members]
        self.adapt = [self._adapter(m.schema) for m in node.members]

    def _adapter(self, schema: Schema) -> list[pl.Expr]:
        out = []
        for name in self.schema.names:
            src = name if schema.has(name) else (schema.timestamp if name == self.ts else name)
            keep_object = schema.field(src).dtype == sn.OBJECT and self.schema.field(name).dtype != sn.OBJECT
            out.append(pl.col(src) if keep_object else pl.col(src).cast(self.schema.field(name).dtype).alias(name))
        return out

    def push(self, side: int, batch: pl.DataFrame) -> None:
        if batch.height:
            self.buffers[side].append(self._conform(side, batch))

    def _conform(self, side: int, batch: pl.DataFrame) -> pl.DataFrame:
        out = batch.select(self.adapt[side])
        for name, dtype in self.schema.polars_schema().items():
            if dtype == sn.OBJECT and out[name].dtype != sn.OBJECT:
                out = out.with_columns(pl.Series(name, out[name].to_list(), dtype=sn.OBJECT))
        return out

    @property
    def buffered_rows(self) -> int:
        return sum(b.height for buffer in self.buffers for b in buffer)

    def snapshot(self) -> dict[str, Any]:
        return {"buffers": {str(i): _frame_or_none(b) for i, b in enumerate(self.buffers)}}

    def restore(self, state: dict[str, Any]) -> None:
        self.buffers = [_frames(state["buffers"][str(i)]) for i in range(len(self.buffers))]

    def release(self, bound_us: int | None) -> pl.DataFrame:
        parts = [p for buffer in self.buffers if (p := take_before(buffer, self.ts, bound_us)) is not None and p.height]
        if not parts:
            return empty(self.schema)
        return _sort_by_time(pl.concat(parts), self.ts)

    def sequenced(self) -> Operator:
        return SeqUnion(self)


class SeqUnion(BufferedOperator):
    """The union numbering its output rows in the order it emits them (it runs as one
    partition, and releases in (event time, argument order, arrival) order)."""

    def __init__(self, op: UnionOp) -> None:
        self.op = op
        self.next_seq = 0

    @property
    def buffered_rows(self) -> int:
        return self.op.buffered_rows

    def push(self, side: int, batch: pl.DataFrame) -> None:
        self.op.push(side, batch)  # conformed to the union's schema: the column is dropped

    def snapshot(self) -> dict[str, Any]:
        return {"op": self.op.snapshot(), "next_seq": self.next_seq}

    def restore(self, state: dict[str, Any]) -> None:
        self.op.restore(state["op"])
        self.next_seq = state["next_seq"]

    def release(self, bound_us: int | None) -> pl.DataFrame:
        out = self.op.release(bound_us)
        start, self.next_seq = self.next_seq, self.next_seq + out.height
        return out.with_columns(pl.int_range(start, self.next_seq, dtype=pl.Int64).alias(SEQ))


_WIN = "__win_start"
_SEQ = "__seq"


class EventWindowOp(_Calls, BufferedOperator):
    """Keyed tumbling/hopping event-time windows ``[start, start + size)`` (starts are
    multiples of ``slide`` since the epoch). A window is emitted once the watermark reaches
    its end, with event time ``end - 1us``; windows that end together come out in the
    order their keys first arrived. Rows of open windows are kept as they are and
    aggregated with polars when the window closes. A row that arrives after its window was
    emitted (possible only after an idle input held nothing back) goes to the late sink."""

    def __init__(self, node: sn.WindowNode, where: str) -> None:
        super().__init__(where)
        self.node = node
        self.size, self.slide = node.size_us, node.slide_us
        in_schema = node.input.schema
        self.in_schema = in_schema
        self.keys = list(in_schema.keys)
        self.ts = in_schema.timestamp
        self.buffer: list[pl.DataFrame] = []
        self.emitted_until = NO_WM
        self.seq = 0
        self.late: list[pl.DataFrame] = []
        self.late_count = 0
        if node.aggregates is not None:
            prepared, self.casts = _prepare_values(in_schema, node.aggregates, where)
            self.exprs = [a.closed_window_expr(prepared.field(a.on).dtype if a.on else None) for a in node.aggregates]
        else:
            self.casts, self.exprs = [], []

    @property
    def buffered_rows(self) -> int:
        return sum(b.height for b in self.buffer)

    def snapshot(self) -> dict[str, Any]:
        return {
            "buffer": _frame_or_none(self.buffer), "late": _frame_or_none(self.late),
            "emitted_until": self.emitted_until, "seq": self.seq, "late_count": self.late_count,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.buffer, self.late = _frames(state["buffer"]), _frames(state["late"])
        self.emitted_until, self.seq, self.late_count = state["emitted_until"], state["seq"], state["late_count"]

    def push(self, side: int, batch: pl.DataFrame) -> None:
        if not batch.height:
            return
        ts = epoch_us(batch[self.ts])
        last = (ts // self.slide) * self.slide
        n_windows = -((ts - last - self.size) // self.slide)  # windows holding ts: ceil((size - (ts - last)) / slide)
        row = np.repeat(np.arange(ts.shape[0]), n_windows)
        k = np.arange(row.shape[0]) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
        starts = last[row] - k * self.slide
        late = starts + self.size <= self.emitted_until
        if late.any():
            late_rows = np.unique(row[late])
            self._late(batch[late_rows])
            row, starts = row[~late], starts[~late]
        exploded = batch[row].with_columns(pl.Series(_WIN, starts, dtype=pl.Int64), pl.Series(_SEQ, self.seq + row, dtype=pl.Int64))
        self.seq += ts.shape[0]
        if self.casts:
            exploded = exploded.with_columns(self.casts)
        self.buffer.append(exploded)

    def _late(self, rows: pl.DataFrame) -> None:
        self.late.append(rows)
        self.late_count += rows.height
        log.warning("%s %s: %d row(s) arrived after their window was emitted; set aside as late", self.where, self.node.label(), rows.height)
        if self.node.late_sink is not None:
            self.node.late_sink.write(rows, self.in_schema)

    def late_rows(self) -> pl.DataFrame | None:
        return pl.concat(self.late, how="vertical_relaxed") if self.late else None

    def output_watermark(self, bound: int) -> int:
        self.emitted_until = max(self.emitted_until, bound)
        return bound

    def release(self, bound_us: int | None) -> pl.DataFrame:
        if not self.buffer:
            return empty(self.node.schema)
        rows = pl.concat(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        self.buffer = []
        if bound_us is not None:
            self.emitted_until = max(self.emitted_until, bound_us)
            closed_mask = (rows[_WIN] + self.size) <= bound_us
            open_rows = rows.filter(~closed_mask)
            if open_rows.height:
                self.buffer.append(open_rows)
            rows = rows.filter(closed_mask)
        else:
            self.emitted_until = FINISHED_WM
        if rows.height == 0:
            return empty(self.node.schema)
        return self._emit(rows)

    def _emit(self, rows: pl.DataFrame) -> pl.DataFrame:
        group = [*self.keys, _WIN]
        schema = self.node.schema
        if self.node.reduce_fn is None:
            first = [pl.col(SEQ).first()] if SEQ in rows.columns else []  # the group's first row's
            out = rows.group_by(group, maintain_order=True).agg(*self.exprs, *first, pl.col(_SEQ).min().alias("__first"))
        else:
            out = self._reduce(rows, group)
        out = out.sort([_WIN, "__first"])
        start = pl.col(_WIN)
        out = out.with_columns(
            pl.from_epoch(start, "us").dt.replace_time_zone("UTC").alias("window_start"),
            pl.from_epoch(start + self.size, "us").dt.replace_time_zone("UTC").alias("window_end"),
            pl.from_epoch(start + self.size - 1, "us").dt.replace_time_zone("UTC").alias(sn.TS),
        )
        if self.node.key_alias:
            out = out.rename({sn.KEY: self.node.key_alias})
        return out.select(with_seq(schema.names, out))

    def _reduce(self, rows: pl.DataFrame, group: list[str]) -> pl.DataFrame:
        fn = self.node.reduce_fn
        assert fn is not None
        items = items_of(rows, self.in_schema)
        seq = [pl.col(SEQ).first()] if SEQ in rows.columns else []
        groups = rows.with_row_index("__row").group_by(group, maintain_order=True).agg(pl.col("__row"), *seq, pl.col(_SEQ).min().alias("__first"))
        values = []
        keep = []
        for g, members in enumerate(groups["__row"].to_list()):
            try:
                values.append(functools.reduce(fn, (items[i] for i in members)))
                keep.append(g)
            except Exception as e:
                self._reject(self.node.label(), e, items[members[0]])
        groups = groups[keep].drop("__row")
        data = frame_of(values, self.node.schema, "value" if sn.is_value_stream(self.in_schema) else "records")
        return pl.concat([groups, data.drop([c for c in data.columns if c in groups.columns])], how="horizontal")


class _KeyIds:
    """Python-object keys (``key_by(fn)``) as dense int ids shared by both join inputs."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}

    def column(self, batch: pl.DataFrame) -> pl.Series:
        ids, out = self.ids, []
        for k in batch[sn.KEY].to_list():
            found = ids.get(k)
            if found is None:
                found = ids[k] = len(ids)
            out.append(found)
        return pl.Series("__kid", out, dtype=pl.Int64)


def join_keys(schema: Schema) -> list[str]:
    return ["__kid" if k == sn.KEY else k for k in schema.keys]


class _JoinInputs:
    """Shared by both joins: object keys become int ids; value streams become (left, right) pairs."""

    def __init__(self, node: sn.JoinNode) -> None:
        self.node = node
        self.ids = _KeyIds() if sn.KEY in node.left.schema.keys else None
        self.pairs = sn.is_value_stream(node.left.schema) and sn.is_value_stream(node.right.schema)

    def prepare(self, side: int, batch: pl.DataFrame) -> pl.DataFrame:
        if self.ids is not None:
            batch = batch.with_columns(self.ids.column(batch))
            if side == 1:
                batch = batch.drop(sn.KEY)
        if side == 1:
            batch = batch.drop(SEQ, strict=False)  # output rows keep their left row's
        return batch

    def snapshot(self) -> bytes | None:
        """Object key ids (Python objects: pickled), or None without ``key_by(fn)`` keys."""
        return None if self.ids is None else pickle.dumps(self.ids.ids)

    def restore(self, state: bytes | None) -> None:
        if self.ids is not None and state is not None:
            self.ids.ids = pickle.loads(state)

    def finish(self, joined: pl.DataFrame) -> pl.DataFrame:
        if self.pairs:
            pairs = list(zip(joined[sn.VALUE].to_list(), joined["__right_value"].to_list()))
            joined = joined.with_columns(pl.Series(sn.VALUE, pairs, dtype=sn.OBJECT))
        return joined.select(with_seq(self.node.schema.names, joined))


def _prepared_schema(schema: Schema, side: int) -> Schema:
    if sn.KEY not in schema.keys:
        return schema
    cols = {**schema.polars_schema(), "__kid": pl.Int64()}
    if side == 1:
        del cols[sn.KEY]
    keys = tuple(join_keys(schema))
    return sn.make_schema(schema.name, cols, keys, schema.timestamp)


class AsOfJoin(BufferedOperator):
    """Keyed as-of join: the engine's ``AsOfJoinOp`` (DESIGN.md "Join")."""

    def __init__(self, node: sn.JoinNode) -> None:
        self.node = node
        self.inputs = _JoinInputs(node)
        left, right = _prepared_schema(node.left.schema, 0), _prepared_schema(node.right.schema, 1)
        out_cols = {**left.polars_schema()}
        for src, dst in node.right_columns:
            out_cols[dst] = right.field(src).dtype
        out = sn.make_schema("join", out_cols, left.keys, left.timestamp)
        self.op = AsOfJoinOp(JoinShape(
            out, left, right, tuple(join_keys(node.left.schema)), tuple(join_keys(node.right.schema)), node.how, node.right_columns,
        ))

    @property
    def buffered_rows(self) -> int:
        return self.op.buffered_rows

    def snapshot(self) -> dict[str, Any]:
        return {"op": self.op.snapshot(), "ids": self.inputs.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        self.op.restore(state["op"])
        self.inputs.restore(state["ids"])

    def push(self, side: int, batch: pl.DataFrame) -> None:
        self.op.push(side, self.inputs.prepare(side, batch))

    def sequenced(self) -> AsOfJoin:
        self.op = SeqJoin(self.op.node)
        return self

    def release(self, bound_us: int | None) -> pl.DataFrame:
        out = self.op.release(bound_us)
        return self.inputs.finish(out)


class IntervalJoinOp(BufferedOperator):
    """Keyed interval join (inner): each left row at t with every right row of its key
    at ``t + lower <= ts <= t + upper``, in left order then right arrival order. Output
    event time is the left row's; a left row is emitted once every input's watermark has
    passed ``t + max(upper, 0)``, so the output watermark trails the inputs by that much."""

    def __init__(self, node: sn.JoinNode) -> None:
        self.node = node
        self.inputs = _JoinInputs(node)
        self.lower, self.upper = node.lower_us, node.upper_us
        self.left_ts, self.right_ts = node.left.schema.timestamp, node.right.schema.timestamp
        self.left_keys, self.right_keys = join_keys(node.left.schema), join_keys(node.right.schema)
        self.left: list[pl.DataFrame] = []
        self.right_new: list[pl.DataFrame] = []
        self.right: pl.DataFrame | None = None

    @property
    def buffered_rows(self) -> int:
        return sum(b.height for b in self.left) + sum(b.height for b in self.right_new) + (0 if self.right is None else self.right.height)

    def push(self, side: int, batch: pl.DataFrame) -> None:
        if batch.height:
            (self.left if side == 0 else self.right_new).append(self.inputs.prepare(side, batch))

    def snapshot(self) -> dict[str, Any]:
        return {
            "left": _frame_or_none(self.left), "right_new": _frame_or_none(self.right_new),
            "right": self.right, "ids": self.inputs.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.left, self.right_new = _frames(state["left"]), _frames(state["right_new"])
        self.right = state["right"]
        self.inputs.restore(state["ids"])

    def output_watermark(self, bound: int) -> int:
        return bound if bound >= FINISHED_WM else bound - max(self.upper, 0)

    def release(self, bound_us: int | None) -> pl.DataFrame:
        if self.right_new:
            renamed = [b.rename({src: dst for src, dst in self.node.right_columns if src != dst}) for b in self.right_new]
            self.right = pl.concat(([self.right] if self.right is not None else []) + renamed, how="vertical_relaxed")
            self.right_new = []
        ready_bound = None if bound_us is None else bound_us - max(self.upper, 0)
        left = take_before(self.left, self.left_ts, ready_bound)
        out = self._join(left) if left is not None and left.height and self.right is not None else None
        if self.right is not None and ready_bound is not None:  # right rows no future left row can reach
            rts = dict(self.node.right_columns).get(self.right_ts, self.right_ts)
            self.right = self.right.filter(pl.col(rts).dt.epoch("us") >= ready_bound + self.lower)
        if out is None:
            return pl.DataFrame(schema=self.node.schema.polars_schema())
        return out

    def _join(self, left: pl.DataFrame) -> pl.DataFrame:
        assert self.right is not None
        rts = dict(self.node.right_columns).get(self.right_ts, self.right_ts)
        right_keys = [dict(self.node.right_columns).get(k, k) for k in self.right_keys]
        right = self.right.rename({rk: lk for lk, rk in zip(self.left_keys, right_keys) if lk != rk})
        joined = left.join(right, on=self.left_keys, how="inner", maintain_order="left_right", suffix="__dup")
        t = pl.col(self.left_ts).dt.epoch("us")
        r = pl.col(rts).dt.epoch("us")
        joined = joined.filter((r >= t + self.lower) & (r <= t + self.upper))
        return self.inputs.finish(joined)


@dataclasses.dataclass
class RowChainSpec(OperatorSpec):
    """Consecutive stateless DataStream steps (the compiler appends to ``steps`` while fusing).

    DataStream specs add nothing to a checkpoint's fingerprint: the context fingerprints
    the whole DataStream definition, functions' code included
    (``volga.stream.context._definition_fingerprint``)."""

    steps: list[api.Node]
    where: str

    def build(self, *, sequenced: bool = False) -> RowChain:
        op = RowChain(list(self.steps), self.where)
        return op.sequenced() if sequenced else op

    def rescale(self, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
        return [{} for _ in range(n)]  # stateless



@dataclasses.dataclass
class StreamOpSpec(OperatorSpec):
    """A stateful DataStream operator ``make(node, where)`` (``make(node)`` without ``where``),
    its inputs partitioned by ``keys``."""

    make: Callable[..., Operator]
    node: sn.StreamNode
    keys: list[tuple[str, ...]]
    where: str | None = None
    # how its state is redistributed over n partitions (``volga.stream.rescaling``); None: it is not
    split: Callable[[sn.StreamNode, list[State], tuple[str, ...] | None, int], list[State]] | None = None

    def build(self, *, sequenced: bool = False) -> Operator:
        op = self.make(self.node) if self.where is None else self.make(self.node, self.where)
        return op.sequenced() if sequenced else op  # type: ignore[attr-defined]

    def input_keys(self) -> list[tuple[str, ...]]:
        return self.keys

    def detached(self) -> StreamOpSpec:
        """A window's late rows go back to the driver, which writes its late sink (a sink in
        a remote worker would be a copy)."""
        if getattr(self.node, "late_sink", None) is None:
            return self
        return dataclasses.replace(self, node=dataclasses.replace(self.node, late_sink=None))  # type: ignore[call-arg]

    def rescale(self, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
        if self.split is None:
            raise NotRescalable(f"DataStream {self.node.label()}")
        return self.split(self.node, states, routed, n)



@dataclasses.dataclass
class FusedReduceSpec(OperatorSpec):
    """``FusedKeyedReduce``: only for a runtime that never moves rows between partitions."""

    prefix: list[api.Node]
    tail: list[sn.RowNode]
    node: sn.ReduceNode
    where: str

    def build(self, *, sequenced: bool = False) -> FusedKeyedReduce:
        if sequenced:
            raise NotImplementedError("a fused keyed reduce runs only on the embedded runtime")
        return FusedKeyedReduce(list(self.prefix), list(self.tail), self.node, self.where)



def fuse_reduce(prev: Step, node: sn.ReduceNode) -> FusedReduceSpec | None:
    """``prev`` (a chain ending in row steps ``... -> key_by(fn) [-> filter(fn)...]``) and
    ``node`` as one operator (``ReduceNode.lower``'s ``absorb``: embedded runtime only)."""
    if prev.kind != "chain" or not isinstance(prev.spec, RowChainSpec):
        return None
    chain: list[Any] = prev.spec.steps
    start = len(chain)
    while start > 0 and isinstance(chain[start - 1], sn.RowNode) and chain[start - 1].op in ("map", "filter", "key_by"):
        start -= 1
    kinds = [s.op for s in chain[start:]]
    keyed_at = [i for i, kind in enumerate(kinds) if kind == "key_by"]
    if not keyed_at or any(kind != "filter" for kind in kinds[keyed_at[-1] + 1 :]):
        return None  # the key comes from an earlier step (a column, or before a map)
    return FusedReduceSpec(chain[:start], chain[start:], node, prev.spec.where)
