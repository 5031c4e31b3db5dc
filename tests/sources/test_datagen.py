"""DatagenSource: synthetic orders through the quickstart pipeline, both modes, against the batch of the same rows."""

from __future__ import annotations

import datetime
import time
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
        Order,
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
    source = DatagenSource(Reading, keys=[3, 5, 8], count=9000, start=START, seed=1)
    small, large = source.open(schema, name="r"), source.open(schema, name="r")
    parts = []
    while not small.finished:
        parts.append(small.poll(777))
    one = large.poll(100_000)
    assert pl.concat(parts).equals(one)
    assert set(one["sensor"]) == {3, 5, 8} and one.schema == pl.Schema(schema.polars_schema())
    assert one["at"].is_sorted() and one.null_count().sum_horizontal().item() == 0


def test_paced_and_endless() -> None:
    source = DatagenSource(Order, 1000.0, keys=2)
    assert not source.bounded
    reader = source.open(entity_schema(Order), name="orders")
    first = reader.poll(10_000)
    assert first is not None and first.height <= 5  # only what is due
    assert not reader.finished


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        DatagenSource(Order, -1)
    with pytest.raises(ValueError, match="keys"):
        DatagenSource(Order, keys=0)
    with pytest.raises(ValueError, match="unknown field"):
        DatagenSource(Order, count=1, values={"nope": [1]})
    with pytest.raises(TypeError, match="first argument must be the @entity class"):
        DatagenSource(1000.0, keys=2)  # type: ignore[arg-type]  # the pre-entity signature
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'entity'"):
        DatagenSource(rate_per_s=10.0)  # type: ignore[call-arg]


def test_positional_entity_rate_keys_generates_the_entity_columns_and_dtypes() -> None:
    source = DatagenSource(Order, 1000, 10)
    assert source.entity is Order and source.rate_per_s == 1000 and source.keys == 10 and not source.bounded
    reader = source.open(entity_schema(Order), name="orders")
    rows = []
    deadline = time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        batch = reader.poll(10_000)
        if batch is not None:
            rows.append(batch)
        time.sleep(0.01)
    df = pl.concat(rows)
    assert df.columns == entity_schema(Order).names
    assert df.schema == pl.Schema(entity_schema(Order).polars_schema())
    assert set(df["buyer_id"]) <= {str(k) for k in range(10)}
    assert df["purchased_at"].is_sorted() and df.null_count().sum_horizontal().item() == 0
    assert df["product_price"].min() >= 0 and df["product_price"].max() < 100  # type: ignore[operator]
    # rate respected roughly: ~500 rows in 0.5 s (bounds 2x either way)
    assert 250 <= df.height <= 1000, df.height


def test_entity_fields_drive_the_schema_and_the_seed_makes_rows_repeatable() -> None:
    @entity
    class Tick:
        device: int = field(key=True)
        region: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        reading: float
        count: int
        ok: bool
        label: Optional[str]

    def rows(seed: int) -> pl.DataFrame:
        source = DatagenSource(Tick, None, 5, count=2000, start=START, seed=seed, values={"label": ["a", "b"]})
        df = source.open(name="ticks").poll(10_000)  # schema defaults to the entity's
        assert df is not None
        return df

    one, again, other = rows(3), rows(3), rows(4)
    schema = entity_schema(Tick)
    assert one.height == 2000 and one.schema == pl.Schema(schema.polars_schema())
    assert one.equals(again) and not one.equals(other)
    assert set(one["device"]) == set(range(5)) and set(one["region"]) == {str(k) for k in range(5)}
    assert set(one["label"]) == {"a", "b"}  # values= still overrides a column
    assert set(one["ok"]) == {True, False} and one["count"].n_unique() > 100
    assert one["at"][0] == datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def test_a_source_of_another_entity_is_refused_at_open_naming_the_difference(tmp_path: Path) -> None:
    @entity
    class Payment:
        buyer_id: str = field(key=True)
        purchased_at: datetime.datetime = field(timestamp=True)
        product_price: int
        card: str

    source = DatagenSource(Payment, keys=3, count=10)
    with pytest.raises(ValueError) as info:
        source.open(entity_schema(Order), name="orders")
    message = str(info.value)
    assert "source 'orders': DatagenSource generates Payment rows but the source is declared for Order" in message
    assert "Payment has no field(s) ['product_id', 'product_type']" in message
    assert "Order has no field(s) ['card']" in message
    assert "field 'product_price' is int in Payment but float in Order" in message

    client = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "offline"))
    with pytest.raises(ValueError, match="DatagenSource generates Payment rows but the source is declared for Order"):
        client.materialize([quickstart(lambda online: DatagenSource(Payment, count=10))], mode="offline")  # type: ignore[arg-type]


def test_an_entity_with_the_same_fields_in_another_order_is_accepted() -> None:
    @entity
    class SameOrder:
        purchased_at: datetime.datetime = field(timestamp=True)
        product_price: float
        buyer_id: str = field(key=True)
        product_type: str
        product_id: str

    df = DatagenSource(SameOrder, count=5, keys=2).open(entity_schema(Order), name="orders").poll(10)
    assert df is not None and df.columns == entity_schema(Order).names
