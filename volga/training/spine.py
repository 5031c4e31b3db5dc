"""The spine: the rows a training set is built for, checked and brought to Volga's types.

A spine is a polars or pandas DataFrame with the features' key columns and a timestamp
column. Its columns are returned untouched; the lookups work on a normalised copy:

- the timestamp column must be a datetime column without nulls; a naive datetime is read
  as UTC (never local time), an aware one is converted to UTC, and any unit is brought to
  microseconds (nanoseconds are truncated, which cannot change a lookup: stored
  timestamps are whole microseconds);
- a key column must hold the feature key's type: any integer type for ``int`` keys, any
  integer or float type for ``float``, strings (or categoricals) for ``str``, booleans
  for ``bool``, datetimes for ``datetime``. Nulls are an error (no feature row has a null
  key, and the online path cannot be asked for one).

>>> import datetime
>>> spine = Spine.of(pl.DataFrame({"user_id": ["a"], "timestamp": [datetime.datetime(2025, 1, 1)]}), "timestamp")
>>> spine.times.dtype
Datetime(time_unit='us', time_zone='UTC')
>>> spine.key_column("user_id", pl.String(), "feature 'user_spent'").to_list()
['a']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import polars as pl

from volga.api.times import utc_us_series
from volga.api.types import dtype_name
from volga.errors import KeyMismatch


class SpineError(ValueError):
    """The spine cannot be used as given (missing or ill-typed columns); says what to fix."""


class SpineKeyError(SpineError, KeyMismatch):
    """A key column the features need is missing from the spine, or has the wrong type or nulls."""


_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOATS = (pl.Float32, pl.Float64)


@dataclasses.dataclass
class Spine:
    """A checked spine: the original frame (polars or pandas) and a polars view of it."""

    original: Any
    frame: pl.DataFrame  # polars, same rows and columns as the original
    timestamp_column: str
    times: pl.Series  # Datetime("us", "UTC"), no nulls
    is_pandas: bool

    @classmethod
    def of(cls, spine: Any, timestamp_column: str) -> Spine:
        frame, is_pandas = _to_polars(spine)
        if not isinstance(timestamp_column, str):
            raise TypeError(f"timestamp_column must be a column name (str), got {timestamp_column!r}")
        if timestamp_column not in frame.columns:
            raise SpineError(
                f"the spine has no timestamp column {timestamp_column!r} (its columns: {frame.columns}); "
                "name it with timestamp_column=..."
            )
        return cls(spine, frame, timestamp_column, _times(frame.get_column(timestamp_column)), is_pandas)

    @property
    def height(self) -> int:
        return self.frame.height

    def key_column(self, column: str, dtype: pl.DataType, wanted_by: str) -> pl.Series:
        """Spine column ``column`` as key values of ``dtype``, for ``wanted_by`` (for messages)."""
        if column not in self.frame.columns:
            raise SpineKeyError(
                f"{wanted_by} is keyed by {column!r}, which is not a spine column (spine columns: "
                f"{self.frame.columns}); add it, or map a spine column to it with key_map={{{column!r}: 'spine_column'}}"
            )
        series = self.frame.get_column(column)
        converted = _key_values(series, dtype)
        if converted is None:
            raise SpineKeyError(
                f"spine column {column!r} holds {series.dtype}, but {wanted_by} has a {dtype_name(dtype)} key there; "
                f"convert the column (e.g. pl.col({column!r}).cast(...)) or map another column with key_map="
            )
        return converted  # a null key matches nothing: its features are null, like an unknown key


def _to_polars(spine: Any) -> tuple[pl.DataFrame, bool]:
    if isinstance(spine, pl.DataFrame):
        return spine, False
    if isinstance(spine, pl.LazyFrame):
        raise TypeError("the spine must be a DataFrame, not a LazyFrame: call .collect() on it first")
    module = type(spine).__module__.split(".")[0]
    if module == "pandas" and type(spine).__name__ == "DataFrame":
        if len(set(map(str, spine.columns))) != len(spine.columns):
            raise SpineError(f"the spine has duplicate column names: {list(spine.columns)}")
        try:
            return pl.from_pandas(spine), True
        except Exception as e:  # a column polars cannot read: name it
            raise SpineError(f"cannot read the pandas spine ({type(e).__name__}: {e})") from e
    raise TypeError(f"the spine must be a polars or pandas DataFrame, got {type(spine).__name__}")


def _times(series: pl.Series) -> pl.Series:
    name = series.name
    if not isinstance(series.dtype, pl.Datetime):
        hint = (
            f"parse it first, e.g. pl.col({name!r}).str.to_datetime()" if series.dtype == pl.String
            else f"convert it, e.g. pl.col({name!r}).cast(pl.Datetime('us', 'UTC'))"
        )
        raise SpineError(f"spine timestamp column {name!r} must hold datetimes, not {series.dtype}; {hint}")
    if series.null_count():
        raise SpineError(f"spine timestamp column {name!r} has {series.null_count()} null value(s); drop or fill those rows")
    return utc_us_series(series)  # naive: read as UTC, never local time


def _key_values(series: pl.Series, dtype: pl.DataType) -> pl.Series | None:
    """``series`` cast to ``dtype`` when its type is a faithful match, else None."""
    have = series.dtype
    if have == dtype:
        return series
    kind = type(dtype)
    if kind is pl.Int64 and isinstance(have, _INTEGERS):
        return series.cast(pl.Int64)
    if kind is pl.Float64 and isinstance(have, _INTEGERS + _FLOATS):
        return series.cast(pl.Float64)
    if kind is pl.String and isinstance(have, (pl.Categorical, pl.Enum)):
        return series.cast(pl.String)
    if isinstance(dtype, pl.Datetime) and isinstance(have, pl.Datetime):
        return _times(series)
    return None
