"""Python annotations <-> polars dtypes, and durations.

One internal unit of time: integer microseconds since the epoch, UTC
(polars ``Datetime("us", "UTC")`` / Arrow ``timestamp[us, UTC]``).
"""

from __future__ import annotations

import datetime
import re
import types
import typing
from typing import Any, Literal, Union

import polars as pl

# The timestamp rules live in volga.api.times; re-exported here for existing importers.
from volga.api.times import datetime_to_us, to_utc, us_to_datetime  # noqa: F401

TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
FOREVER: Literal["forever"] = "forever"

_SCALARS: dict[Any, pl.DataType] = {
    str: pl.String(),
    int: pl.Int64(),
    float: pl.Float64(),
    bool: pl.Boolean(),
    datetime.datetime: TIMESTAMP_DTYPE,
}

NUMERIC_DTYPES = (pl.Int64, pl.Float64)


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """Return ``(inner, is_optional)`` for ``Optional[X]`` / ``X | None``."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def dtype_of(annotation: Any) -> pl.DataType:
    """Map a field annotation to its polars dtype; raise TypeError if unsupported.

    >>> dtype_of(int)
    Int64
    >>> dtype_of(list[str])
    List(String)
    """
    inner, _ = unwrap_optional(annotation)
    if inner in _SCALARS:
        return _SCALARS[inner]
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (None,)
        if item is None:
            raise TypeError("list fields need an item type, e.g. list[float]")
        return pl.List(dtype_of(item))
    raise TypeError(
        f"unsupported type {annotation!r}; use str, int, float, bool, datetime.datetime, "
        "Optional[...] or list[...] of those"
    )


def annotation_of(dtype: pl.DataType) -> Any:
    """Inverse of :func:`dtype_of` (used to build entity classes from schemas)."""
    for py, dt in _SCALARS.items():
        if dtype == dt:
            return py
    if isinstance(dtype, pl.List):
        return list[annotation_of(dtype.inner)]  # type: ignore[misc, arg-type]
    raise TypeError(f"no Python type for dtype {dtype}")


def dtype_name(dtype: pl.DataType) -> str:
    """Human-readable type name for error messages (``float``, ``list[int]``...)."""
    try:
        ann = annotation_of(dtype)
    except TypeError:
        return str(dtype)
    if typing.get_origin(ann) is list:
        inner: pl.DataType = dtype.inner  # type: ignore[attr-defined]
        return f"list[{dtype_name(inner)}]"
    return "datetime" if ann is datetime.datetime else ann.__name__


_DURATION_PART = re.compile(r"(\d+)(ms|us|w|d|h|m|s)")
_UNIT_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 7 * 86_400_000_000,
}

Duration = Union[str, datetime.timedelta]


def parse_duration_us(value: Duration | int, *, what: str = "duration") -> int:
    """Parse ``"30s"``, ``"1h30m"``, ``"250ms"``, ``"7d"``, ``"1w"`` or a timedelta to microseconds.

    >>> parse_duration_us("1h30m")
    5400000000
    >>> parse_duration_us(datetime.timedelta(milliseconds=250))
    250000
    """
    if isinstance(value, datetime.timedelta):
        us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    elif isinstance(value, str):
        text = value.strip().lower()
        pos, us = 0, 0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            us += int(m.group(1)) * _UNIT_US[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(
                f"{what} {value!r} is not a duration; write e.g. '30s', '15m', '1h', '7d', "
                "'1w', '1h30m', '250ms', or pass a datetime.timedelta"
            )
    else:
        raise TypeError(
            f"{what} must be a duration string like '1h' or a datetime.timedelta, "
            f"not {type(value).__name__}"
        )
    if us < 0:
        raise ValueError(f"{what} {value!r} is negative")
    return us


