"""@entity declarations: what is accepted, and the errors that name the culprit."""

import datetime
from typing import Optional

import polars as pl
import pytest

from volga import entity, field
from volga.api.entity import entity_schema


def test_keys_timestamp_and_types():
    @entity
    class Trip:
        city: str = field(key=True)
        driver: int = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        fare: Optional[float]
        tags: list[str]
        ok: bool

    schema = entity_schema(Trip)
    assert schema.keys == ("city", "driver")
    assert schema.timestamp == "at"
    assert schema.polars_schema() == {
        "city": pl.String, "driver": pl.Int64, "at": pl.Datetime("us", "UTC"),
        "fare": pl.Float64, "tags": pl.List(pl.String), "ok": pl.Boolean,
    }
    assert schema.field("fare").optional and not schema.field("ok").optional
    trip = Trip(city="x", driver=1, at=datetime.datetime(2024, 1, 1), tags=[], ok=True)
    assert trip.fare is None  # Optional fields default to None


def test_single_datetime_field_is_the_timestamp():
    @entity
    class Click:
        user: str = field(key=True)
        at: datetime.datetime

    assert entity_schema(Click).timestamp == "at"


def test_no_timestamp():
    with pytest.raises(ValueError, match=r"entity NoTime: no timestamp field"):
        @entity
        class NoTime:
            k: str = field(key=True)
            v: float


def test_ambiguous_datetimes_need_a_marker():
    with pytest.raises(ValueError, match=r"entity Two: no timestamp field.*candidates: \['a', 'b'\]"):
        @entity
        class Two:
            a: datetime.datetime
            b: datetime.datetime


def test_two_timestamps():
    with pytest.raises(ValueError, match=r"entity Twice: two timestamp fields \['a', 'b'\]"):
        @entity
        class Twice:
            a: datetime.datetime = field(timestamp=True)
            b: datetime.datetime = field(timestamp=True)


def test_unsupported_type_names_field():
    with pytest.raises(TypeError, match=r"entity Bad: field 'blob': unsupported type"):
        @entity
        class Bad:
            at: datetime.datetime
            blob: bytes


def test_optional_key_is_refused():
    with pytest.raises(TypeError, match=r"entity OptKey: key field 'k' cannot be Optional"):
        @entity
        class OptKey:
            k: Optional[str] = field(key=True)
            at: datetime.datetime


def test_reserved_name():
    with pytest.raises(ValueError, match=r"entity Res: field name '_volga_x' is reserved"):
        @entity
        class Res:
            at: datetime.datetime
            _volga_x: int


def test_duplicate_names_case_insensitive():
    with pytest.raises(ValueError, match=r"entity Dup: fields 'name' and 'Name' differ only in case"):
        @entity
        class Dup:
            at: datetime.datetime
            name: str
            Name: str


def test_duplicate_name_through_inheritance():
    @entity
    class Base:
        k: str = field(key=True)
        at: datetime.datetime

    with pytest.raises(ValueError, match=r"entity Child: field 'k' is declared twice"):
        @entity
        class Child(Base):
            k: str


def test_timestamp_must_be_datetime():
    with pytest.raises(TypeError, match=r"entity T: timestamp field 'at' must be datetime"):
        @entity
        class T:
            at: int = field(timestamp=True)


def test_field_declared_twice_in_the_class_body():
    with pytest.raises(ValueError, match=r"entity Twice2: field 'price' is declared twice in the class body"):
        @entity
        class Twice2:
            at: datetime.datetime
            price: float
            price: int  # noqa: F811 - the point of the test


def test_list_defaults_are_not_shared_between_instances():
    @entity
    class Tagged:
        at: datetime.datetime
        tags: list[str] = field(default=["new"])

    a, b = Tagged(at=datetime.datetime(2024, 1, 1)), Tagged(at=datetime.datetime(2024, 1, 1))
    a.tags.append("vip")
    assert b.tags == ["new"]


def test_keyless_entity_is_a_source_but_not_a_pipeline_or_on_demand_output():
    """A keyless entity can describe events (a source), never a feature looked up by key."""
    import volga
    from volga import Entity, on_demand, pipeline, source
    from volga.sources import MemorySource

    @entity
    class Tick:
        at: datetime.datetime = field(timestamp=True)
        price: float

    @source(Tick)
    def ticks() -> volga.Source:
        return MemorySource([])

    with pytest.raises(TypeError, match=r"@pipeline output Tick has no key field; mark .* field\(key=True\)"):
        @pipeline(dependencies=[ticks], output=Tick)
        def same(t: Entity) -> Entity:
            return t

    with pytest.raises(TypeError, match=r"on_demand now: the output Tick has no key field"):
        @on_demand(dependencies=[])
        def now() -> Tick: ...
