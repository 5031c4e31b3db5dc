"""Issue 4 as written: ``get_historical_features`` by name on a client that registered
nothing (the "no rows yet -> compute=True" path included), and
``args={"spend_trend": {"threshold": 50.0}}`` for a feature reading ``(user_spent, "last_n")``
without any ``n`` (default 10), or with ``n`` scoped under the feature."""

from __future__ import annotations

import datetime
import io
import re
import types

import polars as pl
import pytest

import volga
from volga import entity, field, on_demand
from volga.errors import UnknownFeature
from volga.sources import MemorySource
from volga.testing.data import make_orders, make_users
from volga.testing.quickstart import UserSpentInfo, quickstart
from volga.training import get_historical_features
from volga.training.lookup import OfflineDataMissing

START = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
USERS = make_users(6, start=START)
ORDERS = make_orders(600, n_users=6, start=START, days=1, seed=5)


@entity
class Stats:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    total_spent: float
    purchase_count: int


@entity
class Trend:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    recent_count: int
    above: bool


def define() -> types.SimpleNamespace:
    user_spent = quickstart(lambda online: MemorySource(ORDERS), idle_timeout=None, users=USERS)

    @on_demand(dependencies=[(user_spent, "latest")])
    def user_stats(spent: UserSpentInfo) -> Stats:
        return Stats(user_id=spent.user_id, timestamp=spent.timestamp,
                     total_spent=(spent.avg_spent_7d or 0.0) * spent.num_purchases_1h, purchase_count=spent.num_purchases_1h)

    @on_demand(dependencies=[user_stats, (user_spent, "last_n")])
    def spend_trend(stats: Stats, recent: list[UserSpentInfo], threshold: float = 100.0) -> Trend:
        return Trend(user_id=stats.user_id, timestamp=stats.timestamp, recent_count=len(recent),
                     above=stats.total_spent > threshold)

    return types.SimpleNamespace(user_spent=user_spent, user_stats=user_stats, spend_trend=spend_trend)


def spine() -> pl.DataFrame:
    times = [START + datetime.timedelta(hours=h) for h in (0, 6, 12, 23, 30)]
    return pl.DataFrame({
        "user_id": [u for u in ("0", "1", "2") for _ in times],
        "timestamp": times * 3,
        "label": list(range(3 * len(times))),
    })


FEATURES = ["user_spent.avg_spent_7d", "user_spent.num_purchases_1h", "user_stats", "spend_trend"]


def expected_recent(client, n: int) -> list[int]:
    """Per spine row: min(n, rows of the key with ts <= t), from the offline rows."""
    rows = client.get_offline("user_spent")
    out = []
    for user, t in spine().select("user_id", "timestamp").iter_rows():
        seen = rows.filter((pl.col("user_id") == user) & (pl.col("timestamp") <= t)).height
        out.append(min(n, seen) if seen else None)  # no row as of t: user_stats is None, so spend_trend is too
    return out


def test_fresh_client_says_no_rows_yet_and_offers_compute(tmp_path):
    define()
    client = volga.Client(data_dir=tmp_path)
    with pytest.raises(OfflineDataMissing, match="compute=True"):
        client.get_historical_features(spine(), ["user_spent"])
    train = get_historical_features(client, spine(), ["user_spent"], compute=True, progress=io.StringIO())
    assert train.height == spine().height and "avg_spent_7d" in train.columns
    assert train["avg_spent_7d"].null_count() < train.height


def test_issue_4_call_as_written(tmp_path):
    define()
    client = volga.Client(data_dir=tmp_path)
    train = client.get_historical_features(spine(), features=FEATURES, args={"spend_trend": {"threshold": 50.0}}, compute=True)
    assert train.columns == ["user_id", "timestamp", "label", "avg_spent_7d", "num_purchases_1h", "total_spent",
                             "purchase_count", "recent_count", "above"]
    assert train["recent_count"].to_list() == expected_recent(client, 10)
    above = [None if c is None else t > 50.0 for c, t in zip(train["recent_count"].to_list(), train["total_spent"].to_list())]
    assert train["above"].to_list() == above


def test_n_scoped_under_the_feature_and_other_forms(tmp_path):
    define()
    client = volga.Client(data_dir=tmp_path)
    client.materialize([client.definitions["user_spent"]], mode="offline")
    for args, n in [
        ({"spend_trend": {"threshold": 50.0, "n": 3}}, 3),
        ({"n": 2, "spend_trend": {"threshold": 50.0}}, 2),
        ({"user_spent": {"n": 4}}, 4),
        ({"n": 2, "user_spent": {"n": 4}, "spend_trend": {"n": 5}}, 5),
    ]:
        train = client.get_historical_features(spine(), features=["spend_trend"], args=args)
        assert train["recent_count"].to_list() == expected_recent(client, n), args


def test_historical_equals_get_on_demand_at_the_end(tmp_path):
    """Past every event, a spine row's value is what get_on_demand serves at that time."""
    define()
    client = volga.Client(data_dir=tmp_path)
    client.materialize([client.definitions["user_spent"]], mode="offline", write_online=True)
    late = pl.DataFrame({"user_id": ["0", "1", "2"], "timestamp": [START + datetime.timedelta(days=3)] * 3})
    train = client.get_historical_features(late, ["spend_trend"], args={"spend_trend": {"threshold": 50.0}}, full_names=True)
    served = client.get_on_demand(
        "spend_trend", [{"user_id": u} for u in ("0", "1", "2")], {"spend_trend": {"threshold": 50.0}}, at=START + datetime.timedelta(days=3)
    )
    assert train["spend_trend.recent_count"].to_list() == [r["recent_count"] for r in served]
    assert train["spend_trend.above"].to_list() == [r["above"] for r in served]


def test_unknown_feature_message_is_unchanged(tmp_path):
    client = volga.Client(data_dir=tmp_path)
    want = "unknown feature 'no_feature_has_this_name' in features entry 'no_feature_has_this_name'; known pipelines and on-demand features: []"
    with pytest.raises(UnknownFeature, match=re.escape(want)):
        client.get_historical_features(spine(), ["no_feature_has_this_name"])
