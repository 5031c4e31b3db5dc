"""Nullability is inferred through the plan and checked against the output entity.

A left join's right columns, an aggregate over a nullable column, Stddev, an Optional
``assign`` and an Optional source field can be null; ``dropnull`` removes that. A
non-Optional output field that can be null is refused when the pipeline is defined,
naming the field and the step that made it nullable. Aggregates over non-null inputs are
never null (every window holds the current event), so ``avg: float`` stays valid.
"""

import datetime
from typing import Optional

import polars as pl
import pytest

import volga
from volga import Avg, Count, CountDistinct, Entity, LastN, Max, Min, Stddev, Sum, entity, field, pipeline, source
from volga.api.frame import PipelineDefinitionError
from volga.sources import MemorySource


@entity
class User:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    country: str
    age: Optional[int]


@entity
class Order:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    price: float
    coupon: Optional[float]


@source(User)
def users() -> volga.Source:
    return MemorySource([])


@source(Order)
def orders() -> volga.Source:
    return MemorySource([])


@entity
class WithCountry:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    price: float
    coupon: Optional[float]
    country: str
    age: Optional[int]


def test_left_join_right_column_declared_non_optional_is_refused_naming_field_and_step():
    with pytest.raises(PipelineDefinitionError) as info:
        @pipeline(dependencies=[orders, users], output=WithCountry)
        def enriched(o: Entity, u: Entity) -> Entity:
            return o.join(u, on=["user_id"], how="left")
    message = str(info.value)
    assert "'country'" in message and "can be null" in message
    assert "join(how='left') with User" in message
    assert "'age'" not in message  # declared Optional: fine


def test_inner_join_or_dropnull_makes_it_valid():
    @pipeline(dependencies=[orders, users], output=WithCountry)
    def inner(o: Entity, u: Entity) -> Entity:
        return o.join(u, on=["user_id"], how="inner")

    @pipeline(dependencies=[orders, users], output=WithCountry)
    def dropped(o: Entity, u: Entity) -> Entity:
        return o.join(u, on=["user_id"], how="left").dropnull(["country"])

    assert inner.schema.field("country").dtype == pl.String()


@entity
class OptionalCountry:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    price: float
    coupon: Optional[float]
    country: Optional[str]
    age: Optional[int]


def test_left_join_into_optional_field_is_fine():
    @pipeline(dependencies=[orders, users], output=OptionalCountry)
    def enriched(o: Entity, u: Entity) -> Entity:
        return o.join(u, on=["user_id"], how="left")


@entity
class Stats:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int
    n_coupons: int
    distinct: int
    recent: list[float]
    total: float
    avg: float
    low: float
    high: float


def test_aggregates_over_non_null_columns_are_never_null():
    @pipeline(dependencies=[orders], output=Stats)
    def stats(o: Entity) -> Entity:
        return o.group_by("user_id").aggregate([
            Count(window="1h", into="n"),
            Count(on="coupon", window="1h", into="n_coupons"),  # counts never null
            CountDistinct(on="coupon", window="1h", into="distinct"),
            LastN(3, on="coupon", window="1h", into="recent"),  # [] when none
            Sum(on="price", window="1h", into="total"),
            Avg(on="price", window="1h", into="avg"),
            Min(on="price", window="1h", into="low"),
            Max(on="price", window="1h", into="high"),
        ])

    assert not any(f.optional for f in stats.schema.fields)


@entity
class CouponAvg:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    avg_coupon: float


def test_aggregate_over_nullable_column_is_nullable():
    with pytest.raises(PipelineDefinitionError, match=r"'avg_coupon'.*can be null.*Avg\(into='avg_coupon'\).*'coupon'.*Optional in Order"):
        @pipeline(dependencies=[orders], output=CouponAvg)
        def coupons(o: Entity) -> Entity:
            return o.group_by("user_id").aggregate([Avg(on="coupon", window="1h", into="avg_coupon")])


def test_aggregate_over_left_joined_column_names_the_join():
    @entity
    class AgeAvg:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        first_country: str

    with pytest.raises(PipelineDefinitionError, match=r"'first_country'.*join\(how='left'\) with User"):
        @pipeline(dependencies=[orders, users], output=AgeAvg)
        def ages(o: Entity, u: Entity) -> Entity:
            joined = o.join(u, on=["user_id"], how="left")
            from volga import First
            return joined.group_by("user_id").aggregate([First(on="country", into="first_country")])


def test_stddev_is_always_nullable():
    @entity
    class Spread:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        sd: float

    with pytest.raises(PipelineDefinitionError, match=r"'sd'.*Stddev\(into='sd'\): null below two values"):
        @pipeline(dependencies=[orders], output=Spread)
        def spread(o: Entity) -> Entity:
            return o.group_by("user_id").aggregate([Stddev(on="price", window="1h", into="sd")])


def test_optional_source_field_and_optional_assign_are_nullable():
    @entity
    class Out:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        price: float
        coupon: float

    with pytest.raises(PipelineDefinitionError, match=r"'coupon'.*Optional in Order"):
        @pipeline(dependencies=[orders], output=Out)
        def passthrough(o: Entity) -> Entity:
            return o

    @entity
    class Out2:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        price: float
        coupon: Optional[float]
        extra: int

    with pytest.raises(PipelineDefinitionError, match=r"'extra'.*assign 'extra' declares it Optional"):
        @pipeline(dependencies=[orders], output=Out2)
        def assigned(o: Entity) -> Entity:
            return o.assign("extra", Optional[int], lambda r: None)

    @pipeline(dependencies=[orders], output=Out2)
    def assigned_ok(o: Entity) -> Entity:
        return o.assign("extra", int, lambda r: 1)


def test_expression_reading_a_nullable_column_is_nullable():
    @entity
    class Out:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        price: float
        coupon: Optional[float]
        net: float

    with pytest.raises(PipelineDefinitionError, match=r"'net'.*reads nullable 'coupon'"):
        @pipeline(dependencies=[orders], output=Out)
        def net(o: Entity) -> Entity:
            return o.transform((volga.col("price") - volga.col("coupon")).alias("net"))

    @pipeline(dependencies=[orders], output=Out)
    def net_filled(o: Entity) -> Entity:
        return o.transform((volga.col("price") - volga.col("coupon").fill_null(0.0)).alias("net")).dropnull(["net"])


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_left_join_with_no_match_never_puts_none_in_a_str_field(mode):
    """End to end: the declared-Optional route gives None; the dropnull route drops the row."""
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)

    @source(Order)
    def some_orders() -> volga.Source:
        return MemorySource([{"user_id": "u1", "at": t0, "price": 2.0, "coupon": None},
                             {"user_id": "u2", "at": t0, "price": 3.0, "coupon": None}])

    @source(User)
    def some_users() -> volga.Source:
        return MemorySource([{"user_id": "u1", "at": t0, "country": "FR", "age": None}])

    @pipeline(dependencies=[some_orders, some_users], output=WithCountry)
    def known(o: Entity, u: Entity) -> Entity:
        return o.join(u, on=["user_id"], how="left").dropnull(["country"])

    client = volga.Client()
    client.materialize([known], mode=mode, write_offline=True)
    out = client.get_offline("known")
    assert out["user_id"].to_list() == ["u1"] and out["country"].to_list() == ["FR"]


def test_expression_rewriting_a_column_from_a_nullable_one_makes_it_nullable():
    @entity
    class Out:
        user_id: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        price: float
        coupon: Optional[float]

    with pytest.raises(PipelineDefinitionError, match=r"'price'.*reads nullable 'coupon'"):
        @pipeline(dependencies=[orders], output=Out)
        def net(o: Entity) -> Entity:
            return o.transform((volga.col("price") - volga.col("coupon")).alias("price"))
