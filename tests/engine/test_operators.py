"""Every frame operator, as a row function and as a polars expression, in both modes."""

import datetime
from typing import Optional

import polars as pl
import pytest

import volga
from volga import Entity, entity, field, pipeline, source
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@entity
class Ride:
    rider: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    km: float
    city: Optional[str]


RIDES = [
    {"rider": "a", "at": T0, "km": 1.5, "city": "oslo"},
    {"rider": "b", "at": T0 + datetime.timedelta(minutes=1), "km": 12.0, "city": None},
    {"rider": "a", "at": T0 + datetime.timedelta(minutes=2), "km": 7.0, "city": "rome"},
]


@source(Ride)
def rides() -> volga.Source:
    return MemorySource(RIDES)


def run(client, mode, body, output):
    pipe = pipeline(dependencies=[rides], output=output)(body)
    client.materialize([pipe], mode=mode, write_offline=True, batch_size=1)
    return client.get_offline(pipe.name)


MODES = ["offline", "online"]


@entity
class Long:
    rider: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    km: float
    city: Optional[str]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pred", [volga.col("km") > 5, lambda r: r["km"] > 5], ids=["expr", "row"])
def test_filter(client, mode, pred):
    def long_rides(r: Entity) -> Entity:
        return r.filter(pred)

    assert run(client, mode, long_rides, Long)["km"].to_list() == [12.0, 7.0]


@entity
class Miles:
    rider: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    km: float
    miles: float
    city: Optional[str]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["expr", "row"])
def test_assign(client, mode, how):
    fn = (volga.col("km") * 0.621371) if how == "expr" else (lambda r: r["km"] * 0.621371)

    def miles(r: Entity) -> Entity:
        return r.assign("miles", float, fn)

    out = run(client, mode, miles, Miles)
    assert out["miles"].to_list() == pytest.approx([0.9320565, 7.456452, 4.349597])


@pytest.mark.parametrize("mode", MODES)
def test_transform_row_function_with_schema(client, mode):
    @entity
    class Upper:
        rider: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        city: str

    def upper(r: Entity) -> Entity:
        return r.transform(
            lambda row: {"rider": row["rider"], "at": row["at"], "city": (row["city"] or "?").upper()},
            schema={"rider": str, "at": datetime.datetime, "city": str},
        )

    assert run(client, mode, upper, Upper)["city"].to_list() == ["OSLO", "?", "ROME"]


@pytest.mark.parametrize("mode", MODES)
def test_transform_expressions(client, mode):
    @entity
    class Scaled:
        rider: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        km: float
        city: Optional[str]
        meters: float

    def scaled(r: Entity) -> Entity:
        return r.transform([(volga.col("km") * 1000).alias("meters")])

    assert run(client, mode, scaled, Scaled)["meters"].to_list() == [1500.0, 12000.0, 7000.0]


@entity
class KmOnly:
    rider: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    km: float


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["drop", "select"])
def test_drop_and_select_keep_keys_and_timestamp(client, mode, op):
    def narrow(r: Entity) -> Entity:
        return r.drop(["city"]) if op == "drop" else r.select(["km"])

    out = run(client, mode, narrow, KmOnly)
    assert out.columns == ["rider", "at", "km"] and out.height == 3


@pytest.mark.parametrize("mode", MODES)
def test_dropnull_makes_the_column_required(client, mode):
    @entity
    class WithCity:
        rider: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        km: float
        city: str

    def known(r: Entity) -> Entity:
        out = r.dropnull()
        assert not out.schema.field("city").optional
        return out

    assert run(client, mode, known, WithCity)["city"].to_list() == ["oslo", "rome"]


@pytest.mark.parametrize("mode", MODES)
def test_rename_moves_key_and_timestamp_roles(client, mode):
    @entity
    class Renamed:
        user: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        km: float
        town: Optional[str]

    def renamed(r: Entity) -> Entity:
        out = r.rename({"rider": "user", "at": "ts", "city": "town"})
        assert out.schema.keys == ("user",) and out.schema.timestamp == "ts"
        return out

    out = run(client, mode, renamed, Renamed)
    assert out["ts"].dtype == pl.Datetime("us", "UTC") and out["user"].to_list() == ["a", "b", "a"]


def test_rename_errors():
    with pytest.raises(volga.PipelineDefinitionError, match=r"rename: unknown column 'nope'"):
        pipeline(dependencies=[rides], output=Long)(lambda r: r.rename({"nope": "x"}))
    with pytest.raises(volga.PipelineDefinitionError, match=r"rename: would create duplicate column\(s\) \['km'\]"):
        pipeline(dependencies=[rides], output=Long)(lambda r: r.rename({"city": "km"}))
    with pytest.raises(volga.PipelineDefinitionError, match=r"drop: cannot drop key/timestamp column\(s\) \['rider'\]"):
        pipeline(dependencies=[rides], output=Long)(lambda r: r.drop(["rider"]))
    with pytest.raises(volga.PipelineDefinitionError, match=r"assign 'at': cannot overwrite a key or the timestamp"):
        pipeline(dependencies=[rides], output=Long)(lambda r: r.assign("at", int, volga.col("km")))
