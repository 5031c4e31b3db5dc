"""Rescaling window state (``OperatorSpec.rescale``), without Ray: rows run on ``old``
partitions, their states are redistributed over ``new`` partitions, the rest of the rows
run there; every output row equals the one a single operator gives for all the rows."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import volga
from tests import test_consistency as tc
from volga.ops.routing import SEQ, partition_ids
from volga.plan.compile import compile_plan
from volga.sources import MemorySource

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)

# every state a window keeps, including per-partition value numbering: CountDistinct's value
# ids and counts, the order labels of a Min/Max of strings
CASES = [
    tc.AggCase("Count", None, "10m", 1), tc.AggCase("Sum", "v", "30m", 1), tc.AggCase("Avg", "q", "forever", 1),
    tc.AggCase("Stddev", "v", "10m", 1), tc.AggCase("Min", "v", "30m", 1), tc.AggCase("Max", "q", "forever", 1),
    tc.AggCase("First", "tag", "10m", 1), tc.AggCase("Last", "v", "forever", 1), tc.AggCase("LastN", "q", "10m", 3),
    tc.AggCase("CountDistinct", "tag", "10m", 1), tc.AggCase("CountDistinct", "q", "forever", 1),
    tc.AggCase("Min", "tag", "30m", 1), tc.AggCase("Max", "tag", "forever", 1),
]


def window_spec_and_rows(events: list[dict[str, Any]]) -> tuple[Any, pl.DataFrame]:
    Event = tc.make_entity("Event", tc.EVENT_FIELDS, keys=["k"], timestamp="ts")
    intos = [f"{c.kind.lower()}_{c.on or 'rows'}_{i}" for i, c in enumerate(CASES)]
    Out = tc.make_entity("Out", [("k", str), ("ts", datetime.datetime)] + [(i, c.annotation()) for i, c in zip(intos, CASES)],
                         keys=["k"], timestamp="ts")

    @volga.source(Event)
    def events_source() -> volga.Source:
        return MemorySource(events)

    @volga.pipeline(dependencies=[events_source], output=Out)
    def features(e: volga.Entity) -> volga.Entity:
        return e.group_by(keys=["k"]).aggregate([c.volga(i) for i, c in zip(intos, CASES)])

    plan = compile_plan([features])
    window = next(s for s in plan.steps if s.kind == "window")
    source = plan.steps[window.inputs[0]]
    rows = pl.DataFrame(events, schema=source.schema.polars_schema(), orient="row").sort("ts", maintain_order=True)
    return window.spec, rows.with_columns(pl.int_range(0, rows.height, dtype=pl.Int64).alias(SEQ))


def run_partitioned(spec: Any, rows: pl.DataFrame, old: int, new: int, cut: int) -> pl.DataFrame:
    outputs = []
    ops = [spec.build(sequenced=True) for _ in range(old)]
    first = rows.slice(0, cut)
    part = partition_ids(first, ["k"], old)
    for q, op in enumerate(ops):
        outputs.append(op.apply(first.filter(pl.Series(part == q))))
    states = spec.rescale([op.snapshot() for op in ops], ("k",), new)
    assert len(states) == new
    ops = [spec.build(sequenced=True) for _ in range(new)]
    for op, state in zip(ops, states):
        op.restore(state)
    rest = rows.slice(cut)
    part = partition_ids(rest, ["k"], new)
    for q, op in enumerate(ops):
        outputs.append(op.apply(rest.filter(pl.Series(part == q))))
    return pl.concat(outputs).sort(SEQ)


def assert_same_rows(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.columns == want.columns and got.height == want.height
    for col in want.columns:
        a, b = got[col], want[col]
        if a.dtype == pl.Float64:
            assert np.allclose(a.fill_null(np.nan).to_numpy(), b.fill_null(np.nan).to_numpy(), rtol=1e-9, equal_nan=True), col
        else:
            assert a.to_list() == b.to_list(), col


def events_of(n: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"k": f"k{int(rng.integers(keys))}", "ts": T0 + datetime.timedelta(seconds=20 * (i // 3)),
         "v": None if rng.random() < 0.1 else float(rng.integers(17)), "q": int(rng.integers(5)),
         "tag": None if rng.random() < 0.1 else f"t{int(rng.integers(6))}"}
        for i in range(n)
    ]


@pytest.mark.parametrize(("old", "new"), [(2, 3), (3, 1), (1, 4)])
def test_window_state_redistributed_gives_the_rows_of_one_operator(old: int, new: int) -> None:
    spec, rows = window_spec_and_rows(events_of(3000, 23, seed=old * 10 + new))
    want = spec.build(sequenced=True).apply(rows)
    got = run_partitioned(spec, rows, old, new, cut=rows.height // 2)
    assert_same_rows(got, want)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300), keys=st.integers(1, 9), seed=st.integers(0, 10**6), old=st.integers(1, 4),
       new=st.integers(1, 4), cut_fraction=st.floats(0, 1))
def test_rescaling_at_any_point_changes_no_row(n: int, keys: int, seed: int, old: int, new: int, cut_fraction: float) -> None:
    spec, rows = window_spec_and_rows(events_of(n, keys, seed))
    want = spec.build(sequenced=True).apply(rows)
    got = run_partitioned(spec, rows, old, new, cut=int(rows.height * cut_fraction))
    assert_same_rows(got, want)
