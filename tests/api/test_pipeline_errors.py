"""@source/@pipeline definitions: validated when defined, errors name the culprit."""

import datetime
from typing import Optional

import pytest

import volga
from volga import Avg, Count, Entity, Max, Sum, entity, field, pipeline, source
from volga.sources import MemorySource


@entity
class User:
    user_id: str = field(key=True)
    registered_at: datetime.datetime = field(timestamp=True)
    name: str


@entity
class Order:
    buyer_id: str = field(key=True)
    product_type: str
    purchased_at: datetime.datetime = field(timestamp=True)
    product_price: float


@entity
class Spent:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    total: float


@source(User)
def users() -> volga.Source:
    return MemorySource([])


@source(Order)
def orders() -> volga.Source:
    return MemorySource([])


def spend(o: Entity) -> Entity:
    return o.group_by("buyer_id").aggregate([Sum(on="product_price", window="1d", into="total")]).rename(
        {"buyer_id": "user_id", "purchased_at": "timestamp"}
    )


def test_a_valid_pipeline_is_data():
    p = pipeline(dependencies=[orders], output=Spent)(lambda o: spend(o))
    assert p.schema.names == ["user_id", "timestamp", "total"]


def test_output_mismatch_lists_each_field():
    @entity
    class Wrong:
        user_id: str = field(key=True)
        timestamp: datetime.datetime = field(timestamp=True)
        total: int
        extra: str

    with pytest.raises(volga.PipelineDefinitionError) as err:
        @pipeline(dependencies=[orders], output=Wrong)
        def wrong(o: Entity) -> Entity:
            return spend(o)
    text = str(err.value)
    assert "pipeline wrong: output does not match Wrong" in text
    assert "'total': declared int but the pipeline produces float" in text
    assert "'extra': declared str but the pipeline does not produce it" in text


def test_unknown_column_in_expression_names_pipeline():
    with pytest.raises(volga.PipelineDefinitionError, match=r"pipeline bad \(argument 'o' from orders\): filter: invalid expression"):
        @pipeline(dependencies=[orders], output=Spent)
        def bad(o: Entity) -> Entity:
            return spend(o.filter(volga.col("no_such_column") > 1))


def test_unknown_column_in_row_function_names_it():
    with pytest.raises(volga.PipelineDefinitionError, match=r"filter: the row function reads unknown column 'prodct_type'"):
        @pipeline(dependencies=[orders], output=Spent)
        def typo(o: Entity) -> Entity:
            return spend(o.filter(lambda r: r["prodct_type"] == "ON_SALE"))


def test_non_boolean_filter():
    with pytest.raises(volga.PipelineDefinitionError, match="filter: expression must be boolean, got float"):
        @pipeline(dependencies=[orders], output=Spent)
        def nonbool(o: Entity) -> Entity:
            return spend(o.filter(volga.col("product_price") * 2))


def test_aggregate_type_errors():
    with pytest.raises(TypeError, match=r"Avg\(on='product_type', into='a'\) needs a numeric column"):
        @pipeline(dependencies=[orders], output=Spent)
        def avg_str(o: Entity) -> Entity:
            return o.group_by("buyer_id").aggregate([Avg(on="product_type", window="1d", into="a")])
    with pytest.raises(volga.PipelineDefinitionError, match=r"unknown column 'price'"):
        @pipeline(dependencies=[orders], output=Spent)
        def no_col(o: Entity) -> Entity:
            return o.group_by("buyer_id").aggregate([Max(on="price", window="1d", into="m")])
    with pytest.raises(volga.PipelineDefinitionError, match=r"output column 'n' is used twice"):
        @pipeline(dependencies=[orders], output=Spent)
        def twice(o: Entity) -> Entity:
            return o.group_by("buyer_id").aggregate([Count(window="1d", into="n"), Count(window="1h", into="n")])


def test_join_errors():
    with pytest.raises(volga.PipelineDefinitionError, match=r"join: key types differ: 'product_price' is float but 'user_id' is str"):
        @pipeline(dependencies=[orders, users], output=Spent)
        def j1(o: Entity, u: Entity) -> Entity:
            return spend(o.join(u, left_on=["product_price"], right_on=["user_id"]))
    with pytest.raises(volga.PipelineDefinitionError, match=r"join right_on: unknown column 'uid' in User"):
        @pipeline(dependencies=[orders, users], output=Spent)
        def j2(o: Entity, u: Entity) -> Entity:
            return spend(o.join(u, left_on=["buyer_id"], right_on=["uid"]))
    with pytest.raises(volga.PipelineDefinitionError, match=r"how must be 'left' or 'inner'"):
        @pipeline(dependencies=[orders, users], output=Spent)
        def j3(o: Entity, u: Entity) -> Entity:
            return spend(o.join(u, left_on=["buyer_id"], right_on=["user_id"], how="outer"))


def test_join_collision_rule_suffixes_right_columns():
    @entity
    class Profile:
        buyer_id: str = field(key=True)
        updated_at: datetime.datetime = field(timestamp=True)
        product_type: str

    @source(Profile)
    def profiles() -> volga.Source:
        return MemorySource([])

    seen = {}

    @entity
    class Out:
        buyer_id: str = field(key=True)
        purchased_at: datetime.datetime = field(timestamp=True)
        product_type: str
        product_price: float
        product_type_right: Optional[str]

    @pipeline(dependencies=[orders, profiles], output=Out)
    def joined(o: Entity, p: Entity) -> Entity:
        out = o.join(p, on=["buyer_id"])
        seen["columns"] = out.columns
        return out

    assert seen["columns"] == ["buyer_id", "product_type", "purchased_at", "product_price", "product_type_right"]


def test_dependency_count_and_unknown_names():
    with pytest.raises(TypeError, match=r"pipeline two: takes 1 input frame\(s\) without defaults but declares 2 dependencies"):
        @pipeline(dependencies=[orders, users], output=Spent)
        def two(o: Entity) -> Entity:
            return spend(o)

    @pipeline(dependencies=["not_defined_anywhere"], output=Spent)
    def later(o: Entity) -> Entity:
        return spend(o)

    with pytest.raises(volga.PipelineDefinitionError, match=r"pipeline later: unknown dependency 'not_defined_anywhere'"):
        volga.Client().explain([later])


def test_dependency_cycle_is_reported(tmp_path):
    @pipeline(dependencies=["cyc_b"], output=Spent)
    def cyc_a(b: Entity) -> Entity:
        return b

    # cyc_a is known by name (every definition is recorded), so closing the cycle fails at once
    with pytest.raises(volga.PipelineDefinitionError, match=r"pipeline cyc_b: dependency cycle cyc_a -> cyc_b -> cyc_a"):
        @pipeline(dependencies=["cyc_a"], output=Spent)
        def cyc_b(a: Entity) -> Entity:
            return a

    client = volga.Client(data_dir=tmp_path)
    client.register(cyc_a)  # cyc_b was never defined: cyc_a's dependency is simply unknown
    with pytest.raises(volga.PipelineDefinitionError, match=r"pipeline cyc_a: unknown dependency 'cyc_b'"):
        client.explain([cyc_a])


def test_source_needs_entity_and_defaults():
    with pytest.raises(TypeError, match="@source expects an @entity class"):
        source(dict)
    with pytest.raises(TypeError, match=r"@source s: parameter 'path' needs a default"):
        @source(Order)
        def s(path):
            return MemorySource([])
    with pytest.raises(ValueError, match="@source lateness '5 minutes' is not a duration"):
        source(Order, lateness="5 minutes")


def test_source_must_return_a_source(tmp_path):
    @source(Order)
    def not_a_source() -> volga.Source:
        return [1, 2, 3]

    @pipeline(dependencies=[not_a_source], output=Spent)
    def p(o: Entity) -> Entity:
        return spend(o)

    with pytest.raises(TypeError, match=r"@source not_a_source must return a volga.Source, got list"):
        volga.Client(data_dir=tmp_path).materialize([p])
