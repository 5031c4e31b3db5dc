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

import dataclasses
from collections.abc import Sequence

import polars as pl

from volga.api.entity import FieldSpec, Schema
from volga.ops.stateless import StatelessChain
from volga.ops.window import PROBE_COLUMN, WindowAggregateOp
from volga.plan.request_time import RequestTimeShape, steps_carrying

_SPINE = "__volga_spine_row"  # hidden: rides past row functions
_SPINE_FIELD = FieldSpec(_SPINE, pl.Int64(), optional=True)


def values_at(
    shape: RequestTimeShape, events: pl.DataFrame, keys: Sequence[pl.Series], times: pl.Series, asof: pl.Series
) -> pl.DataFrame:
    """The pipeline's output row (visible columns) at each spine row: ``keys`` (in the
    output's key order) at ``times``; all-null where ``asof`` (the position of the key's
    latest event at or before T in ``events``, the stored rows in processing order) is null.

    Finite windows are evaluated by the window operator over events and probes; a
    "forever" aggregate at T is its value at the key's latest event at or before T.
    """
    agg = shape.aggregate
    pre, output, into = agg.schema, shape.output, agg.input.schema
    ts = pre.timestamp
    windowed = shape.windowed
    ons = sorted({a.on for a in windowed if a.on is not None})
    raw_of = {col: hidden for hidden, col in shape.raw_columns.items()}
    n = times.len()
    by_output_key = dict(zip(output.keys, keys))
    event_rows = events.select(
        *(pl.col(shape.pre_columns[k]).alias(k) for k in agg.keys),
        pl.col(shape.pre_columns[ts]).alias(ts),
        *(pl.col(raw_of[col]).alias(col) for col in ons),
        pl.lit(False).alias(PROBE_COLUMN),
        pl.lit(None, dtype=pl.Int64).alias(_SPINE),
    )
    probes = pl.DataFrame(
        [
            *(by_output_key[shape.pre_columns[k]].cast(into.field(k).dtype).alias(k) for k in agg.keys),
            times.cast(pl.Datetime("us", "UTC")).alias(ts),
            *(pl.Series(col, [None] * n, dtype=into.field(col).dtype) for col in ons),
            pl.Series(PROBE_COLUMN, [True] * n),
            pl.Series(_SPINE, range(n), dtype=pl.Int64),
        ]
    )
    both = pl.concat([event_rows, probes], how="vertical_relaxed")
    both = both.filter(pl.all_horizontal(pl.col(k).is_not_null() for k in agg.keys))
    both = both.sort(ts, maintain_order=True)  # stable: a probe follows the events at its time
    fields = (*(into.field(k) for k in agg.keys), FieldSpec(ts, pl.Datetime("us", "UTC"), timestamp=True),
              *(into.field(c) for c in ons), FieldSpec(PROBE_COLUMN, pl.Boolean()), _SPINE_FIELD)
    input_schema = Schema(into.name, fields, agg.keys, ts)
    window_schema = Schema(pre.name, (*(pre.field(c) for c in (*agg.keys, ts)), *(pre.field(a.into) for a in windowed), _SPINE_FIELD), agg.keys, ts)
    op = WindowAggregateOp(input_schema, window_schema, agg.keys, windowed, carry={_SPINE: _SPINE})
    at_probes = op.apply(both).filter(pl.col(_SPINE).is_not_null())
    spine_rows = pl.DataFrame({_SPINE: pl.int_range(n, eager=True, dtype=pl.Int64)})
    windows = spine_rows.join(at_probes.drop(*agg.keys, ts), on=_SPINE, how="left", maintain_order="left")
    # the base of each row: its key's latest event at or before T (keys, timestamp, "forever" values)
    base = events.select([pl.col(where).gather(asof).alias(col) for col, where in shape.pre_columns.items()])
    pre_rows = pl.concat([base, windows], how="horizontal").filter(pl.col(ts).is_not_null()).select([*pre.names, _SPINE])
    chain = StatelessChain(steps_carrying(shape, (_SPINE_FIELD,))[1], f"pipeline {output.name} (at spine times)")
    result = chain.apply(pre_rows) if shape.post and pre_rows.height else pre_rows
    return spine_rows.join(result.select([*output.names, _SPINE]), on=_SPINE, how="left", maintain_order="left").select(output.names)


def _plus(schema: Schema, extra: FieldSpec) -> Schema:
    return dataclasses.replace(schema, fields=(*schema.fields, extra))
