"""The reference implementation against hand-computed cases (and its own doctests).

Scenarios are written as data under small timelines (times in minutes, one letter per key).
"""

from __future__ import annotations

import datetime
import doctest
import math

import pytest

from volga.testing import reference
from volga.testing.reference import (
    Agg,
    aggregate_values,
    asof_join,
    duration_us,
    filter_rows,
    rename_columns,
    sort_events,
    split_late,
    window_aggregate,
)

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
MIN = 60_000_000


def at(minute: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minute)


def test_doctests() -> None:
    result = doctest.testmod(reference, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0


def test_design_window_example() -> None:
    # 60m window, events at 0, 30, 60, 61, 121 -> 1, 2, 3, 3, 2 (both ends inclusive)
    rows = [{"k": "a", "ts": at(m)} for m in (0, 30, 60, 61, 121)]
    out = window_aggregate(rows, ["k"], "ts", [Agg("Count", window_us=60 * MIN, into="n")])
    assert [r["n"] for r in out] == [1, 2, 3, 3, 2]
    assert [r["ts"] for r in out] == [r["ts"] for r in rows]
    assert list(out[0]) == ["k", "ts", "n"]


def test_window_boundaries_and_keys() -> None:
    #   minute:  0    1    2    3    5
    #   a:       1.0       2.0       4.0
    #   b:            10.0      20.0
    rows = sort_events(
        [
            {"k": "a", "ts": at(0), "v": 1.0},
            {"k": "b", "ts": at(1), "v": 10.0},
            {"k": "a", "ts": at(2), "v": 2.0},
            {"k": "b", "ts": at(3), "v": 20.0},
            {"k": "a", "ts": at(5), "v": 4.0},
        ],
        "ts",
    )
    out = window_aggregate(
        rows,
        ["k"],
        "ts",
        [Agg("Sum", on="v", window_us=2 * MIN, into="s2"), Agg("Sum", on="v", window_us=None, into="sall")],
    )
    assert [(r["k"], r["s2"], r["sall"]) for r in out] == [
        ("a", 1.0, 1.0),
        ("b", 10.0, 10.0),
        ("a", 3.0, 3.0),  # [0, 2] holds 0 and 2
        ("b", 30.0, 30.0),  # [1, 3] holds 1 and 3
        ("a", 4.0, 7.0),  # [3, 5] holds only 5
    ]


def test_tie_order_is_arrival_order() -> None:
    rows = sort_events(
        [
            {"k": "a", "ts": at(5), "id": "a1"},
            {"k": "a", "ts": at(1), "id": "a0"},
            {"k": "a", "ts": at(5), "id": "a2"},
            {"k": "a", "ts": at(5), "id": "a3"},
        ],
        "ts",
    )
    assert [r["id"] for r in rows] == ["a0", "a1", "a2", "a3"]
    out = window_aggregate(
        rows,
        ["k"],
        "ts",
        [
            Agg("Count", window_us=0, into="n"),
            Agg("First", on="id", window_us=0, into="first"),
            Agg("LastN", on="id", window_us=None, into="last2", n=2),
        ],
    )
    assert [(r["n"], r["first"], r["last2"]) for r in out] == [
        (1, "a0", ["a0"]),
        (1, "a1", ["a1", "a0"]),
        (2, "a1", ["a2", "a1"]),
        (3, "a1", ["a3", "a2"]),
    ]


def test_every_aggregate_with_nulls() -> None:
    #   v:   None, 2.0, None, 4.0, 4.0   (all in one forever window)
    rows = [{"k": "a", "ts": at(i), "v": v, "q": q} for i, (v, q) in enumerate([(None, 3), (2.0, 1), (None, 5), (4.0, 1), (4.0, 2)])]
    kinds = ["Count", "Sum", "Avg", "Min", "Max", "First", "Last", "Stddev", "CountDistinct", "LastN"]
    aggs = [Agg(kind, on="v", into=kind.lower(), n=2) for kind in kinds]
    aggs.append(Agg("Count", into="rows"))
    aggs.append(Agg("Sum", on="q", into="sum_q"))
    out = window_aggregate(rows, ["k"], "ts", aggs)
    first = out[0]
    assert first["count"] == 0 and first["countdistinct"] == 0 and first["lastn"] == []
    assert first["rows"] == 1 and first["sum_q"] == 3
    for kind in ("sum", "avg", "min", "max", "first", "last", "stddev"):
        assert first[kind] is None, kind
    second = out[1]
    assert (second["count"], second["sum"], second["avg"], second["stddev"]) == (1, 2.0, 2.0, None)
    last = out[-1]
    assert last["rows"] == 5 and last["count"] == 3 and last["countdistinct"] == 2
    assert last["sum"] == 10.0 and last["min"] == 2.0 and last["max"] == 4.0
    assert last["first"] == 2.0 and last["last"] == 4.0 and last["lastn"] == [4.0, 4.0]
    assert math.isclose(last["avg"], 10.0 / 3)
    # sample standard deviation of 2, 4, 4: mean 10/3, squares 16/9 + 4/9 + 4/9 = 24/9, / 2
    assert math.isclose(last["stddev"], math.sqrt(12 / 9))
    assert last["sum_q"] == 12 and isinstance(last["sum_q"], int)
    assert isinstance(last["avg"], float)


def test_int_column_keeps_its_type() -> None:
    assert aggregate_values("Sum", [1, 2, None], rows=3) == 3
    assert isinstance(aggregate_values("Sum", [1, 2], rows=2), int)
    assert isinstance(aggregate_values("Min", [1, 2], rows=2), int)
    assert isinstance(aggregate_values("Avg", [1, 2], rows=2), float)
    assert isinstance(aggregate_values("Stddev", [1, 2], rows=2), float)


def test_stddev_of_equal_values_is_zero() -> None:
    assert aggregate_values("Stddev", [0.1, 0.1, 0.1], rows=3) == 0.0


def test_composite_keys() -> None:
    rows = [
        {"a": "x", "b": 1, "ts": at(0)},
        {"a": "x", "b": 2, "ts": at(1)},
        {"a": "x", "b": 1, "ts": at(2)},
    ]
    out = window_aggregate(rows, ["a", "b"], "ts", [Agg("Count", window_us=None, into="n")])
    assert [r["n"] for r in out] == [1, 1, 2]


def test_asof_join_design_example() -> None:
    users = [
        {"user_id": "u", "registered_at": at(10), "tier": 1},
        {"user_id": "u", "registered_at": at(20), "tier": 2},
    ]
    orders = [{"buyer_id": "u", "purchased_at": at(m), "price": float(m)} for m in (5, 10, 15, 20, 25)]
    left = asof_join(orders, users, ["buyer_id"], ["user_id"], "purchased_at", "registered_at", how="left")
    assert [(r["purchased_at"], r["tier"]) for r in left] == [
        (at(5), None),
        (at(10), 1),
        (at(15), 1),
        (at(20), 2),
        (at(25), 2),
    ]
    assert list(left[0]) == ["buyer_id", "purchased_at", "price", "tier"]  # no right key, no right timestamp
    inner = asof_join(orders, users, ["buyer_id"], ["user_id"], "purchased_at", "registered_at", how="inner")
    assert [r["tier"] for r in inner] == [1, 1, 2, 2]
    assert [r["purchased_at"] for r in inner] == [at(m) for m in (10, 15, 20, 25)]


def test_asof_join_ties_keys_and_collisions() -> None:
    users = [
        {"user_id": "u", "at": at(10), "tier": 1, "note": "first"},
        {"user_id": "v", "at": at(10), "tier": 7, "note": "other key"},
        {"user_id": "u", "at": at(10), "tier": 2, "note": "arrived later, same time"},
        {"user_id": "u", "at": at(30), "tier": 3, "note": "future"},
    ]
    orders = [
        {"buyer_id": "u", "at": at(10), "note": "o1"},
        {"buyer_id": "w", "at": at(40), "note": "o2"},
    ]
    left = asof_join(orders, users, ["buyer_id"], ["user_id"], "at", "at", how="left")
    assert left == [
        {"buyer_id": "u", "at": at(10), "note": "o1", "tier": 2, "note_right": "arrived later, same time"},
        {"buyer_id": "w", "at": at(40), "note": "o2", "tier": None, "note_right": None},
    ]
    suffixed = asof_join(orders, users, ["buyer_id"], ["user_id"], "at", "at", how="inner", suffix="_u")
    assert list(suffixed[0]) == ["buyer_id", "at", "note", "tier", "note_u"]
    assert len(suffixed) == 1


def test_asof_join_with_no_right_rows() -> None:
    orders = [{"buyer_id": "u", "at": at(1)}]
    left = asof_join(
        orders, [], ["buyer_id"], ["user_id"], "at", "registered_at", how="left",
        right_columns=["user_id", "registered_at", "tier"],
    )
    assert left == [{"buyer_id": "u", "at": at(1), "tier": None}]
    assert asof_join(orders, [], ["buyer_id"], ["user_id"], "at", "registered_at", how="inner") == []


def test_split_late() -> None:
    # lateness 5m: watermark before each row is max seen - 5
    #   arrival: 10, 6, 4, 5, 20, 15, 14
    rows = [{"ts": at(m)} for m in (10, 6, 4, 5, 20, 15, 14)]
    on_time, late = split_late(rows, "ts", 5 * MIN)
    assert [r["ts"] for r in on_time] == [at(m) for m in (10, 6, 5, 20, 15)]
    assert [r["ts"] for r in late] == [at(4), at(14)]


def test_stateless_helpers() -> None:
    rows = [{"p": 1.0, "k": "a"}, {"p": 3.0, "k": "b"}]
    assert filter_rows(rows, lambda r: r["p"] > 2) == [{"p": 3.0, "k": "b"}]
    assert rename_columns(rows, {"k": "key"})[0] == {"p": 1.0, "key": "a"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1m", MIN), ("60m", 60 * MIN), ("1h30m", 90 * MIN), ("7d", 7 * 24 * 60 * MIN), ("forever", None)],
)
def test_duration_us(text: str, expected: int | None) -> None:
    assert duration_us(text) == expected


def test_duration_us_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        duration_us("5 minutes")


def test_agg_spec_validation() -> None:
    with pytest.raises(ValueError, match="needs a column"):
        Agg("Sum", into="s")
    with pytest.raises(ValueError, match="unknown"):
        Agg("Median", on="v", into="m")
