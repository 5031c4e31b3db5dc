"""Every DataStream operator, in batch and streaming mode (tiny micro-batches), with the
results written out as data. Event times are seconds unless said otherwise."""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import time

import polars as pl
import pytest
from stream_runs import ALL_RUNS, BIG_RUNS, Run

from volga import Avg, Count, First, Last, Max, Min, Sum, entity, field
from volga.sources import MemorySource, Source, SourceReader
from volga.stream import (
    HoppingWindow,
    ListSink,
    SlidingWindow,
    StreamingContext,
    TumblingWindow,
)

UTC = datetime.timezone.utc


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(seconds=seconds)


def events(ctx: StreamingContext, rows: list[dict], **kw) -> object:
    return ctx.from_collection(rows, **kw).timestamp_assigner(lambda r: r["t"])


class GatedSource(Source):
    """``first`` at once, then nothing (idle, given an ``idle_timeout``) until the file ``gate``
    exists, then ``rest``; then the source ends. The test opens the gate once it has seen
    what the job did meanwhile, so no timing decides the outcome."""

    def __init__(self, first: list[dict], rest: list[dict], gate: str) -> None:
        self.first, self.rest, self.gate = first, rest, gate

    def open(self, schema, *, name: str, mode=None) -> SourceReader:
        return _GatedReader(MemorySource(self.first).open(schema, name=name), MemorySource(self.rest).open(schema, name=name), self.gate)


class _GatedReader(SourceReader):
    def __init__(self, first: SourceReader, rest: SourceReader, gate: str) -> None:
        super().__init__()
        self.first, self.rest, self.gate, self.opened = first, rest, gate, False

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        if not self.first.finished:
            return self.first.poll(max_rows)
        self.opened = self.opened or os.path.exists(self.gate)
        return self.rest.poll(max_rows) if self.opened else None

    @property
    def finished(self) -> bool:
        return self.opened and self.rest.finished


@entity
class Tick:
    sym: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    px: float


def tick_rows(*seconds: int) -> list[dict]:
    return [{"sym": "a", "at": at(s), "px": float(s)} for s in seconds]


def wait_for(sink: ListSink, n: int, job) -> None:
    deadline = time.time() + 20
    while len(sink) < n and job.running and time.time() < deadline:
        time.sleep(0.005)


# -- word count ------------------------------------------------------------------------


@pytest.mark.parametrize("run", BIG_RUNS, ids=str)
def test_word_count_rows_exact(run: Run) -> None:
    rng = random.Random(7)
    vocab = [f"w{i:04d}" for i in range(200)]
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 8))) for _ in range(1500)]
    expected = collections.Counter(w for line in lines for w in line.split())
    ctx = run.context()
    out = ListSink()
    (ctx.from_collection(lines).flat_map(str.split).map(lambda w: (w, 1))
        .key_by(lambda kv: kv[0]).reduce(lambda a, b: (a[0], a[1] + b[1])).sink(out))
    run.execute(ctx)
    assert len(out.items) == sum(expected.values())  # a rolling count per word
    assert dict(out.items) == dict(expected)  # the last count of each word is exact


@pytest.mark.parametrize("run", BIG_RUNS, ids=str)
def test_word_count_columnar_exact(run: Run) -> None:
    rng = random.Random(8)
    words = [f"w{rng.randrange(300):04d}" for _ in range(5000)]
    ctx = run.context()
    out = ListSink()
    ctx.from_collection(words).key_by("value").aggregate([Count(into="n")]).sink(out)
    run.execute(ctx)
    frame = out.frame()
    assert frame.height == len(words)
    final = frame.group_by("value").agg(pl.col("n").max())
    assert dict(final.iter_rows()) == dict(collections.Counter(words))


# -- stateless -------------------------------------------------------------------------


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_map_flat_map_filter_rows_and_exprs(run: Run) -> None:
    ctx = run.context()
    rows = ListSink()
    exprs = ListSink()
    nums = ctx.from_collection(list(range(10)))
    nums.filter(lambda x: x % 2 == 0).map(lambda x: x * 10).flat_map(lambda x: [x, x + 1]).sink(rows)
    nums.filter(pl.col("value") % 2 == 0).map(pl.col("value") * 10).sink(exprs)
    run.execute(ctx)
    assert rows.items == [0, 1, 20, 21, 40, 41, 60, 61, 80, 81]
    assert exprs.items == [0, 20, 40, 60, 80]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_records_map_with_schema_map_batches_with_columns_select(run: Run) -> None:
    ctx = run.context()
    a, b, c = ListSink(), ListSink(), ListSink()
    orders = ctx.from_collection([{"user": "u1", "price": 2.0}, {"user": "u2", "price": 5.0}, {"user": "u1", "price": 1.0}])
    orders.map(lambda r: {"user": r["user"].upper(), "double": r["price"] * 2}, schema={"user": str, "double": float}).sink(a)
    orders.map_batches(lambda df: df.with_columns(pl.col("price") + 1)).filter(pl.col("price") > 2.5).sink(b)
    orders.with_columns((pl.col("price") * 100).cast(pl.Int64).alias("cents")).select("user", "cents").sink(c)
    run.execute(ctx)
    assert a.items == [{"user": "U1", "double": 4.0}, {"user": "U2", "double": 10.0}, {"user": "U1", "double": 2.0}]
    assert b.items == [{"user": "u1", "price": 3.0}, {"user": "u2", "price": 6.0}]
    assert c.items == [{"user": "u1", "cents": 200}, {"user": "u2", "cents": 500}, {"user": "u1", "cents": 100}]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_row_function_errors_are_set_aside_not_fatal(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    ctx.from_collection([1, 0, 2]).map(lambda x: 10 // x).sink(out)
    job = run.execute(ctx)
    assert out.items == [10, 5]
    (rejected,) = job.rejected
    assert "ZeroDivisionError" in rejected.reason and rejected.record == {"value": 0}


# -- keyed state -----------------------------------------------------------------------


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_reduce_on_records_keyed_by_column(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    rows = [{"user": "a", "amount": 1}, {"user": "b", "amount": 5}, {"user": "a", "amount": 2}]
    ctx.from_collection(rows).key_by("user").reduce(lambda x, y: {"user": x["user"], "amount": x["amount"] + y["amount"]}).sink(out)
    run.execute(ctx)
    assert out.items == [{"user": "a", "amount": 1}, {"user": "b", "amount": 5}, {"user": "a", "amount": 3}]


WORKED = [0, 30, 60, 61, 121]  # DESIGN.md, minutes, one key


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_aggregate_per_event_matches_design_example(run: Run) -> None:
    ctx = run.context()
    out, sliding = ListSink(), ListSink()
    stream = events(ctx, [{"k": "x", "t": m * 60, "v": float(m)} for m in WORKED]).key_by("k")
    stream.aggregate([Count(window="60m", into="n"), Sum(on="v", into="total"), Max(on="v", window="60m", into="top")]).sink(out)
    stream.window(SlidingWindow("60m")).aggregate([Count(into="n"), Avg(on="v", into="avg")]).sink(sliding)
    run.execute(ctx)
    assert [r["n"] for r in out.items] == [1, 2, 3, 3, 2]
    assert [r["total"] for r in out.items] == [0.0, 30.0, 90.0, 151.0, 272.0]
    assert [r["top"] for r in out.items] == [0.0, 30.0, 60.0, 61.0, 121.0]
    assert [r["n"] for r in sliding.items] == [1, 2, 3, 3, 2]
    assert [r["avg"] for r in sliding.items] == [0.0, 15.0, 30.0, (30 + 60 + 61) / 3, 91.0]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_aggregate_on_value_stream_keyed_by_function(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    ctx.from_collection([3, 4, 5, 6]).key_by(lambda x: x % 2).aggregate([Count(into="n"), Sum(on="value", into="s")]).sink(out)
    run.execute(ctx)
    assert [(r["key"], r["n"], r["s"]) for r in out.items] == [(1, 1, 3.0), (0, 1, 4.0), (1, 2, 8.0), (0, 2, 10.0)]


# -- tumbling / hopping windows --------------------------------------------------------

# key a: 1, 4, 9, 10, 14 ; key b: 2, 11  (10 s tumbling windows)
TICKS = [("a", 1), ("b", 2), ("a", 4), ("a", 9), ("a", 10), ("b", 11), ("a", 14)]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_tumbling_window_aggregate(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    rows = [{"k": k, "t": t, "v": t} for k, t in TICKS]
    (events(ctx, rows).key_by("k").window(TumblingWindow("10s"))
        .aggregate([Count(into="n"), Sum(on="v", into="s"), First(on="v", into="first"), Last(on="v", into="last")]).sink(out))
    run.execute(ctx)
    got = [(r["k"], r["window_start"], r["window_end"], r["n"], r["s"], r["first"], r["last"]) for r in out.items]
    assert got == [
        ("a", at(0), at(10), 3, 14, 1, 9),
        ("b", at(0), at(10), 1, 2, 2, 2),
        ("a", at(10), at(20), 2, 24, 10, 14),
        ("b", at(10), at(20), 1, 11, 11, 11),
    ]
    assert out.frame()["__ts"].to_list() == [at(10) - datetime.timedelta(microseconds=1)] * 2 + [at(20) - datetime.timedelta(microseconds=1)] * 2


def test_tumbling_window_emits_when_the_watermark_passes_its_end() -> None:
    ctx = StreamingContext(batch_size=1)
    seen: list[tuple[int, int]] = []  # (number of input rows read when emitted, window count)
    polled = {"n": 0}

    def count_input(x: dict) -> bool:
        polled["n"] += 1
        return True

    rows = [{"k": "a", "t": t} for t in (1, 5, 9, 10, 12, 25)]
    (events(ctx, rows).filter(count_input).key_by("k").window(TumblingWindow("10s")).aggregate([Count(into="n")])
        .sink(lambda r: seen.append((polled["n"], r["n"]))))
    ctx.execute()
    # [0,10) closes when t=10 arrives (5th.. no: 4th row); [10,20) when t=25 arrives; nothing waits for the end
    assert seen == [(4, 3), (6, 2), (6, 1)]


@pytest.mark.parametrize("run", [Run("streaming", 1), Run("streaming", 1, ray=1), Run("streaming", 1, ray=2)], ids=str)
def test_tumbling_window_emits_mid_stream_once_an_event_passes_its_end(run: Run, tmp_path) -> None:
    # The same as above without a counter in this process (an actor could not update it):
    # the source stops after t=12 until the gate opens. [0, 10) is out by then (t=10 passed
    # its end); [10, 20) is not (the watermark is 12), and the job is still running.
    gate = str(tmp_path / "gate")
    ctx = run.context()
    out = ListSink()
    source = GatedSource(tick_rows(1, 5, 9, 10, 12), tick_rows(25), gate)
    ctx.from_source(source, Tick).window(TumblingWindow("10s")).aggregate([Count(into="n")]).sink(out)
    job = ctx.submit()
    wait_for(out, 1, job)
    time.sleep(0.05)  # room for a wrong early [10, 20) to show up
    assert [(r["window_start"], r["n"]) for r in out.items] == [(at(0), 3)] and job.running
    open(gate, "w").close()
    job.wait(timeout=30)
    assert [(r["window_start"], r["n"]) for r in out.items] == [(at(0), 3), (at(10), 2), (at(20), 1)]


@pytest.mark.parametrize("run", [Run("streaming", 2), Run("streaming", 2, ray=2)], ids=str)
def test_late_events_go_to_the_late_sink_and_nowhere_else(run: Run) -> None:
    ctx = run.context()
    out, late = ListSink(), ListSink()
    ts = [1, 3, 2, 12, 4, 13, 9, 30]  # lateness 5s: 4 is late after 12 (wm 7); 9 is not late? wm after 13 is 8 -> 9 ok
    rows = [{"k": "a", "t": t} for t in ts]
    (events(ctx, rows).with_lateness("5s", late_sink=late).key_by("k")
        .window(TumblingWindow("10s")).aggregate([Count(into="n"), Min(on="t", into="lo")]).sink(out))
    job = ctx.execute()
    assert [r["t"] for r in late.items] == [4]
    assert job.late_events("collection_1")["t"].to_list() == [4]
    assert [(r["window_start"], r["n"], r["lo"]) for r in out.items] == [(at(0), 4, 1), (at(10), 2, 12), (at(30), 1, 30)]


@pytest.mark.parametrize("run", [Run("streaming", 2), Run("streaming", 2, ray=1), Run("streaming", 2, ray=2)], ids=str)
@pytest.mark.parametrize("other_ends", [False, True], ids=["other-waits", "other-ends"])
def test_window_late_rows_go_to_the_windows_late_sink(run: Run, other_ends: bool, tmp_path) -> None:
    # quiet: t=3, then idle (50ms) until the gate opens, then t=7 and the end.
    # busy: t=1, 12, 25 at once; then it waits for the gate too (watermark 25) or ends at once.
    # While quiet is idle the union's watermark is busy's alone: the windows ending by then
    # are emitted, so t=7 comes after its window [0, 10) went out: late, to the window's
    # late sink only (the source has no lateness problem: t=7 is its newest row).
    gate = str(tmp_path / "gate")
    ctx = run.context()
    out, late = ListSink(), ListSink()
    quiet = ctx.from_source(GatedSource(tick_rows(3), tick_rows(7), gate), Tick, name="quiet", idle_timeout="50ms")
    busy = ctx.from_source(GatedSource(tick_rows(1, 12, 25), [], gate) if not other_ends else MemorySource(tick_rows(1, 12, 25)), Tick, name="busy")
    (quiet.union(busy).key_by("sym").window(TumblingWindow("10s"), late_sink=late)
        .aggregate([Count(into="n"), Sum(on="px", into="s")]).sink(out))
    job = ctx.submit()
    before = [("a", at(0), 2, 4.0), ("a", at(10), 1, 12.0)] + ([("a", at(20), 1, 25.0)] if other_ends else [])
    wait_for(out, len(before), job)
    assert [(r["sym"], r["window_start"], r["n"], r["s"]) for r in out.items] == before
    open(gate, "w").close()
    job.wait(timeout=30)
    assert not job.running
    assert late.items == [{"sym": "a", "at": at(7), "px": 7.0}]
    assert job.late_events("quiet").height == 0
    got = [(r["sym"], r["window_start"], r["n"], r["s"]) for r in out.items]
    assert got == [("a", at(0), 2, 4.0), ("a", at(10), 1, 12.0), ("a", at(20), 1, 25.0)]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_hopping_window(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    rows = [{"k": "a", "t": t} for t in (1, 6, 11, 16)]
    events(ctx, rows).key_by("k").window(HoppingWindow("10s", "5s")).aggregate([Count(into="n")]).sink(out)
    run.execute(ctx)
    got = [(r["window_start"], r["n"]) for r in out.items]
    assert got == [(at(-5), 1), (at(0), 2), (at(5), 2), (at(10), 2), (at(15), 1)]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_window_reduce(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    events(ctx, [{"k": "a", "t": t, "w": str(t)} for t in (1, 2, 11)]).map(lambda r: r["w"]).key_by(lambda w: "all") \
        .window(TumblingWindow("10s")).reduce(lambda x, y: x + "," + y).sink(out)
    with pytest.raises(ValueError, match="timestamp_assigner right after"):
        ctx.from_collection([1]).key_by(lambda x: x).reduce(max).timestamp_assigner(lambda x: x)
    run.execute(ctx)
    assert out.items == ["1,2", "11"]


def test_window_specs_validate() -> None:
    with pytest.raises(ValueError, match="can't be longer than size"):
        HoppingWindow("5s", "10s")
    with pytest.raises(ValueError, match="not a duration"):
        TumblingWindow("ten seconds")


# -- union and joins -------------------------------------------------------------------


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_union_orders_by_time_then_argument_order(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    left = events(ctx, [{"src": "L", "t": t} for t in (1, 2, 2, 5)])
    right = events(ctx, [{"src": "R", "t": t} for t in (0, 2, 4, 5, 6)])
    left.union(right).sink(out)
    run.execute(ctx)
    assert [(r["src"], r["t"]) for r in out.items] == [
        ("R", 0), ("L", 1), ("L", 2), ("L", 2), ("R", 2), ("R", 4), ("L", 5), ("R", 5), ("R", 6)
    ]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_asof_join_matches_design_example(run: Run) -> None:
    ctx = run.context()
    inner, left_out = ListSink(), ListSink()
    users = events(ctx, [{"user": "u", "t": 10, "tier": 1}, {"user": "u", "t": 20, "tier": 2}]).key_by("user")
    orders = events(ctx, [{"buyer": "u", "t": t} for t in (5, 10, 15, 20, 25)]).key_by("buyer")
    orders.join(users, how="left").sink(left_out)
    orders.join(users, how="inner").sink(inner)
    run.execute(ctx)
    assert [(r["t"], r["tier"]) for r in left_out.items] == [(5, None), (10, 1), (15, 1), (20, 2), (25, 2)]
    assert [(r["t"], r["tier"], r["t_right"]) for r in inner.items] == [(10, 1, 10), (15, 1, 10), (20, 2, 20), (25, 2, 20)]


@pytest.mark.parametrize("run", ALL_RUNS, ids=str)
def test_interval_join_on_value_streams(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    clicks = ctx.from_collection([("u1", 10), ("u2", 11), ("u1", 30)]).timestamp_assigner(lambda e: e[1]).key_by(lambda e: e[0])
    views = ctx.from_collection([("u1", 8), ("u1", 14), ("u2", 20), ("u1", 26)]).timestamp_assigner(lambda e: e[1]).key_by(lambda e: e[0])
    clicks.join(views, kind="interval", how="inner", between=("-5s", "5s")).sink(out)
    run.execute(ctx)
    assert out.items == [(("u1", 10), ("u1", 8)), (("u1", 10), ("u1", 14)), (("u1", 30), ("u1", 26))]


def test_join_and_union_definition_errors() -> None:
    ctx = StreamingContext()
    a = ctx.from_collection([{"k": "x", "v": 1}])
    with pytest.raises(ValueError, match="same way"):
        a.key_by("k").join(a.key_by(lambda r: r["k"]))
    with pytest.raises(ValueError, match="interval join needs between"):
        a.key_by("k").join(a.key_by("k"), kind="interval", how="inner")
    with pytest.raises(ValueError, match="same columns"):
        a.union(ctx.from_collection([1]))
    with pytest.raises(TypeError, match="needs a typed column"):
        ctx.from_collection([object()]).key_by(lambda x: 1).aggregate([First(on="value", into="f")])


# -- parallelism, sinks, sources -------------------------------------------------------


@pytest.mark.parametrize("run", [Run("batch", 7), Run("streaming", 7), Run("batch", 7, ray=1), Run("streaming", 7, ray=2)], ids=str)
def test_set_parallelism_shows_in_the_plan_and_keeps_results(run: Run) -> None:
    words = [f"w{i % 5}" for i in range(50)]
    results = []
    for n in (1, 2):
        ctx = run.context()
        out = ListSink()
        ctx.from_collection(words).key_by(lambda w: w).reduce(lambda a, b: a + "!").set_parallelism(n).sink(out)
        if n == 2:
            assert "reduce(<lambda>) [x2]" in ctx.explain()
        run.execute(ctx)
        results.append(out.items)
    seen: collections.Counter = collections.Counter()
    expected = []
    for w in words:  # one rolling value per word: the word, then a "!" more each time it comes again
        expected.append(w + "!" * seen[w])
        seen[w] += 1
    assert results[0] == results[1] == expected


@pytest.mark.parametrize("run", [Run("batch"), Run("streaming", 2), Run("batch", ray=1), Run("streaming", 2, ray=2)], ids=str)
def test_sinks_print_file_store(run: Run, tmp_path, capsys) -> None:
    from volga import MemoryOnlineStore

    ctx = run.context()  # on Ray too, the sinks run in this process (the driver)
    store = MemoryOnlineStore()
    rows = ctx.from_collection([{"user": "a", "t": 1, "n": 1}, {"user": "b", "t": 2, "n": 2}, {"user": "a", "t": 3, "n": 5}])
    rows = rows.timestamp_assigner("t")
    rows.map(lambda r: r["user"]).sink(print)
    rows.sink(tmp_path / "out.jsonl")
    rows.sink(tmp_path / "out.parquet")
    rows.key_by("user").sink(store, name="users")
    run.execute(ctx)
    assert capsys.readouterr().out.split() == ["a", "b", "a"]
    assert [json.loads(line)["n"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [1, 2, 5]
    assert pl.read_parquet(tmp_path / "out.parquet")["n"].to_list() == [1, 2, 5]
    from volga.stream.nodes import make_schema

    latest = store.get_latest("users", pl.DataFrame({"user": ["a", "b"]}))
    assert latest["n"].to_list() == [5, 2]
    assert make_schema  # schema helper importable for custom sinks


@pytest.mark.parametrize("run", [Run("batch"), Run("streaming", 1), Run("batch", ray=1), Run("streaming", 1, ray=2)], ids=str)
def test_sources_text_file_connector_source_def_and_periodic(run: Run, tmp_path) -> None:
    from volga import entity, field, source
    from volga.sources import MemorySource

    @entity
    class Tick:
        sym: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        px: float

    @source(Tick, lateness="1s")
    def ticks():
        return MemorySource([{"sym": "A", "at": at(1), "px": 1.0}, {"sym": "A", "at": at(2), "px": 3.0}])

    path = tmp_path / "lines.txt"
    path.write_text("x y\nz\n")
    ctx = run.context()
    words, sums, direct, periodic = ListSink(), ListSink(), ListSink(), ListSink()
    ctx.read_text_file(path).flat_map(str.split).sink(words)
    ctx.from_source(ticks).aggregate([Sum(on="px", into="total")]).sink(sums)
    ctx.from_source(MemorySource([{"sym": "B", "at": at(5), "px": 2.0}]), Tick).sink(direct)
    ctx.from_periodic_collection([1, 2, 3], "5ms").sink(periodic)
    job = run.execute(ctx)
    assert words.items == ["x", "y", "z"]
    assert [r["total"] for r in sums.items] == [1.0, 4.0]
    assert direct.items == [{"sym": "B", "at": at(5), "px": 2.0}]
    assert periodic.items == [1, 2, 3]
    assert job.metrics.rows_in["ticks"] == 2


@pytest.mark.parametrize("run", [Run("streaming"), Run("streaming", 10_000, ray=2)], ids=str)
def test_submit_unbounded_then_stop(run: Run) -> None:
    ctx = run.context()
    out = ListSink()
    ctx.from_periodic_collection(["a", "b"], "1ms", repeat=True).key_by(lambda w: w).reduce(lambda x, y: x).sink(out)
    job = ctx.submit()
    import time

    deadline = time.time() + 10
    while len(out) < 20 and time.time() < deadline:
        time.sleep(0.01)
    job.stop()
    assert not job.running and len(out) >= 20 and set(out.items) == {"a", "b"}


@pytest.mark.parametrize("run", [Run("streaming", 2), Run("streaming", 2, ray=2), Run("batch", ray=2)], ids=str)
def test_windows_closing_together_keep_first_arrival_order_out_of_order_input(run: Run) -> None:
    # b's first row arrives first but has the later event time: a's window comes out first
    rows = [{"k": "b", "t": 4}, {"k": "c", "t": 6}, {"k": "a", "t": 3}, {"k": "c", "t": 2}, {"k": "a", "t": 12}, {"k": "b", "t": 30}]
    ctx, out = run.context(), ListSink()
    events(ctx, rows).with_lateness("5s").key_by("k").window(TumblingWindow("10s")).aggregate([Count(into="n")]).sink(out)
    run.execute(ctx)
    assert [(r["k"], r["window_start"], r["n"]) for r in out.items] == [
        ("c", at(0), 2), ("a", at(0), 1), ("b", at(0), 1), ("a", at(10), 1), ("b", at(30), 1)
    ]


@pytest.mark.parametrize("run", [Run("streaming", 7, ray=1)], ids=str)
def test_set_parallelism_sets_the_keyed_stage_actors_on_ray(run: Run) -> None:
    words = [f"w{i % 5}" for i in range(50)]
    embedded, out = StreamingContext(batch_size=7), ListSink()
    embedded.from_collection(words).key_by(lambda w: w).reduce(lambda a, b: a + "!").set_parallelism(2).sink(out)
    embedded.execute()
    ctx, ray_out = run.context(), ListSink()  # the runtime's default: 1 actor per keyed stage
    ctx.from_collection(words).key_by(lambda w: w).reduce(lambda a, b: a + "!").set_parallelism(2).sink(ray_out)
    job = ctx.execute()
    assert "(keyed by ['__key'], x2)" in job.job.explain()
    assert ray_out.items == out.items


def test_stream_plans_split_into_ray_stages() -> None:
    from volga.runtime.ray.topology import split_plan

    ctx = StreamingContext()
    a = events(ctx, [{"k": "x", "t": 1}]).key_by("k")
    b = events(ctx, [{"k": "x", "t": 2}]).key_by("k")
    a.union(b).key_by("k").window(TumblingWindow("10s")).aggregate([Count(into="n")]).sink(ListSink())
    a.join(b, how="left").sink(ListSink())
    topology = split_plan(ctx.compile().plan, 2)
    kinds = [(s.kind, s.parallelism, s.partition) for s in topology.stages]
    # two sources; the union merges on one actor; the window and the join are keyed by "k"
    assert kinds == [("source", 1, None), ("source", 1, None), ("keyed", 1, None), ("keyed", 2, ("k",)), ("keyed", 2, ("k",))]


@pytest.mark.parametrize("run", [Run("streaming", 2), Run("batch"), Run("streaming", 2, ray=1)], ids=str)
def test_a_plain_list_is_a_sink(run: Run) -> None:
    ctx = run.context()
    out: list = []
    ctx.from_collection(["a b", "c"]).flat_map(str.split).map(str.upper).sink(out)
    run.execute(ctx)
    assert out == ["A", "B", "C"]


def test_window_shorthands() -> None:
    rows = [{"k": "a", "t": t} for t in (1, 5, 12, 13, 25)]
    results = []
    for spec, kw in [(TumblingWindow("10s"), {}), ("10s", {}), (None, {"size": "10s"}),
                     (HoppingWindow("10s", "5s"), {}), ("10s", {"slide": "5s"}), (None, {"size": "10s", "slide": "5s"})]:
        ctx = StreamingContext()
        out = ListSink()
        events(ctx, rows).key_by("k").window(spec, **kw).aggregate([Count(into="n")]).sink(out)
        ctx.execute()
        results.append([(r["window_start"], r["n"]) for r in out.items])
    assert results[0] == results[1] == results[2] == [(at(0), 2), (at(10), 2), (at(20), 1)]
    assert results[3] == results[4] == results[5] == [(at(-5), 1), (at(0), 2), (at(5), 3), (at(10), 2), (at(20), 1), (at(25), 1)]
    with pytest.raises(TypeError, match="not both"):
        StreamingContext().from_collection(rows).key_by("k").window("10s", size="10s")
