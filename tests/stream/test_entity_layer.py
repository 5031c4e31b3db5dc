"""The Entity API compiles to the DataStream layer: a pipeline prints as DataStream
operators and, run through a StreamingContext, gives exactly the client's offline rows."""

import datetime

import polars as pl
import polars.testing
import pytest
from stream_runs import Run

import volga
from volga import Avg, Count, Entity, Max, pipeline, source
from volga.api import nodes
from volga.plan.compile import compile_plan
from volga.sources import MemorySource
from volga.stream import ListSink, StreamingContext, plan_of
from volga.testing.data import make_orders, make_users
from volga.testing.quickstart import Order, User, UserSpentInfo

START = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
USERS = make_users(30, start=START)
ORDERS = make_orders(3000, n_users=30, start=START, days=3)


@source(User)
def user_source() -> volga.Source:
    return MemorySource(USERS)


@source(Order)
def order_source() -> volga.Source:
    return MemorySource(ORDERS)


@pipeline(dependencies=[user_source, order_source], output=UserSpentInfo)
def user_spent(users: Entity, orders: Entity) -> Entity:
    on_sale = orders.filter(volga.col("product_type") == "ON_SALE")
    per_user = on_sale.join(users, left_on=["buyer_id"], right_on=["user_id"], how="left")
    return per_user.group_by(keys=["buyer_id"]).aggregate([
        Avg(on="product_price", window="7d", into="avg_spent_7d"),
        Count(window="1h", into="num_purchases_1h"),
        Max(on="product_price", window="1d", into="max_price_1d"),
    ]).rename(columns={"purchased_at": "timestamp", "buyer_id": "user_id"})


def test_pipeline_prints_as_datastream_plan() -> None:
    text = plan_of(user_spent)
    assert "from_source(user_source as User)" in text
    assert "from_source(order_source as Order)" in text
    assert "filter([(col(\"product_type\")) == (\"ON_SALE\")])" in text
    assert "join(kind='asof', how='left')" in text
    assert "key_by(['buyer_id'])" in text and "aggregate([Avg(on='product_price', window='7d', into='avg_spent_7d')" in text
    assert "select(rename" in text


@pytest.mark.parametrize("run", [Run("batch", 257), Run("streaming", 257), Run("streaming", 257, ray=2)], ids=str)
def test_pipeline_through_datastream_equals_client_offline(tmp_path, run: Run) -> None:
    client = volga.Client(data_dir=tmp_path)
    client.materialize([user_spent], mode="offline")
    want = client.get_offline("user_spent")
    ctx = run.context()
    out = ListSink()
    stream = ctx.from_pipeline(user_spent)
    stream.sink(out)
    run.execute(ctx)
    got = out.frame()
    assert got.height == want.height > 100
    polars.testing.assert_frame_equal(got.select(want.columns), want, check_row_order=False)
    # and the DataStream operators apply to it like to any stream
    assert list(stream.schema.keys) == ["user_id"]
    assert isinstance(got, pl.DataFrame)


def test_pipeline_and_its_datastream_compile_to_the_same_steps() -> None:
    """One compiler: ``from_pipeline`` puts the pipeline's own nodes in the DataStream graph,
    so the job has the steps ``client.materialize`` runs, with the same operators."""
    entity = compile_plan([user_spent])
    ctx = StreamingContext()
    ctx.from_pipeline(user_spent).sink(ListSink())
    stream = ctx.compile().plan
    assert [(s.kind, s.inputs) for s in stream.steps] == [(s.kind, s.inputs) for s in entity.steps]
    assert [s.kind for s in stream.steps] == ["source", "chain", "source", "join", "window", "chain"]
    for want, got in zip(entity.steps, stream.steps):
        if want.kind == "source":
            assert got.source.name == want.source.name
        elif want.kind == "chain":  # the pipeline's own stateless nodes (run by StatelessChain in a RowChain)
            assert [type(n) for n in got.spec.steps] == [type(n) for n in want.spec.steps]
        else:  # the Entity API's as-of join and window operators, with the same definitions
            assert type(got.spec) is type(want.spec)
            assert got.spec.fingerprint() == want.spec.fingerprint()
    # the filter node is the pipeline's own object, not a copy
    (node,) = stream.steps[1].spec.steps
    assert isinstance(node, nodes.FilterNode)


def test_datastream_steps_after_a_pipeline_fuse_into_its_chain() -> None:
    ctx = StreamingContext()
    out = ListSink()
    ctx.from_pipeline(user_spent).map(lambda r: r["user_id"]).sink(out)
    plan = ctx.compile()
    last = plan.plan.steps[-1]
    assert [type(n).__name__ for n in last.spec.steps] == ["RenameNode", "SelectNode", "RowNode"]
    assert plan.explain().splitlines()[-1].endswith("-> map(<lambda>) <- [4] => sink(ListSink(0 items))")
