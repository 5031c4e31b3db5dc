"""What moves between Ray actors, without Ray: routing by a stable key hash, the
sequence column that keeps processing order, and merging several senders by watermark.

**Sequence numbers.** Every source row gets ``SEQ`` (``ops.routing``), its arrival
position in its source. The embedded runtime processes rows in (event time, arrival)
order; a receiver that gets rows from several senders restores exactly that order by
sorting on ``(ts, seq)``. Actors build their operators ``sequenced``: they carry the
column through.

**Routing.** A row goes to partition ``ops.routing.partition_ids(rows, keys, n)``.

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

from volga.ops.protocol import FINISHED_WM, NO_WM
from volga.ops.routing import SEQ, partition_ids

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
