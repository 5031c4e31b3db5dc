"""Definitions shared by the training tests: one event source, one pipeline, and on-demand
features over it covering every query and both evaluation paths.

- ``stats`` (pipeline, keyed by ``user``): windowed and forever aggregates per event;
- ``scaled``: a ``latest`` dependency, arithmetic only (the vectorised path);
- ``level``: an Optional ``latest`` dependency with a branch and a key parameter (row-wise);
- ``recent``: ``last_n`` (row-wise), may return None;
- ``windowed``: ``range`` (row-wise);
- ``boosted``: chains on ``scaled`` plus a ``latest`` read (vectorised too);
- ``combo``: chains on ``scaled`` plus a ``last_n`` read and a per-request argument.

Events are given through ``params={"rows": [...]}`` so that each test (or each prefix of
events, for the online reference) materializes exactly the rows it wants.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

import polars as pl

import volga
from volga import (
    Count,
    Entity,
    Last,
    Max,
    Sum,
    entity,
    field,
    on_demand,
    pipeline,
    source,
)
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def at(minute: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minute)


@entity
class Event:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float
    tag: str


@entity
class Stats:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n_5m: int
    total: float
    max_10m: Optional[float]  # evaluated at request time: null once the 10 minutes hold no event
    last_tag: str


@entity
class Scaled:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    value: float
    big: bool
    label: str


@entity
class Level:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    level: str
    seen: int


@entity
class Recent:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    count: int
    first_total: float
    tags: str


@entity
class Windowed:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    rows: int
    top: Optional[float]


@entity
class Boosted:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    boosted: float
    same_tag: bool


@entity
class Combo:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    score: float


@source(Event)
def events(rows: Any = ()) -> volga.Source:
    return MemorySource(list(rows))


@pipeline(dependencies=[events], output=Stats)
def stats(events: Entity) -> Entity:
    return events.group_by(keys=["user"]).aggregate([
        Count(window="5m", into="n_5m"),
        Sum(on="amount", window="forever", into="total"),
        Max(on="amount", window="10m", into="max_10m"),
        Last(on="tag", window="forever", into="last_tag"),
    ])


@on_demand(dependencies=[stats])
def scaled(s: Stats, factor: float = 2.0) -> Scaled:
    return Scaled(user=s.user, at=s.at, value=s.total * factor + s.n_5m, big=s.total > 5.0, label="x")


@on_demand(dependencies=[stats])
def level(s: Optional[Stats], user: str = "") -> Level:
    if s is None:
        return Level(user=user, at=T0, level="none", seen=0)
    return Level(user=user, at=s.at, level="hi" if s.total > 5 else "lo", seen=s.n_5m)


@on_demand(dependencies=[(stats, "last_n")])
def recent(rows: list[Stats]) -> Optional[Recent]:
    if not rows:
        return None
    return Recent(user=rows[-1].user, at=rows[-1].at, count=len(rows), first_total=rows[0].total,
                  tags="".join(r.last_tag for r in rows))


@on_demand(dependencies=[(stats, "range")])
def windowed(rows: list[Stats], user: str = "") -> Windowed:
    return Windowed(user=user, at=T0, rows=len(rows), top=max((r.total for r in rows), default=None))


@on_demand(dependencies=[scaled, stats])
def boosted(sc: Scaled, s: Stats) -> Boosted:
    return Boosted(user=s.user, at=sc.at, boosted=abs(-sc.value) / 2 - s.total, same_tag=s.last_tag == "x")


@on_demand(dependencies=[scaled, (stats, "last_n")])
def combo(sc: Scaled, rows: list[Stats], bonus: float = 0.0) -> Combo:
    return Combo(user=sc.user, at=sc.at, score=sc.value + len(rows) + bonus)


ON_DEMAND = [scaled, level, recent, windowed, boosted, combo]
FEATURES = ["stats", "scaled", "level", "recent", "windowed", "boosted", "combo"]


# The fixed events of the example-based tests (see tests/training/test_historical.py).
EVENTS = [
    {"user": "a", "at": at(0), "amount": 1.0, "tag": "x"},
    {"user": "a", "at": at(0), "amount": 2.0, "tag": "y"},
    {"user": "a", "at": at(3), "amount": 4.0, "tag": "z"},
    {"user": "b", "at": at(5), "amount": 0.0, "tag": "y"},
    {"user": "a", "at": at(10), "amount": 8.0, "tag": "x"},
]


def spine(users: list[str], minutes: list[float], **extra: Any) -> pl.DataFrame:
    """A polars spine: users at minutes after T0, plus ``extra`` columns."""
    return pl.DataFrame({"user": users, "timestamp": [at(m) for m in minutes], **extra})


def client_with(data_dir: Any, rows: Any, *, mode: str = "offline", history: int = 1000) -> volga.Client:
    """A client with every definition registered and ``rows`` materialized (``mode``); its
    in-memory online store keeps ``history`` rows per key."""
    client = volga.Client(volga.MemoryOnlineStore(history=history), data_dir=data_dir)
    client.register(*ON_DEMAND)
    if mode == "offline":
        client.materialize([stats], mode="offline", params={"rows": rows})
    else:
        client.materialize([stats], mode="online", params={"rows": rows})
    return client

# The value fields each feature adds (what a whole-feature request returns), by name.
FEATURE_FIELDS = {
    "stats": ["n_5m", "total", "max_10m", "last_tag"],
    "scaled": ["value", "big", "label"],
    "level": ["level", "seen"],
    "recent": ["count", "first_total", "tags"],
    "windowed": ["rows", "top"],
    "boosted": ["boosted", "same_tag"],
    "combo": ["score"],
}
