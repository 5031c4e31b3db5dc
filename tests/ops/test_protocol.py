"""The operator contract (``volga.ops.protocol``): every step of every plan the compilers
produce holds a picklable spec whose operators a runtime drives through the protocol only."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from ray import cloudpickle  # what ships a plan to Ray actors (user functions pickle by value)

from volga import Count, Sum
from volga.ops.protocol import FINISHED_WM, NO_WM, Operator, OperatorSpec, check_state
from volga.ops.routing import SEQ
from volga.plan.compile import PhysicalPlan, compile_plan
from volga.sources import MemorySource
from volga.stream import ListSink, StreamingContext, TumblingWindow
from volga.stream.plan import compile_stream
from volga.testing.quickstart import order_records, quickstart

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def entity_plan() -> PhysicalPlan:
    return compile_plan([quickstart(lambda online: MemorySource(order_records(50)))])


def stream_plan(*, fuse_keyed: bool) -> PhysicalPlan:
    """One DataStream job with every kind of DataStream operator."""
    ctx = StreamingContext()
    rows = [{"user": f"u{i % 3}", "ms": i, "t": T0 + dt.timedelta(seconds=i)} for i in range(20)]
    clicks = ctx.from_collection(rows).timestamp_assigner(lambda r: r["t"])
    views = ctx.from_collection(rows).timestamp_assigner(lambda r: r["t"])
    keyed = clicks.key_by("user")
    keyed.window(TumblingWindow("5s")).aggregate([Count(into="n"), Sum(on="ms", into="total")]).sink(ListSink())
    keyed.aggregate([Count(window="10s", into="n")]).sink(ListSink())
    clicks.map(lambda r: (r["user"], 1)).key_by(lambda kv: kv[0]).reduce(lambda a, b: (a[0], a[1] + b[1])).sink(ListSink())
    clicks.key_by("user").join(views.key_by("user"), how="left").sink(ListSink())
    clicks.key_by("user").join(views.key_by("user"), kind="interval", how="inner", between=("-1s", "1s")).sink(ListSink())
    clicks.union(views).sink(ListSink())
    return compile_stream(list(ctx._sinks), fuse_keyed=fuse_keyed).plan


PLANS = {
    "entity": entity_plan,
    "stream": lambda: stream_plan(fuse_keyed=False),
    "stream, fused": lambda: stream_plan(fuse_keyed=True),
}


@pytest.mark.parametrize("which", list(PLANS))
def test_every_step_holds_a_picklable_spec_that_builds_protocol_operators(which: str) -> None:
    plan = PLANS[which]()
    operators = [s for s in plan.steps if s.kind != "source"]
    assert operators, "the plan has operator steps"
    fused = any(type(s.spec).__name__ == "FusedReduceSpec" for s in operators)
    assert fused == (which == "stream, fused")
    for step in plan.steps:
        if step.kind == "source":
            assert step.spec is None
            continue
        assert isinstance(step.spec, OperatorSpec), step.describe()
        spec = cloudpickle.loads(cloudpickle.dumps(step.spec.detached()))  # what a Ray actor receives
        op = spec.build()
        assert isinstance(op, Operator), f"[{step.id}] {step.describe()}: {type(op).__name__}"
        if which != "stream, fused":  # fused reduces run only embedded
            assert isinstance(spec.build(sequenced=True), Operator), step.describe()
        state = op.snapshot()
        check_state(state, where=step.describe())
        fresh = spec.build()
        fresh.restore(state)  # an empty state restores into a fresh operator
        assert fresh.buffered_rows == 0 and fresh.drain_rejected() == [] and fresh.late_rows() is None


def test_each_job_builds_fresh_operators_from_one_plan() -> None:
    plan = entity_plan()
    first, second = plan.build_operators(), plan.build_operators()
    assert first.keys() == second.keys() == {s.id for s in plan.steps if s.spec is not None}
    assert all(first[i] is not second[i] for i in first)


def test_input_keys_say_where_each_operator_runs() -> None:
    plan = entity_plan()
    keys = {s.kind: s.spec.input_keys() for s in plan.steps if s.spec is not None}
    assert keys["chain"] is None  # row-local: runs wherever its input is
    assert keys["window"] == [("buyer_id",)]
    assert keys["join"] == [("buyer_id",), ("user_id",)]


def test_a_join_is_driven_by_its_inputs_watermarks() -> None:
    from volga.runtime.local.runtime import open_sources

    plan = entity_plan()
    ops = plan.build_operators()
    readers = open_sources(plan, "offline", None)
    polled = {i: r.poll(10**6) for i, r in readers.items()}
    join = next(s for s in plan.steps if s.kind == "join")
    chain = join.inputs[0]
    orders = plan.steps[chain].inputs[0]
    left, wm = ops[chain].advance([(polled[orders], (123, False))])
    assert left is not None and left.height and wm == (123, False)  # a row operator: the watermark passes through
    op = ops[join.id]
    # the right input has promised nothing yet: left rows wait for it
    out, wm = op.advance([(left, (FINISHED_WM, True)), (None, (NO_WM, False))])
    assert (out is None or out.height == 0) and op.buffered_rows == left.height and wm == (NO_WM, False)
    # the right input goes idle: it holds nothing back, so every left row comes out (a left join)
    out, wm = op.advance([(None, (500, False)), (None, (NO_WM, True))])
    assert out is not None and out.height == left.height and op.buffered_rows == 0 and wm == (500, False)
    # finished with nothing held: a typed, empty frame (what a batch run writes)
    out, _ = op.advance([(None, (FINISHED_WM, True)), (None, (FINISHED_WM, True))])
    assert out is not None and out.height == 0 and out.schema == join.schema.polars_schema()


def test_a_sequenced_window_keeps_each_rows_arrival_number() -> None:
    from volga.runtime.local.runtime import open_sources

    plan = entity_plan()
    ops = plan.build_operators()
    readers = open_sources(plan, "offline", None)
    polled = {i: r.poll(10**6) for i, r in readers.items()}
    join = next(s for s in plan.steps if s.kind == "join")
    window = next(s for s in plan.steps if s.kind == "window")
    assert window.spec is not None and window.inputs == [join.id]
    chain = join.inputs[0]
    left, _ = ops[chain].advance([(polled[plan.steps[chain].inputs[0]], (FINISHED_WM, True))])
    done = (FINISHED_WM, True)
    joined, _ = ops[join.id].advance([(left, done), (polled[join.inputs[1]], done)])
    assert joined is not None and joined.height > 1
    numbered = joined.with_columns(pl.int_range(100, 100 + joined.height, dtype=pl.Int64).alias(SEQ))
    out, wm = window.spec.build(sequenced=True).advance([(numbered, (7, False))])
    plain, _ = ops[window.id].advance([(joined, (7, False))])
    assert out is not None and plain is not None and wm == (7, False)
    assert out[SEQ].to_list() == numbered[SEQ].to_list()  # each output row keeps its input row's number
    assert out.drop(SEQ).equals(plain)  # and the values are the plain window's
