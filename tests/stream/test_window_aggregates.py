"""Every aggregate class in a DataStream tumbling window equals the reference.

The closed-window path (``Aggregate.closed_window_expr``, polars over a window's rows)
is the one the sliding-window consistency tests do not run: here each aggregate in
``ALL_AGGREGATES`` is checked, per key and window, against ``reference.aggregate_values``
over that window's rows, with nulls, NaN and ties.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volga import Avg, Count, CountDistinct, First, Last, LastN, Max, Min, Stddev, Sum, Variance
from volga.api.aggregates import ALL_AGGREGATES, Aggregate
from volga.stream import ListSink, StreamingContext, TumblingWindow
from volga.testing import reference as ref

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
WINDOW = datetime.timedelta(minutes=5)
AGGREGATES: list[Aggregate] = [
    Count(into="n"), Count(on="v", into="n_v"), Sum(on="v", into="sum_v"), Sum(on="q", into="sum_q"),
    Avg(on="v", into="avg_v"), Stddev(on="v", into="sd_v"), Variance(on="v", into="var_v"),
    Variance(on="q", into="var_q"), Min(on="v", into="min_v"), Max(on="tag", into="max_tag"),
    First(on="v", into="first_v"), Last(on="tag", into="last_tag"), CountDistinct(on="q", into="distinct_q"),
    LastN(2, on="v", into="last2_v"),
]
REFERENCE_KIND = {cls: cls.__name__ for cls in ALL_AGGREGATES}

value = st.one_of(st.none(), st.just(math.nan), st.integers(-40, 40).map(lambda v: v / 8))


@st.composite
def rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    minute, out = 0, []
    for gap, key, v, q, tag in draw(st.lists(
        st.tuples(st.sampled_from([0, 0, 1, 2, 4, 6]), st.sampled_from("ab"), value, st.integers(-3, 3), st.sampled_from("xyz")),
        max_size=25,
    )):
        minute += gap
        out.append({"k": key, "t": T0 + datetime.timedelta(minutes=minute), "v": v, "q": q, "tag": tag})
    return out


def test_every_aggregate_class_is_covered() -> None:
    assert {type(a) for a in AGGREGATES} == set(ALL_AGGREGATES)


def same(got: Any, want: Any) -> bool:
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return type(got) is type(want) and got == want


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_tumbling_windows_equal_the_reference(events: list[dict[str, Any]]) -> None:
    out = ListSink()
    ctx = StreamingContext()
    (ctx.from_collection(events).timestamp_assigner(lambda r: r["t"])
        .map(lambda r: r, schema={"k": str, "t": datetime.datetime, "v": Optional[float], "q": int, "tag": str})
        .key_by("k").window(TumblingWindow("5m")).aggregate(AGGREGATES).sink(out))
    ctx.execute()
    got = {(r["k"], r["window_start"]): r for r in out.items}
    windows = {(e["k"], T0 + WINDOW * ((e["t"] - T0) // WINDOW)) for e in events}
    assert set(got) == windows
    for (key, start), row in got.items():
        inside = [e for e in events if e["k"] == key and start <= e["t"] < start + WINDOW]
        for agg in AGGREGATES:
            values = [True] * len(inside) if agg.on is None else [e[agg.on] for e in inside]
            n = agg.n if isinstance(agg, LastN) else 1
            want = ref.aggregate_values(REFERENCE_KIND[type(agg)], values, rows=len(inside), n=n)
            assert same(row[agg.into], want), f"{type(agg).__name__} {agg.into} for {key} at {start}: got {row[agg.into]!r}, want {want!r} over {values}"
