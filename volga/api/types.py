"""Python annotations <-> polars dtypes, and durations.

One internal unit of time: integer microseconds since the epoch, UTC
(polars ``Datetime("us", "UTC")`` / Arrow ``timestamp[us, UTC]``).
"""

from __future__ import annotations

import datetime
import numbers
import re
import time
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


_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


def casts_losslessly(source: pl.DataType, target: pl.DataType) -> bool:
    """Whether every value of ``source`` fits ``target`` (an expression result stored in a
    declared column): same type, a narrower integer, an integer into float, float32 into
    float, a null literal, a datetime of any unit or zone into the timestamp type.

    >>> casts_losslessly(pl.Int32(), pl.Float64()), casts_losslessly(pl.Float64(), pl.Int64())
    (True, False)
    """
    if source == target or source == pl.Null():
        return True
    if isinstance(target, pl.List):
        return isinstance(source, pl.List) and casts_losslessly(source.inner, target.inner)  # type: ignore[arg-type]
    if target == pl.Int64():
        return isinstance(source, _INTEGERS)
    if target == pl.Float64():
        return isinstance(source, (*_INTEGERS, pl.Float32))
    if target == TIMESTAMP_DTYPE:
        return isinstance(source, pl.Datetime)
    if target == pl.String():
        return isinstance(source, (pl.Categorical, pl.Enum))
    return False


def value_fits(value: Any, dtype: pl.DataType) -> bool:
    """Whether a Python value (not None) is a value of the column type: no bool for a
    number, no float for an int (2.5 -> 2 would be silent loss), no text for a number.

    >>> value_fits(3, pl.Float64()), value_fits(2.985, pl.Int64()), value_fits(True, pl.Int64())
    (True, False, False)
    """
    if isinstance(dtype, pl.List):
        inner: pl.DataType = dtype.inner  # type: ignore[assignment]
        if not (isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"):
            return False
        return all(v is None or value_fits(v, inner) for v in value)
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool too
        return dtype == pl.Boolean()
    if dtype == pl.Int64():  # numbers.Integral: int and numpy integers
        return isinstance(value, numbers.Integral) and -(2**63) <= int(value) < 2**63
    if dtype == pl.Float64():
        return isinstance(value, numbers.Real)
    if dtype == pl.String():
        return isinstance(value, str)
    if dtype == pl.Boolean():
        return False
    if dtype == TIMESTAMP_DTYPE:
        return isinstance(value, datetime.datetime)
    return False


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


def moment_us(value: object, what: str) -> int:
    """A request time (``at=``): a datetime (naive means UTC) or an ISO 8601 string, in
    microseconds since the epoch; None means now."""
    if value is None:
        return time.time_ns() // 1000
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{what} must be an ISO 8601 datetime, got {value!r}") from None
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{what} must be a datetime or an ISO 8601 string, got {type(value).__name__} {value!r}")
    return datetime_to_us(value)
