import datetime

import pytest

from volga import Avg, Count, LastN
from volga.api.types import parse_duration_us

MINUTE = 60_000_000


@pytest.mark.parametrize(
    "text, minutes",
    [("30s", 0.5), ("15m", 15), ("1h", 60), ("7d", 7 * 1440), ("1w", 7 * 1440), ("1h30m", 90)],
)
def test_duration_strings(text, minutes):
    assert parse_duration_us(text) == minutes * MINUTE


def test_milliseconds_and_timedelta():
    assert parse_duration_us("250ms") == 250_000
    assert parse_duration_us(datetime.timedelta(hours=2)) == 120 * MINUTE


@pytest.mark.parametrize("bad", ["", "1x", "h", "1h 30", "-5m", "1.5h"])
def test_bad_duration_strings(bad):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration_us(bad)


def test_bad_window_fails_at_definition_naming_the_aggregate():
    with pytest.raises(ValueError, match=r"Avg\(into='a'\) window '7days' is not a duration"):
        Avg(on="x", window="7days", into="a")
    with pytest.raises(TypeError, match=r"window must be a duration string"):
        Count(window=5, into="n")


def test_aggregate_needs_into_and_on():
    with pytest.raises(ValueError, match=r"`into=` .* is required"):
        Avg(on="x", window="1h")
    with pytest.raises(ValueError, match=r"Avg\(into='a'\): `on=` .* is required"):
        Avg(window="1h", into="a")
    with pytest.raises(ValueError, match=r"n must be a positive int"):
        LastN(0, on="x", into="l")
