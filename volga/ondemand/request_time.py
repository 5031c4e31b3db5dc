"""Online lookups at a request time T (DESIGN.md "Request-time values").

For each requested key the online store hands over the rows a window ending at T can
see (``OnlineStore.window_rows``: rows within the longest window before T, and the one
before them). From those:

- the row's base is the key's latest row at or before T: its keys, its timestamp and
  its "forever" aggregates (whose value at any T after an event is the value at it);
- each finite-window aggregate is recomputed from the hidden raw inputs of the rows with
  ``T - window <= ts <= T`` (``Aggregate.reduce``; nulls and NaN left out);
- the pipeline's column steps after the aggregate are applied to that row.

A key with no row at or before T gives no row. An ``at`` so old that the rows its
windows need were already evicted from the store is refused (``RequestTimeUnavailable``);
any T at or after a key's last event is always exact.
"""

from __future__ import annotations

import bisect
import datetime
import logging
from typing import Any

import polars as pl

from volga.api.entity import FieldSpec
from volga.errors import RequestTimeUnavailable
from volga.ops.frames import pick
from volga.ops.stateless import StatelessChain
from volga.plan.request_time import RAW_PREFIX, RequestTimeShape, is_hidden, steps_carrying
from volga.storage.online.base import OnlineStore

log = logging.getLogger("volga.serving")

_INDEX = "__volga_key_pos"  # hidden: carried past row functions, which never see it
_INDEX_FIELD = FieldSpec(_INDEX, pl.Int64(), optional=True)


def read_at(
    store: OnlineStore, name: str, shape: RequestTimeShape | None, keys: pl.DataFrame, at_us: int, *, explicit: bool
) -> pl.DataFrame:
    """One row per key at request time ``at_us`` (visible columns only): evaluated at T for a
    request-time ``shape``; otherwise the row written at the key's latest event at or
    before T (``explicit=False``: T is now, i.e. the latest row)."""
    if shape is not None:
        return lookup_at(store, name, shape, keys, at_us)
    if not explicit:
        latest = store.get_latest(name, keys)
        return _visible(latest)
    schema = store.schema(name)
    assert schema is not None
    found = store.window_rows(name, keys, at_us, at_us)
    ts = found.columns.index(schema.timestamp)
    names = schema.names
    rows = [
        rows[-1] if rows and rows[-1][ts] <= at_us else _missing(names, keys, i)
        for i, rows in enumerate(found.rows)
    ]
    frame = pl.DataFrame(rows, schema=schema.polars_schema(), orient="row")
    return _visible(frame)


def _visible(frame: pl.DataFrame) -> pl.DataFrame:
    """Without the hidden request-time columns (eagerly: this is on the lookup path)."""
    hidden = [c for c in frame.columns if is_hidden(c)]
    return pick(frame, [c for c in frame.columns if c not in hidden]) if hidden else frame


def lookup_at(store: OnlineStore, name: str, shape: RequestTimeShape, keys: pl.DataFrame, at_us: int) -> pl.DataFrame:
    """One row per row of ``keys`` (the output schema; all-null but the keys where the
    key has no event at or before ``at_us``)."""
    found = store.window_rows(name, keys, at_us - shape.longest_window_us, at_us)
    pos = {c: i for i, c in enumerate(found.columns)}
    agg = shape.aggregate
    ts_at = pos[shape.pre_columns[agg.schema.timestamp]]
    base = [(col, pos[where]) for col, where in shape.pre_columns.items()]
    # Aggregates over the same column and window share one pass over the window's rows.
    windows: dict[tuple[int, int | None], list[tuple[str, Any]]] = {}
    for a in shape.windowed:
        column = None if a.on is None else pos[f"{RAW_PREFIX}{a.on}"]
        windows.setdefault((a.window_us or 0, column), []).append((a.into, a))
    pre_rows: list[dict[str, Any] | None] = []
    for index, rows in enumerate(found.rows):
        evicted = found.evicted_us[index]
        if evicted is not None and (evicted >= at_us - shape.longest_window_us or not rows):
            raise RequestTimeUnavailable(
                f"'{name}': cannot evaluate at {_iso(at_us)} for key #{index}: the store no longer holds its "
                f"events up to {_iso(evicted)} (it keeps the longest window, {shape.longest_window_us // 1_000_000}s, "
                "behind each key's last event, and at least `history` rows). Online lookups are exact from "
                "that point on; use get_historical_features for older times"
            )
        if not rows:
            pre_rows.append(None)
            continue
        last = rows[-1]
        pre = {col: last[i] for col, i in base}
        for (window_us, column), aggregates in windows.items():
            first = bisect.bisect_left(rows, at_us - window_us, key=lambda r: r[ts_at])  # rows are in time order
            if column is None:
                values: list[Any] = rows[first:]
            else:  # null and NaN are missing (NaN != NaN)
                values = [v for r in rows[first:] if (v := r[column]) is not None and v == v]
            for into, aggregate in aggregates:
                pre[into] = aggregate.reduce(values)
        pre_rows.append(pre)
    return _apply_steps(shape, pre_rows, keys)


def _apply_steps(shape: RequestTimeShape, pre_rows: list[dict[str, Any] | None], keys: pl.DataFrame) -> pl.DataFrame:
    """The output rows: the column steps after the aggregate applied to each base row."""
    output = shape.output
    out_schema = output.polars_schema()
    renames = shape.renames
    if renames is not None:
        rows = [
            tuple(pre[renames[c]] for c in output.names) if pre is not None else _missing(output.names, keys, i)
            for i, pre in enumerate(pre_rows)
        ]
        return pl.DataFrame(rows, schema=out_schema, orient="row")
    present = [i for i, pre in enumerate(pre_rows) if pre is not None]
    pre_schema = {**shape.aggregate.schema.polars_schema(), _INDEX: pl.Int64()}
    frame = pl.DataFrame([{**pre_rows[i], _INDEX: i} for i in present], schema=pre_schema, orient="row")  # type: ignore[dict-item]
    chain = StatelessChain(steps_carrying(shape, (_INDEX_FIELD,))[1], f"pipeline {output.name} (request time)")
    result = chain.apply(frame) if frame.height else pl.DataFrame(schema={**out_schema, _INDEX: pl.Int64()})
    for rejected in chain.rejected:  # as in training: that key has no row at this time (and a log line says why)
        record = rejected.record
        key = {k: record.get(k) for k in shape.aggregate.keys} if isinstance(record, dict) else record
        log.warning("pipeline %s: a step after the aggregate failed at request time for key %s, so it has no row: %s",
                    output.name, key, rejected.reason)
    by_index = dict(zip(result.get_column(_INDEX).to_list(), result.select(output.names).rows()))
    rows = [by_index.get(i) or _missing(output.names, keys, i) for i in range(len(pre_rows))]
    return pl.DataFrame(rows, schema=out_schema, orient="row")


def _missing(names: list[str], keys: pl.DataFrame, index: int) -> tuple[Any, ...]:
    return tuple(keys.get_column(n)[index] if n in keys.columns else None for n in names)


def _iso(us: int) -> str:
    return (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=us)).isoformat()
