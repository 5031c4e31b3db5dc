"""Bring a batch to a schema's columns and dtypes before it is stored.

>>> import datetime
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Tick:
...     sym: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     px: float
>>> naive = pl.DataFrame({"px": [1.0], "sym": ["A"], "at": [datetime.datetime(2024, 1, 1)]})
>>> conform_batch(naive, entity_schema(Tick), what="feature 'ticks'").schema
Schema([('sym', String), ('at', Datetime(time_unit='us', time_zone='UTC')), ('px', Float64)])
"""

# No `from __future__ import annotations` here: the docstring example's @entity class needs
# its annotations evaluated where it is defined (doctest inherits a module's future flags).

import polars as pl

from volga.api.entity import Schema


def same_shape(a: Schema, b: Schema) -> bool:
    """Same columns, dtypes, keys and timestamp (the schema's name may differ)."""
    return a is b or (a.fields == b.fields and a.keys == b.keys and a.timestamp == b.timestamp)


def conform_batch(batch: pl.DataFrame, schema: Schema, *, what: str) -> pl.DataFrame:
    """``batch`` with exactly ``schema``'s columns, in order and with its dtypes.

    Extra columns are dropped; missing ones are a ValueError naming them. Datetimes are
    brought to the schema's unit and zone (a naive datetime is read as UTC).
    """
    have = batch.schema
    missing = [name for name in schema.names if name not in have]
    if missing:
        raise ValueError(
            f"{what}: batch is missing column(s) {missing} of schema {schema.name!r} "
            f"(batch columns: {list(have)})"
        )
    exprs: list[pl.Expr] = []
    changed = list(have) != schema.names
    mismatched: list[str] = []
    for f in schema.fields:
        dtype = have[f.name]
        if dtype == f.dtype:
            exprs.append(pl.col(f.name))
            continue
        changed = True
        mismatched.append(f"{f.name}: {dtype} -> {f.dtype}")
        exprs.append(_cast(f.name, dtype, f.dtype))
    if not changed:
        return batch
    try:
        return batch.select(exprs)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
        raise ValueError(f"{what}: batch columns do not fit schema {schema.name!r} ({'; '.join(mismatched)}): {e}") from None


def conform_series(series: pl.Series, dtype: pl.DataType, *, what: str) -> pl.Series:
    """``series`` as ``dtype`` (same datetime rules as :func:`conform_batch`); ValueError if it can't be."""
    if series.dtype == dtype:
        return series
    try:
        return series.to_frame().select(_cast(series.name, series.dtype, dtype)).to_series()
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
        raise ValueError(f"{what}: column {series.name!r} has dtype {series.dtype}, which cannot be read as {dtype}: {e}") from None


def _cast(name: str, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if isinstance(have, pl.Datetime) and isinstance(want, pl.Datetime) and want.time_zone is not None:
        if have.time_zone is None:
            col = col.dt.replace_time_zone(want.time_zone)
        elif have.time_zone != want.time_zone:
            col = col.dt.convert_time_zone(want.time_zone)
    return col.cast(want, strict=True)
