"""A window's late sink gets every row that the window never counted because it came too
late: rows its source set aside (past the watermark), after the stateless steps between
the source and the window, in the window's input shape."""

from __future__ import annotations

import datetime

import pytest
from stream_runs import Run

from volga import Count
from volga.stream import HoppingWindow, ListSink, TumblingWindow

UTC = datetime.timezone.utc


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(seconds=seconds)


# on Ray the sources and windows run in actors; the driver writes the late sinks at the end
RUNS = [Run("streaming", 1), Run("streaming", 2), Run("streaming", 1, ray=1), Run("streaming", 2, ray=2)]


@pytest.mark.parametrize("run", RUNS, ids=str)
def test_rows_late_at_the_source_reach_the_windows_late_sink(run: Run) -> None:
    ctx = run.context()
    out, late, source_late = ListSink(), ListSink(), ListSink()
    rows = [{"k": "a", "t": 1}, {"k": "a", "t": 61}, {"k": "a", "t": 5}, {"k": "b", "t": 62}, {"k": "b", "t": 59}, {"k": "a", "t": 130}]
    (ctx.from_collection(rows).timestamp_assigner(lambda r: r["t"]).with_lateness("0s", late_sink=source_late)
        .map(lambda r: {**r, "t2": r["t"] * 2}, schema={"k": str, "t": int, "t2": int})
        .filter(lambda r: r["k"] != "zzz")
        .key_by("k").window(TumblingWindow("60s"), late_sink=late).aggregate([Count(into="n")]).sink(out))
    job = run.execute(ctx)
    assert sorted((r["k"], r["t"], r["t2"]) for r in late.items) == [("a", 5, 10), ("b", 59, 118)]
    assert [r["t"] for r in source_late.items] == [5, 59]  # the source's own late sink, as before
    assert job.late_events("collection_1")["t"].to_list() == [5, 59]
    assert [(r["k"], r["window_start"], r["n"]) for r in out.items] == [
        ("a", at(0), 1), ("a", at(60), 1), ("b", at(60), 1), ("a", at(120), 1),
    ]


@pytest.mark.parametrize("run", [Run("streaming", 1), Run("streaming", 1, ray=2)], ids=str)
def test_hopping_window_late_sink_without_a_source_late_sink(run: Run) -> None:
    ctx = run.context()
    late = ListSink()
    (ctx.from_collection([10, 50, 20, 51]).timestamp_assigner(lambda t: t).key_by(lambda t: "all")
        .window(HoppingWindow("20s", "10s"), late_sink=late).aggregate([Count(into="n")]).sink(ListSink()))
    run.execute(ctx)
    assert late.items == [20]
