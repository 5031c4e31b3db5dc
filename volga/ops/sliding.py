"""The sliding-window states of ``volga.api.aggregates.Sliding``, one class each.

``WindowAggregateOp`` keeps, for its i-th aggregate, the state its class names
(``Aggregate.sliding``): the per-key and per-row arrays declared here (named
``"<name>:<i>"``, as snapshots store them) and the numba kernel that updates them
(``volga.ops.kernels``). A numeric state hands ``Partials`` to the aggregate's ``finish``
and masks rows with fewer than its ``null_below`` values; a row state gathers the picked
rows' values. Compaction asks each state which rows it points at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from volga.api.aggregates import Aggregate, LastN, Partials, Sliding
from volga.ops import kernels
from volga.ops.frames import masked

if TYPE_CHECKING:
    from volga.ops.window import WindowAggregateOp

ArraySpec = tuple[str, Any, Any]  # (name, numpy dtype, fill)


class State:
    """One ``Sliding`` state: its arrays, its kernel, and what compaction must keep."""

    per_key: tuple[ArraySpec, ...] = ()
    per_row: tuple[ArraySpec, ...] = ()
    live_rows: tuple[str, ...] = ()  # per-key row ids whose rows compaction keeps (and renumbers)
    row_ids: tuple[str, ...] = ()  # other per-key row ids compaction renumbers
    row_row_ids: tuple[str, ...] = ()  # per-row row ids compaction renumbers
    value_ids: bool = False  # needs the column's values as ids (``WindowAggregateOp.value_index``)
    ordered: bool = False  # needs string values as order labels (``WindowAggregateOp.order_labels``)

    def declare(self, op: WindowAggregateOp, i: int) -> None:
        for name, dtype, fill in self.per_key:
            op.per_key.add(f"{name}:{i}", dtype, fill)
        for name, dtype, fill in self.per_row:
            op.rows.add(f"{name}:{i}", dtype, fill)

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        """The aggregate at the new rows ``[r0, r0 + n)`` (whose state is updated)."""
        raise NotImplementedError

    def keep(self, op: WindowAggregateOp, i: int, agg: Aggregate, live: np.ndarray) -> None:
        """Mark rows this state needs beyond its window start and ``live_rows``."""

    def rebuild(self, op: WindowAggregateOp, i: int, agg: Aggregate) -> None:
        """Recompute the ``per_row`` arrays (derived state, which snapshots leave out)
        from the restored rows and per-key arrays."""


def _common(op: WindowAggregateOp, r0: int, n: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    return (r0, n, op.rows["kid"], op.rows["ts"])


def _window(agg: Aggregate) -> int:
    return -1 if agg.window_us is None else agg.window_us


def _valid(op: WindowAggregateOp, agg: Aggregate) -> np.ndarray:
    return op.rows[f"valid:{agg.on}"] if agg.on else op.rows["all"]


def _finished(agg: Aggregate, partials: Partials) -> pl.Series:
    values = agg.finish(partials)
    if agg.null_below <= 0:
        return pl.Series(values)
    return masked(values, partials.count >= agg.null_below)


class _Count(State):
    per_key = (("cnt", np.int64, 0),)

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        out = np.empty(n, dtype=np.int64)
        kernels.sliding_count(*_common(op, r0, n), op.rows["nxt"], _valid(op, agg), _window(agg),
                              op.per_key[f"lo:{i}"], op.per_key[f"cnt:{i}"], out)
        return _finished(agg, Partials(out))


class _Sum(State):
    per_key = (("f_end", np.int64, -1), ("b_sum", np.float64, 0.0), ("b_cnt", np.int64, 0))
    per_row = (("f_sum", np.float64, 0.0), ("f_cnt", np.int64, 0))
    row_ids = ("f_end",)

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        rows, keys = op.rows, op.per_key
        sums, counts = np.empty(n), np.empty(n, dtype=np.int64)
        kernels.sliding_sum(*_common(op, r0, n), rows["prev"], rows["nxt"], rows[f"val:{agg.on}"], _valid(op, agg),
                            _window(agg), keys[f"lo:{i}"], keys[f"f_end:{i}"], keys[f"b_sum:{i}"], keys[f"b_cnt:{i}"],
                            rows[f"f_sum:{i}"], rows[f"f_cnt:{i}"], sums, counts)
        return _finished(agg, Partials(counts, total=sums))

    def rebuild(self, op: WindowAggregateOp, i: int, agg: Aggregate) -> None:
        rows, keys = op.rows, op.per_key
        kernels.sum_fronts(keys[f"lo:{i}"], keys[f"f_end:{i}"], rows["prev"], rows[f"val:{agg.on}"],
                           _valid(op, agg), rows[f"f_sum:{i}"], rows[f"f_cnt:{i}"])


class _Moments(State):
    per_key = (("f_end", np.int64, -1), ("b_n", np.int64, 0), ("b_mean", np.float64, 0.0), ("b_m2", np.float64, 0.0))
    per_row = (("f_n", np.int64, 0), ("f_mean", np.float64, 0.0), ("f_m2", np.float64, 0.0))
    row_ids = ("f_end",)

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        rows, keys = op.rows, op.per_key
        counts, m2 = np.empty(n, dtype=np.int64), np.empty(n)
        kernels.sliding_moments(*_common(op, r0, n), rows["prev"], rows["nxt"], rows[f"val:{agg.on}"], _valid(op, agg),
                                _window(agg), keys[f"lo:{i}"], keys[f"f_end:{i}"], keys[f"b_n:{i}"],
                                keys[f"b_mean:{i}"], keys[f"b_m2:{i}"], rows[f"f_n:{i}"], rows[f"f_mean:{i}"],
                                rows[f"f_m2:{i}"], counts, m2)
        return _finished(agg, Partials(counts, m2=m2))

    def rebuild(self, op: WindowAggregateOp, i: int, agg: Aggregate) -> None:
        rows, keys = op.rows, op.per_key
        kernels.moments_fronts(keys[f"lo:{i}"], keys[f"f_end:{i}"], rows["prev"], rows[f"val:{agg.on}"],
                               _valid(op, agg), rows[f"f_n:{i}"], rows[f"f_mean:{i}"], rows[f"f_m2:{i}"])


class _Distinct(State):
    per_key = (("distinct", np.int64, 0),)
    value_ids = True

    def declare(self, op: WindowAggregateOp, i: int) -> None:
        super().declare(op, i)
        op.counts[i] = kernels.empty_counts()

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        out = np.empty(n, dtype=np.int64)
        kernels.count_distinct(*_common(op, r0, n), op.rows["nxt"], op.rows[f"vid:{agg.on}"], _window(agg),
                               op.per_key[f"lo:{i}"], op.counts[i], op.per_key[f"distinct:{i}"], out)
        return _finished(agg, Partials(out))


class _Extreme(State):
    per_key = (("f_end", np.int64, -1), ("b_idx", np.int64, -1))
    per_row = (("f_idx", np.int64, -1),)
    live_rows = ("b_idx",)
    row_ids = ("f_end",)
    row_row_ids = ("f_idx",)
    ordered = True

    def __init__(self, want_max: bool) -> None:
        self.want_max = want_max

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        assert agg.on is not None
        rows, keys = op.rows, op.per_key
        idx = np.empty(n, dtype=np.int64)
        kernels.sliding_extreme(*_common(op, r0, n), rows["prev"], rows["nxt"], rows[f"val:{agg.on}"], _valid(op, agg),
                                self.want_max, _window(agg), keys[f"lo:{i}"], keys[f"f_end:{i}"], keys[f"b_idx:{i}"],
                                rows[f"f_idx:{i}"], idx)
        return op.gather(agg.on, idx)

    def rebuild(self, op: WindowAggregateOp, i: int, agg: Aggregate) -> None:
        rows, keys = op.rows, op.per_key
        kernels.extreme_fronts(keys[f"lo:{i}"], keys[f"f_end:{i}"], rows["prev"], rows[f"val:{agg.on}"],
                               _valid(op, agg), self.want_max, rows[f"f_idx:{i}"])


class _FirstLast(State):
    per_key = (("fv", np.int64, -1), ("lv", np.int64, -1))
    live_rows = ("fv", "lv")

    def __init__(self, last: bool) -> None:
        self.last = last

    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        assert agg.on is not None
        first, last = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        kernels.first_last(*_common(op, r0, n), op.rows["nxt"], _valid(op, agg), _window(agg), op.per_key[f"lo:{i}"],
                           op.per_key[f"fv:{i}"], op.per_key[f"lv:{i}"], first, last)
        return op.gather(agg.on, last if self.last else first)


class _LastN(State):
    def compute(self, op: WindowAggregateOp, i: int, agg: Aggregate, r0: int, n: int) -> pl.Series:
        assert isinstance(agg, LastN) and agg.on is not None
        count = agg.n
        offsets, flat = np.empty(n + 1, dtype=np.int64), np.empty(n * count, dtype=np.int64)
        total = kernels.last_n(*_common(op, r0, n), op.rows["prev"], op.rows["nxt"], _valid(op, agg), _window(agg),
                               op.per_key[f"lo:{i}"], count, offsets, flat)
        values = op.gather(agg.on, flat[:total])
        lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values.to_arrow())
        return pl.Series(lists).cast(pl.List(values.dtype))

    def keep(self, op: WindowAggregateOp, i: int, agg: Aggregate, live: np.ndarray) -> None:
        if agg.window_us is None:  # "forever": each key's last n values, however old
            assert isinstance(agg, LastN)
            n_keys = op.key_index.size
            kernels.mark_last_valid(op.per_key["last_row"][:n_keys], op.rows["prev"], _valid(op, agg), agg.n, live)


STATES: dict[Sliding, State] = {
    Sliding.COUNT: _Count(),
    Sliding.SUM: _Sum(),
    Sliding.MOMENTS: _Moments(),
    Sliding.DISTINCT: _Distinct(),
    Sliding.MIN: _Extreme(want_max=False),
    Sliding.MAX: _Extreme(want_max=True),
    Sliding.FIRST: _FirstLast(last=False),
    Sliding.LAST: _FirstLast(last=True),
    Sliding.LAST_N: _LastN(),
}
