"""``assign(column, type, ...)`` never truncates silently.

An expression whose dtype the declared type cannot hold without loss is a definition
error; a row function value that does not fit (2.985 or -1.05 for ``int``, a string for
``float``, None for a non-Optional type) is a rejected row naming the column and value,
as a source rejects a field that does not fit. Offline and online alike.
"""

import datetime
from typing import Optional

import polars as pl
import pytest

import volga
from volga import Entity, entity, field, pipeline, source
from volga.api.frame import PipelineDefinitionError
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@entity
class Item:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    price: float
    qty: int


ROWS = [
    {"k": "a", "ts": T0, "price": 1.99, "qty": 2},
    {"k": "b", "ts": T0 + datetime.timedelta(seconds=1), "price": -1.05, "qty": 1},
    {"k": "c", "ts": T0 + datetime.timedelta(seconds=2), "price": 2.0, "qty": 3},
]


@source(Item)
def items() -> volga.Source:
    return MemorySource(ROWS)


@entity
class Scaled:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    price: float
    qty: int
    scaled: int


def test_float_expression_into_int_is_a_definition_error():
    with pytest.raises(PipelineDefinitionError, match=r"assign 'scaled': the expression gives float, which int cannot hold"):
        @pipeline(dependencies=[items], output=Scaled)
        def scaled(e: Entity) -> Entity:
            return e.assign("scaled", int, volga.col("price") * 1.5)


def test_lossless_expressions_are_accepted():
    @entity
    class AsFloat:
        k: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        price: float
        qty: int
        scaled: float

    @pipeline(dependencies=[items], output=AsFloat)
    def widened(e: Entity) -> Entity:  # int -> float is lossless
        return e.assign("scaled", float, volga.col("qty") * 2)

    @pipeline(dependencies=[items], output=Scaled)
    def rounded(e: Entity) -> Entity:  # an explicit conversion is the user's decision
        return e.assign("scaled", int, (volga.col("price") * 1.5).round().cast(int))


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_row_function_value_that_does_not_fit_is_rejected(mode):
    @pipeline(dependencies=[items], output=Scaled)
    def scaled_rows(e: Entity) -> Entity:
        return e.assign("scaled", int, lambda r: {"a": r["price"] * 1.5, "b": r["price"]}.get(r["k"], 3))

    client = volga.Client()
    job = client.materialize([scaled_rows], mode=mode, write_offline=True)
    out = client.get_offline("scaled_rows")
    assert out["k"].to_list() == ["c"] and out["scaled"].to_list() == [3]
    reasons = sorted(r.reason for r in job.rejected)
    assert len(reasons) == 2
    assert "assign 'scaled': value -1.05 does not fit int" in reasons[0]
    assert "assign 'scaled': value 2.98" in reasons[1] and reasons[1].endswith("does not fit int")
    assert sorted(r.record["k"] for r in job.rejected) == ["a", "b"]


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_none_for_non_optional_is_rejected_optional_keeps_it(mode):
    @entity
    class Maybe:
        k: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        price: float
        qty: int
        half: Optional[int]

    @pipeline(dependencies=[items], output=Scaled)
    def strict(e: Entity) -> Entity:
        return e.assign("scaled", int, lambda r: None if r["qty"] == 1 else r["qty"] * 10)

    @pipeline(dependencies=[items], output=Maybe)
    def lenient(e: Entity) -> Entity:
        return e.assign("half", Optional[int], lambda r: r["qty"] // 2 if r["qty"] % 2 == 0 else None)

    client = volga.Client()
    job = client.materialize([strict], mode=mode, write_offline=True)
    assert client.get_offline("strict")["scaled"].to_list() == [20, 30]
    (bad,) = job.rejected
    assert "returned None for non-Optional int" in bad.reason and bad.record["k"] == "b"
    job = client.materialize([lenient], mode=mode, write_offline=True)
    assert client.get_offline("lenient")["half"].to_list() == [1, None, None]
    assert job.rejected == []


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_expression_null_in_non_optional_column_is_rejected(mode):
    @pipeline(dependencies=[items], output=Scaled)
    def when(e: Entity) -> Entity:  # when/then without otherwise makes nulls from non-null input
        return e.assign("scaled", int, pl.when(volga.col("qty") > 1).then(volga.col("qty")))

    client = volga.Client()
    job = client.materialize([when], mode=mode, write_offline=True)
    assert client.get_offline("when")["k"].to_list() == ["a", "c"]
    (bad,) = job.rejected
    assert "null in non-Optional column(s) ['scaled']" in bad.reason and bad.record["k"] == "b"


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_transform_row_function_values_are_checked_too(mode):
    @entity
    class Out:
        k: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        price: float
        qty: int
        half: int

    @pipeline(dependencies=[items], output=Out)
    def halves(e: Entity) -> Entity:
        # inferred 'half: int' from the samples; at run time qty=1 gives 0.5, k="c" gives None
        return e.transform(lambda r: {**r, "half": None if r["k"] == "c" else (r["qty"] // 2 if r["qty"] % 2 == 0 else r["qty"] / 2)})

    client = volga.Client()
    job = client.materialize([halves], mode=mode, write_offline=True)
    assert client.get_offline("halves")["half"].to_list() == [1]
    reasons = sorted(r.reason for r in job.rejected)
    assert reasons == [
        "transform: column 'half': value 0.5 does not fit int",
        "transform: the row function returned None for non-Optional column 'half'",
    ]
