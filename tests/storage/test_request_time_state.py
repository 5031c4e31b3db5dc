"""What every online store keeps for request-time lookups (``write(..., retain_us=)`` and
``window_rows``), run once per backend (the ``store`` fixture: memory and Redis)."""

from __future__ import annotations

import datetime

import polars as pl
import pytest

import volga
from volga.api.entity import entity, entity_schema, field
from volga.storage import OnlineStore

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
MINUTE_US = 60_000_000


@entity
class Tick:
    k: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    v: float


SCHEMA = entity_schema(Tick)


def ticks(key: str, minutes: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"k": [key] * len(minutes), "at": [T0 + datetime.timedelta(minutes=m) for m in minutes],
                         "v": [float(m) for m in minutes]})


def us(minute: int) -> int:
    return int((T0 + datetime.timedelta(minutes=minute)).timestamp() * 1_000_000)


def test_rows_within_the_retention_stay_beyond_history_and_evictions_are_recorded(store: OnlineStore, history: int) -> None:
    minutes = list(range(0, 100, 5))  # 20 rows, 5 minutes apart; history is 5 rows
    store.write("tick", SCHEMA, ticks("a", minutes[:10]), retain_us=30 * MINUTE_US)
    store.write("tick", SCHEMA, ticks("a", minutes[10:]), retain_us=30 * MINUTE_US)
    found = store.window_rows("tick", pl.DataFrame({"k": ["a", "zz"]}), us(90), us(95))
    assert found.columns == SCHEMA.names
    ts = SCHEMA.names.index("at")
    rows, missing = found.rows
    assert [r[ts] for r in rows] == [us(85), us(90), us(95)]  # the window, and the one row before it
    assert missing == [] and found.evicted_us[1] is None
    everything = store.window_rows("tick", pl.DataFrame({"k": ["a"]}), us(-100), us(1000)).rows[0]
    # newest is 95: rows at 65..95 are within 30 minutes of it (7 rows > history of 5); older ones were evicted
    assert [r[ts] for r in everything] == [us(m) for m in range(65, 100, 5)]
    assert store.window_rows("tick", pl.DataFrame({"k": ["a"]}), us(0), us(100)).evicted_us == [us(60)]
    # get_last_n / get_range still answer from the last `history` rows, as without retention
    assert store.get_last_n("tick", pl.DataFrame({"k": ["a"]}), 50).height == history
    assert store.get_range("tick", pl.DataFrame({"k": ["a"]}), None, None).height == history


def test_without_retention_the_history_bound_is_unchanged(store: OnlineStore, history: int) -> None:
    store.write("tick", SCHEMA, ticks("a", list(range(20))))
    rows = store.window_rows("tick", pl.DataFrame({"k": ["a"]}), us(0), us(100)).rows[0]
    assert len(rows) == history


def test_a_client_on_each_store_answers_at_request_time(store: OnlineStore, tmp_path) -> None:
    from tests.test_request_time import swipe, velocity_pipeline

    client = volga.Client(store, data_dir=tmp_path)
    events = [swipe("a", m, amount=float(m)) for m in range(0, 200, 5)]
    client.materialize([velocity_pipeline(events)], mode="online", batch_size=7)
    at = T0 + datetime.timedelta(minutes=200)
    (row,) = client.get_latest("velocity", [{"card": "a"}], at=at)
    assert (row.cnt_10m, row.sum_1h) == (2, float(sum(range(140, 200, 5))))  # [190, 200] and [140, 200]
    with pytest.raises(volga.RequestTimeUnavailable):
        client.get_latest("velocity", [{"card": "a"}], at=T0 + datetime.timedelta(minutes=60))
