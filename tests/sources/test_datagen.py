"""DatagenSource: synthetic orders through the quickstart pipeline, both modes, against the batch of the same rows."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import polars as pl
import pytest

import volga
from volga.api.entity import entity, entity_schema, field
from volga.sources import DatagenSource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.testing.quickstart import N_USERS, Order, assert_same_rows, batch_result, quickstart

START = datetime.datetime(2025, 1, 1)


def orders_source(count: int, rate_per_s: float | None = None) -> DatagenSource:
    return DatagenSource(
        rate_per_s,
        keys=N_USERS,
        count=count,
        start=START,
        event_interval="90s",
        values={"product_type": ["ON_SALE", "REGULAR"], "product_id": ["p1", "p2", "p3"]},
        seed=7,
    )


def all_rows(source: DatagenSource) -> pl.DataFrame:
    reader = source.open(entity_schema(Order), name="orders")
    parts = []
    while not reader.finished:
        batch = reader.poll(1000)
        if batch is not None:
            parts.append(batch)
    return pl.concat(parts)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_quickstart_from_datagen_matches_the_batch_of_the_same_rows(tmp_path: Path, mode: str) -> None:
    rows = all_rows(orders_source(3000))
    client = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "offline"))
    rate = 20_000.0 if mode == "online" else None

    job = client.materialize(
        [quickstart(lambda online: orders_source(3000, rate))], mode=mode, params={"online": True}, write_offline=True
    )  # type: ignore[arg-type]

    assert job.metrics.rows_in["order_source"] == 3000
    assert_same_rows(client.get_offline("user_spent"), batch_result(rows, tmp_path))


def test_rows_do_not_depend_on_poll_sizes_and_every_type_is_generated() -> None:
    @entity
    class Reading:
        sensor: int = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        value: float
        ok: bool
        note: Optional[str]
        tags: list[str]
        seen_at: datetime.datetime

    schema = entity_schema(Reading)
    source = DatagenSource(keys=[3, 5, 8], count=9000, start=START, seed=1)
    small, large = source.open(schema, name="r"), source.open(schema, name="r")
    parts = []
    while not small.finished:
        parts.append(small.poll(777))
    one = large.poll(100_000)
    assert pl.concat(parts).equals(one)
    assert set(one["sensor"]) == {3, 5, 8} and one.schema == pl.Schema(schema.polars_schema())
    assert one["at"].is_sorted() and one.null_count().sum_horizontal().item() == 0


def test_paced_and_endless() -> None:
    source = DatagenSource(1000.0, keys=2)
    assert not source.bounded
    reader = source.open(entity_schema(Order), name="orders")
    first = reader.poll(10_000)
    assert first is not None and first.height <= 5  # only what is due
    assert not reader.finished


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        DatagenSource(-1)
    with pytest.raises(ValueError, match="keys"):
        DatagenSource(keys=0)
    with pytest.raises(ValueError, match="unknown field"):
        DatagenSource(count=1, values={"nope": [1]}).open(entity_schema(Order), name="orders")
