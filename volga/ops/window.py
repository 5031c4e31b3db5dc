"""Keyed, per-event sliding window aggregation (DESIGN.md "Windowed aggregation").

One operator serves batch and streaming: ``apply`` takes the next input rows in
processing order and returns one output row per input row. Between calls it keeps, per
key, only the rows a future window can still see (``ts >= last_ts - largest window``)
plus, for "forever" windows, the few rows or running totals the aggregate needs.
Batch mode is simply one call with everything.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from volga.api.aggregates import Aggregate
from volga.api.entity import Schema
from volga.ops import kernels
from volga.ops.keys import KeyIndex

KID, TS, SEQ, NEW = "__volga_kid", "__volga_ts", "__volga_seq", "__volga_new"
_CARRY_KINDS = ("count", "sum", "avg", "stddev")  # forever windows keep running totals


@dataclasses.dataclass
class _Carry:
    """Running totals for forever count/sum/avg/stddev, indexed by key id."""

    sums: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    means: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    m2s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    def copy(self) -> "_Carry":
        return _Carry(self.sums.copy(), self.counts.copy(), self.means.copy(), self.m2s.copy())

    def grow(self, size: int) -> None:
        if size > self.counts.shape[0]:
            extra = size - self.counts.shape[0] + max(1024, size // 2)
            self.sums = np.concatenate([self.sums, np.zeros(extra)])
            self.counts = np.concatenate([self.counts, np.zeros(extra, dtype=np.int64)])
            self.means = np.concatenate([self.means, np.zeros(extra)])
            self.m2s = np.concatenate([self.m2s, np.zeros(extra)])


class WindowAggregateOp:
    def __init__(self, input_schema: Schema, output_schema: Schema, keys: tuple[str, ...], aggregates: tuple[Aggregate, ...]) -> None:
        self.input_schema = input_schema
        self.output_schema = output_schema
        self.keys = keys
        self.aggregates = aggregates
        self.ts_col = input_schema.timestamp
        self.value_cols = sorted({a.on for a in aggregates if a.on is not None})
        windows = [a.window_us for a in aggregates if a.window_us is not None]
        self.max_window_us = max(windows) if windows else None
        self.key_index = KeyIndex(keys, {k: input_schema.field(k).dtype for k in keys})
        self.carries: dict[int, _Carry] = {i: _Carry() for i, a in enumerate(aggregates) if self._carried(a)}
        self.state = self._empty_state()
        self.next_seq = 0

    @staticmethod
    def _carried(agg: Aggregate) -> bool:
        return agg.window_us is None and agg.kind in _CARRY_KINDS

    def _empty_state(self) -> pl.DataFrame:
        schema = {KID: pl.Int64(), TS: pl.Int64(), SEQ: pl.Int64()}
        schema.update({c: self.input_schema.field(c).dtype for c in self.value_cols})
        return pl.DataFrame(schema=schema)

    # -- state -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "keys": self.key_index.snapshot(),
            "state": self.state.clone(),
            "carries": {i: c.copy() for i, c in self.carries.items()},
            "next_seq": self.next_seq,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self.key_index.restore(snap["keys"])
        self.state = snap["state"].clone()
        self.carries = {i: c.copy() for i, c in snap["carries"].items()}
        self.next_seq = snap["next_seq"]

    @property
    def state_rows(self) -> int:
        return self.state.height

    # -- processing ------------------------------------------------------------------
    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        n = batch.height
        if n == 0:
            return pl.DataFrame(schema=self.output_schema.polars_schema())
        kids = self.key_index.ids(batch)
        for carry in self.carries.values():
            carry.grow(self.key_index.size)
        base = self.next_seq
        self.next_seq += n
        new = pl.DataFrame(
            {
                KID: kids,
                TS: batch[self.ts_col].dt.epoch("us"),
                SEQ: np.arange(base, base + n, dtype=np.int64),
            }
        ).with_columns(batch.select(self.value_cols))
        if self.state.height:
            touched = pl.Series(np.unique(kids))
            old = self.state.filter(pl.col(KID).is_in(touched.implode()))
            untouched = self.state.filter(~pl.col(KID).is_in(touched.implode()))
            combined = pl.concat([old, new])
        else:
            untouched, combined = self.state, new
        order = np.argsort(combined[KID].to_numpy(), kind="stable")
        combined = combined[order]
        outputs, keep = self._compute(combined, base)
        self.state = pl.concat([untouched, combined.filter(pl.Series(keep))])
        out = batch.select([*self.keys, self.ts_col])
        return out.with_columns(outputs).select(self.output_schema.names)

    def _compute(self, combined: pl.DataFrame, base: int) -> tuple[list[pl.Series], np.ndarray]:
        kid = combined[KID].to_numpy()
        ts = combined[TS].to_numpy()
        seq = combined[SEQ].to_numpy()
        size = kid.shape[0]
        is_new = seq >= base
        bounds = np.flatnonzero(np.diff(kid)) + 1
        seg_start = np.concatenate([[0], bounds]).astype(np.int64)
        seg_end = np.concatenate([bounds, [size]]).astype(np.int64)
        new_pos = np.flatnonzero(is_new)
        order_back = seq[new_pos] - base  # position of each new row in the input batch

        keep = np.zeros(size, dtype=bool)
        last_ts = ts[seg_end - 1]
        if self.max_window_us is not None:
            keep |= ts >= np.repeat(last_ts - self.max_window_us, seg_end - seg_start)
        lo_cache: dict[int, np.ndarray] = {}

        def window_lo(window_us: int | None) -> np.ndarray:
            w = -1 if window_us is None else window_us
            if w not in lo_cache:
                lo = np.empty(size, dtype=np.int64)
                kernels.window_starts(seg_start, seg_end, ts, w, lo)
                lo_cache[w] = lo
            return lo_cache[w]

        outputs: list[pl.Series] = []
        for index, agg in enumerate(self.aggregates):
            lo = window_lo(agg.window_us)
            series = self._aggregate(index, agg, combined, lo, seg_start, seg_end, kid, is_new, new_pos, keep)
            values = _reorder(series, order_back)
            outputs.append(values.alias(agg.into).cast(self.output_schema.field(agg.into).dtype))
        return outputs, keep

    def _aggregate(
        self,
        index: int,
        agg: Aggregate,
        combined: pl.DataFrame,
        lo: np.ndarray,
        seg_start: np.ndarray,
        seg_end: np.ndarray,
        kid: np.ndarray,
        is_new: np.ndarray,
        new_pos: np.ndarray,
        keep: np.ndarray,
    ) -> pl.Series:
        """The aggregate's values for the new rows, in combined (key, seq) order."""
        size = combined.height
        forever = agg.window_us is None
        column = combined[agg.on] if agg.on is not None else None
        valid = np.ones(size, dtype=bool) if column is None else column.is_not_null().to_numpy()
        if agg.kind == "count" and agg.on is None and not forever:
            return pl.Series((np.arange(size) - lo + 1)[new_pos])

        if agg.kind in _CARRY_KINDS and forever:
            carry = self.carries[index]
            seg_key = kid[seg_start]
            # kept rows of a key come before its new rows; carried totals already hold them
            first_new = seg_start + np.add.reduceat((~is_new).astype(np.int64), seg_start)
            vals = _as_float(column) if column is not None and agg.kind != "count" else np.zeros(size)
            if agg.kind == "stddev":
                out_n = np.zeros(size, dtype=np.int64)
                out_m2 = np.zeros(size)
                kernels.carry_moments(seg_start, seg_end, seg_key, first_new, vals, valid, carry.counts, carry.means, carry.m2s, out_n, out_m2)
                return _stddev(out_n[new_pos], out_m2[new_pos])
            out_sum = np.zeros(size)
            out_cnt = np.zeros(size, dtype=np.int64)
            kernels.carry_sums(seg_start, seg_end, seg_key, first_new, vals, valid, carry.sums, carry.counts, out_sum, out_cnt)
            return _sum_like(agg, out_sum[new_pos], out_cnt[new_pos])

        if agg.kind in ("count", "sum", "avg"):
            assert column is not None or agg.kind == "count"
            if agg.kind == "count":
                prefix = np.cumsum(valid)
                before = np.where(lo > 0, prefix[np.maximum(lo - 1, 0)], 0)
                return pl.Series((prefix - before)[new_pos])
            out_sum = np.zeros(size)
            out_cnt = np.zeros(size, dtype=np.int64)
            kernels.sliding_sum(seg_start, seg_end, lo, _as_float(column), valid, out_sum, out_cnt)
            return _sum_like(agg, out_sum[new_pos], out_cnt[new_pos])
        if agg.kind == "stddev":
            out_n = np.zeros(size, dtype=np.int64)
            out_m2 = np.zeros(size)
            kernels.sliding_moments(seg_start, seg_end, lo, _as_float(column), valid, out_n, out_m2)
            return _stddev(out_n[new_pos], out_m2[new_pos])

        assert column is not None
        if agg.kind in ("min", "max"):
            idx = np.empty(size, dtype=np.int64)
            kernels.sliding_arg_extreme(seg_start, seg_end, lo, _order_key(column), valid, agg.kind == "max", idx)
            if forever:
                keep[idx[seg_end - 1][idx[seg_end - 1] >= 0]] = True
            return _gather(column, idx[new_pos])
        if agg.kind in ("first", "last"):
            first = np.empty(size, dtype=np.int64)
            last = np.empty(size, dtype=np.int64)
            kernels.first_last(seg_start, seg_end, lo, valid, first, last)
            chosen = first if agg.kind == "first" else last
            if forever:
                keep[chosen[seg_end - 1][chosen[seg_end - 1] >= 0]] = True
            return _gather(column, chosen[new_pos])
        if agg.kind == "count_distinct":
            ids = column.rank("dense").cast(pl.Int64).fill_null(0).to_numpy() - 1
            out = np.zeros(size, dtype=np.int64)
            kernels.sliding_count_distinct(seg_start, seg_end, lo, ids, max(int(ids.max()) + 1, 1), out)
            if forever:  # the last row of each distinct value per key is all a future count needs
                last_of_value = pl.DataFrame({"k": kid, "v": ids, "i": np.arange(size)}).filter(pl.col("v") >= 0)
                keep[last_of_value.group_by("k", "v").agg(pl.col("i").max())["i"].to_numpy()] = True
            return pl.Series(out[new_pos])
        if agg.kind == "last_n":
            n = agg.n  # type: ignore[attr-defined]
            offsets = np.empty(len(new_pos) + 1, dtype=np.int64)
            flat = np.empty(len(new_pos) * n, dtype=np.int64)
            total = kernels.last_n_indices(lo, valid, new_pos.astype(np.int64), n, offsets, flat)
            if forever:
                tail = np.empty(seg_end.shape[0] + 1, dtype=np.int64)
                tail_idx = np.empty(seg_end.shape[0] * n, dtype=np.int64)
                kept = kernels.last_n_indices(lo, valid, (seg_end - 1).astype(np.int64), n, tail, tail_idx)
                keep[tail_idx[:kept]] = True
            return _to_lists(column.gather(pl.Series(flat[:total])), offsets)
        raise AssertionError(f"unknown aggregate kind {agg.kind}")


# -- helpers ---------------------------------------------------------------------------
def _as_float(column: pl.Series | None) -> np.ndarray:
    assert column is not None
    return column.cast(pl.Float64).fill_null(0.0).to_numpy()


def _order_key(column: pl.Series) -> np.ndarray:
    """Values as floats that order like the column (strings by dense rank)."""
    if column.dtype == pl.Float64:
        return column.fill_null(0.0).to_numpy()
    if column.dtype in (pl.Int64, pl.Boolean) or column.dtype.is_temporal():
        return column.cast(pl.Int64).cast(pl.Float64).fill_null(0.0).to_numpy()
    return column.rank("dense").cast(pl.Float64).fill_null(0.0).to_numpy()


def _sum_like(agg: Aggregate, sums: np.ndarray, counts: np.ndarray) -> pl.Series:
    if agg.kind == "count":
        return pl.Series(counts)
    if agg.kind == "avg":
        with np.errstate(invalid="ignore", divide="ignore"):
            return pl.Series(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)).fill_nan(None)
    return pl.select(pl.when(pl.Series(counts) > 0).then(pl.Series(sums))).to_series()


def _stddev(n: np.ndarray, m2: np.ndarray) -> pl.Series:
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n >= 2, np.maximum(m2, 0.0) / np.maximum(n - 1, 1), np.nan)
    return pl.Series(np.sqrt(var)).fill_nan(None)


def _gather(column: pl.Series, idx: np.ndarray) -> pl.Series:
    indices = pl.Series(idx).set(pl.Series(idx < 0), None) if (idx < 0).any() else pl.Series(idx)
    return column.gather(indices)


def _to_lists(values: pl.Series, offsets: np.ndarray) -> pl.Series:
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values.to_arrow())
    return pl.Series(lists).cast(pl.List(values.dtype))


def _reorder(series: pl.Series, order_back: np.ndarray) -> pl.Series:
    """Put values computed in (key, seq) order back into input order."""
    inverse = np.empty_like(order_back)
    inverse[order_back] = np.arange(order_back.shape[0])
    return series.gather(pl.Series(inverse))
