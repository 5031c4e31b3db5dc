"""The consistency guarantee (DESIGN.md): batch == streaming == the reference.

Every property builds entities, a source and a pipeline from hypothesis data through the
public API, runs the pipeline in offline (batch) mode and in online (streaming) mode with
a random micro-batch size, and compares both outputs row by row with the plain-Python
reference in ``volga.testing.reference``. Times are whole minutes after ``T0``.

Each example gets its own ``Client`` with its own temporary offline store, since a
pipeline is named after its function and examples must not see each other's rows.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volga
from volga import (
    Avg,
    Count,
    CountDistinct,
    Entity,
    First,
    Last,
    LastN,
    Max,
    Min,
    Stddev,
    Sum,
    Variance,
    entity,
    field,
    pipeline,
    source,
)
from volga.sources import MemorySource
from volga.testing import reference as ref

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
MINUTE_US = 60_000_000
WINDOWS = ("1m", "5m", "60m", "forever")
KEYS = ("a", "b", "c", "d")
TAGS = ("x", "y", "z")
VOLGA_AGGREGATES: dict[str, Any] = {
    "Count": Count, "Sum": Sum, "Avg": Avg, "Min": Min, "Max": Max, "First": First,
    "Last": Last, "Stddev": Stddev, "Variance": Variance, "CountDistinct": CountDistinct, "LastN": LastN,
}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def at(minute: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minute)


# --------------------------------------------------------------------------- harness


def make_entity(name: str, fields: Sequence[tuple[str, Any]], *, keys: Sequence[str], timestamp: str) -> type:
    """An ``@entity`` class built from data: ``fields`` are (name, annotation) pairs."""
    namespace: dict[str, Any] = {"__annotations__": dict(fields)}
    for key in keys:
        namespace[key] = field(key=True)
    namespace[timestamp] = field(timestamp=True)
    return entity(type(name, (), namespace))


@contextlib.contextmanager
def fresh_client() -> Iterator[volga.Client]:
    # Not pytest's tmp_path: that fixture is shared by every example of a hypothesis test.
    directory = tempfile.mkdtemp(prefix="volga-consistency-")
    try:
        yield volga.Client(offline_store=volga.ParquetOfflineStore(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Run:
    batch: pl.DataFrame
    stream: pl.DataFrame
    late: dict[str, pl.DataFrame]


def batch_then_stream(pipe: Any, *, batch_size: int, sources: Sequence[str]) -> Run:
    """Backfill ``pipe`` offline, then stream it with ``write_offline`` in the same client
    (which must replace the backfilled rows, not add to them)."""
    with fresh_client() as client:
        client.materialize([pipe], mode="offline")
        batch = client.get_offline(pipe.name)
        job = client.materialize([pipe], mode="online", write_offline=True, batch_size=batch_size)
        stream = client.get_offline(pipe.name)
        late = {name: job.late_events(name) for name in sources}
    return Run(batch, stream, late)


def run_batch(pipe: Any) -> pl.DataFrame:
    with fresh_client() as client:
        client.materialize([pipe], mode="offline")
        return client.get_offline(pipe.name)


def run_stream(pipe: Any, *, batch_size: int, sources: Sequence[str]) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    with fresh_client() as client:
        job = client.materialize([pipe], mode="online", write_offline=True, batch_size=batch_size)
        return client.get_offline(pipe.name), {name: job.late_events(name) for name in sources}


def same_value(got: Any, want: Any) -> bool:
    """Equality with floats within 1e-9 relative (DESIGN.md), nulls equal only to nulls."""
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same_value, got, want))
    if isinstance(want, float) or isinstance(got, float):
        if isinstance(got, bool) or isinstance(want, bool):
            return False
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return type(got) is type(want) and got == want


def _show(row: dict[str, Any] | None) -> str:
    if row is None:
        return "<no row>"
    return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in row.items()) + "}"


def _short(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        minutes = (ref.to_us(value) - ref.to_us(T0)) / MINUTE_US
        return f"t{minutes:g}" + ("" if value.tzinfo is not None else "(naive!)")
    return repr(value)


def assert_rows_match(got: Any, want: Sequence[dict[str, Any]], columns: Sequence[str], label: str) -> None:
    """``got`` (a DataFrame from the engine) has exactly the rows ``want``, in order."""
    assert isinstance(got, pl.DataFrame), f"{label}: get_offline returned {type(got).__name__}, not a polars DataFrame"
    assert sorted(got.columns) == sorted(columns), f"{label}: columns {got.columns}, expected {list(columns)}"
    got_rows = got.select(list(columns)).to_dicts()
    want_rows = [{c: row[c] for c in columns} for row in want]
    for i in range(max(len(got_rows), len(want_rows))):
        g = got_rows[i] if i < len(got_rows) else None
        w = want_rows[i] if i < len(want_rows) else None
        if g is not None and w is not None and all(same_value(g[c], w[c]) for c in columns):
            continue
        bad = [c for c in columns if g is None or w is None or not same_value(g[c], w[c])]
        context = "\n".join(
            f"    row {j}: {_show(want_rows[j])}" for j in range(max(0, i - 3), min(i, len(want_rows)))
        )
        same_multiset = Counter(map(_show, got_rows)) == Counter(map(_show, want_rows))
        raise AssertionError(
            f"{label}: {len(got_rows)} rows, expected {len(want_rows)}; first difference at row {i}"
            f" in column(s) {bad}\n  got:      {_show(g)}\n  expected: {_show(w)}\n"
            f"  expected rows before it:\n{context or '    (none)'}"
            + ("\n  (the same rows in a different order)" if same_multiset else "")
        )


def assert_same_row_set(got: Any, want: Sequence[dict[str, Any]], columns: Sequence[str], label: str) -> None:
    assert isinstance(got, pl.DataFrame), f"{label}: expected a polars DataFrame, got {type(got).__name__}"
    missing_columns = [c for c in columns if c not in got.columns]
    assert not missing_columns, f"{label}: missing columns {missing_columns} in {got.columns}"
    got_set = Counter(_show(r) for r in got.select(list(columns)).to_dicts())
    want_set = Counter(_show({c: r[c] for c in columns}) for r in want)
    assert got_set == want_set, (
        f"{label}: unexpected {sorted((got_set - want_set).elements())}; "
        f"missing {sorted((want_set - got_set).elements())}"
    )


def assert_no_late(run_late: dict[str, pl.DataFrame], label: str) -> None:
    for name, late in run_late.items():
        assert isinstance(late, pl.DataFrame), f"{label}: late_events({name!r}) returned {type(late).__name__}"
        assert late.height == 0, f"{label}: in-order input, yet late_events({name!r}) holds {late.to_dicts()}"


def check_three_ways(
    run: Run, want: Sequence[dict[str, Any]], columns: Sequence[str], batch_size: int, context: str = ""
) -> None:
    label = f"streaming (batch_size={batch_size}{context})"
    assert_rows_match(run.batch, want, columns, "batch vs reference")
    assert_rows_match(run.stream, want, columns, f"{label} vs reference")
    assert_no_late(run.late, label)


# --------------------------------------------------------------------------- strategies

optional_price = st.one_of(st.none(), st.integers(-10_000, 10_000).map(lambda cents: cents / 100))
# Mostly ties and small steps, sometimes a gap longer than every finite window.
minute_gap = st.one_of(st.just(0), st.integers(0, 3), st.integers(0, 150))


@st.composite
def event_rows(draw: st.DrawFn, *, max_size: int = 30) -> list[dict[str, Any]]:
    """Events in event-time order (ties in random key order): k, ts, v (nullable), q, tag."""
    n_keys = draw(st.integers(1, len(KEYS)))
    items = draw(
        st.lists(
            st.tuples(
                minute_gap, st.sampled_from(KEYS[:n_keys]), optional_price, st.integers(-50, 50), st.sampled_from(TAGS)
            ),
            max_size=max_size,
        )
    )
    rows, minute = [], 0
    for gap, key, v, q, tag in items:
        minute += gap
        rows.append({"k": key, "ts": at(minute), "v": v, "q": q, "tag": tag})
    return rows


# Input columns of the aggregation entity and their Python types.
EVENT_FIELDS = [("k", str), ("ts", datetime.datetime), ("v", Optional[float]), ("q", int), ("tag", str)]
COLUMN_TYPE = {"v": float, "q": int, "tag": str}
NULLABLE = {"v"}
AGG_COLUMNS: dict[str, tuple[str | None, ...]] = {
    "Count": (None, "v", "q", "tag"),
    "Sum": ("v", "q"),
    "Avg": ("v", "q"),
    "Stddev": ("v", "q"),
    "Variance": ("v", "q"),
    "Min": ("v", "q", "tag"),
    "Max": ("v", "q", "tag"),
    "First": ("v", "q", "tag"),
    "Last": ("v", "q", "tag"),
    "CountDistinct": ("v", "q", "tag"),
    "LastN": ("v", "q", "tag"),
}


@dataclass(frozen=True)
class AggCase:
    kind: str
    on: str | None
    window: str
    n: int

    def volga(self, into: str) -> Any:
        cls = VOLGA_AGGREGATES[self.kind]
        kwargs: dict[str, Any] = {"window": self.window, "into": into}
        if self.on is not None:
            kwargs["on"] = self.on
        return cls(self.n, **kwargs) if self.kind == "LastN" else cls(**kwargs)

    def reference(self, into: str) -> ref.Agg:
        return ref.Agg(self.kind, on=self.on, window_us=ref.duration_us(self.window), into=into, n=self.n)

    def annotation(self) -> Any:
        """The output type the engine documents for this aggregate."""
        if self.kind in ("Count", "CountDistinct"):
            return int
        base = COLUMN_TYPE[self.on or ""]
        if self.kind == "LastN":
            return list[base]  # type: ignore[valid-type]
        if self.kind in ("Avg", "Stddev", "Variance"):
            return Optional[float] if self.kind != "Avg" or self.on in NULLABLE else float
        return Optional[base] if self.on in NULLABLE else base  # type: ignore[valid-type]


@st.composite
def agg_cases(draw: st.DrawFn) -> AggCase:
    kind = draw(st.sampled_from(sorted(AGG_COLUMNS)))
    on = draw(st.sampled_from(AGG_COLUMNS[kind]))
    return AggCase(kind, on, draw(st.sampled_from(WINDOWS)), draw(st.integers(1, 4)))


EVERY_KIND = [
    AggCase("Count", None, "5m", 1),
    AggCase("Count", "v", "60m", 1),
    AggCase("Sum", "v", "5m", 1),
    AggCase("Sum", "q", "forever", 1),
    AggCase("Avg", "v", "60m", 1),
    AggCase("Min", "v", "1m", 1),
    AggCase("Max", "q", "5m", 1),
    AggCase("First", "v", "5m", 1),
    AggCase("Last", "v", "forever", 1),
    AggCase("Stddev", "v", "60m", 1),
    AggCase("Stddev", "q", "forever", 1),
    AggCase("Variance", "v", "5m", 1),
    AggCase("Variance", "q", "forever", 1),
    AggCase("CountDistinct", "tag", "60m", 1),
    AggCase("Count", "tag", "forever", 1),
    AggCase("Max", "tag", "60m", 1),
    AggCase("LastN", "v", "5m", 3),
    AggCase("LastN", "tag", "forever", 2),
]


# --------------------------------------------------------------------------- a. windowed aggregation


def aggregation_pipeline(
    rows: list[dict[str, Any]], cases: Sequence[AggCase], *, lateness: str = "0s", keys: Sequence[str] = ("k",)
) -> tuple[Any, list[str]]:
    """``events.group_by(keys).aggregate(...)`` over a MemorySource of ``rows``.

    Returns the pipeline and its output columns: the keys, ``ts``, then the aggregates.
    """
    Event = make_entity("Event", EVENT_FIELDS, keys=["k"], timestamp="ts")
    intos = [f"{case.kind.lower()}_{case.on or 'rows'}_{case.window}_{i}" for i, case in enumerate(cases)]
    Out = make_entity(
        "Out",
        [(key, str) for key in keys] + [("ts", datetime.datetime)]
        + [(into, case.annotation()) for into, case in zip(intos, cases)],
        keys=keys,
        timestamp="ts",
    )

    @source(Event, lateness=lateness)
    def events() -> volga.Source:
        return MemorySource(rows)

    @pipeline(dependencies=[events], output=Out)
    def features(events: Entity) -> Entity:
        return events.group_by(keys=list(keys)).aggregate([case.volga(into) for into, case in zip(intos, cases)])

    return features, [*keys, "ts", *intos]


def reference_aggregation(
    rows: list[dict[str, Any]], cases: Sequence[AggCase], columns: list[str], keys: Sequence[str] = ("k",)
) -> list[dict[str, Any]]:
    intos = columns[len(keys) + 1 :]
    aggs = [case.reference(into) for into, case in zip(intos, cases)]
    return ref.window_aggregate(ref.sort_events(rows, "ts"), keys, "ts", aggs)


def check_aggregation(
    rows: list[dict[str, Any]], cases: Sequence[AggCase], batch_size: int, keys: Sequence[str] = ("k",)
) -> None:
    pipe, columns = aggregation_pipeline(rows, cases, keys=keys)
    want = reference_aggregation(rows, cases, columns, keys)
    check_three_ways(batch_then_stream(pipe, batch_size=batch_size, sources=["events"]), want, columns, batch_size)


group_keys = st.sampled_from([("k",), ("k",), ("k", "tag"), ("tag",)])


@SETTINGS
@given(
    rows=event_rows(),
    cases=st.lists(agg_cases(), min_size=1, max_size=4),
    keys=group_keys,
    batch_size=st.integers(1, 50),
)
def test_window_aggregates_batch_stream_reference(
    rows: list[dict[str, Any]], cases: list[AggCase], keys: tuple[str, ...], batch_size: int
) -> None:
    check_aggregation(rows, cases, batch_size, keys)


@SETTINGS
@given(rows=event_rows(), batch_size=st.integers(1, 50))
def test_every_aggregate_kind_at_once(rows: list[dict[str, Any]], batch_size: int) -> None:
    check_aggregation(rows, EVERY_KIND, batch_size)


@pytest.mark.slow
@SLOW_SETTINGS
@given(
    rows=event_rows(max_size=120),
    cases=st.lists(agg_cases(), min_size=1, max_size=8),
    keys=group_keys,
    batch_size=st.integers(1, 50),
)
def test_window_aggregates_batch_stream_reference_heavy(
    rows: list[dict[str, Any]], cases: list[AggCase], keys: tuple[str, ...], batch_size: int
) -> None:
    check_aggregation(rows, cases, batch_size, keys)


def test_design_worked_window_example() -> None:
    rows = [{"k": "a", "ts": at(m), "v": 1.0, "q": 1, "tag": "x"} for m in (0, 30, 60, 61, 121)]
    pipe, columns = aggregation_pipeline(rows, [AggCase("Count", None, "60m", 1)])
    run = batch_then_stream(pipe, batch_size=2, sources=["events"])
    check_three_ways(run, reference_aggregation(rows, [AggCase("Count", None, "60m", 1)], columns), columns, 2)
    assert run.batch[columns[-1]].to_list() == [1, 2, 3, 3, 2]


# --------------------------------------------------------------------------- b. filter -> as-of join -> aggregate

USER_FIELDS = [("user_id", str), ("registered_at", datetime.datetime), ("tier", int), ("note", Optional[str])]
ORDER_FIELDS = [("buyer_id", str), ("purchased_at", datetime.datetime), ("price", float), ("note", Optional[str])]
USERS = ("u1", "u2", "u3")
NOTES = st.one_of(st.none(), st.sampled_from(("n1", "n2")))


@st.composite
def users_and_orders(draw: st.DrawFn, *, max_size: int = 25) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Orders and users, each in event-time order; some users at exactly an order's time."""
    orders, minute = [], 0
    for gap, key, cents, note in draw(
        st.lists(st.tuples(minute_gap, st.sampled_from(USERS), st.integers(0, 20_000), NOTES), max_size=max_size)
    ):
        minute += gap
        orders.append({"buyer_id": key, "purchased_at": at(minute), "price": cents / 100, "note": note})
    users, minute = [], draw(st.integers(0, 10))
    for gap, key, tier, note in draw(
        st.lists(st.tuples(minute_gap, st.sampled_from(USERS), st.integers(0, 3), NOTES), max_size=max_size)
    ):
        minute += gap
        users.append({"user_id": key, "registered_at": at(minute), "tier": tier, "note": note})
    if orders:
        for index, tier in draw(st.lists(st.tuples(st.integers(0, len(orders) - 1), st.integers(0, 3)), max_size=4)):
            order = orders[index]  # a right row at exactly a left row's time and key
            same_time = {"user_id": order["buyer_id"], "registered_at": order["purchased_at"], "tier": tier, "note": "same"}
            users.append(same_time)
    return orders, ref.sort_events(users, "registered_at")


@dataclass(frozen=True)
class JoinCase:
    threshold: float
    expression_filter: bool
    how: str
    aggregate: bool
    window: str


join_cases = st.builds(
    JoinCase,
    threshold=st.sampled_from((-1.0, 20.0, 100.0, 180.0)),
    expression_filter=st.booleans(),
    how=st.sampled_from(("left", "inner")),
    aggregate=st.booleans(),
    window=st.sampled_from(WINDOWS),
)


def join_pipeline(
    users: list[dict[str, Any]],
    orders: list[dict[str, Any]],
    case: JoinCase,
    *,
    orders_lateness: str = "0s",
    users_lateness: str = "0s",
) -> tuple[Any, list[str]]:
    User = make_entity("User", USER_FIELDS, keys=["user_id"], timestamp="registered_at")
    Order = make_entity("Order", ORDER_FIELDS, keys=["buyer_id"], timestamp="purchased_at")
    right_optional = case.how == "left"
    if case.aggregate:
        out_fields = [
            ("user_id", str),
            ("timestamp", datetime.datetime),
            ("num_orders", int),
            ("spent", float),
            ("max_tier", Optional[int]),
            ("last_user_note", Optional[str]),
            ("avg_price", float),
        ]
        Out = make_entity("Out", out_fields, keys=["user_id"], timestamp="timestamp")
    else:
        out_fields = [
            *ORDER_FIELDS,  # then the right's value columns only: no key, no timestamp
            ("tier", Optional[int] if right_optional else int),
            ("note_right", Optional[str]),
        ]
        Out = make_entity("Out", out_fields, keys=["buyer_id"], timestamp="purchased_at")

    @source(User, lateness=users_lateness)
    def users_src() -> volga.Source:
        return MemorySource(users)

    @source(Order, lateness=orders_lateness)
    def orders_src() -> volga.Source:
        return MemorySource(orders)

    threshold = case.threshold

    @pipeline(dependencies=[orders_src, users_src], output=Out)
    def spend(orders_src: Entity, users_src: Entity) -> Entity:
        if case.expression_filter:
            kept = orders_src.filter(volga.col("price") > threshold)
        else:
            kept = orders_src.filter(lambda o: o["price"] > threshold)
        joined = kept.join(users_src, left_on=["buyer_id"], right_on=["user_id"], how=case.how)
        if not case.aggregate:
            return joined
        return (
            joined.group_by(keys=["buyer_id"])
            .aggregate([
                Count(window=case.window, into="num_orders"),
                Sum(on="price", window=case.window, into="spent"),
                Max(on="tier", window=case.window, into="max_tier"),
                Last(on="note_right", window="forever", into="last_user_note"),
                Avg(on="price", window="5m", into="avg_price"),
            ])
            .rename(columns={"purchased_at": "timestamp", "buyer_id": "user_id"})
        )

    return spend, [name for name, _ in out_fields]


def reference_join(users: list[dict[str, Any]], orders: list[dict[str, Any]], case: JoinCase) -> list[dict[str, Any]]:
    kept = ref.filter_rows(ref.sort_events(orders, "purchased_at"), lambda o: o["price"] > case.threshold)
    joined = ref.asof_join(
        kept, users, ["buyer_id"], ["user_id"], "purchased_at", "registered_at", how=case.how,  # type: ignore[arg-type]
        left_columns=[n for n, _ in ORDER_FIELDS], right_columns=[n for n, _ in USER_FIELDS],
    )
    if not case.aggregate:
        return joined
    window_us = ref.duration_us(case.window)
    aggregated = ref.window_aggregate(joined, ["buyer_id"], "purchased_at", [
        ref.Agg("Count", window_us=window_us, into="num_orders"),
        ref.Agg("Sum", on="price", window_us=window_us, into="spent"),
        ref.Agg("Max", on="tier", window_us=window_us, into="max_tier"),
        ref.Agg("Last", on="note_right", window_us=None, into="last_user_note"),
        ref.Agg("Avg", on="price", window_us=5 * MINUTE_US, into="avg_price"),
    ])
    return ref.rename_columns(aggregated, {"purchased_at": "timestamp", "buyer_id": "user_id"})


def check_join(users: list[dict[str, Any]], orders: list[dict[str, Any]], case: JoinCase, batch_size: int) -> None:
    pipe, columns = join_pipeline(users, orders, case)
    want = reference_join(users, orders, case)
    run = batch_then_stream(pipe, batch_size=batch_size, sources=["orders_src", "users_src"])
    check_three_ways(run, want, columns, batch_size)


@SETTINGS
@given(data=users_and_orders(), case=join_cases, batch_size=st.integers(1, 50))
def test_filter_join_aggregate_batch_stream_reference(
    data: tuple[list[dict[str, Any]], list[dict[str, Any]]], case: JoinCase, batch_size: int
) -> None:
    orders, users = data
    check_join(users, orders, case, batch_size)


@pytest.mark.slow
@SLOW_SETTINGS
@given(data=users_and_orders(max_size=80), case=join_cases, batch_size=st.integers(1, 50))
def test_filter_join_aggregate_batch_stream_reference_heavy(
    data: tuple[list[dict[str, Any]], list[dict[str, Any]]], case: JoinCase, batch_size: int
) -> None:
    orders, users = data
    check_join(users, orders, case, batch_size)


@pytest.mark.parametrize("how", ["left", "inner"])
@pytest.mark.parametrize("batch_size", [1, 2, 50])
def test_design_worked_join_example(how: str, batch_size: int) -> None:
    users = [
        {"user_id": "u1", "registered_at": at(10), "tier": 1, "note": None},
        {"user_id": "u1", "registered_at": at(20), "tier": 2, "note": None},
    ]
    orders = [{"buyer_id": "u1", "purchased_at": at(m), "price": 50.0, "note": None} for m in (5, 10, 15, 20, 25)]
    case = JoinCase(threshold=0.0, expression_filter=True, how=how, aggregate=False, window="forever")
    pipe, columns = join_pipeline(users, orders, case)
    run = batch_then_stream(pipe, batch_size=batch_size, sources=["orders_src", "users_src"])
    check_three_ways(run, reference_join(users, orders, case), columns, batch_size)
    assert run.stream["tier"].to_list() == ([None, 1, 1, 2, 2] if how == "left" else [1, 1, 2, 2])


# --------------------------------------------------------------------------- c. out of order, lateness

LATENESS_MINUTES = {"1m": 1, "5m": 5, "30m": 30}
ORDER_SENSITIVE = [
    AggCase("Count", None, "forever", 1),
    AggCase("Sum", "v", "5m", 1),
    AggCase("Last", "q", "forever", 1),
    AggCase("First", "q", "1m", 1),
    AggCase("LastN", "q", "60m", 3),
]


def shuffle_within(draw: st.DrawFn, rows: list[dict[str, Any]], ts_field: str, lateness_minutes: int) -> list[int]:
    """An arrival order (indices into ``rows``) in which no row is late.

    Rows arrive in order of ``ts + jitter`` with ``0 <= jitter <= lateness``, so a row is
    at most ``lateness`` older than anything that arrived before it.
    """
    jitters = draw(st.lists(st.integers(0, lateness_minutes), min_size=len(rows), max_size=len(rows)))
    arrival_keys = [ref.to_us(row[ts_field]) + jitter * MINUTE_US for row, jitter in zip(rows, jitters)]
    return sorted(range(len(rows)), key=lambda i: (arrival_keys[i], i))


@st.composite
def shuffled_within_lateness(draw: st.DrawFn, *, max_size: int = 30) -> tuple[str, list[dict[str, Any]]]:
    """(lateness, events in arrival order) where events are out of order, none late."""
    lateness = draw(st.sampled_from(sorted(LATENESS_MINUTES)))
    rows = draw(event_rows(max_size=max_size))
    order = shuffle_within(draw, rows, "ts", LATENESS_MINUTES[lateness])
    return lateness, [dict(rows[i], q=i) for i in order]  # q = original position: makes tie order visible


@SETTINGS
@given(data=shuffled_within_lateness(), batch_size=st.integers(1, 50))
def test_out_of_order_within_lateness_equals_batch(data: tuple[str, list[dict[str, Any]]], batch_size: int) -> None:
    lateness, rows = data
    on_time, late = ref.split_late(rows, "ts", LATENESS_MINUTES[lateness] * MINUTE_US)
    assert not late, "strategy bug: generated a late event"
    pipe, columns = aggregation_pipeline(rows, ORDER_SENSITIVE, lateness=lateness)
    want = reference_aggregation(rows, ORDER_SENSITIVE, columns)
    batch = run_batch(pipe)
    stream, late_frames = run_stream(pipe, batch_size=batch_size, sources=["events"])
    assert_rows_match(batch, want, columns, "batch vs reference")
    assert_rows_match(stream, want, columns, f"streaming (batch_size={batch_size}, lateness={lateness}) vs reference")
    assert_no_late(late_frames, f"streaming (lateness={lateness}), no event displaced beyond it")


@dataclass(frozen=True)
class ShuffledJoin:
    orders_lateness: str
    users_lateness: str
    orders: list[dict[str, Any]]
    users: list[dict[str, Any]]


@st.composite
def join_inputs_within_lateness(draw: st.DrawFn) -> ShuffledJoin:
    """Orders and users, each shuffled within its own source's lateness."""
    orders, users = draw(users_and_orders())
    orders_lateness = draw(st.sampled_from(sorted(LATENESS_MINUTES)))
    users_lateness = draw(st.sampled_from(["0s", *sorted(LATENESS_MINUTES)]))
    order_arrival = shuffle_within(draw, orders, "purchased_at", LATENESS_MINUTES[orders_lateness])
    user_arrival = shuffle_within(draw, users, "registered_at", LATENESS_MINUTES.get(users_lateness, 0))
    return ShuffledJoin(
        orders_lateness,
        users_lateness,
        [orders[i] for i in order_arrival],
        [users[i] for i in user_arrival],
    )


@SETTINGS
@given(data=join_inputs_within_lateness(), case=join_cases, batch_size=st.integers(1, 50))
def test_out_of_order_join_within_lateness_equals_batch(data: ShuffledJoin, case: JoinCase, batch_size: int) -> None:
    sides = ((data.orders, "purchased_at", data.orders_lateness), (data.users, "registered_at", data.users_lateness))
    for rows, ts_field, lateness in sides:
        _, late = ref.split_late(rows, ts_field, LATENESS_MINUTES.get(lateness, 0) * MINUTE_US)
        assert not late, "strategy bug: generated a late row"
    pipe, columns = join_pipeline(
        data.users, data.orders, case, orders_lateness=data.orders_lateness, users_lateness=data.users_lateness
    )
    want = reference_join(data.users, data.orders, case)
    run = batch_then_stream(pipe, batch_size=batch_size, sources=["orders_src", "users_src"])
    context = f", lateness orders={data.orders_lateness} users={data.users_lateness}"
    check_three_ways(run, want, columns, batch_size, context)


@st.composite
def with_late_events(draw: st.DrawFn, *, max_size: int = 30) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(lateness, arrival order, the late rows): on-time events shuffled within lateness,
    plus events inserted where they are older than the max seen before them - lateness."""
    lateness, arrival = draw(shuffled_within_lateness(max_size=max_size))
    if not arrival:
        arrival = [{"k": "a", "ts": at(0), "v": 1.0, "q": 0, "tag": "x"}]
    lateness_minutes = LATENESS_MINUTES[lateness]
    inserts = draw(
        st.lists(
            st.tuples(st.integers(1, len(arrival)), st.integers(1, 90), st.sampled_from(KEYS[:2]), optional_price),
            min_size=1,
            max_size=5,
        )
    )
    rows = list(arrival)
    late_rows = []
    for serial, (position, depth, key, v) in enumerate(inserts):
        position = min(position, len(rows))
        max_seen = max(row["ts"] for row in rows[:position])
        ts = max_seen - datetime.timedelta(minutes=lateness_minutes + depth)
        late = {"k": key, "ts": ts, "v": v, "q": 1000 + serial, "tag": "late"}
        rows.insert(position, late)
        late_rows.append(late)
    return lateness, rows, late_rows


def check_late(data: tuple[str, list[dict[str, Any]], list[dict[str, Any]]], batch_size: int) -> None:
    lateness, rows, late_rows = data
    on_time, late = ref.split_late(rows, "ts", LATENESS_MINUTES[lateness] * MINUTE_US)
    assert Counter(map(_show, late)) == Counter(map(_show, late_rows)), "strategy bug: late rows misclassified"
    streaming_pipe, columns = aggregation_pipeline(rows, ORDER_SENSITIVE, lateness=lateness)
    stream, late_frames = run_stream(streaming_pipe, batch_size=batch_size, sources=["events"])
    label = f"streaming (batch_size={batch_size}, lateness={lateness})"
    event_columns = [name for name, _ in EVENT_FIELDS]
    assert_same_row_set(late_frames["events"], late_rows, event_columns, f"{label} late_events('events')")
    want = reference_aggregation(on_time, ORDER_SENSITIVE, columns)
    assert_rows_match(stream, want, columns, f"{label} vs reference over the on-time events")
    batch_pipe, _ = aggregation_pipeline(on_time, ORDER_SENSITIVE, lateness=lateness)
    assert_rows_match(run_batch(batch_pipe), want, columns, "batch over the on-time events vs reference")


@SETTINGS
@given(data=with_late_events(), batch_size=st.integers(1, 50))
def test_late_events_go_to_the_late_sink_only(
    data: tuple[str, list[dict[str, Any]], list[dict[str, Any]]], batch_size: int
) -> None:
    check_late(data, batch_size)


@pytest.mark.slow
@SLOW_SETTINGS
@given(data=with_late_events(max_size=100), batch_size=st.integers(1, 50))
def test_late_events_go_to_the_late_sink_only_heavy(
    data: tuple[str, list[dict[str, Any]], list[dict[str, Any]]], batch_size: int
) -> None:
    check_late(data, batch_size)
