"""Join output columns: the left columns, then the right's value columns only.

DESIGN.md "Join": the output timestamp is the left row's; the right join keys and the
right timestamp are not carried; colliding value names get the suffix (error if taken).
"""

import datetime
from typing import Optional

import pytest

import volga
from volga import Entity, entity, field, pipeline, source
from volga.api.frame import PipelineDefinitionError
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


@entity
class Ord:
    buyer_id: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    amt: float


@entity
class Usr:
    user_id: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    tier: int


@entity
class J:
    buyer_id: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    amt: float
    tier: Optional[int]


@entity
class JInner:
    buyer_id: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    amt: float
    tier: int


USERS = [{"user_id": "u", "ts": at(10), "tier": 1}, {"user_id": "u", "ts": at(20), "tier": 2}]
ORDERS = [{"buyer_id": "u", "ts": at(m), "amt": float(m)} for m in (5, 10, 15, 20, 25)] + [
    {"buyer_id": "x", "ts": at(30), "amt": 30.0}
]


def _pipelines(how: str):
    @source(Usr)
    def users() -> volga.Source:
        return MemorySource(USERS)

    @source(Ord)
    def orders() -> volga.Source:
        return MemorySource(ORDERS)

    seen = {}

    @pipeline(dependencies=[orders, users], output=J if how == "left" else JInner)
    def joined(o: Entity, u: Entity) -> Entity:
        out = o.join(u, left_on=["buyer_id"], right_on=["user_id"], how=how)
        seen["columns"] = out.columns
        seen["timestamp"] = out.schema.timestamp
        seen["keys"] = list(out.schema.keys)
        return out

    return joined, seen


@pytest.mark.parametrize("how", ["left", "inner"])
def test_join_output_is_left_columns_plus_right_value_columns(how):
    _, seen = _pipelines(how)  # the output check passes: no ts_right, no user_id
    assert seen == {"columns": ["buyer_id", "ts", "amt", "tier"], "timestamp": "ts", "keys": ["buyer_id"]}


@pytest.mark.parametrize("mode", ["offline", "online"])
@pytest.mark.parametrize("batch_size", [1, 3, 100])
@pytest.mark.parametrize(
    "how, expected",
    [
        ("left", [(5, None), (10, 1), (15, 1), (20, 2), (25, 2), (30, None)]),
        ("inner", [(10, 1), (15, 1), (20, 2), (25, 2)]),
    ],
)
def test_join_rows_offline_and_online(client, mode, batch_size, how, expected):
    joined, _ = _pipelines(how)
    client.materialize([joined], mode=mode, write_offline=True, batch_size=batch_size)
    out = client.get_offline("joined").sort("ts")
    assert out.columns == ["buyer_id", "ts", "amt", "tier"]
    assert [(round(r["amt"]), r["tier"]) for r in out.iter_rows(named=True)] == expected
    assert out["ts"].to_list() == [at(m) for m, _ in expected]  # the left row's timestamp


def test_right_timestamp_named_like_a_left_value_is_not_carried():
    @entity
    class Profile:
        buyer_id: str = field(key=True)
        amt: datetime.datetime = field(timestamp=True)  # same name as a left value column
        score: float

    @source(Profile)
    def profiles() -> volga.Source:
        return MemorySource([])

    @source(Ord)
    def orders() -> volga.Source:
        return MemorySource([])

    @entity
    class Out:
        buyer_id: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        amt: float
        score: Optional[float]

    @pipeline(dependencies=[orders, profiles], output=Out)
    def scored(o: Entity, p: Entity) -> Entity:
        return o.join(p, on="buyer_id")

    assert scored is not None


def test_matched_row_time_can_be_kept_by_assigning_it_first(client):
    @entity
    class Out:
        buyer_id: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        amt: float
        tier: Optional[int]
        tier_since: Optional[datetime.datetime]

    @source(Usr)
    def users() -> volga.Source:
        return MemorySource(USERS)

    @source(Ord)
    def orders() -> volga.Source:
        return MemorySource(ORDERS)

    @pipeline(dependencies=[orders, users], output=Out)
    def since(o: Entity, u: Entity) -> Entity:
        return o.join(u.assign("tier_since", datetime.datetime, volga.col("ts")), left_on="buyer_id", right_on="user_id")

    client.materialize([since], mode="offline")
    assert client.get_offline("since").sort("ts")["tier_since"].to_list() == [None, at(10), at(10), at(20), at(20), None]


def test_colliding_value_names_get_the_suffix_or_an_error():
    @entity
    class Usr2:
        user_id: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        amt: float

    @source(Usr2)
    def users2() -> volga.Source:
        return MemorySource([])

    @source(Ord)
    def orders() -> volga.Source:
        return MemorySource([])

    @entity
    class Out:
        buyer_id: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        amt: float
        amt_right: Optional[float]

    @pipeline(dependencies=[orders, users2], output=Out)
    def suffixed(o: Entity, u: Entity) -> Entity:
        return o.join(u, left_on=["buyer_id"], right_on=["user_id"])

    with pytest.raises(PipelineDefinitionError, match=r"right column 'amt' collides with 'amt' and 'amt_right'"):

        @pipeline(dependencies=[orders, users2], output=Out)
        def clash(o: Entity, u: Entity) -> Entity:
            return o.assign("amt_right", float, volga.col("amt")).join(u, left_on=["buyer_id"], right_on=["user_id"])
