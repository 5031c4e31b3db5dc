"""Keyed, per-event sliding window aggregation (DESIGN.md "Windowed aggregation").

One operator serves batch and streaming: ``apply`` takes the next input rows in
processing order and returns one output row per input row. Each aggregate keeps the
state its class names (``Aggregate.sliding``, implemented in ``volga.ops.sliding``). State
is incremental (see ``kernels``): an append-only row log plus per-key window pointers and partial
aggregates, so a micro-batch costs O(its rows), whatever the window length. Rows that no
window can see any more (older than every window start of their key, and not the few
rows a "forever" aggregate keeps) are dropped when the log is compacted, which happens
whenever the log has doubled since the last compaction.

NaN is missing: a float NaN counts as a null for every aggregate (it is never summed,
compared, counted by ``Count(on=...)`` or picked by First/Last/LastN), so a NaN can
neither poison a window until it leaves nor make Min/Max depend on arrival order.

``carry`` copies input columns, and ``carry_outputs`` aggregate columns, into the output
under other names (the hidden columns of request-time pipelines, ``volga.plan.request_time``). A row whose ``PROBE_COLUMN`` is
true is a request, not an event: it is invisible to every aggregate (its own included)
and its output row is the window's value at its time (training uses this to evaluate
windows at spine times with the same kernels).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import polars as pl

from volga.api.aggregates import Aggregate
from volga.api.entity import Schema
from volga.ops import kernels
from volga.ops.frames import assemble, epoch_us, not_null_mask, pick, take
from volga.ops.keys import KeyIndex, OrderLabels
from volga.ops.protocol import NotRescalable, OperatorSpec, RowOperator, State
from volga.ops.rescaling import split_window
from volga.ops.routing import SEQ
from volga.ops.sliding import STATES

PROBE_COLUMN = "__volga_probe"


class _Arrays:
    """Named numpy arrays that grow together (amortised doubling)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.fills: dict[str, Any] = {}
        self.capacity = 0

    def add(self, name: str, dtype: Any, fill: Any) -> None:
        self.arrays[name] = np.full(self.capacity, fill, dtype=dtype)
        self.fills[name] = fill

    def ensure(self, size: int) -> None:
        if size <= self.capacity:
            return
        capacity = max(size, 2 * self.capacity, 1024)
        for name, old in self.arrays.items():
            new = np.full(capacity, self.fills[name], dtype=old.dtype)
            new[: old.shape[0]] = old
            self.arrays[name] = new
        self.capacity = capacity

    def compact(self, keep: np.ndarray) -> None:
        """Keep the rows ``keep`` (ascending), renumbered from 0, in new arrays (snapshots
        may still share the old ones)."""
        for name, old in self.arrays.items():
            new = np.full(self.capacity, self.fills[name], dtype=old.dtype)
            new[: keep.shape[0]] = old[keep]
            self.arrays[name] = new

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


_CHAIN = ("prev", "nxt")  # row pointers that ``kernels.relink`` rebuilds from the key ids


class WindowAggregateOp(RowOperator):
    """Sliding-window aggregates per key: one output row per input row, over that key's rows
    in ``[t - window, t]`` up to and including it; state carries over between ``apply`` calls.

    >>> import datetime
    >>> from volga import Count, Sum
    >>> from volga.testing.examples import orders
    >>> aggs = (Count(window="1h", into="n_1h"), Sum(on="product_price", window="1h", into="spent_1h"))
    >>> out = orders.group_by("buyer_id").aggregate(list(aggs))
    >>> op = WindowAggregateOp(orders.schema, out.schema, ("buyer_id",), aggs)
    >>> def batch(minutes, prices):
    ...     t0 = datetime.datetime(2025, 1, 1)
    ...     times = [t0 + datetime.timedelta(minutes=m) for m in minutes]
    ...     return pl.DataFrame({"buyer_id": "a", "product_id": "p", "product_type": "REGULAR", "purchased_at": times,
    ...                          "product_price": prices}, schema=orders.schema.polars_schema())
    >>> op.apply(batch([0, 30], [10.0, 5.0])).select("n_1h", "spent_1h").rows()
    [(1, 10.0), (2, 15.0)]
    >>> op.apply(batch([61], [1.0])).select("n_1h", "spent_1h").rows()  # the row at minute 0 has left the hour
    [(2, 6.0)]
    """

    # The log is compacted once it holds more than twice the rows that survived the last
    # compaction plus this slack: amortised O(1) per row, and at most ~2x the live state.
    compact_slack_rows = 65_536

    def __init__(
        self, input_schema: Schema, output_schema: Schema, keys: tuple[str, ...], aggregates: tuple[Aggregate, ...],
        carry: dict[str, str] | None = None, carry_outputs: dict[str, str] | None = None,
    ) -> None:
        self.input_schema = input_schema
        self.carry = dict(carry or {})  # output column -> the input column it copies
        self.carry_outputs = dict(carry_outputs or {})  # output column -> the aggregate column it copies
        self.output_schema = output_schema
        self.keys = keys
        self.aggregates = aggregates
        self.states = [STATES[a.sliding] for a in aggregates]  # what each aggregate keeps (``volga.ops.sliding``)
        self.ts_col = input_schema.timestamp
        self.value_cols = sorted({a.on for a in aggregates if a.on is not None})
        self.key_index = KeyIndex(keys, {k: input_schema.field(k).dtype for k in keys})
        self.value_index = {
            a.on: KeyIndex((a.on,), {a.on: input_schema.field(a.on).dtype})
            for a, state in zip(aggregates, self.states) if state.value_ids and a.on is not None
        }
        self.order_labels = {
            a.on: OrderLabels()
            for a, state in zip(aggregates, self.states)
            if state.ordered and a.on is not None and input_schema.field(a.on).dtype == pl.String
        }
        self.rows = _Arrays()  # the row log
        self.per_key = _Arrays()
        self.counts: dict[int, Any] = {}
        self.values: dict[str, list[pl.Series]] = {c: [] for c in self.value_cols}  # value log, in chunks
        self.size = 0
        self.live_after_compaction = 0
        self._declare_state()

    def _declare_state(self) -> None:
        rows, keys = self.rows, self.per_key
        rows.add("kid", np.int64, -1)
        rows.add("ts", np.int64, 0)
        rows.add("prev", np.int64, -1)
        rows.add("nxt", np.int64, -1)
        rows.add("all", np.bool_, True)  # "valid" for Count() without on=
        keys.add("last_row", np.int64, -1)
        for col in self.value_cols:
            rows.add(f"val:{col}", np.float64, 0.0)
            rows.add(f"valid:{col}", np.bool_, False)
            if col in self.value_index:
                rows.add(f"vid:{col}", np.int64, -1)
        # The rows' own columns: written once, when their row is appended (compaction and
        # relabelling replace the whole array), so a snapshot shares them instead of copying.
        # The other row arrays (the chain, the aggregates' front parts) are derived from
        # them and the per-key arrays: left out of snapshots, rebuilt on restore.
        self.snapshotted_rows = tuple(rows.arrays.keys() - set(_CHAIN))
        for i, state in enumerate(self.states):
            keys.add(f"lo:{i}", np.int64, -1)
            state.declare(self, i)

    # -- state -----------------------------------------------------------------------
    @property
    def state_rows(self) -> int:
        """Rows currently held in the log (for tests and metrics)."""
        return self.size

    def snapshot(self) -> dict[str, Any]:
        """The whole state in the columnar form of ``ops.protocol``: the key and value
        indexes as frames, the row log and per-key arrays, count-distinct tables, the
        value log as series; only sizes are plain metadata. Derived row arrays are left
        out: ``restore`` rebuilds the per-key row chain (``prev``/``nxt``) from the rows' key
        ids and the aggregates' front parts (``f_*``) from the rows in each key's front.

        The row columns are views, not copies: no row below ``size`` is written again in
        place, so the job goes on while the view is written out (and an unchanged chunk of
        them is the same memory at the next checkpoint, which is not encoded again)."""
        return {
            "keys": self.key_index.snapshot(),
            "values_index": {c: v.snapshot() for c, v in self.value_index.items()},
            "order_labels": {
                c: {"values": pl.Series(lab.values, dtype=pl.String), "labels": np.asarray(lab.labels, dtype=np.float64)}
                for c, lab in self.order_labels.items()
            },
            "rows": {n: self.rows[n][: self.size] for n in self.snapshotted_rows},
            "per_key": {n: a[: self.key_index.size].copy() for n, a in self.per_key.arrays.items()},
            "counts": {
                str(i): {"slots": np.fromiter(d.keys(), dtype=np.int64, count=len(d)), "counts": np.fromiter(d.values(), dtype=np.int64, count=len(d))}
                for i, d in self.counts.items()
            },
            "values": {c: self._value_log(c) for c in self.value_cols},
            "size": self.size,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self.key_index.restore(snap["keys"])
        for c, v in snap["values_index"].items():
            self.value_index[c].restore(v)
        for c, saved in snap["order_labels"].items():
            self.order_labels[c].values = saved["values"].to_list()
            self.order_labels[c].labels = saved["labels"].tolist()
        size = snap["size"]
        for name in self.rows.arrays:  # derived arrays saved by older versions are rebuilt too
            saved = snap["rows"].get(name) if name in self.snapshotted_rows else None
            self.rows.arrays[name] = np.full(size, self.rows.fills[name], self.rows[name].dtype) if saved is None \
                else np.array(saved, copy=True)
        self.rows.capacity = size
        for name, values in snap["per_key"].items():
            self.per_key.arrays[name] = np.array(values, copy=True)
        self.per_key.capacity = self.key_index.size
        kernels.relink(self.rows["kid"][:size], self.per_key["last_row"], self.rows["prev"], self.rows["nxt"])
        for i, (agg, state) in enumerate(zip(self.aggregates, self.states)):
            state.rebuild(self, i, agg)
        for i, saved_counts in snap["counts"].items():
            self.counts[int(i)] = kernels.empty_counts()
            for slot, c in zip(saved_counts["slots"].tolist(), saved_counts["counts"].tolist()):
                self.counts[int(i)][slot] = c
        self.values = {c: [s.clone()] for c, s in snap["values"].items()}
        self.size = self.live_after_compaction = size

    def _value_log(self, col: str) -> pl.Series:
        chunks = self.values[col]
        if len(chunks) > 1:  # chunked, not copied: O(number of chunks)
            self.values[col] = [pl.concat(chunks, rechunk=False)]
        return self.values[col][0] if self.values[col] else pl.Series(col, [], dtype=self.input_schema.field(col).dtype)

    # -- processing ------------------------------------------------------------------
    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        n = batch.height
        if n == 0:
            return pl.DataFrame(schema=self.output_schema.polars_schema())
        if self.size > 2 * self.live_after_compaction + self.compact_slack_rows:
            self._compact()
        # Rows of one key are laid out next to each other in the log (keys are independent,
        # so only the order within a key matters): the kernels' walks then stay in cache.
        kids = self.key_index.ids(batch)
        order = np.argsort(kids, kind="stable")
        r0 = self.size
        self._append(batch[order], kids[order])
        rows, keys = self.rows, self.per_key
        kernels.link_rows(r0, n, rows["kid"], rows["prev"], rows["nxt"], keys["last_row"])
        back = np.argsort(order)
        columns = [
            take(state.compute(self, i, a, r0, n), back).alias(a.into).cast(self.output_schema.field(a.into).dtype)
            for i, (a, state) in enumerate(zip(self.aggregates, self.states))
        ]
        out = {c: batch.get_column(c) for c in (*self.keys, self.ts_col)}
        out.update((c.name, c) for c in columns)
        for name, src in self.carry_outputs.items():
            out[name] = out[src].alias(name)
        for name, src in self.carry.items():
            out[name] = batch.get_column(src).alias(name)
        return assemble(out, self.output_schema.names)

    def _append(self, batch: pl.DataFrame, kids: np.ndarray) -> None:
        n, r0 = batch.height, self.size
        self.per_key.ensure(self.key_index.size)
        self.rows.ensure(r0 + n)
        rows = self.rows
        rows["kid"][r0 : r0 + n] = kids
        rows["ts"][r0 : r0 + n] = epoch_us(batch[self.ts_col])
        probe = batch.get_column(PROBE_COLUMN).to_numpy() if PROBE_COLUMN in batch.columns else None
        rows["all"][r0 : r0 + n] = True if probe is None else ~probe
        for col in self.value_cols:
            series = batch[col]
            self.values[col].append(series)
            valid = not_null_mask(series)
            if series.dtype == pl.Float64 and series.is_nan().any():
                valid &= ~series.is_nan().fill_null(False).to_numpy()
            if probe is not None:
                valid &= ~probe
            rows[f"valid:{col}"][r0 : r0 + n] = valid
            nulls = series.null_count() > 0
            if series.dtype == pl.Float64:
                rows[f"val:{col}"][r0 : r0 + n] = (series.fill_null(0.0) if nulls else series).to_numpy()
            elif series.dtype in (pl.Int64, pl.Boolean) or series.dtype.is_temporal():
                ints = series.cast(pl.Int64)
                rows[f"val:{col}"][r0 : r0 + n] = (ints.fill_null(0) if nulls else ints).to_numpy()
            elif col in self.order_labels:
                labels = self.order_labels[col]
                rows[f"val:{col}"][r0 : r0 + n] = labels.label(series)
                if labels.relabelled:  # every stored label moved: recompute them from the value log
                    relabelled = rows[f"val:{col}"].copy()  # not in place: snapshots share the old one
                    relabelled[:r0] = labels.label(self._value_log(col).head(r0))
                    rows.arrays[f"val:{col}"] = relabelled
            if col in self.value_index:
                ids = self.value_index[col].ids(pick(batch, [col]))
                valid = rows[f"valid:{col}"][r0 : r0 + n]
                rows[f"vid:{col}"][r0 : r0 + n] = np.where(valid, ids, -1)
        self.size += n

    def gather(self, col: str, idx: np.ndarray) -> pl.Series:
        """Values of ``col`` at row ids ``idx`` (-1: null)."""
        return take(self._value_log(col), idx)

    # -- compaction ------------------------------------------------------------------
    def _compact(self) -> None:
        """Drop rows no window can see; renumber the survivors (order is kept)."""
        size, n_keys = self.size, self.key_index.size
        rows, keys = self.rows, self.per_key
        kid = rows["kid"][:size]
        live = np.zeros(size, dtype=bool)
        windowed_lo = np.full(n_keys, np.iinfo(np.int64).max, dtype=np.int64)
        pointers = ["last_row"]
        row_pointers: list[str] = []
        for i, (agg, state) in enumerate(zip(self.aggregates, self.states)):
            lo = keys[f"lo:{i}"][:n_keys]
            if agg.window_us is not None:
                windowed_lo = np.where(lo >= 0, np.minimum(windowed_lo, lo), windowed_lo)
            else:
                _mark(live, lo)  # forever windows start at the key's first row
            pointers.append(f"lo:{i}")
            for name in state.live_rows:
                _mark(live, keys[f"{name}:{i}"][:n_keys])
            pointers.extend(f"{name}:{i}" for name in (*state.live_rows, *state.row_ids))
            row_pointers.extend(f"{name}:{i}" for name in state.row_row_ids)
            state.keep(self, i, agg, live)
        live |= np.arange(size) >= windowed_lo[kid]
        _mark(live, keys["last_row"][:n_keys])
        new_id = np.cumsum(live) - 1
        keep = np.flatnonzero(live)
        rows.compact(keep)
        for name in row_pointers:
            _remap(rows[name][: keep.shape[0]], new_id, live)
        for name in pointers:
            _remap(keys[name][:n_keys], new_id, live)
        for col in self.value_cols:
            self.values[col] = [self._value_log(col).gather(pl.Series(keep))]
        self.size = self.live_after_compaction = int(keep.shape[0])
        kernels.relink(rows["kid"][: self.size], keys["last_row"][:n_keys], rows["prev"], rows["nxt"])


class PerRowSequence(RowOperator):
    """An operator with one output row per input row (a sliding window, a per-event
    aggregate), carrying the sequence column: each output row keeps its input row's."""

    def __init__(self, op: RowOperator) -> None:
        self.op = op

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self.op.apply(batch.drop(SEQ)).with_columns(batch[SEQ])

    def snapshot(self) -> dict[str, Any]:
        return self.op.snapshot()

    def restore(self, snap: dict[str, Any]) -> None:
        self.op.restore(snap)


@dataclasses.dataclass
class WindowSpec(OperatorSpec):
    """A keyed sliding-window aggregation (see :class:`WindowAggregateOp`)."""

    input_schema: Schema
    output_schema: Schema
    keys: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]
    carry: dict[str, str] = dataclasses.field(default_factory=dict)
    carry_outputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def build(self, *, sequenced: bool = False) -> WindowAggregateOp | PerRowSequence:
        op = WindowAggregateOp(self.input_schema, self.output_schema, self.keys, self.aggregates, self.carry, self.carry_outputs)
        return PerRowSequence(op) if sequenced else op

    def input_keys(self) -> list[tuple[str, ...]]:
        return [tuple(self.keys)]

    def fingerprint(self) -> list[str]:
        return [f"keys {self.keys!r}", f"aggregates {self.aggregates!r}"]

    def rescale(self, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
        if routed is None:
            raise NotRescalable("a window whose routing columns are unknown")
        return split_window(states, routed, n, self.aggregates)


def _mark(live: np.ndarray, row_ids: np.ndarray) -> None:
    live[row_ids[row_ids >= 0]] = True


def _remap(pointers: np.ndarray, new_id: np.ndarray, live: np.ndarray) -> None:
    """Row-id pointers into the compacted log; pointers to dropped rows become -1."""
    ok = pointers >= 0
    target = np.where(ok, pointers, 0)
    pointers[:] = np.where(ok & live[target], new_id[target], -1)
