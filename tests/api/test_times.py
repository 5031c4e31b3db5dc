"""One rule for times at every edge (DESIGN.md "Time"): naive means UTC, aware is converted."""

from __future__ import annotations

import datetime

import polars as pl
import pytest

from volga.api.times import UTC, datetime_to_us, parse_utc, to_utc, us_to_datetime, utc_us_series
from volga.serving.codec import parse_datetime_fields
from volga.testing.data import make_orders

PLUS2 = datetime.timezone(datetime.timedelta(hours=2))


def test_naive_is_utc_and_aware_is_converted() -> None:
    assert to_utc(datetime.datetime(2024, 1, 1, 12)) == datetime.datetime(2024, 1, 1, 12, tzinfo=UTC)
    moved = to_utc(datetime.datetime(2024, 1, 1, 12, tzinfo=PLUS2))
    assert (moved.hour, moved.tzinfo) == (10, UTC)
    assert parse_utc("2024-01-01T12:00:00+02:00") == parse_utc("2024-01-01T10:00:00") == moved


def test_microseconds_round_trip_exactly() -> None:
    moment = datetime.datetime(2262, 4, 11, 23, 47, 16, 854_775, tzinfo=PLUS2)  # beyond float precision
    assert us_to_datetime(datetime_to_us(moment)) == moment
    assert datetime_to_us(datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999)) == -1


def test_series_rule_matches_the_scalar_rule() -> None:
    naive = pl.Series("t", [datetime.datetime(2024, 1, 1, 12)], dtype=pl.Datetime("ns"))
    paris = naive.dt.replace_time_zone("Europe/Paris")
    assert utc_us_series(naive).dtype == pl.Datetime("us", "UTC")
    assert utc_us_series(naive).item() == to_utc(datetime.datetime(2024, 1, 1, 12))
    assert utc_us_series(paris).item() == datetime.datetime(2024, 1, 1, 11, tzinfo=UTC)
    with pytest.raises(TypeError, match="column 't' holds String"):
        utc_us_series(pl.Series("t", ["2024-01-01"]))


def test_synthetic_data_reads_an_aware_start_as_its_instant() -> None:
    # This helper used to relabel an aware start as UTC (02:00+02:00 became 02:00 UTC).
    start = datetime.datetime(2025, 1, 1, 2, tzinfo=PLUS2)  # 00:00 UTC
    times = make_orders(50, n_users=3, start=start, days=1 / 24).get_column("purchased_at")
    assert times.min() >= datetime.datetime(2025, 1, 1, 0, tzinfo=UTC)
    assert times.max() < datetime.datetime(2025, 1, 1, 1, tzinfo=UTC)


def test_http_client_parses_response_times_to_utc() -> None:
    row = parse_datetime_fields({"at": "2024-01-01T12:00:00+02:00", "all": ["2024-01-01T10:00:00", None]}, ["at"], ["all"])
    assert row["at"] == datetime.datetime(2024, 1, 1, 10, tzinfo=UTC) and row["at"].tzinfo is UTC
    assert row["all"] == [datetime.datetime(2024, 1, 1, 10, tzinfo=UTC), None]
