"""Client.materialize end to end: modes, params, stores, bad input, worked examples."""

import datetime
import time
from typing import Optional

import polars as pl
import pytest

import volga
from volga import Count, Entity, Sum, entity, field, pipeline, source
from volga.sources import JsonLinesSource, MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


@entity
class Event:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    v: float


@entity
class Counted:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    n: int
    total: float


def counting(rows, name="counts", window="60m", **source_kw):
    @source(Event, **source_kw)
    def events() -> volga.Source:
        return MemorySource(rows)

    def body(e: Entity) -> Entity:
        return e.group_by("k").aggregate([Count(window=window, into="n"), Sum(on="v", window=window, into="total")])

    body.__name__ = name
    return pipeline(dependencies=[events], output=Counted)(body)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_design_worked_example_window(client, mode):
    rows = [{"k": "a", "ts": at(m), "v": 1.0} for m in (0, 30, 60, 61, 121)]
    p = counting(rows)
    client.materialize([p], mode=mode, write_offline=(mode == "online"), batch_size=2)
    out = client.get_offline("counts")
    assert out["n"].to_list() == [1, 2, 3, 3, 2]
    assert out["ts"].dtype == pl.Datetime("us", "UTC")


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_ties_break_by_arrival(client, mode):
    rows = [{"k": "a", "ts": at(5), "v": 1.0}, {"k": "a", "ts": at(5), "v": 10.0}]
    client.materialize([counting(rows)], mode=mode, write_offline=True, batch_size=1)
    assert client.get_offline("counts").select("n", "total").rows() == [(1, 1.0), (2, 11.0)]


@entity
class Tier:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    tier: int


@entity
class Purchase:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float


@entity
class Enriched:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float
    tier: Optional[int]


@pytest.mark.parametrize("mode", ["offline", "online"])
@pytest.mark.parametrize("how, expected", [("left", [None, 1, 1, 2, 2]), ("inner", [1, 1, 2, 2])])
def test_design_worked_example_asof_join(client, mode, how, expected):
    @source(Tier)
    def tiers() -> volga.Source:
        return MemorySource([{"user": "u", "at": at(10), "tier": 1}, {"user": "u", "at": at(20), "tier": 2}])

    @source(Purchase)
    def purchases() -> volga.Source:
        return MemorySource([{"user": "u", "at": at(m), "amount": float(m)} for m in (5, 10, 15, 20, 25)])

    @pipeline(dependencies=[purchases, tiers], output=Enriched)
    def enriched(p: Entity, t: Entity) -> Entity:
        return p.join(t, on=["user"], how=how)

    client.materialize([enriched], mode=mode, write_offline=True, batch_size=1)
    assert client.get_offline("enriched")["tier"].to_list() == expected


def test_offline_rerun_replaces_rows_and_write_online(client):
    rows = [{"k": "a", "ts": at(m), "v": 1.0} for m in range(3)]
    p = counting(rows)
    client.materialize([p], mode="offline")
    client.materialize([p], mode="offline", write_online=True)
    assert client.get_offline("counts").height == 3
    (latest,) = client.get_latest("counts", keys=[{"k": "a"}], as_of="last_event")  # the row written last
    assert isinstance(latest, Counted) and latest.n == 3
    (now,) = client.get_latest("counts", keys=[{"k": "a"}])  # evaluated now: the windows are long past
    assert now.ts == at(2) and now.n == 0
    assert latest.ts == at(2) and latest.ts.tzinfo is not None


def test_offline_mode_does_not_write_online(client):
    client.materialize([counting([{"k": "a", "ts": at(0), "v": 1.0}])], mode="offline")
    assert client.get_latest("counts", keys=[{"k": "a"}]) == [None]


def test_get_offline_time_range(client):
    client.materialize([counting([{"k": "a", "ts": at(m), "v": 1.0} for m in range(10)])])
    assert client.get_offline("counts", start=at(2), end=at(4)).height == 3


def test_online_store_queries(client):
    rows = [{"k": k, "ts": at(m), "v": float(m)} for m in range(6) for k in ("a", "b")]
    client.materialize([counting(rows)], mode="online", batch_size=3)
    a, missing, b = client.get_latest("counts", keys=[{"k": "a"}, {"k": "zz"}, {"k": "b"}], at=at(5))
    assert (a.k, a.n, missing, b.k) == ("a", 6, None, "b")
    last2 = client.get_last_n("counts", keys=[{"k": "a"}], n=2)[0]
    assert [r.ts for r in last2] == [at(4), at(5)]
    ranged = client.get_range("counts", keys=[{"k": "b"}, {"k": "zz"}], start=at(1), end=at(3))
    assert [r.total for r in ranged[0]] == [1.0, 3.0, 6.0] and ranged[1] == []


def test_lookup_errors_name_the_problem(client):
    client.materialize([counting([{"k": "a", "ts": at(0), "v": 1.0}])], mode="online")
    with pytest.raises(volga.UnknownFeature, match=r"unknown feature 'nope'; known pipelines: \['counts'\]"):
        client.get_latest("nope", keys=[{"k": "a"}])
    with pytest.raises(volga.KeyMismatch, match=r"'counts': key #0 must have exactly the key fields \['k'\]; missing \['k'\]; unknown \['key'\]"):
        client.get_latest("counts", keys=[{"key": "a"}])
    with pytest.raises(volga.KeyMismatch, match=r"'counts': key #1 field 'k' must be str, got 7"):
        client.get_latest("counts", keys=[{"k": "a"}, {"k": 7}])
    with pytest.raises(volga.UnknownFeature, match=r"no offline rows for 'counts'"):
        client.get_offline("counts")


def test_params_fill_source_and_pipeline_functions(client):
    seen = []

    @source(Event)
    def ev(online: bool = False, scale: float = 1.0) -> volga.Source:
        seen.append((online, scale))
        return MemorySource([{"k": "a", "ts": at(0), "v": scale}])

    @pipeline(dependencies=[ev], output=Counted)
    def scaled(e: Entity, window: str = "1h") -> Entity:
        return e.group_by("k").aggregate([Count(window=window, into="n"), Sum(on="v", window=window, into="total")])

    client.materialize([scaled], params={"online": True, "ev": {"scale": 3.0}})
    client.materialize([scaled], params={"global": {"scale": 2.0}, "window": "forever"})
    assert seen == [(True, 3.0), (False, 2.0)]
    assert client.get_offline("scaled")["total"].to_list() == [2.0]


def test_pipeline_on_pipeline(client):
    rows = [{"k": "a", "ts": at(m), "v": 1.0} for m in range(4)]
    base = counting(rows, name="base_counts")

    @pipeline(dependencies=[base], output=Counted)
    def big_counts(c: Entity) -> Entity:
        return c.filter(volga.col("n") >= 3)

    client.materialize([big_counts], mode="offline")
    assert client.get_offline("big_counts")["n"].to_list() == [3, 4]


def test_bad_records_are_set_aside_not_fatal(client):
    rows = [
        {"k": "a", "ts": at(0), "v": 1.0},
        {"k": "a", "ts": at(1), "v": "not a number"},
        {"k": None, "ts": at(2), "v": 1.0},
        {"k": "a", "ts": at(3), "v": 2.0},
    ]
    job = client.materialize([counting(rows)], mode="online", write_offline=True, batch_size=1)
    assert client.get_offline("counts")["total"].to_list() == [1.0, 3.0]
    reasons = sorted(r.reason for r in job.rejected)
    assert len(reasons) == 2
    assert any("field 'v'" in r for r in reasons) and any("field 'k'" in r for r in reasons)


def test_row_function_that_raises_sets_the_row_aside(client):
    @source(Event)
    def ev() -> volga.Source:
        return MemorySource([{"k": "a", "ts": at(m), "v": float(m)} for m in range(4)])

    @pipeline(dependencies=[ev], output=Counted)
    def fragile(e: Entity) -> Entity:
        kept = e.filter(lambda r: 1 / r["v"] > 0)  # v == 0 raises ZeroDivisionError
        return kept.group_by("k").aggregate([Count(window="1h", into="n"), Sum(on="v", window="1h", into="total")])

    job = client.materialize([fragile], mode="online", write_offline=True)
    assert client.get_offline("fragile")["n"].to_list() == [1, 2, 3]
    (bad,) = job.rejected
    assert "pipeline fragile" in bad.source and bad.reason.startswith("ZeroDivisionError")
    assert bad.record["v"] == 0.0


def test_late_events_go_to_the_late_sink_only(client):
    rows = [{"k": "a", "ts": at(m), "v": 1.0} for m in (0, 10, 3, 11, 9, 20)]
    p = counting(rows, lateness="2m")
    job = client.materialize([p], mode="online", write_offline=True, batch_size=2)
    assert job.late_events("events")["ts"].to_list() == [at(3)]  # 3 < 10 - 2; 9 >= 11 - 2 is on time
    assert client.get_offline("counts")["ts"].to_list() == [at(0), at(9), at(10), at(11), at(20)]


def test_offline_mode_refuses_unbounded_source(client, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("")

    @source(Event)
    def live() -> volga.Source:
        return JsonLinesSource(path, follow=True)

    @pipeline(dependencies=[live], output=Counted)
    def live_counts(e: Entity) -> Entity:
        return e.group_by("k").aggregate([Count(window="1h", into="n"), Sum(on="v", window="1h", into="total")])

    with pytest.raises(ValueError, match=r"offline mode reads bounded history, but @source live returned an unbounded"):
        client.materialize([live_counts], mode="offline")

    job = client.materialize([live_counts], mode="online", block=False)
    with path.open("a") as f:
        f.write('{"k": "a", "ts": "2024-01-01T00:00:00Z", "v": 2.5}\n')
    deadline = time.time() + 10
    while client.get_latest("live_counts", keys=[{"k": "a"}]) == [None] and time.time() < deadline:
        time.sleep(0.05)
    job.stop()
    assert client.get_latest("live_counts", keys=[{"k": "a"}], as_of="last_event")[0].total == 2.5
    assert not job.running


def test_max_batch_delay_groups_paced_rows(client):
    rows = [{"k": "a", "ts": at(m), "v": 1.0} for m in range(60)]

    @source(Event)
    def paced() -> volga.Source:
        return MemorySource(rows, rate_per_s=400)  # 60 rows over ~150 ms

    @pipeline(dependencies=[paced], output=Counted)
    def paced_counts(e: Entity) -> Entity:
        return e.group_by("k").aggregate([Count(window="forever", into="n"), Sum(on="v", window="1h", into="total")])

    eager = client.materialize([paced_counts], mode="online")
    grouped = client.materialize([paced_counts], mode="online", max_batch_delay="100ms")
    # rows are the same; only how many micro-batches carried them differs
    assert len(grouped.metrics.latency_samples) <= 3 < len(eager.metrics.latency_samples)
    assert client.get_latest("paced_counts", keys=[{"k": "a"}])[0].n == 60


def test_idle_source_stops_holding_the_join_back(client, tmp_path):
    silent = tmp_path / "tiers.jsonl"
    silent.write_text("")

    @source(Tier, idle_timeout="50ms")
    def quiet_tiers() -> volga.Source:
        return JsonLinesSource(silent, follow=True, poll_interval="10ms")

    @source(Purchase)
    def buys() -> volga.Source:
        return MemorySource([{"user": "u", "at": at(m), "amount": 1.0} for m in (1, 2)])

    @pipeline(dependencies=[buys, quiet_tiers], output=Enriched)
    def with_tier(p: Entity, t: Entity) -> Entity:
        return p.join(t, on=["user"], how="left")

    job = client.materialize([with_tier], mode="online", block=False)
    deadline = time.time() + 10
    while client.get_latest("with_tier", keys=[{"user": "u"}]) == [None] and time.time() < deadline:
        time.sleep(0.02)
    job.stop()
    (row,) = client.get_latest("with_tier", keys=[{"user": "u"}])
    assert row is not None and row.at == at(2) and row.tier is None


def test_join_state_snapshot_restore():
    from volga.ops.join import AsOfJoinOp

    captured = {}

    @source(Tier)
    def t() -> volga.Source:
        return MemorySource([])

    @source(Purchase)
    def p() -> volga.Source:
        return MemorySource([])

    @pipeline(dependencies=[p, t], output=Enriched)
    def joined(pp: Entity, tt: Entity) -> Entity:
        out = pp.join(tt, on=["user"])
        captured["node"] = out.node
        return out

    tiers = pl.DataFrame({"user": ["u"], "at": [at(10)], "tier": [1]}).with_columns(pl.col("at").dt.cast_time_unit("us"))
    buys = pl.DataFrame({"user": ["u"], "at": [at(15)], "amount": [2.0]}).with_columns(pl.col("at").dt.cast_time_unit("us"))
    a = AsOfJoinOp(captured["node"])
    a.push(1, tiers)
    a.release(None)
    b = AsOfJoinOp(captured["node"])
    b.restore(a.snapshot())
    b.push(0, buys)
    assert b.release(None)["tier"].to_list() == [1]


def test_newest_event_of_a_live_source_is_served_without_waiting_for_the_next(client, tmp_path):
    """A join needs the right input's watermark past a left row, not the left input's own:
    the latest order is in the store at once, not when some later order arrives."""
    live = tmp_path / "purchases.jsonl"
    live.write_text("")

    @source(Tier)
    def known_tiers() -> volga.Source:
        return MemorySource([{"user": "u", "at": at(0), "tier": 3}])

    @source(Purchase)
    def live_buys() -> volga.Source:
        return JsonLinesSource(live, follow=True, poll_interval="10ms")

    @pipeline(dependencies=[live_buys, known_tiers], output=Enriched)
    def live_tiered(p: Entity, t: Entity) -> Entity:
        return p.join(t, on=["user"], how="left")

    job = client.materialize([live_tiered], mode="online", block=False)
    with live.open("a") as f:
        f.write('{"user": "u", "at": "2024-01-01T00:05:00Z", "amount": 9.5}\n')
    deadline = time.time() + 10
    while client.get_latest("live_tiered", keys=[{"user": "u"}]) == [None] and time.time() < deadline:
        time.sleep(0.02)
    job.stop()
    (row,) = client.get_latest("live_tiered", keys=[{"user": "u"}])
    assert row is not None and row.amount == 9.5 and row.tier == 3
