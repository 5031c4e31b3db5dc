"""Row predicates read as polars expressions keep exactly the rows the row function keeps
(whenever the expression is used), and anything not simple stays a row function."""

from __future__ import annotations

import datetime
import math
import sys

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from volga.ops.row_predicates import translate

DTYPES = {"s": pl.String(), "i": pl.Int64(), "x": pl.Float64(), "b": pl.Boolean()}

ATOMS = [
    'r["s"] == "a"', 'r["s"] < "b"', '"b" <= r["s"]', 'r["s"] != "c"', 'r["s"] in ("a", "c")', 'r["s"] not in ("b",)',
    'r["i"] > 1', '2 >= r["i"]', 'r["i"] == 0', 'r["i"] not in (1, 3)', 'r["i"] < r["i"]',
    'r["x"] != 1.5', 'r["x"] >= 0', 'r["x"] < -0.5', 'r["x"] <= r["x"]',
    'r["b"]', 'r["b"] == True', 'r["b"] != False',
]


@st.composite
def predicates(draw: st.DrawFn, depth: int = 2) -> str:
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(ATOMS))
    kind = draw(st.sampled_from(["not", "and", "or"]))
    if kind == "not":
        return f"not ({draw(predicates(depth - 1))})"
    parts = draw(st.lists(predicates(depth - 1), min_size=2, max_size=3))
    return f" {kind} ".join(f"({p})" for p in parts)


frames = st.integers(0, 12).flatmap(
    lambda n: st.fixed_dictionaries({
        "s": st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "é", ""])), min_size=n, max_size=n),
        "i": st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=n, max_size=n),
        "x": st.lists(st.one_of(st.none(), st.floats(-2, 2), st.just(math.nan)), min_size=n, max_size=n),
        "b": st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n),
    })
)


@settings(max_examples=300, deadline=None)
@given(source=predicates(), data=frames, clean=st.booleans())
def test_translated_predicates_keep_the_rows_the_function_keeps(source: str, data: dict, clean: bool) -> None:
    if clean:  # mostly plain values, so the expression is used
        data = {c: [v for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))] for c, col in data.items()}
        n = min(len(col) for col in data.values())
        data = {c: col[:n] for c, col in data.items()}
    frame = pl.DataFrame(data, schema=DTYPES)
    fn = eval(f"lambda r: {source}")
    predicate = translate(fn, DTYPES)
    if predicate is None or not predicate.applies_to(frame):
        return
    kept = [bool(fn(row)) for row in frame.iter_rows(named=True)]  # never raises where the expression applies
    assert_frame_equal(frame.filter(predicate.expr), frame.filter(pl.Series(kept, dtype=pl.Boolean)))


def test_simple_predicates_translate_and_others_do_not() -> None:
    threshold = 3
    simple = [lambda r: r["s"] == "a", lambda r: r["i"] > 1 and r["s"] != "b", lambda r: not r["b"], lambda r: r["i"] in (1, 2)]
    on_311 = sys.version_info[:2] == (3, 11)  # the bytecode read is CPython 3.11's; elsewhere all stay row functions
    assert [translate(fn, DTYPES) is not None for fn in simple] == [on_311] * len(simple)
    others = [
        lambda r: r["i"] > threshold,  # a closure variable can change
        lambda r: len(r["s"]) > 1,  # a call
        lambda r: r["i"] * 2 > 1,  # arithmetic
        lambda r: r["i"] > 1.5,  # int column vs float: Python compares exactly, polars casts
        lambda r: r["s"] > 1,  # raises in Python
        lambda r: r["missing"] == 1,  # KeyError in Python
        lambda r: r["i"],  # an int's truthiness
        lambda r: 0 < r["i"] < 2,  # chained comparison
        lambda r, cut=1: r["i"] > cut,  # a default can be anything
    ]
    assert [translate(fn, DTYPES) for fn in others] == [None] * len(others)


def test_a_filter_lambda_runs_columnar_in_a_pipeline_and_as_rows_where_nulls_are(monkeypatch) -> None:
    import volga
    from volga import Count, entity, field, pipeline, source
    from volga.ops.stateless import StatelessChain
    from volga.sources import MemorySource

    @entity
    class Event:
        user: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        kind: str | None

    @entity
    class Counted:
        user: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        n: int

    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [{"user": "u", "at": t0 + datetime.timedelta(seconds=i), "kind": k} for i, k in enumerate(["buy", "view", "buy", None, "buy"])]
    calls = {"n": 0}  # rows that went through the row function
    row_values = StatelessChain._row_values

    def counting(self, step, batch, fn):  # type: ignore[no-untyped-def]
        calls["n"] += batch.height
        return row_values(self, step, batch, fn)

    monkeypatch.setattr(StatelessChain, "_row_values", counting)

    @source(Event)
    def events() -> volga.Source:
        return MemorySource(rows)

    @pipeline(dependencies=[events], output=Counted)
    def buys(events: volga.Entity) -> volga.Entity:
        return events.filter(lambda e: e["kind"] == "buy").group_by(keys=["user"]).aggregate([Count(window="forever", into="n")])

    translated = sys.version_info[:2] == (3, 11)
    for batch_size, expected_calls in ((2, 2 if translated else 5), (5, 5)):  # only a batch holding the null runs the function
        calls["n"] = 0
        client = volga.Client()
        client.materialize([buys], mode="online", batch_size=batch_size)
        history = client.get_last_n("buys", keys=[{"user": "u"}], n=5)[0]
        assert [((r.at - t0).seconds, r.n) for r in history] == [(0, 1), (2, 2), (4, 3)]  # oldest first
        assert calls["n"] == expected_calls


def test_a_constant_the_column_type_cannot_hold_keeps_the_row_function() -> None:
    small = {"v": pl.Int8()}
    assert translate(lambda r: r["v"] in (1, 300), small) is None
    frame = pl.DataFrame({"v": [1, 2]}, schema=small)
    predicate = translate(lambda r: r["v"] < 300, small)  # a comparison widens: fine
    assert (predicate is not None) == (sys.version_info[:2] == (3, 11))
    if predicate is not None:
        assert frame.filter(predicate.expr)["v"].to_list() == [1, 2]
