"""The row path (one generated loop per run of callables, ``key_by(fn) -> reduce`` fused
into it on the embedded runtime) against a plain-Python reference that processes one
element at a time. Functions raise on some inputs: those elements are set aside, the
rest come out exactly as the reference says, in the same order."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from unittest import mock

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from volga.stream import ListSink, StreamingContext
from volga.stream.ops import FusedKeyedReduce, KeyedReduceOp
from volga.stream.plan import compile_stream

MAPS: list[Callable[[int], Any]] = [lambda x: x + 3, lambda x: x * 2 - 5, lambda x: 60 // (x % 7)]
FILTERS: list[Callable[[int], Any]] = [lambda x: x % 3, lambda x: x > 10, lambda x: 1 // (x % 5) + 1]
FLAT_MAPS: list[Callable[[int], Any]] = [lambda x: [x, x + 1], lambda x: [] if x % 2 else [x], lambda x: [x] * (4 // (x % 4))]
KEYS: list[Callable[[int], Any]] = [lambda x: x % 4, lambda x: str(x % 3), lambda x: 10 // (x % 6)]
REDUCES: list[Callable[[int, int], Any]] = [lambda a, b: a + b, lambda a, b: max(a, b) - 1, lambda a, b: a + 100 // (b % 9)]

step = st.one_of(
    st.tuples(st.just("map"), st.integers(0, len(MAPS) - 1)),
    st.tuples(st.just("filter"), st.integers(0, len(FILTERS) - 1)),
    st.tuples(st.just("flat_map"), st.integers(0, len(FLAT_MAPS) - 1)),
)
FNS = {"map": MAPS, "filter": FILTERS, "flat_map": FLAT_MAPS}


def reference(values: list[int], pre: list[tuple[str, int]], key: int, between: list[int], reduce: int | None) -> tuple[list[Any], int]:
    out: list[Any] = []
    state: dict[Any, Any] = {}
    rejected = 0
    for value in values:
        elements = [value]
        for kind, i in pre:
            fn = FNS[kind][i]
            following: list[Any] = []
            for x in elements:
                try:
                    if kind == "map":
                        following.append(fn(x))
                    elif kind == "filter":
                        if fn(x):
                            following.append(x)
                    else:
                        following.extend(fn(x))
                except Exception:
                    rejected += 1
            elements = following
        for x in elements:
            try:
                k = KEYS[key](x)
                if not all(FILTERS[i](x) for i in between):
                    continue
                if reduce is not None:
                    x = x if k not in state else REDUCES[reduce](state[k], x)
                    state[k] = x
            except Exception:
                rejected += 1
                continue
            out.append((k, x))
    return out, rejected


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-30, 60), max_size=40),
    pre=st.lists(step, max_size=4),
    key=st.integers(0, len(KEYS) - 1),
    between=st.lists(st.integers(0, len(FILTERS) - 1), max_size=1),
    reduce=st.one_of(st.none(), st.integers(0, len(REDUCES) - 1)),
    batch_size=st.sampled_from([1, 3, 1000]),
    fuse=st.booleans(),
)
def test_row_steps_and_reduce_match_element_at_a_time_reference(
    values: list[int], pre: list[tuple[str, int]], key: int, between: list[int], reduce: int | None, batch_size: int, fuse: bool
) -> None:
    ctx = StreamingContext(batch_size=batch_size)
    stream: Any = ctx.from_collection(pl.DataFrame({"value": values}, schema={"value": pl.Int64}))
    for kind, i in pre:
        stream = getattr(stream, kind)(FNS[kind][i])
    stream = stream.key_by(KEYS[key])
    for i in between:
        stream = stream.filter(FILTERS[i])
    if reduce is not None:
        stream = stream.reduce(REDUCES[reduce])
    out = ListSink()
    stream.sink(out)
    # fuse=False: the plan a Ray run gets (row steps, then the reduce after the key exchange)
    with mock.patch("volga.stream.context.compile_stream", functools.partial(compile_stream, fuse_keyed=fuse)):
        job = ctx.execute()
    expected, rejected = reference(values, pre, key, between, reduce)
    frame = out.frame()
    got = list(zip(frame["__key"].to_list(), frame["value"].to_list())) if frame.height else []
    assert got == expected
    assert len(job.rejected) == rejected


def test_reduce_after_key_by_fn_is_fused_on_the_embedded_runtime_only() -> None:
    ctx = StreamingContext()
    ctx.from_collection(["a b", "b"]).flat_map(str.split).map(lambda w: (w, 1)).key_by(lambda kv: kv[0]).reduce(
        lambda a, b: (a[0], a[1] + b[1])
    ).sink(ListSink())
    fused = ctx.compile().plan.steps
    assert [s.kind for s in fused] == ["source", "window"] and isinstance(fused[1].spec.build(), FusedKeyedReduce)
    assert "flat_map(split) -> map(<lambda>) -> key_by(<lambda>) -> reduce(<lambda>)" in ctx.explain()
    separate = compile_stream(list(ctx._sinks), fuse_keyed=False).plan.steps  # what a Ray run gets: keys are exchanged
    assert [s.kind for s in separate] == ["source", "chain", "window"] and isinstance(separate[2].spec.build(), KeyedReduceOp)


def test_fused_reduce_on_records_names_the_failing_step() -> None:
    ctx = StreamingContext(batch_size=2)
    rows = [{"user": "a", "n": 1}, {"user": "b", "n": 0}, {"user": "a", "n": 4}, {"user": None, "n": 2}]
    out = ListSink()
    (ctx.from_collection(rows).filter(lambda r: 8 // r["n"]).key_by(lambda r: r["user"].upper())
        .reduce(lambda a, b: {"user": a["user"], "n": a["n"] + b["n"]}).sink(out))
    job = ctx.execute()
    assert out.items == [{"user": "a", "n": 1}, {"user": "a", "n": 5}]
    assert sorted((r.source, r.reason.split(":")[0], r.record["n"]) for r in job.rejected) == [
        ("stream filter(<lambda>)", "ZeroDivisionError", 0),
        ("stream key_by(<lambda>)", "AttributeError", 2),
    ]


def test_a_raising_reduce_keeps_the_keys_state() -> None:
    ctx = StreamingContext(batch_size=2)
    out = ListSink()
    ctx.from_collection([3, 0, 4, 5]).key_by(lambda x: "k").reduce(lambda a, b: a * 10 // b).sink(out)
    job = ctx.execute()
    assert out.items == [3, 7, 14]  # 3; 3*10//0 raises (state stays 3); 30//4 = 7; 70//5 = 14
    ((where, reason, record),) = [(r.source, r.reason, r.record) for r in job.rejected]
    assert (where, reason, record) == ("stream reduce(<lambda>)", "ZeroDivisionError: integer division or modulo by zero", {"value": 0})


def test_row_callables_get_the_collections_own_objects() -> None:
    words = ["alpha", "beta", "alpha", "gamma"]
    ctx = StreamingContext(batch_size=3)
    seen, counts = ListSink(), ListSink()
    ctx.from_collection(words).filter(lambda w: True).map(id).sink(seen)
    ctx.from_collection(words).key_by(lambda w: w).reduce(lambda a, b: a + "!").sink(counts)
    ctx.execute()
    assert seen.items == [id(w) for w in words]  # the very objects, not copies rebuilt from Arrow
    assert counts.items == ["alpha", "beta", "alpha!", "gamma"]


def test_the_collections_objects_never_reach_sinks_late_rows_or_columnar_steps(tmp_path) -> None:
    from volga import Count

    ctx = StreamingContext(batch_size=1)
    direct, columnar, late = ListSink(), ListSink(), ListSink()
    source = ctx.from_collection([3, 1, 2, 5]).timestamp_assigner(lambda t: t).with_lateness("0s", late_sink=late)
    source.sink(direct)
    source.sink(tmp_path / "out.parquet")
    source.key_by("value").aggregate([Count(into="n")]).sink(columnar)
    source.map(lambda t: t * 10).sink(ListSink())
    job = ctx.execute()
    assert direct.items == [3, 5] and late.items == [1, 2]
    assert [c for c in direct.frame().columns if c.startswith("__volga")] == []
    assert pl.read_parquet(tmp_path / "out.parquet")["value"].to_list() == [3, 5]
    assert [r["n"] for r in columnar.items] == [1, 1]
    assert job.late_events("collection_1").columns == ["value", "__ts"]


def test_late_rows_of_a_source_read_only_by_row_steps_carry_no_objects(tmp_path) -> None:
    ctx = StreamingContext(batch_size=1)
    out, late = ListSink(), ListSink()
    (ctx.from_collection([3, 1, 2, 5]).timestamp_assigner(lambda t: t).with_lateness("0s", late_sink=late)
        .map(lambda t: t * 10).sink(out))
    job = ctx.execute()
    assert ctx.compile().plan.steps[0].source.keep_objects  # only a row step reads this source
    assert out.items == [30, 50] and late.items == [1, 2]
    assert late.frame().columns == job.late_events("collection_1").columns == ["value", "__ts"]


def test_simple_record_filters_run_columnar_and_others_as_rows(monkeypatch) -> None:
    import sys

    from volga.stream.rowloop import RowLoop

    rows_through_loops = {"n": 0}
    run = RowLoop.run

    def counting(self, items, state, reject):  # type: ignore[no-untyped-def]
        rows_through_loops["n"] += len(items)
        return run(self, items, state, reject)

    monkeypatch.setattr(RowLoop, "run", counting)
    rows = [{"k": "a", "n": 1}, {"k": "b", "n": 5}, {"k": None, "n": 7}, {"k": "a", "n": 9}]
    ctx = StreamingContext(batch_size=2)
    out = ListSink()
    ctx.from_collection(rows).filter(lambda r: r["k"] == "a").filter(lambda r: r["n"] > 3).sink(out)
    job = ctx.execute()
    assert out.items == [{"k": "a", "n": 9}] and not job.rejected
    # batch 1 (no nulls) filtered columnar; batch 2 holds k=None: both filters run as rows there
    assert rows_through_loops["n"] == (2 if sys.version_info[:2] == (3, 11) else 4)
