"""A slow, obviously correct reference implementation of Volga's semantics.

This module restates DESIGN.md "Semantics" in plain Python (lists of dicts and
loops) so that the engine's batch and streaming modes can be checked against it by
property-based tests. It is written for obviousness, never for speed: every output
row is computed by scanning the whole input again (quadratic time). It imports
nothing from the engine, so a bug there cannot hide here.

Timestamps may be ``datetime.datetime`` (a naive one is read as UTC) or plain
integers, read as microseconds since the epoch. One internal unit: microseconds.

The DESIGN.md worked examples, with times in minutes and one key:

>>> def at(minute):
...     return datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=minute)

Window "60m" Count over events at 0, 30, 60, 61, 121:

>>> events = [{"k": "a", "ts": at(m)} for m in (0, 30, 60, 61, 121)]
>>> out = window_aggregate(events, ["k"], "ts", [Agg("Count", window_us=duration_us("60m"), into="n")])
>>> [row["n"] for row in out]
[1, 2, 3, 3, 2]

Two events at t=5 arriving as a then b: arrival order breaks the tie.

>>> events = sort_events([{"k": "x", "ts": at(5), "id": "a"}, {"k": "x", "ts": at(5), "id": "b"}], "ts")
>>> out = window_aggregate(events, ["k"], "ts", [Agg("Count", window_us=None, into="n"), Agg("Last", on="id", into="last")])
>>> [(row["last"], row["n"]) for row in out]
[('a', 1), ('b', 2)]

As-of join: users at 10 (tier=1) and 20 (tier=2); orders at 5, 10, 15, 20, 25.

>>> users = [{"user_id": "u", "registered_at": at(10), "tier": 1}, {"user_id": "u", "registered_at": at(20), "tier": 2}]
>>> orders = [{"buyer_id": "u", "purchased_at": at(m)} for m in (5, 10, 15, 20, 25)]
>>> joined = asof_join(orders, users, ["buyer_id"], ["user_id"], "purchased_at", "registered_at", how="left")
>>> [row["tier"] for row in joined]
[None, 1, 1, 2, 2]
>>> inner = asof_join(orders, users, ["buyer_id"], ["user_id"], "purchased_at", "registered_at", how="inner")
>>> [row["tier"] for row in inner]
[1, 1, 2, 2]
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

Row = dict[str, Any]

AggKind = Literal[
    "Count", "Sum", "Avg", "Min", "Max", "First", "Last", "Stddev", "Variance", "CountDistinct", "LastN"
]
AGG_KINDS: tuple[str, ...] = (
    "Count", "Sum", "Avg", "Min", "Max", "First", "Last", "Stddev", "Variance", "CountDistinct", "LastN"
)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_UNIT_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 7 * 86_400_000_000,
}


# --------------------------------------------------------------------------- time


def duration_us(text: str) -> int | None:
    """Microseconds in a duration string; ``"forever"`` is None.

    >>> duration_us("1h30m"), duration_us("250ms"), duration_us("forever")
    (5400000000, 250000, None)
    """
    if text == "forever":
        return None
    total, pos = 0, 0
    for match in re.finditer(r"(\d+)(ms|us|w|d|h|m|s)", text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_US[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


def to_us(ts: Any) -> int:
    """An event time as integer microseconds since the epoch (naive datetimes are UTC).

    >>> to_us(datetime.datetime(1970, 1, 1, 0, 0, 1))
    1000000
    """
    if isinstance(ts, datetime.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=datetime.timezone.utc)
        delta = ts - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    raise TypeError(f"not a timestamp: {ts!r}")


# --------------------------------------------------------------------------- ordering


def sort_events(rows: Sequence[Row], ts_field: str) -> list[Row]:
    """Processing order: by event time; ties keep arrival (list) order.

    >>> [r["id"] for r in sort_events([{"id": 1, "t": 5}, {"id": 2, "t": 3}, {"id": 3, "t": 5}], "t")]
    [2, 1, 3]
    """
    indexed = list(enumerate(rows))
    # Python's sort is stable; the index makes the tie rule explicit anyway.
    indexed.sort(key=lambda pair: (to_us(pair[1][ts_field]), pair[0]))
    return [row for _, row in indexed]


def split_late(rows: Sequence[Row], ts_field: str, lateness_us: int) -> tuple[list[Row], list[Row]]:
    """Split a source's rows (in arrival order) into (on time, late).

    The watermark before a row is ``max event time seen so far - lateness``; a row
    older than it (strictly) is late. A late row never moves the maximum, since it is
    older than the maximum.

    >>> rows = [{"t": 10}, {"t": 4}, {"t": 5}, {"t": 12}]
    >>> split_late(rows, "t", 5)
    ([{'t': 10}, {'t': 5}, {'t': 12}], [{'t': 4}])
    """
    on_time: list[Row] = []
    late: list[Row] = []
    max_seen: int | None = None
    for row in rows:
        t = to_us(row[ts_field])
        if max_seen is not None and t < max_seen - lateness_us:
            late.append(row)
            continue
        on_time.append(row)
        max_seen = t if max_seen is None else max(max_seen, t)
    return on_time, late


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Agg:
    """One aggregate: ``kind`` over column ``on`` (None: rows) in a window, named ``into``.

    ``window_us=None`` means forever; ``n`` is only for ``LastN``.
    """

    kind: str
    on: str | None = None
    window_us: int | None = None
    into: str = ""
    n: int = 1

    def __post_init__(self) -> None:
        if self.kind not in AGG_KINDS:
            raise ValueError(f"unknown aggregate kind {self.kind!r}; one of {AGG_KINDS}")
        if self.on is None and self.kind != "Count":
            raise ValueError(f"{self.kind} needs a column (on=)")
        if not self.into:
            raise ValueError(f"{self.kind}: into= is required")


def aggregate_values(kind: str, values: list[Any], *, rows: int, n: int = 1) -> Any:
    """One aggregate over the values of a window, in processing order.

    ``values`` are the column's values, nulls included; ``rows`` is the number of rows
    in the window (what ``Count`` with no column counts). Nulls and NaN are ignored by every
    aggregate; over no non-null value the result is None, except Count and
    CountDistinct (0) and LastN (an empty list).

    >>> aggregate_values("Stddev", [1.0, None, 3.0], rows=3)
    1.4142135623730951
    >>> aggregate_values("Variance", [1.0, float("nan"), 3.0], rows=3), aggregate_values("Variance", [1.0], rows=1)
    (2.0, None)
    >>> aggregate_values("LastN", [1, None, 2, 3], rows=4, n=2)
    [3, 2]
    >>> aggregate_values("Min", [None], rows=1) is None
    True
    """
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]  # NaN is missing
    if kind == "Count":
        return len(present)
    if kind == "CountDistinct":
        distinct: list[Any] = []
        for v in present:
            if v not in distinct:
                distinct.append(v)
        return len(distinct)
    if kind == "LastN":
        newest_first = list(reversed(present))
        return newest_first[:n]
    if not present:
        return None
    if kind == "Sum":
        if all(isinstance(v, int) for v in present):
            return sum(present)
        return math.fsum(present)  # exactly rounded
    if kind == "Avg":
        return float(sum(Fraction(v) for v in present) / len(present))
    if kind == "Min":
        return min(present)
    if kind == "Max":
        return max(present)
    if kind == "First":
        return present[0]
    if kind == "Last":
        return present[-1]
    if kind in ("Stddev", "Variance"):  # the sample statistics (ddof=1)
        if len(present) < 2:
            return None
        # Exact rational arithmetic, rounded once: equal values give exactly 0.0.
        exact = [Fraction(v) for v in present]
        mean = sum(exact) / len(exact)
        variance = float(sum((v - mean) ** 2 for v in exact) / (len(exact) - 1))
        return math.sqrt(variance) if kind == "Stddev" else variance
    raise ValueError(f"unknown aggregate kind {kind!r}")


def window_aggregate(rows: Sequence[Row], keys: Sequence[str], ts_field: str, aggs: Sequence[Agg]) -> list[Row]:
    """``group_by(keys).aggregate(aggs)`` over rows already in processing order.

    For every row (key k, time t), one output row: the keys, the timestamp and each
    aggregate over the rows of key k with ``t - window <= ts <= t`` that come before
    it in processing order, itself included.

    >>> rows = [{"k": "a", "t": 0, "v": 1.0}, {"k": "b", "t": 1, "v": None}, {"k": "a", "t": 2, "v": 4.0}]
    >>> window_aggregate(rows, ["k"], "t", [Agg("Sum", on="v", window_us=2, into="s"), Agg("Count", window_us=1, into="n")])
    [{'k': 'a', 't': 0, 's': 1.0, 'n': 1}, {'k': 'b', 't': 1, 's': None, 'n': 1}, {'k': 'a', 't': 2, 's': 5.0, 'n': 1}]
    """
    out: list[Row] = []
    for i, row in enumerate(rows):
        t = to_us(row[ts_field])
        result: Row = {k: row[k] for k in keys}
        result[ts_field] = row[ts_field]
        for agg in aggs:
            window: list[Row] = []
            for earlier in rows[: i + 1]:
                if any(earlier[k] != row[k] for k in keys):
                    continue
                ts = to_us(earlier[ts_field])
                if ts > t:
                    continue
                if agg.window_us is not None and ts < t - agg.window_us:
                    continue
                window.append(earlier)
            if agg.on is None:
                values: list[Any] = [True] * len(window)
            else:
                values = [earlier[agg.on] for earlier in window]
            result[agg.into] = aggregate_values(agg.kind, values, rows=len(window), n=agg.n)
        out.append(result)
    return out


def value_at(
    rows: Sequence[Row], keys: Sequence[str], key: Sequence[Any], ts_field: str, aggs: Sequence[Agg], at_us: int
) -> Row | None:
    """A key's aggregate row at request time T (DESIGN.md "Request-time values"): each
    aggregate over the key's rows with ``T - window <= ts <= T``, the timestamp of its
    latest row at or before T; None if it has none. ``rows`` in processing order.

    >>> rows = [{"k": "a", "t": 0, "v": 1.0}, {"k": "a", "t": 2, "v": 4.0}]
    >>> value_at(rows, ["k"], ["a"], "t", [Agg("Sum", on="v", window_us=1, into="s"), Agg("Count", window_us=10, into="n")], 5)
    {'k': 'a', 't': 2, 's': None, 'n': 2}
    """
    mine = [r for r in rows if [r[k] for k in keys] == list(key) and to_us(r[ts_field]) <= at_us]
    if not mine:
        return None
    latest = max(mine, key=lambda r: to_us(r[ts_field]))
    out: Row = {k: v for k, v in zip(keys, key)}
    out[ts_field] = latest[ts_field]
    for agg in aggs:
        window = [r for r in mine if agg.window_us is None or to_us(r[ts_field]) >= at_us - agg.window_us]
        values = [True] * len(window) if agg.on is None else [r[agg.on] for r in window]
        out[agg.into] = aggregate_values(agg.kind, values, rows=len(window), n=agg.n)
    return out


# --------------------------------------------------------------------------- join


def asof_join(
    left_rows: Sequence[Row],
    right_rows: Sequence[Row],
    left_on: Sequence[str],
    right_on: Sequence[str],
    left_ts: str,
    right_ts: str,
    how: Literal["left", "inner"],
    suffix: str = "_right",
    *,
    left_columns: Sequence[str] | None = None,
    right_columns: Sequence[str] | None = None,
) -> list[Row]:
    """Point-in-time join: each left row with the latest right row of its key at or before it.

    ``left_rows`` are in processing order; ``right_rows`` in arrival order. "Latest"
    is the greatest right timestamp ``<=`` the left one; among equal timestamps the
    right row that arrived last. Output columns: every left column (the output
    timestamp is the left row's), then every right value column, i.e. not the right
    keys and not ``right_ts``; a right column whose name is already a left column is
    renamed ``name + suffix``. ``how="left"`` keeps unmatched left rows with None
    for the right columns, ``"inner"`` drops them. ``left_columns``/``right_columns``
    name each side's columns when a side may have no rows (by default they are read
    off the rows).

    >>> left = [{"id": "a", "t": 1, "x": 1}, {"id": "a", "t": 3, "x": 2}]
    >>> right = [{"rid": "a", "t": 2, "x": 9}, {"rid": "a", "t": 2, "x": 8}]
    >>> asof_join(left, right, ["id"], ["rid"], "t", "t", how="left")
    [{'id': 'a', 't': 1, 'x': 1, 'x_right': None}, {'id': 'a', 't': 3, 'x': 2, 'x_right': 8}]
    """
    if how not in ("left", "inner"):
        raise ValueError(f"how must be 'left' or 'inner', not {how!r}")
    if len(left_on) != len(right_on):
        raise ValueError("left_on and right_on must have the same length")
    left_names = list(left_columns) if left_columns is not None else _columns(left_rows)
    right_names = list(right_columns) if right_columns is not None else _columns(right_rows)
    carried = [c for c in right_names if c not in right_on and c != right_ts]
    renamed = {c: (c + suffix if c in left_names else c) for c in carried}

    out: list[Row] = []
    for left in left_rows:
        t = to_us(left[left_ts])
        match: Row | None = None
        match_ts: int | None = None
        for right in right_rows:
            if any(left[lk] != right[rk] for lk, rk in zip(left_on, right_on)):
                continue
            ts = to_us(right[right_ts])
            if ts > t:
                continue
            if match_ts is None or ts >= match_ts:  # ">=": a later arrival wins a tie
                match, match_ts = right, ts
        if match is None and how == "inner":
            continue
        joined = dict(left)
        for c in carried:
            joined[renamed[c]] = None if match is None else match[c]
        out.append(joined)
    return out


def _columns(rows: Sequence[Row]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in row:
            if name not in names:
                names.append(name)
    return names


# --------------------------------------------------------------------------- stateless


def filter_rows(rows: Sequence[Row], predicate: Callable[[Row], Any]) -> list[Row]:
    """The rows for which ``predicate(row)`` is true (a null result drops the row).

    >>> filter_rows([{"p": 1}, {"p": 5}, {"p": None}], lambda r: r["p"] is not None and r["p"] > 2)
    [{'p': 5}]
    """
    return [row for row in rows if predicate(row)]


def rename_columns(rows: Sequence[Row], columns: dict[str, str]) -> list[Row]:
    """Each row with columns renamed (order kept).

    >>> rename_columns([{"a": 1, "b": 2}], {"a": "z"})
    [{'z': 1, 'b': 2}]
    """
    return [{columns.get(name, name): value for name, value in row.items()} for row in rows]


def select_columns(rows: Sequence[Row], columns: Sequence[str]) -> list[Row]:
    """Each row restricted to ``columns``, in that order.

    >>> select_columns([{"a": 1, "b": 2}], ["b"])
    [{'b': 2}]
    """
    return [{name: row[name] for name in columns} for row in rows]
