"""Rescaling DataStream state (``volga.stream.rescaling``), without Ray: a keyed operator
runs on ``old`` partitions, its states are redistributed over ``new`` partitions at a
random micro-batch, the rest runs there; the rows equal a single operator's."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volga import Count, Max, Sum
from volga.ops.protocol import FINISHED_WM, NotRescalable
from volga.ops.routing import SEQ, partition_ids
from volga.plan.compile import PhysicalPlan
from volga.runtime.local.executors import sort_by_time
from volga.runtime.local.runtime import open_sources
from volga.stream import ListSink, StreamingContext, TumblingWindow
from volga.stream.plan import compile_stream

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def events(n: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"user": f"u{int(rng.integers(keys))}", "ms": int(rng.integers(100)), "t": T0 + dt.timedelta(seconds=i // 2)}
            for i in range(n)]


def keyed_steps(rows: list[dict[str, Any]]) -> tuple[PhysicalPlan, dict[str, int], dict[int, pl.DataFrame]]:
    """A plan with each rescalable DataStream operator, and each one's input rows."""
    ctx = StreamingContext()
    clicks = ctx.from_collection(rows).timestamp_assigner(lambda r: r["t"])
    by_user = clicks.key_by("user")
    by_user.reduce(lambda a, b: {**b, "ms": a["ms"] + b["ms"]}).sink(ListSink())
    by_user.aggregate([Count(window="5s", into="n"), Max(on="ms", window="forever", into="top")]).sink(ListSink())
    by_user.window(TumblingWindow("3s")).aggregate([Count(into="n"), Sum(on="ms", into="total")]).sink(ListSink())
    clicks.key_by(lambda r: r["user"]).reduce(lambda a, b: {**b, "ms": max(a["ms"], b["ms"])}).sink(ListSink())
    plan = compile_stream(list(ctx._sinks), fuse_keyed=False).plan
    ops = plan.build_operators()
    readers = open_sources(plan, "offline", None)
    results: dict[int, pl.DataFrame] = {}
    for step in plan.steps:
        if step.spec is None:
            reader, parts = readers[step.id], []
            while not reader.finished:
                if (part := reader.poll(10**6)) is not None:
                    parts.append(part)
            results[step.id] = sort_by_time(pl.concat(parts), step.schema.timestamp)
        elif step.spec.input_keys() is None:  # row-local steps before the keyed ones
            results[step.id] = ops[step.id].apply(results[step.inputs[0]])  # type: ignore[attr-defined]
    keyed = {}
    for step in plan.steps:
        if step.spec is not None and step.spec.input_keys() is not None:
            label = type(step.spec.build()).__name__ + ("(fn)" if "__key" in step.spec.input_keys()[0] else "")
            keyed[label] = step.id
    inputs = {}
    for step_id in keyed.values():
        rows_in = results[plan.steps[step_id].inputs[0]]
        inputs[step_id] = rows_in.with_columns(pl.int_range(0, rows_in.height, dtype=pl.Int64).alias(SEQ))
    return plan, keyed, inputs


def drive(spec: Any, rows: pl.DataFrame, chunk: int, old: int, new: int, cut: int | None) -> pl.DataFrame:
    """Rows in micro-batches of ``chunk`` on ``old`` partitions, rescaled to ``new`` before
    batch ``cut`` (None: never); each batch's watermark is the next batch's first time."""
    keys = list(spec.input_keys()[0])
    ts_col = next(c for c in rows.columns if rows[c].dtype == pl.Datetime("us", "UTC"))
    ts = rows[ts_col].dt.epoch("us").to_numpy()
    ops = [spec.build(sequenced=True) for _ in range(old)]
    out = []
    starts = list(range(0, rows.height, chunk))
    for i, start in enumerate(starts):
        if i == cut:
            states = spec.rescale([op.snapshot() for op in ops], tuple(keys), new)
            ops = [spec.build(sequenced=True) for _ in range(new)]
            for op, state in zip(ops, states):
                op.restore(state)
        batch = rows.slice(start, chunk)
        wm = int(ts[start + chunk]) if start + chunk < rows.height else int(ts[-1])
        part = partition_ids(batch, keys, len(ops))
        for q, op in enumerate(ops):
            mine = batch.filter(pl.Series(part == q))
            got, _ = op.advance([(mine if mine.height else None, (wm, False))])
            out.append(got)
    for op in ops:
        got, _ = op.advance([(None, (FINISHED_WM, True))])
        out.append(got)
    frames = [f for f in out if f is not None and f.height]
    return pl.concat(frames).sort(SEQ) if frames else pl.DataFrame()


def same(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.height == want.height and got.columns == want.columns
    for col in want.columns:
        assert got[col].to_list() == want[col].to_list(), col


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 200), keys=st.integers(1, 7), seed=st.integers(0, 10**6), old=st.integers(1, 4),
       new=st.integers(1, 4), chunk=st.integers(1, 40), cut=st.integers(0, 10))
def test_keyed_datastream_state_moves_to_the_partition_its_key_now_routes_to(
    n: int, keys: int, seed: int, old: int, new: int, chunk: int, cut: int,
) -> None:
    plan, keyed, inputs = keyed_steps(events(n, keys, seed))
    assert set(keyed) == {"KeyedReduceOp", "KeyedReduceOp(fn)", "AggregateOp", "EventWindowOp"}
    for step_id in keyed.values():
        spec, rows = plan.steps[step_id].spec, inputs[step_id]
        want = drive(spec, rows, chunk, 1, 1, None)
        same(drive(spec, rows, chunk, old, new, cut), want)


def test_joins_are_not_redistributed() -> None:
    ctx = StreamingContext()
    a = ctx.from_collection(events(10, 3, 1)).timestamp_assigner(lambda r: r["t"]).key_by("user")
    b = ctx.from_collection(events(10, 3, 2)).timestamp_assigner(lambda r: r["t"]).key_by("user")
    a.join(b).sink(ListSink())
    plan = compile_stream(list(ctx._sinks)).plan
    join = next(s for s in plan.steps if s.kind == "join")
    assert join.spec is not None
    with pytest.raises(NotRescalable, match="join"):
        join.spec.rescale([join.spec.build().snapshot()], ("user",), 2)
