"""Connector and Redis store figures (prints them; not part of ``make test``).

1. Kafka ingest: a KafkaSource reader alone (consume + JSON decode + validation), events/s
   on one core. Target: >= 300k events/s.
2. Kafka -> quickstart pipeline -> Redis online store, online mode: events/s end to end.
3. RedisOnlineStore batched ``get_latest``: keys/s and p50/p99 latency for 1 and 100 keys.
   Target: 100-key p99 <= 2 ms.

It starts its own Tansu broker and redis-server on free ports (``tests.support.servers``).

    .venv/bin/python benchmarks/connectors.py [--events 500000] [--lookups 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

import volga
from volga.api.entity import entity_schema
from volga.sources import KafkaSource
from volga.storage import ParquetOfflineStore
from volga.storage.online.redis import RedisOnlineStore
from volga.testing.quickstart import N_USERS, Order, UserSpentInfo, quickstart

# The throwaway servers are test-only code (tests/support, not shipped in the package);
# a benchmark runs from a checkout, so it reuses them from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.servers import KafkaBroker, RedisServer  # noqa: E402


def produce_orders(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(10)
    rng = np.random.default_rng(1)
    buyers = rng.integers(0, N_USERS, n)
    kinds = rng.integers(0, 2, n)
    prices = np.round(rng.random(n) * 100, 2)
    t0 = 1_735_689_600  # 2025-01-01
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
    for i in range(n):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + i))
        value = (
            f'{{"buyer_id":"{buyers[i]}","product_id":"p{i % 97}","product_type":"{"ON_SALE" if kinds[i] else "REGULAR"}",'
            f'"purchased_at":"{ts}","product_price":{prices[i]}}}'
        )
        while True:
            try:
                producer.produce(topic, key=str(buyers[i]), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20000 == 0:
            producer.poll(0)
    producer.flush(60)


def bench_kafka_ingest(bootstrap: str, topic: str, n: int) -> float:
    """Reader alone. Wall rate is bounded by how fast the broker serves; the processing rate
    counts only the time spent in polls that returned rows (consume + decode + validate)."""
    reader = KafkaSource(topic, bootstrap, follow=False).open(entity_schema(Order), name="orders")
    rows = 0
    busy = 0.0
    started = time.perf_counter()
    while not reader.finished:
        t = time.perf_counter()
        batch = reader.poll(20_000)
        if batch is not None:
            busy += time.perf_counter() - t
            rows += batch.height
        else:
            time.sleep(0.0005)  # as the engine does when no source has rows
    seconds = time.perf_counter() - started
    reader.close()
    assert rows == n, (rows, n)
    print(f"kafka ingest (reader: consume + JSON decode + validate): {rows / busy:,.0f} events/s of processing "
          f"(one thread), {rows / seconds:,.0f} events/s wall incl. waiting for the broker ({rows:,} events, {seconds:.2f}s)")
    return rows / busy


def bench_kafka_to_redis(bootstrap: str, topic: str, n: int, redis_url: str) -> float:
    store = RedisOnlineStore(redis_url, namespace="bench")
    client = volga.Client(store, ParquetOfflineStore(Path(tempfile.mkdtemp()) / "offline"))
    pipe = quickstart(lambda online: KafkaSource(topic, bootstrap, follow=False), idle_timeout=None)
    started = time.perf_counter()
    job = client.materialize([pipe], mode="online", params={"online": True}, batch_size=20_000)
    seconds = time.perf_counter() - started
    rows_in = job.metrics.rows_in["order_source"]
    assert rows_in == n, (rows_in, n)
    p50, p99 = job.metrics.latency_percentile(50), job.metrics.latency_percentile(99)
    print(f"kafka -> pipeline -> redis (online mode): {rows_in / seconds:,.0f} events/s "
          f"({rows_in:,} events, {job.metrics.rows_out['user_spent']:,} rows written, {seconds:.2f}s; "
          f"batch poll->store p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms)")
    store.close()
    return rows_in / seconds


def bench_get_latest(redis_url: str, lookups: int) -> dict[int, float]:
    store = RedisOnlineStore(redis_url, namespace="bench-lookups")
    schema = entity_schema(UserSpentInfo)
    n_keys = 100_000
    rng = np.random.default_rng(2)
    frame = pl.DataFrame(
        {
            "user_id": [str(i) for i in range(n_keys)],
            "timestamp": pl.Series(np.full(n_keys, 1_735_689_600_000_000)).cast(pl.Datetime("us", "UTC")),
            "avg_spent_7d": rng.random(n_keys) * 100,
            "num_purchases_1h": rng.integers(0, 20, n_keys),
            "max_price_1d": rng.random(n_keys) * 100,
        }
    )
    started = time.perf_counter()
    store.write("user_spent", schema, frame)
    print(f"redis store write: {n_keys / (time.perf_counter() - started):,.0f} rows/s ({n_keys:,} keys, one batch)")
    p99s = {}
    for size in (1, 100):
        requests = [pl.DataFrame({"user_id": [str(k) for k in rng.integers(0, n_keys, size)]}) for _ in range(lookups)]
        for request in requests[:50]:  # warm up
            store.get_latest("user_spent", request)
        times = np.empty(lookups)
        for i, request in enumerate(requests):
            t = time.perf_counter()
            store.get_latest("user_spent", request)
            times[i] = time.perf_counter() - t
        p50, p99 = np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3
        p99s[size] = p99
        print(f"redis get_latest, {size:>3} key(s): {size * lookups / times.sum():,.0f} keys/s, "
              f"{lookups / times.sum():,.0f} requests/s, p50 {p50:.3f} ms, p99 {p99:.3f} ms ({lookups:,} requests)")
    store.clear("user_spent")
    store.close()
    return p99s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--lookups", type=int, default=3000)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, events: {args.events:,}, partitions: {args.partitions}")
    with KafkaBroker() as broker, RedisServer() as redis:
        topic = "bench-orders"
        started = time.perf_counter()
        produce_orders(broker.bootstrap_servers, topic, args.events, args.partitions)
        print(f"produced {args.events:,} JSON orders in {time.perf_counter() - started:.1f}s")
        ingest = bench_kafka_ingest(broker.bootstrap_servers, topic, args.events)
        bench_kafka_to_redis(broker.bootstrap_servers, topic, args.events, redis.url)
        p99 = bench_get_latest(redis.url, args.lookups)
    print(json.dumps({"kafka_ingest_events_per_s": round(ingest), "get_latest_p99_ms": {str(k): round(v, 3) for k, v in p99.items()}}))
    print(f"targets: ingest >= 300k events/s: {'met' if ingest >= 300_000 else 'NOT met'}; "
          f"100-key p99 <= 2 ms: {'met' if p99[100] <= 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
