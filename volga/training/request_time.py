"""A request-time pipeline's value at each spine time, from its offline rows.

DESIGN.md "Request-time values": at spine time T, each windowed aggregate covers the
key's events with ``T - window <= ts <= T`` and the row's timestamp is the key's latest
event at or before T. The offline store holds one row per event, with the aggregate's
raw inputs in hidden columns (``volga.plan.request_time``). The spine rows join those
events as *probe* rows: same key, time T, placed after the events at T. One run of the
window operator over events and probes (``WindowAggregateOp``: a probe is invisible to
every aggregate) gives each probe the window values at its time, with the kernels that
computed the online values: the same null, NaN and tie rules by construction. The column
steps after the aggregate then run over those rows, as the pipeline runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from numba import njit

from volga.api.entity import FieldSpec, Schema
from volga.ops.stateless import StatelessChain
from volga.ops.window import PROBE_COLUMN, WindowAggregateOp
from volga.plan.request_time import RequestTimeShape, steps_carrying

if TYPE_CHECKING:
    from volga.training.lookup import Grouped

_SPINE = "__volga_spine_row"  # hidden: rides past row functions
_SPINE_FIELD = FieldSpec(_SPINE, pl.Int64(), optional=True)


def values_at(
    shape: RequestTimeShape, grouped: Grouped, keys: Sequence[pl.Series], times: pl.Series, asof: pl.Series
) -> pl.DataFrame:
    """The pipeline's output row (visible columns) at each spine row: ``keys`` (in the
    output's key order) at ``times``; all-null where ``asof`` (the position, in
    ``grouped``, of the key's latest event at or before T) is null.

    Most spine rows lose no event from any window between their key's latest event and T:
    their values are that event's stored per-event values. The others ("stale") are
    evaluated by the window operator over their probes and the events their windows need.
    """
    agg = shape.aggregate
    pre, output = agg.schema, shape.output
    ts = pre.timestamp
    n = times.len()
    windows_us = np.array(sorted({a.window_us for a in shape.windowed if a.window_us is not None}), dtype=np.int64)
    at_us = times.cast(pl.Datetime("us", "UTC")).cast(pl.Int64).to_numpy()
    present = asof.is_not_null().to_numpy()
    positions = asof.fill_null(0).cast(pl.Int64).to_numpy()
    stale = _stale(grouped.times_us, grouped.starts, positions, present, at_us, windows_us)
    # every column of the rows at their latest event: keys, timestamp, per-event aggregate values
    rows = grouped.source_rows(asof)
    base = grouped.source.select([pl.col(where).gather(rows).alias(col) for col, where in shape.pre_columns.items()])
    if stale.any():
        fresh = pl.Series(~stale)
        evaluated = _evaluate_stale(shape, grouped, keys, times, positions, stale, at_us)
        base = base.with_columns(
            pl.when(fresh).then(pl.col(a.into)).otherwise(evaluated.get_column(a.into)).alias(a.into) for a in shape.windowed
        )
    pre_rows = base.with_columns(pl.int_range(n, dtype=pl.Int64).alias(_SPINE)).filter(pl.col(ts).is_not_null())
    chain = StatelessChain(steps_carrying(shape, (_SPINE_FIELD,))[1], f"pipeline {output.name} (at spine times)")
    result = chain.apply(pre_rows.select([*pre.names, _SPINE])) if pre_rows.height else pre_rows
    spine_rows = pl.DataFrame({_SPINE: pl.int_range(n, eager=True, dtype=pl.Int64)})
    return spine_rows.join(result.select([*output.names, _SPINE]), on=_SPINE, how="left", maintain_order="left").select(output.names)


def _evaluate_stale(
    shape: RequestTimeShape, grouped: Grouped, keys: Sequence[pl.Series], times: pl.Series,
    positions: np.ndarray, stale: np.ndarray, at_us: np.ndarray,
) -> pl.DataFrame:
    """The windowed aggregates at the stale spine rows (null elsewhere): their probes and
    the events their windows can see, through one window operator."""
    agg = shape.aggregate
    pre, output, into = agg.schema, shape.output, agg.input.schema
    ts = pre.timestamp
    windowed = shape.windowed
    ons = sorted({a.on for a in windowed if a.on is not None})
    raw_of = {col: hidden for hidden, col in shape.raw_columns.items()}
    rows = np.flatnonzero(stale)
    needed = _events_needed(grouped.times_us, grouped.starts, positions[rows], at_us[rows] - shape.longest_window_us)
    by_output_key = dict(zip(output.keys, keys))
    read = [*(shape.pre_columns[k] for k in agg.keys), shape.pre_columns[ts], *(raw_of[col] for col in ons)]
    event_rows = grouped.source.select(list(dict.fromkeys(read)))[grouped.order[needed]].select(  # only the columns read are gathered
        *(pl.col(shape.pre_columns[k]).alias(k) for k in agg.keys),
        pl.col(shape.pre_columns[ts]).alias(ts),
        *(pl.col(raw_of[col]).alias(col) for col in ons),
        pl.lit(False).alias(PROBE_COLUMN),
        pl.lit(None, dtype=pl.Int64).alias(_SPINE),
    )
    picked = pl.Series(rows)
    probes = pl.DataFrame(
        [
            *(by_output_key[shape.pre_columns[k]].gather(picked).cast(into.field(k).dtype).alias(k) for k in agg.keys),
            times.gather(picked).cast(pl.Datetime("us", "UTC")).alias(ts),
            *(pl.Series(col, [None] * len(rows), dtype=into.field(col).dtype) for col in ons),
            pl.Series(PROBE_COLUMN, [True] * len(rows)),
            picked.cast(pl.Int64).alias(_SPINE),
        ]
    )
    both = pl.concat([event_rows, probes], how="vertical_relaxed")
    both = both.sort(ts, maintain_order=True)  # stable: a probe follows the events at its time
    fields = (*(into.field(k) for k in agg.keys), FieldSpec(ts, pl.Datetime("us", "UTC"), timestamp=True),
              *(into.field(c) for c in ons), FieldSpec(PROBE_COLUMN, pl.Boolean()), _SPINE_FIELD)
    input_schema = Schema(into.name, fields, agg.keys, ts)
    window_schema = Schema(pre.name, (*(pre.field(c) for c in (*agg.keys, ts)), *(pre.field(a.into) for a in windowed), _SPINE_FIELD), agg.keys, ts)
    op = WindowAggregateOp(input_schema, window_schema, agg.keys, windowed, carry={_SPINE: _SPINE})
    at_probes = op.apply(both).filter(pl.col(_SPINE).is_not_null()).drop(*agg.keys, ts)
    spine_rows = pl.DataFrame({_SPINE: pl.int_range(times.len(), eager=True, dtype=pl.Int64)})
    return spine_rows.join(at_probes, on=_SPINE, how="left", maintain_order="left")


@njit(cache=True, nogil=True)
def _count_before(times_us, lo, hi, x):  # type: ignore[no-untyped-def]
    """How many of times_us[lo:hi] (sorted) are < x."""
    a, b = lo, hi
    while a < b:
        m = (a + b) // 2
        if times_us[m] < x:
            a = m + 1
        else:
            b = m
    return a - lo


@njit(cache=True, nogil=True)
def _stale(times_us, starts, positions, present, at_us, windows_us):  # type: ignore[no-untyped-def]
    """Per spine row: does an event leave one of the windows between the key's latest event
    t_a (at ``positions``) and T, i.e. is there an event in [t_a - w, T - w) for some w?"""
    n = len(positions)
    out = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        if not present[i]:
            continue
        p = positions[i]
        s = starts[p]
        t_a = times_us[p]
        for w in windows_us:
            if _count_before(times_us, s, p + 1, at_us[i] - w) > _count_before(times_us, s, p + 1, t_a - w):
                out[i] = True
                break
    return out


@njit(cache=True, nogil=True)
def _events_needed(times_us, starts, positions, from_us):  # type: ignore[no-untyped-def]
    """Rows (of the grouped events) that windows ending at the stale spine rows can see:
    per row, its key's events from ``from_us`` up to its latest event."""
    marks = np.zeros(len(times_us) + 1, dtype=np.int64)
    for i in range(len(positions)):
        p = positions[i]
        s = starts[p]
        first = s + _count_before(times_us, s, p + 1, from_us[i])
        marks[first] += 1
        marks[p + 1] -= 1
    return np.cumsum(marks[:-1]) > 0
