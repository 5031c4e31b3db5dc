"""Partitioned sources on Ray: a multi-row-group Parquet file read offline by several
source actors (each a contiguous run of row groups) gives the embedded runtime's rows in
the embedded runtime's order, ties in event time included."""

from __future__ import annotations

import datetime
import pathlib
import random
from typing import Any

import polars as pl
import pytest

import volga
from volga import Count, Entity, Last, Max, Sum, entity, field, pipeline, source
from volga.api.entity import entity_schema
from volga.plan.compile import compile_plan
from volga.runtime.ray.topology import split_plan
from volga.sources import ParquetSource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
ROW_GROUP = 50


@entity
class POrder:
    buyer_id: str = field(key=True)
    purchased_at: datetime.datetime = field(timestamp=True)
    price: float
    note: str


@entity
class PUser:
    user_id: str = field(key=True)
    registered_at: datetime.datetime = field(timestamp=True)
    tier: int


@entity
class PSpend:
    buyer_id: str = field(key=True)
    purchased_at: datetime.datetime = field(timestamp=True)
    num_orders: int
    spent: float
    max_tier: int | None
    last_note: str


def write_files(directory: pathlib.Path, n_orders: int = 1000, n_users: int = 40) -> tuple[pathlib.Path, pathlib.Path]:
    """Orders out of time order across row groups, with many equal timestamps (ties are
    broken by file position, the order one reader sees), and a null price (rejected)."""
    rng = random.Random(7)
    orders = pl.DataFrame({
        "buyer_id": [f"u{rng.randrange(n_users)}" for _ in range(n_orders)],
        "purchased_at": [T0 + datetime.timedelta(minutes=rng.randrange(120)) for _ in range(n_orders)],
        "price": [None if i == 333 else float(rng.randrange(1, 50)) for i in range(n_orders)],
        "note": [f"n{i}" for i in range(n_orders)],
    })
    users = pl.DataFrame({
        "user_id": [f"u{rng.randrange(n_users)}" for _ in range(n_users * 3)],
        "registered_at": [T0 + datetime.timedelta(minutes=rng.randrange(-30, 90)) for _ in range(n_users * 3)],
        "tier": [rng.randrange(4) for _ in range(n_users * 3)],
    })
    orders_path, users_path = directory / "orders.parquet", directory / "users.parquet"
    orders.write_parquet(orders_path, row_group_size=ROW_GROUP)
    users.write_parquet(users_path, row_group_size=17)
    return orders_path, users_path


def pipelines(orders_path: pathlib.Path, users_path: pathlib.Path) -> tuple[Any, Any]:
    @source(POrder)
    def porders() -> volga.Source:
        return ParquetSource(orders_path, batch_rows=30)

    @source(PUser)
    def pusers() -> volga.Source:
        return ParquetSource(users_path, batch_rows=30)

    @pipeline(dependencies=[porders], output=POrder)
    def cheap_orders(porders: Entity) -> Entity:
        return porders.filter(lambda o: o["price"] < 25)

    @pipeline(dependencies=[porders, pusers], output=PSpend)
    def pspend(porders: Entity, pusers: Entity) -> Entity:
        joined = porders.filter(volga.col("price") > 3).join(
            pusers, left_on=["buyer_id"], right_on=["user_id"], how="left"
        )
        return joined.group_by(keys=["buyer_id"]).aggregate([
            Count(window="30m", into="num_orders"),
            Sum(on="price", window="1h", into="spent"),
            Max(on="tier", window="forever", into="max_tier"),
            Last(on="note", window="forever", into="last_note"),
        ])

    return cheap_orders, pspend


# ------------------------------------------------------------------ without Ray


def drain(reader: Any) -> list[pl.DataFrame]:
    out = []
    while (batch := reader.poll(64)) is not None:
        out.append(batch)
    return out


def test_parquet_partitions_are_contiguous_row_group_runs(tmp_path: pathlib.Path) -> None:
    orders_path, _ = write_files(tmp_path)
    src = ParquetSource(orders_path, batch_rows=30)
    assert src.partitions() == 1000 // ROW_GROUP
    schema = entity_schema(POrder)
    whole = src.open(schema, name="porders")
    want = pl.concat(drain(whole))
    for count in (1, 2, 3, 7, 20):
        parts, starts, rejected = [], [], []
        for i in range(count):
            reader = src.open_partition(schema, i, count, name="porders")
            starts.append(reader.first_position)
            got = drain(reader)
            assert reader.finished
            parts.append(pl.concat(got) if got else pl.DataFrame(schema=schema.polars_schema()))
            rejected += [r.reason for r in reader.rejected]
        assert pl.concat(parts).equals(want), count
        assert starts == sorted(starts) and starts[0] == 0
        # each part starts at a row group boundary: the file row index of its first row
        assert all(s % ROW_GROUP == 0 for s in starts)
        assert len(rejected) == 1 and rejected[0].startswith("row 334:"), rejected
    with pytest.raises(ValueError, match="21 partitions asked"):
        src.open_partition(schema, 0, 21, name="porders")


def test_a_partitioned_source_gets_several_source_actors(tmp_path: pathlib.Path) -> None:
    _cheap, spend = pipelines(*write_files(tmp_path))
    plan = compile_plan([spend])
    runtime = volga.RayRuntime(parallelism=3)
    ids = [s.id for s in plan.source_steps()]
    topology = split_plan(plan, 3, {i: runtime.source_readers(ParquetSource(tmp_path / "orders.parquet"), "offline") for i in ids})
    assert [(s.kind, s.parallelism) for s in topology.stages] == [("source", 3), ("source", 3), ("keyed", 3)]
    assert "in 3 partitions" in topology.explain()
    assert runtime.source_readers(ParquetSource(tmp_path / "orders.parquet"), "online") == 1
    assert runtime.source_readers(ParquetSource(tmp_path / "missing.parquet"), "offline") == 1


# ------------------------------------------------------------------ on Ray


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("p", [2, 3])
def test_parquet_read_in_partitions_gives_the_embedded_rows_in_order(tmp_path: pathlib.Path, p: int) -> None:
    orders_path, users_path = write_files(tmp_path)
    cheap, spend = pipelines(orders_path, users_path)
    embedded = volga.Client(offline_store=volga.ParquetOfflineStore(tmp_path / "embedded"))
    embedded.materialize([cheap, spend], mode="offline")

    client = volga.Client(offline_store=volga.ParquetOfflineStore(tmp_path / "ray"), runtime=volga.RayRuntime(parallelism=p))
    job = client.materialize([cheap, spend], mode="offline", batch_size=64)
    for name in ("cheap_orders", "pspend"):
        want, got = embedded.get_offline(name), client.get_offline(name)
        assert want.height > 100
        assert got.equals(want), f"{name} at parallelism {p} differs from the embedded run"

    explain = job.explain()
    assert explain.count(f"(source in {p} partitions, x{p})") == 2, explain
    sources = [s for s in job.stage_stats() if s.stage.startswith(("stage 0 ", "stage 1 "))]
    assert [s.actors for s in sources] == [p, p], sources
    assert sorted(s.rows_in for s in sources) == [120, 999], sources  # one order row rejected (null price)
    assert job.metrics.rows_in == {"porders": 999, "pusers": 120}
    assert [r.reason.split(":")[0] for r in job.rejected] == ["row 334"]
