"""Features by name without ``client.register`` (issue 3), in-process rows equal to the
HTTP client's rows, and query arguments declared with a dependency / defaulted / scoped to
the on-demand feature that reads them.

Definitions are made inside ``define()`` so that they are the most recent definitions of
their names when a test runs (the process-wide registry keeps the latest one per name).
"""

from __future__ import annotations

import dataclasses
import datetime
import textwrap
import types
from typing import Optional

import pytest
from serving_defs import ORDERS, START, USERS, CountingStore, UserSpentInfo

import volga
from volga import entity, field, on_demand
from volga.api.on_demand import DEFAULT_LAST_N
from volga.serving import BadRequest, FeatureNotFound
from volga.sources import MemorySource
from volga.testing.quickstart import quickstart

UTC = datetime.timezone.utc


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
    above_threshold: bool
    threshold: float


@entity
class Moments:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    naive: datetime.datetime
    maybe: Optional[datetime.datetime]
    seen: list[datetime.datetime]
    label: str


def define() -> types.SimpleNamespace:
    """The issue's definitions, made now (so they are the latest of their names)."""

    user_spent = quickstart(lambda online: MemorySource(ORDERS), idle_timeout=None, users=USERS)

    @on_demand(dependencies=[(user_spent, "latest")])
    def user_stats(spent: UserSpentInfo) -> Stats:
        return Stats(user_id=spent.user_id, timestamp=spent.timestamp,
                     total_spent=spent.avg_spent_7d * spent.num_purchases_1h, purchase_count=spent.num_purchases_1h)

    @on_demand(dependencies=[user_stats, (user_spent, "last_n")])
    def spend_trend(stats: Stats, recent: list[UserSpentInfo], threshold: float = 100.0) -> Trend:
        return Trend(user_id=stats.user_id, timestamp=stats.timestamp, recent_count=len(recent),
                     above_threshold=stats.total_spent > threshold, threshold=threshold)

    @on_demand(dependencies=[(user_spent, "range", {"start": None, "end": None})])
    def span(rows: list[UserSpentInfo]) -> Optional[Trend]:
        if not rows:
            return None
        return Trend(user_id=rows[-1].user_id, timestamp=rows[-1].timestamp, recent_count=len(rows),
                     above_threshold=False, threshold=0.0)

    @on_demand(dependencies=[user_spent])
    def moments(spent: UserSpentInfo) -> Moments:
        naive = spent.timestamp.replace(tzinfo=None)  # naive: UTC, in process and over HTTP alike
        return Moments(user_id=spent.user_id, timestamp=spent.timestamp, naive=naive, maybe=None,
                       seen=[naive, spent.timestamp.astimezone(datetime.timezone(datetime.timedelta(hours=2)))],
                       label="x")

    return types.SimpleNamespace(user_spent=user_spent, user_stats=user_stats, spend_trend=spend_trend, span=span,
                                 moments=moments)


def key(user: str) -> dict:
    return {"user_id": user}


@pytest.fixture()
def fresh(tmp_path):
    """The issue's definitions, made now; a client that only materialized user_spent."""
    d = define()
    client = volga.Client(data_dir=tmp_path)
    client.materialize([d.user_spent], mode="offline", write_online=True)
    return d, client, _busiest_first(client)


def _busiest_first(client) -> list[str]:
    """Users with user_spent rows, the one with the most rows first (it has more than 10)."""
    counts = client.get_offline("user_spent").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    users = counts["user_id"].to_list()
    assert counts["len"][0] > 10
    return users


# -- 1. names without register ---------------------------------------------------------------

def test_get_on_demand_by_name_after_materialize_only(fresh):
    d, client, users = fresh
    assert "user_stats" not in dict.keys(client.definitions)  # never registered
    rows = client.get_on_demand("user_stats", keys=[key(users[0]), key("999")], args={})
    (spent,) = client.get_latest("user_spent", [key(users[0])])
    assert rows == [
        {"user_id": users[0], "timestamp": spent.timestamp, "total_spent": spent.avg_spent_7d * spent.num_purchases_1h,
         "purchase_count": spent.num_purchases_1h},
        None,
    ]
    assert client.definitions["user_stats"] is d.user_stats  # adopted, with its dependencies


def test_unknown_name_error_is_unchanged(fresh):
    _, client, _ = fresh
    with pytest.raises(FeatureNotFound, match=r"unknown feature 'no_such_feature_anywhere'; known features: \[.*'user_spent'"):
        client.get_on_demand("no_such_feature_anywhere", [key("1")])


def test_pipeline_name_resolves_on_a_fresh_client(tmp_path):
    define()
    client = volga.Client(data_dir=tmp_path)
    assert client.get_latest("user_spent", [key("1")]) == [None]  # known by name, nothing materialized yet
    assert client.get_on_demand("user_stats", [key("1")]) == [None]


def test_registered_definition_wins_over_the_registry(fresh, tmp_path):
    d, client, users = fresh
    pinned = volga.Client(online_store=client.online_store, data_dir=tmp_path / "pinned")
    pinned.register(d.user_stats)
    before = client.get_on_demand("user_stats", [key(users[0])])

    @on_demand(dependencies=[d.user_spent])
    def user_stats(spent: UserSpentInfo) -> Stats:  # a notebook cell run again, changed
        return Stats(user_id=spent.user_id, timestamp=spent.timestamp, total_spent=-1.0, purchase_count=0)

    assert client.get_on_demand("user_stats", [key(users[0])])[0]["total_spent"] == -1.0  # most recent wins
    assert pinned.get_on_demand("user_stats", [key(users[0])]) == before  # registered: stays
    assert before[0]["total_spent"] != -1.0


def test_server_resolves_names_like_the_client(fresh):
    _, client, users = fresh
    with client.serve(port=0) as server, volga.OnDemandClient(server.url) as http:
        got = http.request(target_features=["spend_trend"], feature_keys={"spend_trend": [key(users[0])]},
                           udf_args={"spend_trend": {"threshold": 50.0}})
        names = {f["name"] for f in http.features()}
    assert got["spend_trend"] == client.get_on_demand("spend_trend", [key(users[0])], {"spend_trend": {"threshold": 50.0}})
    assert {"spend_trend", "user_stats", "user_spent"} <= names


def test_volga_serve_app_resolves_names_not_at_module_level(tmp_path):
    from volga.serving.run import load_app

    app = tmp_path / "names_app.py"
    app.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        import volga
        from test_names_rows_args import define

        define()  # the definitions live in a function: nothing at module level
        client = volga.Client(data_dir={str(tmp_path / "data")!r})
        client.materialize([client.definitions["user_spent"]], mode="offline", write_online=True)
    """))
    client = load_app(str(app))
    result = client._on_demand.request(["user_stats"], keys=[key("1")])
    assert [dataclasses.asdict(r) for r in result["user_stats"]] == client.get_on_demand("user_stats", [key("1")])


# -- 2. in-process rows equal the HTTP client's rows ------------------------------------------

def test_in_process_rows_equal_http_rows(fresh):
    _, client, users = fresh
    keys = [key(u) for u in users[:3]] + [key("999")]
    cases = [
        ("user_stats", {}, {}),
        ("spend_trend", {"n": 3}, {"threshold": 50.0}),
        ("spend_trend", {}, {"spend_trend": {"threshold": 50.0}}),
        ("span", {"start": (START + datetime.timedelta(hours=3)).isoformat()}, {}),
        ("moments", {}, {}),
        ("user_spent", {}, {}),
    ]
    with client.serve(port=0) as server, volga.OnDemandClient(server.url) as http:
        for name, query, udf in cases:
            local = client.get_on_demand(name, keys, {**query, **udf})
            remote = http.request(target_features=[name], feature_keys={name: keys}, query_args=query, udf_args=udf)[name]
            assert local == remote, name
            assert local[-1] is None and remote[-1] is None
            assert all(isinstance(r, dict) for r in local[:-1])
    row = client.get_on_demand("moments", [key(users[0])])[0]
    assert row.label == "x" and row["label"] == "x"  # attribute access kept
    assert row["naive"].tzinfo is UTC and row["naive"] == row["timestamp"]
    assert [t.tzinfo for t in row["seen"]] == [UTC, UTC] and row["maybe"] is None
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = row.nope


# -- 3. query arguments: declared, defaulted, scoped -------------------------------------------

def test_issue_4_args_work_without_n(fresh):
    _, client, users = fresh
    u = users[0]
    (trend,) = client.get_on_demand("spend_trend", [key(u)], args={"spend_trend": {"threshold": 50.0}})
    assert DEFAULT_LAST_N == 10
    assert trend["recent_count"] == len(client.get_last_n("user_spent", [key(u)], 10)[0]) == 10
    assert trend["threshold"] == 50.0


def test_query_args_scoped_under_the_reading_feature(fresh):
    _, client, users = fresh
    u = users[0]
    (trend,) = client.get_on_demand("spend_trend", [key(u)], args={"spend_trend": {"threshold": 50.0, "n": 3}})
    assert (trend["recent_count"], trend["threshold"]) == (3, 50.0)
    # the forms that worked before still do
    assert client.get_on_demand("spend_trend", [key(u)], {"n": 2})[0]["recent_count"] == 2
    assert client.get_on_demand("spend_trend", [key(u)], {"user_spent": {"n": 4}})[0]["recent_count"] == 4
    # most specific first: the reading feature, then the pipeline, then everything
    both = {"n": 2, "user_spent": {"n": 4}, "spend_trend": {"n": 5}}
    assert client.get_on_demand("spend_trend", [key(u)], both)[0]["recent_count"] == 5
    assert client.get_on_demand("spend_trend", [key(u)], {"n": 2, "user_spent": {"n": 4}})[0]["recent_count"] == 4
    with pytest.raises(BadRequest, match=r"unknown argument 'm' for 'spend_trend'") as caught:
        client.get_on_demand("spend_trend", [key(u)], {"spend_trend": {"m": 1}})
    assert caught.value.field == "args.spend_trend.m"
    with pytest.raises(BadRequest, match="n must be a positive int, got 0") as caught:
        client.get_on_demand("spend_trend", [key(u)], {"spend_trend": {"n": 0}})
    assert caught.value.field == "args.spend_trend.n"


def test_dependency_carries_its_query_args(tmp_path):
    d = define()

    @on_demand(dependencies=[d.user_stats, (d.user_spent, "last_n", {"n": 2})])
    def short_trend(stats: Stats, recent: list[UserSpentInfo], threshold: float = 100.0) -> Trend:
        return Trend(user_id=stats.user_id, timestamp=stats.timestamp, recent_count=len(recent),
                     above_threshold=stats.total_spent > threshold, threshold=threshold)

    client = volga.Client(data_dir=tmp_path)
    client.materialize([d.user_spent], mode="offline", write_online=True)
    u = _busiest_first(client)[0]
    assert client.get_on_demand("short_trend", [key(u)])[0]["recent_count"] == 2
    assert client.get_on_demand("short_trend", [key(u)], {"n": 3})[0]["recent_count"] == 3  # request overrides
    assert client.get_on_demand("short_trend", [key(u)], {"short_trend": {"n": 1}})[0]["recent_count"] == 1
    # range bounds declared with the dependency (None = open): every row of the key
    all_rows = client.get_range("user_spent", [key(u)], None, None)[0]
    assert client.get_on_demand("span", [key(u)])[0]["recent_count"] == len(all_rows)
    late = all_rows[-3].timestamp
    assert client.get_on_demand("span", [key(u)], {"span": {"start": late}})[0]["recent_count"] == 3
    listing = {f["name"]: f for f in __import__("volga.serving.openapi", fromlist=["x"]).feature_listing(client.definitions)["features"]}
    assert listing["short_trend"]["dependencies"][1]["query_args"] == {"n": 2}


def test_readers_with_different_n_in_one_request_and_one_store_read_when_equal(fresh, tmp_path):
    d, client, users = fresh

    @on_demand(dependencies=[(d.user_spent, "last_n", {"n": 2})])
    def two_rows(recent: list[UserSpentInfo]) -> Optional[Trend]:
        return Trend(user_id=recent[-1].user_id, timestamp=recent[-1].timestamp, recent_count=len(recent),
                     above_threshold=False, threshold=0.0) if recent else None

    @on_demand(dependencies=[(d.user_spent, "last_n")])
    def default_rows(recent: list[UserSpentInfo]) -> Optional[Trend]:
        return two_rows.fn(recent)

    store = CountingStore(client.online_store)
    counting = volga.Client(online_store=store, data_dir=tmp_path / "c")
    got = counting._on_demand.request(["two_rows", "default_rows"], keys=[key(users[0])])
    assert (got["two_rows"][0].recent_count, got["default_rows"][0].recent_count) == (2, 10)
    assert sorted(c[0] for c in store.calls) == ["last_n", "last_n"]
    store.calls.clear()
    counting._on_demand.request(["two_rows", "default_rows"], keys=[key(users[0])], query_args={"n": 4})
    assert [c[0] for c in store.calls] == ["last_n"]  # equal arguments: one batched read


def test_same_args_over_http(fresh):
    _, client, users = fresh
    keys = [key(users[0])]
    with client.serve(port=0) as server, volga.OnDemandClient(server.url) as http:
        plain = http.request(["spend_trend"], {"spend_trend": keys}, udf_args={"spend_trend": {"threshold": 50.0}})
        scoped = http.request(["spend_trend"], {"spend_trend": keys}, query_args={"spend_trend": {"n": 3}},
                              udf_args={"spend_trend": {"threshold": 50.0}})
    assert plain["spend_trend"][0]["recent_count"] == 10
    assert scoped["spend_trend"][0]["recent_count"] == 3
    assert scoped["spend_trend"] == client.get_on_demand("spend_trend", keys, {"spend_trend": {"threshold": 50.0, "n": 3}})


@pytest.mark.parametrize(
    "dependency, message",
    [
        (("P", "last_n", {"n": 0}), r"dependency user_spent \(last_n\): n must be a positive int, got 0"),
        (("P", "last_n", {"m": 1}), r"unknown query argument 'm' \(it takes \['n'\]\)"),
        (("P", "latest", {"n": 1}), r"unknown query argument 'n' \(it takes no arguments\)"),
        (("P", "range", {"start": "soon"}), r"start must be a datetime, an ISO 8601 string or None, got 'soon'"),
        (("P", "range", {"start": "2025-01-02", "end": "2025-01-01"}), r"start 2025-01-02 00:00:00\+00:00 is after end"),
        (("P", "last_n", 5), r"query arguments must be a dict like \{'n': 10\}, got 5"),
        (("P", "last_n", {"n": 1}, "x"), r"must be a definition, \(definition, query\) or \(definition, query, \{query arguments\}\)"),
    ],
)
def test_bad_dependency_query_args_fail_at_definition(dependency, message):
    d = define()
    spec = (d.user_spent, *dependency[1:])
    with pytest.raises(volga.OnDemandDefinitionError, match=message):
        @on_demand(dependencies=[spec])
        def bad(rows: list[UserSpentInfo]) -> Trend: ...
