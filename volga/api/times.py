"""Timestamps at the edges: the one place that says "a naive datetime means UTC".

DESIGN.md "Time": internally every timestamp is UTC at microsecond precision (Arrow
``timestamp[us, UTC]``); a naive ``datetime`` is read as UTC, never local time; an aware one
is converted (the instant is kept, the zone becomes UTC). Every edge that takes a time from
a user (keys, spines, sources, query arguments, HTTP bodies) goes through this module.

>>> paris = datetime.timezone(datetime.timedelta(hours=1))
>>> to_utc(datetime.datetime(2024, 1, 1, 12))
datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
>>> to_utc(datetime.datetime(2024, 1, 1, 12, tzinfo=paris))
datetime.datetime(2024, 1, 1, 11, 0, tzinfo=datetime.timezone.utc)
>>> parse_utc("2024-01-01T12:00:00+01:00") == parse_utc("2024-01-01 11:00")
True
>>> datetime_to_us(datetime.datetime(1970, 1, 1, 0, 0, 1))
1000000
>>> us_to_datetime(1_000_000)
datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import datetime

import polars as pl

__all__ = ["UTC", "datetime_to_us", "parse_utc", "to_utc", "us_to_datetime", "utc_us_series"]

UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


def to_utc(value: datetime.datetime) -> datetime.datetime:
    """``value`` as an aware UTC datetime: naive is read as UTC, aware is converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def parse_utc(value: datetime.datetime | str) -> datetime.datetime:
    """A datetime or an ISO 8601 string as an aware UTC datetime (ValueError if unparsable)."""
    return to_utc(value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value))


def datetime_to_us(value: datetime.datetime) -> int:
    """Microseconds since the epoch (exact integer arithmetic; naive means UTC)."""
    delta = to_utc(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def us_to_datetime(us: int) -> datetime.datetime:
    """The aware UTC datetime ``us`` microseconds after the epoch."""
    return _EPOCH + datetime.timedelta(microseconds=us)


def utc_us_series(series: pl.Series) -> pl.Series:
    """A polars Datetime series as ``Datetime("us", "UTC")``, by the same rule.

    >>> utc_us_series(pl.Series("t", [datetime.datetime(2024, 1, 1, 12)])).item()
    datetime.datetime(2024, 1, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC'))
    """
    dtype = series.dtype
    if not isinstance(dtype, pl.Datetime):
        raise TypeError(f"column {series.name!r} holds {dtype}, not datetimes")
    zoned = series.dt.replace_time_zone("UTC") if dtype.time_zone is None else series.dt.convert_time_zone("UTC")
    return zoned.dt.cast_time_unit("us")
