"""``get_historical_features``: shape of the result, ttl, key_map, ties, pandas, errors.

Over ``training_defs.EVENTS`` (minutes after T0), for users a and b::

    a:  0 (1.0, x)   0 (2.0, y)   3 (4.0, z)   10 (8.0, x)       two events tie at minute 0
    b:  5 (0.0, y)                                               total stays 0.0
"""

from __future__ import annotations

import datetime
import io

import polars as pl
import pytest
import training_defs as defs
from training_defs import EVENTS, Stats, at, spine, stats

import volga
import volga.client
from volga import Count, Last, Max, Sum, entity, field, on_demand
from volga.serving import BadRequest, FeatureFunctionError
from volga.sources import MemorySource
from volga.training import OfflineDataMissing, SpineError, SpineKeyError, backfill
from volga.training.on_demand import OnDemandEvaluator


@pytest.fixture
def client(tmp_path):
    return defs.client_with(tmp_path, EVENTS)


# -- result shape ----------------------------------------------------------------------------

def test_spine_order_columns_duplicates_and_pre_history_nulls(client):
    s = spine(["a", "b", "a", "a", "zz", "a"], [11, 4, -1, 3, 5, 11], label=[1, 2, 3, 4, 5, 6])
    out = client.get_historical_features(s, ["stats.total", "stats.last_tag", "scaled.value"])
    assert out.columns == ["user", "timestamp", "label", "total", "last_tag", "value"]
    assert out.select("user", "timestamp", "label").equals(s)  # spine columns kept as given
    assert out["total"].to_list() == [15.0, None, None, 7.0, None, 15.0]  # b at 4 and a at -1: before any event
    assert out["last_tag"].to_list() == ["x", None, None, "z", None, "x"]
    assert out["value"].to_list() == [15.0 * 2 + 1, None, None, 7.0 * 2 + 3, None, 15.0 * 2 + 1]


def test_equal_timestamps_the_later_written_row_wins_as_online(client, tmp_path):
    out = client.get_historical_features(spine(["a"], [0]), ["stats"])
    assert out.row(0, named=True) == {"user": "a", "timestamp": at(0), "n_5m": 2, "total": 3.0, "max_10m": 2.0, "last_tag": "y"}
    online = defs.client_with(tmp_path / "online", [e for e in EVENTS if e["at"] <= at(0)], mode="online")
    (latest,) = online.get_latest("stats", [{"user": "a"}], at=at(0))
    assert (latest.n_5m, latest.total, latest.last_tag) == (2, 3.0, "y")


def test_whole_feature_gives_value_fields_and_full_names_prefix_them(client):
    out = client.get_historical_features(spine(["a"], [3]), ["stats", "recent.count", "stats.at"], args={"n": 2}, full_names=True)
    assert out.columns == ["user", "timestamp", "stats.n_5m", "stats.total", "stats.max_10m", "stats.last_tag", "stats.at", "recent.count"]
    assert out.row(0)[2:] == (3, 7.0, 4.0, "z", at(3), 2)


def test_empty_spine_gives_typed_empty_columns(client):
    empty = pl.DataFrame({"user": [], "timestamp": []}, schema={"user": pl.String, "timestamp": pl.Datetime("us", "UTC")})
    out = client.get_historical_features(empty, ["stats.total", "scaled", "recent"], args={"n": 1})
    assert out.height == 0
    assert out.schema["total"] == pl.Float64 and out.schema["big"] == pl.Boolean and out.schema["count"] == pl.Int64


def test_naive_and_other_zone_timestamps_are_read_as_utc(client):
    aware = client.get_historical_features(spine(["a", "a"], [2.5, 3]), ["stats.total"])
    naive = spine(["a", "a"], [2.5, 3]).with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    assert client.get_historical_features(naive, ["stats.total"])["total"].equals(aware["total"])
    berlin = spine(["a", "a"], [2.5, 3]).with_columns(pl.col("timestamp").dt.convert_time_zone("Europe/Berlin"))
    assert client.get_historical_features(berlin, ["stats.total"])["total"].to_list() == [3.0, 7.0]
    nanos = naive.with_columns(pl.col("timestamp").cast(pl.Datetime("ns")))
    assert client.get_historical_features(nanos, ["stats.total"])["total"].to_list() == [3.0, 7.0]


# -- ttl ---------------------------------------------------------------------------------------

def test_ttl_nulls_values_older_than_it_per_call_and_per_feature(client):
    s = spine(["a", "a", "a", "a"], [3, 5, 5 + 1 / 60_000_000, 12])  # 2m after the 3m row; 1 us past it
    got = client.get_historical_features(s, ["stats.total", "scaled.value"], ttl="2m")
    assert got["total"].to_list() == [7.0, 7.0, None, 15.0]
    # on-demand features have no ttl; 1 us past minute 5 the 5-minute count no longer holds the events at 0
    assert got["value"].to_list() == [17.0, 17.0, 7.0 * 2 + 1, 31.0]
    per_feature = client.get_historical_features(s, ["stats.total"], ttl={"stats": datetime.timedelta(minutes=2)})
    assert per_feature["total"].equals(got["total"])
    assert client.get_historical_features(s, ["stats.total"])["total"].to_list() == [7.0, 7.0, 7.0, 15.0]


def test_get_latest_honours_the_same_ttl_online(tmp_path, monkeypatch):
    online = defs.client_with(tmp_path, EVENTS[:3], mode="online")  # a's latest row is at minute 3
    for minute, fresh in ((3, True), (5, True), (5 + 1 / 60_000_000, False)):
        (row,) = online.get_latest("stats", [{"user": "a"}], ttl="2m", at=at(minute))
        assert (row is not None) is fresh, minute
    assert online.get_latest("stats", [{"user": "a"}])[0] is not None  # no ttl: always the latest
    with pytest.raises(ValueError, match="ttl"):
        online.get_latest("stats", [{"user": "a"}], ttl="2 minutes")


def test_get_latest_ttl_is_measured_from_the_wall_clock(tmp_path):
    online = defs.client_with(tmp_path, EVENTS, mode="online")  # rows from 2024
    age = datetime.datetime.now(datetime.timezone.utc) - at(10)
    assert online.get_latest("stats", [{"user": "a"}], ttl=age - datetime.timedelta(hours=1)) == [None]
    (row,) = online.get_latest("stats", [{"user": "a"}], ttl=age + datetime.timedelta(days=1))
    assert row.total == 15.0


def test_ttl_errors(client):
    s = spine(["a"], [3])
    with pytest.raises(ValueError, match="ttl applies to pipeline features; scaled is an on-demand feature"):
        client.get_historical_features(s, ["stats", "scaled"], ttl={"scaled": "1h"})
    with pytest.raises(ValueError, match=r"ttl\['recent'\]: 'recent' is not one of the requested features"):
        client.get_historical_features(s, ["stats"], ttl={"recent": "1h"})
    with pytest.raises(ValueError, match="is not a duration"):
        client.get_historical_features(s, ["stats"], ttl="soon")


# -- key_map -------------------------------------------------------------------------------------

def test_key_map_reads_keys_from_other_spine_columns(client):
    s = pl.DataFrame({"customer": ["a", "b"], "user": ["b", "a"], "timestamp": [at(3), at(3)]})
    by_name = client.get_historical_features(s, ["stats.total"])
    mapped = client.get_historical_features(s, ["stats.total", "scaled.value"], key_map={"user": "customer"})
    assert by_name["total"].to_list() == [None, 7.0]
    assert mapped["total"].to_list() == [7.0, None] and mapped["value"].to_list() == [17.0, None]
    one = client.get_historical_features(s, ["stats.total", "scaled.value"], key_map={"stats": {"user": "customer"}})
    assert one["total"].to_list() == [7.0, None] and one["value"].to_list() == [None, 17.0]


def test_key_map_errors(client):
    s = spine(["a"], [3]).with_columns(customer=pl.lit("a"))
    with pytest.raises(ValueError, match="'buyer' is not a key field of any requested feature"):
        client.get_historical_features(s, ["stats"], key_map={"buyer": "customer"})
    with pytest.raises(ValueError, match=r"key_map\['recent'\]: 'recent' is not one of the requested features"):
        client.get_historical_features(s, ["stats"], key_map={"recent": {"user": "customer"}})
    with pytest.raises(SpineKeyError, match="'nowhere', which is not a spine column"):
        client.get_historical_features(s, ["stats"], key_map={"user": "nowhere"})


# -- bad input ---------------------------------------------------------------------------------

def test_a_null_spine_key_gives_null_features_like_an_unknown_key(client):
    out = client.get_historical_features(spine(["a", "a"], [3, 3]).with_columns(user=pl.Series([None, "a"], dtype=pl.String)), ["stats.total", "scaled.value"])
    assert out["total"].to_list() == [None, 7.0] and out["value"].to_list() == [None, 17.0]



@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda s: s.drop("user"), SpineKeyError, r"pipeline 'stats' is keyed by 'user', which is not a spine column .*key_map"),
        (lambda s: s.drop("timestamp"), SpineError, r"no timestamp column 'timestamp' .*timestamp_column="),
        (lambda s: s.with_columns(pl.col("timestamp").dt.to_string()), SpineError, r"must hold datetimes, not String; parse it first"),
        (lambda s: s.with_columns(pl.col("timestamp").dt.date()), SpineError, r"must hold datetimes, not Date"),
        (lambda s: s.with_columns(user=pl.lit(7)), SpineKeyError, r"spine column 'user' holds Int32, but pipeline 'stats' has a str key"),
        (lambda s: s.with_columns(timestamp=pl.lit(None, pl.Datetime)), SpineError, r"timestamp column 'timestamp' has 1 null"),
        (lambda s: s.lazy(), TypeError, r"not a LazyFrame: call .collect\(\)"),
        (lambda s: s.to_dicts(), TypeError, r"must be a polars or pandas DataFrame, got list"),
        (lambda s: s.with_columns(total=pl.lit(1.0)), ValueError, r"'total' \(from stats.total\) clashes with the spine column.*full_names=True"),
    ],
)
def test_bad_spines(client, make, error, message):
    with pytest.raises(error, match=message):
        client.get_historical_features(make(spine(["a"], [3])), ["stats"])


@pytest.mark.parametrize(
    ("features", "kwargs", "error", "message"),
    [
        (["nope"], {}, volga.UnknownFeature, r"unknown feature 'nope' .*known pipelines and on-demand features: \[.*'stats'"),
        (["stats.nope"], {}, volga.UnknownFeature, r"feature 'stats' has no field 'nope' \(its fields: "),
        ("stats", {}, TypeError, r"features must be a non-empty list"),
        ([], {}, TypeError, r"features must be a non-empty list"),
        (["stats.total", "stats"], {}, ValueError, r"stats.total is requested twice"),
        (["stats.at", "scaled.at"], {}, ValueError, r"column 'at' would come from both stats.at and scaled.at; pass full_names=True"),
        (["stats"], {"args": {"n": 2}}, ValueError, r"only on-demand features take arguments"),
        (["recent"], {"args": {"n": 0}}, BadRequest, r"n must be a positive int, got 0"),
        (["scaled"], {"args": {"factr": 2}}, BadRequest, r"unknown argument 'factr'"),
        (["stats"], {"timestamp_column": 3}, TypeError, r"timestamp_column must be a column name"),
    ],
)
def test_bad_requests(client, features, kwargs, error, message):
    with pytest.raises(error, match=message):
        client.get_historical_features(spine(["a"], [3]), features, **kwargs)


@volga.source(defs.Event)
def stored_events() -> volga.Source:
    return MemorySource(EVENTS)


@volga.pipeline(dependencies=[stored_events], output=Stats)
def stored_stats(events: volga.Entity) -> volga.Entity:
    return events.group_by(keys=["user"]).aggregate([
        Count(window="5m", into="n_5m"), Sum(on="amount", window="forever", into="total"),
        Max(on="amount", window="10m", into="max_10m"), Last(on="tag", window="forever", into="last_tag"),
    ])


def test_an_empty_offline_store_says_so_and_compute_backfills(tmp_path):
    fresh = volga.Client(data_dir=tmp_path)
    fresh.register(stored_stats, *defs.ON_DEMAND)
    with pytest.raises(OfflineDataMissing, match=r"no rows for pipeline 'stats' \(needed by on-demand feature 'scaled'\).*compute=True"):
        fresh.get_historical_features(spine(["a"], [3]), ["scaled"])
    with pytest.raises(OfflineDataMissing, match=r"no rows for pipeline 'stored_stats' \(needed by features entry 'stored_stats'\)"):
        fresh.get_historical_features(spine(["a"], [3]), ["stored_stats.total"])
    out = fresh.get_historical_features(spine(["a", "b"], [3, 6]), ["stored_stats.total"], compute=True)
    assert out["total"].to_list() == [7.0, 0.0]
    assert fresh.get_offline("stored_stats").height == len(EVENTS)


def test_compute_reports_progress_on_long_backfills():
    class SlowJob:
        waits = 0
        metrics = type("M", (), {"rows_in": {"events": 1234}})()

        def wait(self, timeout):
            SlowJob.waits += 1
            if SlowJob.waits < 3:
                raise TimeoutError
            return self

    class FakeClient:
        def materialize(self, pipelines, mode, block):
            assert (mode, block) == ("offline", False)
            return SlowJob()

    out = io.StringIO()
    backfill(FakeClient(), [stats], out, quiet_s=0.0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("volga: computing stats from their sources (compute=True)") and "1,234 rows read" in lines[0]
    assert lines[-1].startswith("volga: computed stats in ")


# -- on-demand evaluation paths ------------------------------------------------------------------

@entity
class Ratio:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    ratio: float
    note: str


@on_demand(dependencies=[stats])
def ratio(s: Stats) -> Ratio:
    return Ratio(user=s.user, at=s.at, ratio=s.max_10m / s.total, note="r")


@on_demand(dependencies=[stats])
def shout(s: Stats) -> Ratio:
    return Ratio(user=s.user, at=s.at, ratio=s.total, note=f"{s.last_tag}!")


def _paths(monkeypatch) -> dict[str, str]:
    seen: dict[str, str] = {}
    original = OnDemandEvaluator.evaluate

    def spy(self, index, columns):
        try:
            return original(self, index, columns)
        finally:
            seen.update(self.paths)

    monkeypatch.setattr(OnDemandEvaluator, "evaluate", spy)
    return seen


def test_arithmetic_functions_run_vectorised_others_row_wise(client, monkeypatch):
    client.register(ratio, shout)
    paths = _paths(monkeypatch)
    out = client.get_historical_features(spine(["a", "a"], [3, 11]), ["ratio.ratio", "shout.note", "boosted", "recent.tags"], args={"n": 2})
    assert paths["ratio"] == "vectorised" and paths["scaled"] == "vectorised" and paths["boosted"] == "vectorised"
    assert paths["shout"].startswith("row-wise (the trace raised NotVectorisable")
    assert paths["recent"].startswith("row-wise (an input is a list")
    assert out["ratio"].to_list() == [4.0 / 7.0, 8.0 / 15.0] and out["note"].to_list() == ["z!", "x!"]
    assert out["tags"].to_list() == ["yz", "zx"]


def test_a_zero_divisor_runs_row_wise_and_raises_as_serving_does(client, tmp_path, monkeypatch):
    client.register(ratio)
    paths = _paths(monkeypatch)
    with pytest.raises(FeatureFunctionError, match="on-demand feature 'ratio' raised ZeroDivisionError"):
        client.get_historical_features(spine(["a", "b"], [3, 6]), ["ratio.ratio"])
    assert paths["ratio"] == "row-wise (inputs with nulls, NaN or zero divisors)"
    online = defs.client_with(tmp_path / "online", EVENTS, mode="online")
    online.register(ratio)
    with pytest.raises(FeatureFunctionError, match="ZeroDivisionError"):
        online.get_on_demand("ratio", [{"user": "b"}], at=at(6))


@on_demand(dependencies=[stats])
def mistyped(s: Stats) -> Ratio:
    return Ratio(user=s.user, at=s.at, ratio="high" if s.total > 5 else 0.5, note="n")  # type: ignore[arg-type]


def test_a_value_of_the_wrong_type_is_an_error_naming_the_field(client):
    client.register(mistyped)
    assert client.get_historical_features(spine(["a"], [0]), ["mistyped.ratio"])["ratio"].to_list() == [0.5]
    with pytest.raises(FeatureFunctionError, match=r"'mistyped' raised TypeError: field 'ratio' holds float, but the function returned 'high' there"):
        client.get_historical_features(spine(["a", "a"], [0, 3]), ["mistyped.ratio"])


# -- pandas ----------------------------------------------------------------------------------------

def test_pandas_spine_gives_pandas_with_the_same_values(client):
    import pandas as pd
    polars_spine = spine(["a", "b", "zz", "a"], [3, 6, 1, 11], label=[True, False, True, False])
    frame = polars_spine.with_columns(pl.col("timestamp").dt.replace_time_zone(None)).to_pandas()  # naive datetime64
    frame.index = [10, 20, 30, 40]
    features = ["stats.n_5m", "stats.total", "stats.last_tag", "scaled.big", "recent.count"]
    out = client.get_historical_features(frame, features, args={"n": 3})
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == [10, 20, 30, 40]
    assert list(out.columns) == ["user", "timestamp", "label", "n_5m", "total", "last_tag", "big", "count"]
    assert out["timestamp"].equals(frame["timestamp"])  # spine columns as given
    assert str(out["n_5m"].dtype) == "Int64" and str(out["big"].dtype) == "boolean"  # nullable: no float ints
    expected = client.get_historical_features(polars_spine, features, args={"n": 3})
    assert pl.from_pandas(out.drop(columns=["user", "timestamp", "label"]).reset_index(drop=True)).equals(expected.drop("user", "timestamp", "label"))


# -- composite keys ----------------------------------------------------------------------------

@entity
class TagCount:
    user: str = field(key=True)
    tag: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int


@volga.pipeline(dependencies=[defs.events], output=TagCount)
def tag_counts(events: volga.Entity) -> volga.Entity:
    return events.group_by(keys=["user", "tag"]).aggregate([Count(window="forever", into="n")])


@entity
class TagShare:
    user: str = field(key=True)
    tag: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    share: float


@on_demand(dependencies=[tag_counts, stats])
def tag_share(tc: TagCount, s: Stats) -> TagShare:
    return TagShare(user=tc.user, tag=tc.tag, at=tc.at, share=tc.n / s.n_5m)


def test_composite_keys_and_an_on_demand_feature_projecting_them(client):
    client.register(tag_share)
    client.materialize([tag_counts], mode="offline", params={"rows": EVENTS})
    s = spine(["a", "a", "a", "b", "b", "a"], [3, 3, 10, 6, 6, -1], tag=["x", "z", "x", "x", "y", "x"])
    out = client.get_historical_features(s, ["tag_counts.n", "tag_share.share"])
    assert out["n"].to_list() == [1, 1, 2, None, 1, None]
    assert out["share"].to_list() == [1 / 3, 1 / 3, 2.0, None, 1.0, None]  # stats(a) at 3: 3 rows in 5m; at 10: 1
    mapped = client.get_historical_features(s.rename({"tag": "label"}), ["tag_counts.n"], key_map={"tag": "label"})
    assert mapped["n"].equals(out["n"])
