"""``client.get_on_demand``: chained features over latest/last_n/range, args, missing data,
batched store reads, and errors (the same exception classes the HTTP client raises)."""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Optional

import pytest
import serving_defs as defs
from serving_defs import CountingStore, UserSpentInfo, UserStats, user_spent

import volga
from volga import on_demand
from volga.serving import BadRequest, FeatureFunctionError, FeatureNotFound, InvalidKeys

MISSING = {"user_id": "999"}


def key(user: str) -> dict:
    return {"user_id": user}


def test_latest_chain_matches_the_store(served, known_users):
    users = known_users[:4]
    spent = served.get_latest("user_spent", [key(u) for u in users])
    stats = served.get_on_demand("user_stats", [key(u) for u in users])
    for s, st in zip(spent, stats):
        assert isinstance(st, dict) and set(st) == {f.name for f in dataclasses.fields(UserStats)}
        assert (st.user_id, st.timestamp) == (s.user_id, s.timestamp)
        assert st.total_spent == s.avg_spent_7d * s.num_purchases_1h
        assert st.timestamp.tzinfo is datetime.timezone.utc


def test_chained_with_last_n_and_request_arg(served, known_users):
    user = known_users[0]
    recent = served.get_last_n("user_spent", [key(user)], 3)[0]
    stats = served.get_on_demand("user_stats", [key(user)])[0]
    (trend,) = served.get_on_demand("spend_trend", [key(user)], {"n": 3, "threshold": stats.total_spent - 1})
    assert trend.recent_count == len(recent) == 3
    assert trend.recent_max == max(r.max_price_1d for r in recent)
    assert trend.above_threshold is True and trend.total_spent == stats.total_spent
    (below,) = served.get_on_demand("spend_trend", [key(user)], {"user_spent": {"n": 1}, "spend_trend": {"threshold": stats.total_spent + 1}})
    assert below.recent_count == 1 and below.above_threshold is False
    default = served.get_on_demand("spend_trend", [key(user)], {"n": 2})[0]
    assert default.above_threshold is (stats.total_spent > 100.0)  # the function's default threshold


def test_range_query(served, known_users):
    user = known_users[0]
    rows = served.get_range("user_spent", [key(user)], None, None)[0]
    start, end = rows[1].timestamp, rows[-2].timestamp
    (ws,) = served.get_on_demand("window_spend", [key(user)], {"start": start, "end": end.isoformat()})
    inside = [r for r in rows if start <= r.timestamp <= end]
    assert ws.rows == len(inside) and ws.max_avg == max(r.avg_spent_7d for r in inside)
    open_ended = served.get_on_demand("window_spend", [key(user)], {"start": None, "end": None})[0]
    assert open_ended.rows == len(rows)
    assert served.get_on_demand("window_spend", [key(user)], {"start": "2030-01-01T00:00:00Z", "end": None}) == [None]


def test_missing_data_is_none_and_keys_keep_order(served, known_users):
    a, b = known_users[:2]
    out = served.get_on_demand("user_stats", [key(b), MISSING, key(a), key(b)])
    assert [o.user_id if o else None for o in out] == [b, None, a, b]
    assert served.get_on_demand("spend_trend", [MISSING], {"n": 2}) == [None]
    assert served.get_on_demand("window_spend", [MISSING], {"start": None, "end": None}) == [None]
    assert served.get_on_demand("user_stats", []) == []


def test_optional_dependency_receives_none_and_key_params_get_the_key(served, known_users):
    none, some = served.get_on_demand("spend_level", [MISSING, key(known_users[0])])
    assert (none.user_id, none.level) == ("999", "none")
    assert some.user_id == known_users[0] and some.level in ("high", "low")


def test_composite_request_key_projects_onto_dependency_keys(served, known_users):
    user = known_users[0]
    stats = served.get_on_demand("user_stats", [key(user)])[0]
    gold, plain, missing = served.get_on_demand(
        "user_offer", [{"user_id": user, "offer": "gold"}, {"user_id": user, "offer": "tin"}, {"user_id": "999", "offer": "gold"}],
        {"boost": 3},
    )
    assert (gold.offer, gold.score) == ("gold", stats.total_spent * 3 * 2)
    assert (plain.offer, plain.score) == ("tin", stats.total_spent * 3)
    assert missing is None


def test_pipeline_target_gives_latest_row(served, known_users):
    (latest,) = served.get_latest("user_spent", [key(known_users[0])])
    assert served.get_on_demand("user_spent", [key(known_users[0])]) == [dataclasses.asdict(latest)]


def test_nothing_materialized_yet_is_none(tmp_path):
    client = volga.Client(data_dir=tmp_path)
    client.register(defs.spend_trend)
    assert client.get_on_demand("spend_trend", [key("1")], {"n": 2}) == [None]


def test_each_read_happens_once_per_request_for_all_keys(tmp_path, served, known_users):
    store = CountingStore(served.online_store)
    client = volga.Client(online_store=store, data_dir=tmp_path)
    client.register(*defs.ON_DEMAND)
    users = [key(u) for u in known_users[:5]]
    # user_stats (latest) feeds spend_trend and user_offer; spend_trend also reads last_n.
    result = client._on_demand.request(
        ["spend_trend", "user_stats", "user_offer"],
        feature_keys={"user_offer": [{"user_id": u["user_id"], "offer": "gold"} for u in users] + [{"user_id": "999", "offer": "x"}]},
        keys=users + users[:2],
        query_args={"n": 2},
    )
    # user_spent is evaluated at request time: its value is read through window_rows
    assert sorted(store.calls) == [("last_n", "user_spent", 5), ("window", "user_spent", 6)]
    assert [r.user_id for r in result["user_stats"]] == [u["user_id"] for u in users + users[:2]]


def test_independent_reads_run_concurrently_on_io_stores(tmp_path, served, known_users):
    store = CountingStore(served.online_store, delay_s=0.2)
    client = volga.Client(online_store=store, data_dir=tmp_path)
    client.register(*defs.ON_DEMAND)
    started = time.perf_counter()
    client._on_demand.request(["spend_trend", "window_spend"], keys=[key(known_users[0])], query_args={"n": 2, "start": None, "end": None})
    elapsed = time.perf_counter() - started
    assert len(store.calls) == 3 and store.max_active >= 2
    assert elapsed < 0.55  # three 0.2 s reads, at least two of them overlapping


# -- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, keys, args, error, field, message",
    [
        ("nope", [key("1")], None, FeatureNotFound, "name", "unknown feature 'nope'"),
        ("user_stats", "1", None, InvalidKeys, "keys", "keys must be a list of objects like {'user_id': ...}"),
        ("user_stats", ["1"], None, InvalidKeys, "keys[0]", "must be an object with ['user_id']"),
        ("user_stats", [{"uid": "1"}], None, InvalidKeys, "keys[0].user_id", "missing ['user_id']; unknown ['uid']"),
        ("user_stats", [{"user_id": "1", "x": 1}], None, InvalidKeys, "keys[0].x", "unknown ['x']"),
        ("user_stats", [{"user_id": 1}], None, InvalidKeys, "keys[0].user_id", "keys[0].user_id must be str, got 1"),
        ("window_spend", [key("1")], None, BadRequest, "args.user_spent.start", "'window_spend' reads user_spent with range, which needs 'start'"),
        ("spend_trend", [key("1")], {"n": 0}, BadRequest, "args.user_spent.n", "n must be a positive int, got 0"),
        ("spend_trend", [key("1")], {"n": 2, "bogus": 1}, BadRequest, "args.bogus", "unknown argument 'bogus'"),
        ("spend_trend", [key("1")], {"n": 2, "spend_trend": {"nope": 1}}, BadRequest, "args.spend_trend.nope", "unknown argument 'nope' for 'spend_trend'"),
        ("spend_trend", [key("1")], {"n": 2, "threshold": "high"}, BadRequest, "args.spend_trend.threshold", "must be float, got 'high'"),
        ("window_spend", [key("1")], {"start": None}, BadRequest, "args.user_spent.end", "needs 'end'"),
        ("window_spend", [key("1")], {"start": "yesterday", "end": None}, BadRequest, "args.user_spent.start", "must be an ISO 8601 datetime"),
        ("window_spend", [key("1")], {"start": "2025-01-02", "end": "2025-01-01"}, BadRequest, "args.user_spent.start", "is after end"),
        ("user_stats", [key("1")], {"n": 3}, BadRequest, "args.n", "the requested features take no arguments"),
    ],
)
def test_bad_input_raises_naming_the_field(served, name, keys, args, error, field, message):
    with pytest.raises(error) as caught:
        served.get_on_demand(name, keys, args)
    assert caught.value.field == field
    assert message in str(caught.value)


def test_error_classes_fit_existing_hierarchy():
    assert issubclass(InvalidKeys, volga.KeyMismatch) and issubclass(FeatureNotFound, volga.UnknownFeature)
    assert issubclass(BadRequest, ValueError)


def test_user_function_errors_name_the_feature(tmp_path, served, known_users):
    @on_demand(dependencies=[user_spent])
    def fragile(spent: UserSpentInfo, divisor: float = 0.0) -> UserStats:
        return UserStats(user_id=spent.user_id, timestamp=spent.timestamp, total_spent=1 / divisor, purchase_count=0)

    @on_demand(dependencies=[user_spent])
    def sloppy(spent: UserSpentInfo) -> Optional[UserStats]:
        return {"user_id": spent.user_id}  # type: ignore[return-value]

    client = volga.Client(online_store=served.online_store, data_dir=tmp_path)
    client.register(fragile, sloppy)
    with pytest.raises(FeatureFunctionError) as caught:
        client.get_on_demand("fragile", [key(known_users[0])])
    assert caught.value.feature == "fragile" and caught.value.exception == "ZeroDivisionError"
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert client.get_on_demand("fragile", [key(known_users[0])], {"divisor": 2})[0].total_spent == 0.5
    assert client.get_on_demand("fragile", [MISSING]) == [None]  # not called without data
    with pytest.raises(FeatureFunctionError, match="sloppy.*returned dict, expected UserStats or None"):
        client.get_on_demand("sloppy", [key(known_users[0])])


def test_replaced_definition_is_picked_up(tmp_path, served, known_users):
    client = volga.Client(online_store=served.online_store, data_dir=tmp_path)

    def make(factor: float):
        @on_demand(dependencies=[user_spent])
        def scaled(spent: UserSpentInfo) -> UserStats:
            return UserStats(user_id=spent.user_id, timestamp=spent.timestamp, total_spent=factor, purchase_count=0)
        return scaled

    client.register(make(1.0))
    assert client.get_on_demand("scaled", [key(known_users[0])])[0].total_spent == 1.0
    client.definitions["scaled"] = make(2.0)  # as re-registering in a notebook does
    assert client.get_on_demand("scaled", [key(known_users[0])])[0].total_spent == 2.0


def test_broken_definitions_are_the_servers_fault(tmp_path):
    from volga.serving import InternalError

    @on_demand(dependencies=["loop_b"])
    def loop_a(b: UserStats) -> UserStats: ...

    @on_demand(dependencies=["loop_a"])
    def loop_b(a: UserStats) -> UserStats: ...

    client = volga.Client(data_dir=tmp_path)
    with pytest.raises(volga.OnDemandDefinitionError, match="dependency cycle"):
        client.register(loop_a, loop_b)
    with pytest.raises(InternalError, match="dependency cycle loop_a -> loop_b -> loop_a") as caught:
        client.get_on_demand("loop_a", [key("1")])
    assert caught.value.status == 500
