"""One timezone object on every Python value Volga hands out (issue 14 item 8), online and in
training, and a clear error for a list where one feature name is expected."""

from __future__ import annotations

import datetime

import polars as pl
import pytest

import volga
from volga import entity, field, on_demand
from volga.sources import MemorySource
from volga.testing.quickstart import UserSpentInfo, order_records, quickstart

UTC = datetime.timezone.utc


@entity
class Seen:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    input_tz_is_utc: bool
    now_tz_is_utc: bool


def test_python_values_carry_timezone_utc_online_and_in_training() -> None:
    user_spent = quickstart(lambda online: MemorySource(order_records(50)))

    @on_demand(dependencies=[user_spent])
    def seen(spent: UserSpentInfo, now: datetime.datetime) -> Seen:
        return Seen(user_id=spent.user_id, timestamp=now, input_tz_is_utc=spent.timestamp.tzinfo is UTC,
                    now_tz_is_utc=now.tzinfo is UTC)

    client = volga.Client()
    client.register(user_spent, seen)
    client.materialize([user_spent], mode="offline", write_online=True)
    user = client.get_offline("user_spent")["user_id"][0]
    (latest,) = client.get_latest("user_spent", [{"user_id": user}])
    assert latest.timestamp.tzinfo is UTC
    (row,) = client.get_on_demand("seen", [{"user_id": user}])
    assert row["timestamp"].tzinfo is UTC and row["input_tz_is_utc"] and row["now_tz_is_utc"]
    spine = pl.DataFrame({"user_id": [user], "timestamp": [datetime.datetime(2030, 1, 1)]})
    train = client.get_historical_features(spine, features=["seen.input_tz_is_utc", "seen.now_tz_is_utc"])
    assert train["input_tz_is_utc"].to_list() == [True] and train["now_tz_is_utc"].to_list() == [True]


def test_a_list_where_one_feature_name_goes_is_a_clear_error() -> None:
    client = volga.Client()
    with pytest.raises(TypeError, match=r"expected a feature name or definition, got list .*one feature per call"):
        client.get_on_demand(["user_spent"], [{"user_id": "1"}])
    with pytest.raises(TypeError, match="got int 7"):
        client.get_latest(7, [{"user_id": "1"}])
