"""The consistency guarantee on the Ray runtime: at parallelism 1, 2 and 3, offline and
online runs on Ray write exactly the rows (and the row order) of the embedded batch run
and of the reference in ``volga.testing.reference``.

The pipelines, strategies and comparisons are those of ``tests/test_consistency.py``;
only the runtime changes. Few examples per property: every example starts two Ray jobs
(on pooled actors, ~0.1-0.3 s each) and the machine is shared.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volga
from tests import test_consistency as tc
from volga.testing import reference as ref

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

PARALLELISM = (1, 2, 3)
RAY_SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
parallelism = st.sampled_from(PARALLELISM)
_RUNTIMES: dict[int, Any] = {}


def runtime(p: int) -> Any:
    if p not in _RUNTIMES:
        _RUNTIMES[p] = volga.RayRuntime(parallelism=p)
    return _RUNTIMES[p]


@contextlib.contextmanager
def ray_client(p: int) -> Iterator[volga.Client]:
    directory = tempfile.mkdtemp(prefix="volga-ray-consistency-")
    try:
        yield volga.Client(offline_store=volga.ParquetOfflineStore(directory), runtime=runtime(p))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def ray_batch_then_stream(pipe: Any, *, p: int, batch_size: int, sources: Sequence[str]) -> tc.Run:
    """As ``tc.batch_then_stream``, on Ray at parallelism ``p``."""
    with ray_client(p) as client:
        client.materialize([pipe], mode="offline", batch_size=batch_size)
        batch = client.get_offline(pipe.name)
        job = client.materialize([pipe], mode="online", write_offline=True, batch_size=batch_size)
        stream = client.get_offline(pipe.name)
        late = {name: job.late_events(name) for name in sources}
    return tc.Run(batch, stream, late)


def check_all(pipe: Any, want: list[dict[str, Any]], columns: list[str], *, p: int, batch_size: int, sources: Sequence[str]) -> None:
    tc.assert_rows_match(tc.run_batch(pipe), want, columns, "embedded batch vs reference")
    run = ray_batch_then_stream(pipe, p=p, batch_size=batch_size, sources=sources)
    tc.assert_rows_match(run.batch, want, columns, f"Ray offline (parallelism={p}, batch_size={batch_size}) vs reference")
    tc.assert_rows_match(run.stream, want, columns, f"Ray online (parallelism={p}, batch_size={batch_size}) vs reference")
    tc.assert_no_late(run.late, f"Ray online (parallelism={p})")


@RAY_SETTINGS
@given(
    rows=tc.event_rows(),
    cases=st.lists(tc.agg_cases(), min_size=1, max_size=4),
    keys=tc.group_keys,
    batch_size=st.integers(1, 20),
    p=parallelism,
)
def test_window_aggregates_on_ray(rows: list[dict[str, Any]], cases: list[tc.AggCase], keys: tuple[str, ...], batch_size: int, p: int) -> None:
    pipe, columns = tc.aggregation_pipeline(rows, cases, keys=keys)
    check_all(pipe, tc.reference_aggregation(rows, cases, columns, keys), columns, p=p, batch_size=batch_size, sources=["events"])


@RAY_SETTINGS
@given(data=tc.users_and_orders(), case=tc.join_cases, batch_size=st.integers(1, 20), p=parallelism)
def test_filter_join_aggregate_on_ray(data: tuple[list[dict[str, Any]], list[dict[str, Any]]], case: tc.JoinCase, batch_size: int, p: int) -> None:
    orders, users = data
    pipe, columns = tc.join_pipeline(users, orders, case)
    want = tc.reference_join(users, orders, case)
    check_all(pipe, want, columns, p=p, batch_size=batch_size, sources=["orders_src", "users_src"])


@RAY_SETTINGS
@given(data=tc.join_inputs_within_lateness(), case=tc.join_cases, batch_size=st.integers(1, 20), p=parallelism)
def test_out_of_order_join_within_lateness_on_ray(data: tc.ShuffledJoin, case: tc.JoinCase, batch_size: int, p: int) -> None:
    pipe, columns = tc.join_pipeline(
        data.users, data.orders, case, orders_lateness=data.orders_lateness, users_lateness=data.users_lateness
    )
    want = tc.reference_join(data.users, data.orders, case)
    check_all(pipe, want, columns, p=p, batch_size=batch_size, sources=["orders_src", "users_src"])


@RAY_SETTINGS
@given(data=tc.with_late_events(), batch_size=st.integers(1, 20), p=parallelism)
def test_late_events_on_ray_go_to_the_late_sink_only(data: tuple[str, list[dict[str, Any]], list[dict[str, Any]]], batch_size: int, p: int) -> None:
    lateness, rows, late_rows = data
    on_time, _ = ref.split_late(rows, "ts", tc.LATENESS_MINUTES[lateness] * tc.MINUTE_US)
    pipe, columns = tc.aggregation_pipeline(rows, tc.ORDER_SENSITIVE, lateness=lateness)
    with ray_client(p) as client:
        job = client.materialize([pipe], mode="online", write_offline=True, batch_size=batch_size)
        stream = client.get_offline(pipe.name)
        late = job.late_events("events")
    label = f"Ray online (parallelism={p}, batch_size={batch_size}, lateness={lateness})"
    tc.assert_same_row_set(late, late_rows, [n for n, _ in tc.EVENT_FIELDS], f"{label} late_events('events')")
    want = tc.reference_aggregation(on_time, tc.ORDER_SENSITIVE, columns)
    tc.assert_rows_match(stream, want, columns, f"{label} vs reference over the on-time events")


@pytest.mark.parametrize("p", PARALLELISM)
@pytest.mark.parametrize("how", ["left", "inner"])
def test_design_worked_join_example_on_ray(p: int, how: str) -> None:
    users = [
        {"user_id": "u1", "registered_at": tc.at(10), "tier": 1, "note": None},
        {"user_id": "u1", "registered_at": tc.at(20), "tier": 2, "note": None},
    ]
    orders = [{"buyer_id": "u1", "purchased_at": tc.at(m), "price": 50.0, "note": None} for m in (5, 10, 15, 20, 25)]
    case = tc.JoinCase(threshold=0.0, expression_filter=True, how=how, aggregate=False, window="forever")
    pipe, columns = tc.join_pipeline(users, orders, case)
    check_all(pipe, tc.reference_join(users, orders, case), columns, p=p, batch_size=2, sources=["orders_src", "users_src"])


@pytest.mark.parametrize("p", PARALLELISM)
def test_every_aggregate_kind_on_ray(p: int) -> None:
    rows = [{"k": k, "ts": tc.at(m // 2), "v": None if m % 7 == 0 else float(m), "q": m, "tag": "xyz"[m % 3]}
            for m, k in zip(range(60), "abcdabdacbdd" * 5)]
    pipe, columns = tc.aggregation_pipeline(rows, tc.EVERY_KIND)
    check_all(pipe, tc.reference_aggregation(rows, tc.EVERY_KIND, columns), columns, p=p, batch_size=7, sources=["events"])


def test_online_store_gets_the_embedded_latest_values() -> None:
    rows = [{"k": k, "ts": tc.at(m), "v": float(m), "q": m, "tag": "x"} for m, k in zip(range(30), "abcab" * 6)]
    pipe, columns = tc.aggregation_pipeline(rows, [tc.AggCase("Sum", "q", "5m", 1)])
    keys = [{"k": k} for k in "abcz"]
    with ray_client(2) as client:
        client.materialize([pipe], mode="online", batch_size=4)
        on_ray = client.get_latest(pipe.name, keys)
    embedded = volga.Client(offline_store=volga.ParquetOfflineStore(tempfile.mkdtemp()))
    embedded.materialize([pipe], mode="online", batch_size=4)
    assert on_ray == embedded.get_latest(pipe.name, keys)
    assert on_ray[-1] is None and on_ray[0] is not None


@pytest.mark.parametrize("p", (1, 2))
def test_request_time_lookups_on_ray_equal_the_reference(p: int) -> None:
    """get_latest(at=T) and training at T after Ray runs equal the reference at T."""
    import math

    import polars as pl

    from tests import test_request_time as rt

    amounts = [1.0, None, math.nan, 2.5, -1.0, 4.0]
    events = [rt.swipe("ab"[i % 2], minute, amount=amounts[i % 6], merchant=("m1", None, "m2")[i % 3], items=i % 4)
              for i, minute in enumerate([0, 0, 0.5, 1, 2, 2, 4, 6, 6.5, 9])]
    windows = ["2m", "5m", "30s", "2m", "5m", "2m", "30s", "5m", "2m", "5m", "2m", "30s", "5m", "2m"]
    assert len(windows) == len(rt.KINDS)  # one window per aggregate kind
    lookups = [(card, rt.at(m)) for card in ("a", "b", "zz") for m in (0, 1, 2.5, 5, 6.5, 9, 9.5, 60)]
    with ray_client(p) as client:
        pipe = rt.every_kind_pipeline(events, windows)
        client.materialize([pipe], mode="online", batch_size=3)
        for card, when in lookups:
            (got,) = client.get_latest(pipe.name, [{"card": card}], at=when)
            rt.check_row(got, rt.reference_row(events, windows, card, when), f"Ray p={p}: {card} at {when}")
        client.materialize([pipe], mode="offline")
        spine = pl.DataFrame({"card": [c for c, _ in lookups], "timestamp": [t for _, t in lookups]})
        train = client.get_historical_features(spine, [pipe.name, f"{pipe.name}.at"]).drop("card", "timestamp").to_dicts()
    for (card, when), row in zip(lookups, train):
        want = rt.reference_row(events, windows, card, when)
        rt.check_row(None if row["at"] is None else row, None if want is None else {k: v for k, v in want.items() if k != "card"},
                     f"Ray p={p} training: {card} at {when}")
