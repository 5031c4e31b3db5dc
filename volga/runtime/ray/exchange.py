"""What moves between Ray actors, without Ray: routing by a stable key hash, the
sequence column that keeps processing order, and merging several senders by watermark.

**Sequence numbers.** Every source row gets ``__volga_seq``, its arrival position in its
source. The embedded runtime processes rows in (event time, arrival) order; a receiver
that gets rows from several senders restores exactly that order by sorting on
``(ts, seq)``. Operators carry the column through: a chain keeps it on surviving rows, a
window output row takes its input row's, a join output row its left row's.

**Routing.** A row goes to partition ``hash_rows(keys) % n`` (polars' row hash with a
fixed seed: the same value in every process for one polars version, and independent of
column names, so a join's left ``buyer_id`` and right ``user_id`` meet on one actor).

>>> import polars as pl
>>> df = pl.DataFrame({"user": ["a", "b", "a"], "x": [1, 2, 3]})
>>> parts = split_by_key(df, ["user"], 2)
>>> any(p["x"].to_list() in ([1, 3], [1, 2, 3]) for p in parts)  # user "a" stays on one partition, in order
True
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from volga.api import nodes
from volga.ops.join import _MATCH, _RTS, AsOfJoinOp
from volga.ops.stateless import StatelessChain
from volga.runtime.local.stage import FINISHED_WM, NO_WM

SEQ = "__volga_seq"
HASH_SEED = 0x5EED


def partition_ids(rows: pl.DataFrame, keys: Sequence[str], n: int) -> np.ndarray:
    """The partition of every row: a stable hash of its key values (by position) mod ``n``."""
    if n == 1:
        return np.zeros(rows.height, dtype=np.int64)
    keyed = rows.select([_hashable(rows[k]).alias(f"k{i}") for i, k in enumerate(keys)])
    return (keyed.hash_rows(seed=HASH_SEED).to_numpy() % np.uint64(n)).astype(np.int64)


def _hashable(col: pl.Series) -> pl.Series:
    """Python-object keys (``key_by(fn)``) hash by their ``repr``: the same in every process
    (``hash()`` of a str is salted per process)."""
    if col.dtype == pl.Object:
        return pl.Series(col.name, [repr(v) for v in col.to_list()], dtype=pl.String)
    return col


_PICKLED = b"volga:pickled"


def to_wire(rows: pl.DataFrame) -> bytes:
    """``rows`` as one Arrow IPC stream (``bytes``: Ray passes it as is; an Arrow table
    would go through Ray's own per-column Arrow reducer, about ten times slower for a
    small batch). Python-object columns (which Arrow cannot hold) travel in the schema's
    metadata, each pickled as one list (one ``pickle`` call per column)."""
    import pyarrow as pa

    objects = [c for c, dt in rows.schema.items() if dt == pl.Object]
    table = rows.drop(objects).to_arrow() if objects else rows.to_arrow()
    if objects:
        payload = {"order": rows.columns, "columns": {c: rows[c].to_list() for c in objects}}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _PICKLED: pickle.dumps(payload, protocol=5)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_wire(table: Any) -> pl.DataFrame | None:
    """The rows ``to_wire`` sent (an Arrow table is read as well); ``None`` stays ``None``."""
    if table is None:
        return None
    if isinstance(table, (bytes, bytearray, memoryview)):
        import pyarrow as pa

        table = pa.ipc.open_stream(table).read_all()
    meta = table.schema.metadata or {}
    if _PICKLED in meta:  # polars reads metadata values as UTF-8: take ours off first
        table = table.replace_schema_metadata({k: v for k, v in meta.items() if k != _PICKLED})
    rows: pl.DataFrame = pl.from_arrow(table)  # type: ignore[assignment]
    if _PICKLED in meta:
        payload = pickle.loads(meta[_PICKLED])
        rows = rows.with_columns(
            pl.Series(c, v, dtype=pl.Object) for c, v in payload["columns"].items()
        ).select(payload["order"])
    return rows


def split_by_key(rows: pl.DataFrame, keys: Sequence[str], n: int) -> list[pl.DataFrame]:
    """``rows`` split into ``n`` partitions, each keeping the rows' relative order."""
    if n == 1:
        return [rows]
    part = partition_ids(rows, keys, n)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n + 1))
    ordered = rows[order]
    return [ordered.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in range(n)]


def order_rows(rows: pl.DataFrame, ts_col: str) -> pl.DataFrame:
    """Rows in processing order: event time, then arrival (the sequence number)."""
    return rows.sort([ts_col, SEQ], maintain_order=True)


@dataclasses.dataclass
class SenderState:
    watermark: int = NO_WM
    idle: bool = False


class InputMerger:
    """One operator input fed by ``senders`` upstream partitions.

    A sender's watermark promises that its later rows have ``ts >= watermark``. Rows are
    released in ``(ts, seq)`` order once no sender can still send an earlier one
    (``ts < min watermark`` of the non-idle senders). With one sender rows already arrive
    in order and pass straight through.
    """

    def __init__(self, senders: int, ts_col: str) -> None:
        self.senders = [SenderState() for _ in range(senders)]
        self.ts_col = ts_col
        self.buffer: list[pl.DataFrame] = []

    @property
    def watermark(self) -> tuple[int, bool]:
        """(bound, idle) of this input, as the embedded runtime computes it for a join."""
        active = [s.watermark for s in self.senders if not s.idle]
        return (min(active) if active else FINISHED_WM), not active

    @property
    def finished(self) -> bool:
        return all(s.watermark >= FINISHED_WM for s in self.senders)

    @property
    def buffered_rows(self) -> int:
        return sum(b.height for b in self.buffer)

    def push(self, sender: int, rows: pl.DataFrame | None, watermark: int, idle: bool) -> None:
        state = self.senders[sender]
        state.watermark, state.idle = max(state.watermark, watermark), idle
        if rows is not None and rows.height:
            self.buffer.append(rows)

    def snapshot(self) -> dict[str, Any]:
        """The senders' watermarks and the rows held for them (``ops.protocol`` State)."""
        return {
            "watermarks": np.array([s.watermark for s in self.senders], dtype=np.int64),
            "idle": np.array([s.idle for s in self.senders], dtype=np.bool_),
            "rows": pl.concat(self.buffer) if self.buffer else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.senders = [SenderState(int(w), bool(i)) for w, i in zip(state["watermarks"], state["idle"])]
        self.buffer = [state["rows"]] if state["rows"] is not None else []

    def release(self) -> pl.DataFrame | None:
        if not self.buffer:
            return None
        rows = pl.concat(self.buffer, rechunk=False) if len(self.buffer) > 1 else self.buffer[0]
        self.buffer = []
        if len(self.senders) == 1:
            return rows
        rows = order_rows(rows, self.ts_col)
        bound, _ = self.watermark
        if bound >= FINISHED_WM:
            return rows
        cut = int(rows[self.ts_col].dt.epoch("us").search_sorted(bound, side="left"))
        if cut < rows.height:
            self.buffer.append(rows.slice(cut))
        return rows.slice(0, cut) if cut else None


class SeqChain(StatelessChain):
    """The engine's fused stateless chain, keeping the sequence column on every row.

    Row functions never see the column; ``select`` and ``transform`` carry it over."""

    def _apply_one(self, step: nodes.UnaryNode, batch: pl.DataFrame) -> pl.DataFrame:
        if SEQ not in batch.columns:
            return super()._apply_one(step, batch)
        if isinstance(step, nodes.SelectNode):
            return batch.select([*step.columns, SEQ])
        if isinstance(step, nodes.TransformNode):
            if isinstance(step.fn, tuple):
                return batch.with_columns(*step.fn).select([*step.schema.names, SEQ])
            kept, rows = self._row_values(step, batch, step.fn)
            schema = step.schema.polars_schema()
            out = pl.from_dicts(rows, schema=schema, strict=False) if rows else pl.DataFrame(schema=schema)
            return out.with_columns(kept[SEQ])
        return super()._apply_one(step, batch)

    def _row_values(self, step: nodes.UnaryNode, batch: pl.DataFrame, fn: Any) -> tuple[pl.DataFrame, list[Any]]:
        if SEQ in batch.columns:
            user_fn = fn

            def fn(row: dict[str, Any]) -> Any:
                row.pop(SEQ, None)
                return user_fn(row)

        return super()._row_values(step, batch, fn)

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        out = super().apply(batch)
        if SEQ in batch.columns and SEQ not in out.columns:  # an emptied batch
            out = out.with_columns(pl.lit(None, dtype=pl.Int64).alias(SEQ))
        return out


class SeqJoin(AsOfJoinOp):
    """The engine's as-of join; output rows keep their left row's sequence number.

    Right rows are pushed without the column (their order is settled before the push)."""

    def push(self, side: int, batch: pl.DataFrame) -> None:
        super().push(side, batch.drop(SEQ, strict=False) if side == 1 else batch)

    def _join(self, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
        right = right.rename({rk: lk for lk, rk in zip(self.left_keys, self.right_keys) if lk != rk})
        joined = left.join_asof(
            right, left_on=self.left_ts, right_on=_RTS, by=self.left_keys, strategy="backward",
            check_sortedness=False,
        )
        if self.node.how == "inner":
            joined = joined.filter(pl.col(_MATCH).is_not_null())
        return joined.select([*self.node.schema.names, SEQ])


class SeqUnion:
    """The DataStream union; output rows are numbered in the order it emits them (it runs
    as one actor, and releases in (event time, argument order, arrival) order)."""

    def __init__(self, op: Any) -> None:
        self.op = op
        self.next_seq = 0

    @property
    def buffered_rows(self) -> int:
        return int(self.op.buffered_rows)

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


class SeqAggregate:
    """The DataStream per-event ``aggregate``: one output row per input row, keeping its number."""

    def __init__(self, op: Any) -> None:
        self.op = op

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self.op.apply(batch.drop(SEQ)).with_columns(batch[SEQ])

    def snapshot(self) -> dict[str, Any]:
        return dict(self.op.snapshot())

    def restore(self, state: dict[str, Any]) -> None:
        self.op.restore(state)


def seq_ops(op: Any) -> Any:
    """A sequence-keeping copy of a compiled operator (windows need no change)."""
    from volga.stream import ops as stream_ops

    if isinstance(op, StatelessChain):
        return SeqChain(op.steps, op.where)
    if isinstance(op, AsOfJoinOp):
        return SeqJoin(op.node)
    if isinstance(op, stream_ops.RowChain):  # carries the column itself; its Entity steps too
        op.entity_ops = {k: SeqChain(c.steps, c.where) for k, c in op.entity_ops.items()}
        return op
    if isinstance(op, stream_ops.AsOfJoin):
        op.op = SeqJoin(op.op.node)
        return op
    if isinstance(op, stream_ops.UnionOp):
        return SeqUnion(op)
    if isinstance(op, stream_ops.AggregateOp):
        return SeqAggregate(op)
    return op


def apply_window(op: Any, batch: pl.DataFrame) -> pl.DataFrame:
    """Window aggregation: one output row per input row, carrying its sequence number."""
    out = op.apply(batch.drop(SEQ))
    return out.with_columns(batch[SEQ])
