"""A multi-partition topic: per-partition watermarks make online == offline == the reference.

Orders are keyed by user, so each partition holds its users' orders in event-time order,
while the partitions are fetched in whatever order the broker answers. With one watermark
for the whole source, whichever partition is read first made the others' rows late.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.support.servers import KafkaBroker
from volga.sources import KafkaSource
from volga.storage.online.redis import RedisOnlineStore
from volga.testing import reference as ref
from volga.testing.quickstart import N_USERS, assert_same_rows, latest_rows, offline_rows, online_latest, quickstart, wait_until
from volga.testing.quickstart import order_records as make_orders

from .test_kafka import create_topic, new_client, produce

pytestmark = pytest.mark.integration


def reference_rows(orders: list[dict[str, Any]]) -> pl.DataFrame:
    """The quickstart features computed by the plain-Python reference, one key at a time."""
    rows = [
        {**o, "purchased_at": datetime.datetime.fromisoformat(o["purchased_at"])}
        for o in orders if o["product_type"] == "ON_SALE"
    ]
    aggs = [
        ref.Agg("Avg", on="product_price", window_us=7 * 86_400_000_000, into="avg_spent_7d"),
        ref.Agg("Count", window_us=3_600_000_000, into="num_purchases_1h"),
        ref.Agg("Max", on="product_price", window_us=86_400_000_000, into="max_price_1d"),
    ]
    out: list[dict[str, Any]] = []
    for user in sorted({r["buyer_id"] for r in rows}):
        mine = ref.sort_events([r for r in rows if r["buyer_id"] == user], "purchased_at")
        out += ref.window_aggregate(mine, ["buyer_id"], "purchased_at", aggs)
    frame = pl.DataFrame(out).rename({"buyer_id": "user_id", "purchased_at": "timestamp"})
    return frame.select(
        "user_id",
        pl.col("timestamp").dt.cast_time_unit("us"),
        pl.col("avg_spent_7d").cast(pl.Float64),
        pl.col("num_purchases_1h").cast(pl.Int64),
        pl.col("max_price_1d").cast(pl.Float64),
    )


def test_a_three_partition_topic_online_equals_offline_equals_the_reference(
    kafka_broker: KafkaBroker, redis_server: Any, tmp_path: Path, unique: str
) -> None:
    orders = make_orders(3000)
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, unique, partitions=3)
    produce(bootstrap, unique, orders)
    want = reference_rows(orders)

    offline = new_client(tmp_path / "offline-run")
    offline.materialize([quickstart(lambda online: KafkaSource(unique, bootstrap))], mode="offline")
    assert_same_rows(offline.get_offline("user_spent"), want)

    store = RedisOnlineStore(redis_server.url, namespace=unique)
    client = new_client(tmp_path / "online-run", store)
    pipe = quickstart(lambda online: KafkaSource(unique, bootstrap, group_id=unique, follow=online))
    job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True, batch_size=100)
    try:
        wait_until(lambda: offline_rows(client) == want.height, what="every output row")
    finally:
        job.stop()
    assert job.late_events("order_source").height == 0
    assert job.metrics.late.get("order_source", 0) == 0
    online_rows = client.get_offline("user_spent")
    assert_same_rows(online_rows, want)
    # Row for row, in processing order: the rows of each user in the same sequence.
    assert online_rows.sort("user_id", maintain_order=True).equals(offline.get_offline("user_spent").sort("user_id", maintain_order=True))
    assert online_latest(client, [str(i) for i in range(N_USERS)]) == latest_rows(offline.get_offline("user_spent"))
    store.close()
