"""Request-time lookups: latency, and what the online store holds per key.

    .venv/bin/python benchmarks/request_time.py [--keys 1000] [--events-per-key 100] [--lookups 20000]

1. In-process lookup (DESIGN.md "in-process on-demand lookup", target p99 <= 0.3 ms): a
   pipeline with 6 aggregates over 7-day windows (Count, Sum, Avg, Min, Max, Stddev), ~100
   events per key spread over the last 7 days, materialized into the in-memory online
   store; ``client.get_latest(name, [one key])`` evaluated now (every window re-evaluated
   from the key's stored events) and, for comparison, ``as_of="last_event"`` (the stored
   row as is), and ``get_on_demand`` of a function over it. p50/p99/p99.9 over random keys.
2. Bytes per key of the quickstart pipeline (``user_spent``: 7d/1h/1d windows) in the
   in-memory online store: the process's traced allocations after materializing plus the
   polars frames the store holds (tracemalloc does not see those), divided by the number of
   keys, with the request-time columns and without (``as_of`` reads only).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import volga  # noqa: E402
from volga import Avg, Count, Entity, Max, Min, Stddev, Sum, entity, field, on_demand, pipeline, source  # noqa: E402
from volga.sources import MemorySource  # noqa: E402


@entity
class Payment:
    card: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float


@entity
class CardStats:
    card: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n_7d: int
    sum_7d: float | None
    avg_7d: float | None
    min_7d: float | None
    max_7d: float | None
    std_7d: float | None


@entity
class Risk:
    card: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    score: float


def payments(keys: int, per_key: int, now: datetime.datetime) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    n = keys * per_key
    start_us = int((now - datetime.timedelta(days=7)).timestamp() * 1e6)
    ts = np.sort(rng.integers(start_us, start_us + 7 * 86_400_000_000, n))
    return pl.DataFrame({
        "card": rng.integers(0, keys, n).astype(str),
        "at": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
        "amount": np.round(rng.gamma(2.0, 20.0, n), 2),
    })


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms, p99.9 {np.percentile(ms, 99.9):.3f} ms"


def lookup_latency(keys: int, per_key: int, lookups: int) -> None:
    frame = payments(keys, per_key, datetime.datetime.now(datetime.timezone.utc))

    @source(Payment)
    def pays() -> volga.Source:
        return MemorySource(frame)

    @pipeline(dependencies=[pays], output=CardStats)
    def card_stats(p: Entity) -> Entity:
        return p.group_by(keys=["card"]).aggregate([
            Count(window="7d", into="n_7d"), Sum(on="amount", window="7d", into="sum_7d"),
            Avg(on="amount", window="7d", into="avg_7d"), Min(on="amount", window="7d", into="min_7d"),
            Max(on="amount", window="7d", into="max_7d"), Stddev(on="amount", window="7d", into="std_7d"),
        ])

    @on_demand(dependencies=[card_stats])
    def risk(s: CardStats) -> Risk:
        return Risk(card=s.card, at=s.at, score=(s.max_7d or 0.0) / ((s.avg_7d or 1.0) + 1.0) + s.n_7d / 100)

    client = volga.Client(data_dir=tempfile.mkdtemp())
    client.materialize([card_stats], mode="offline", write_online=True)
    cards = [str(i) for i in range(keys)]
    print(f"{frame.height:,} events, {keys:,} keys (~{per_key} per key over 7 days), 6 aggregates over 7-day windows")
    for label, call in (
        ("get_latest (request time: now)", lambda k: client.get_latest("card_stats", [{"card": k}])),
        ("get_latest (as_of='last_event')", lambda k: client.get_latest("card_stats", [{"card": k}], as_of="last_event")),
        ("get_on_demand (risk over it, now)", lambda k: client.get_on_demand("risk", [{"card": k}])),
    ):
        for k in cards[:200]:  # warm-up
            call(k)
        samples = []
        gc.disable()
        for _ in range(lookups):
            k = random.choice(cards)
            t = time.perf_counter()
            call(k)
            samples.append(time.perf_counter() - t)
        gc.enable()
        print(f"  {label:<36} {percentiles(samples)}   (target p99 <= 0.3 ms)")


def bytes_per_key(orders: int, users: int) -> None:
    from volga.testing.data import make_orders
    from volga.testing.quickstart import quickstart

    now = datetime.datetime.now(datetime.timezone.utc)
    rows = make_orders(orders, n_users=users, start=now - datetime.timedelta(days=7), days=7, seed=5)
    user_spent = quickstart(lambda online: MemorySource(rows), idle_timeout=None)
    for label, retain in (("with request-time state", True), ("rows only (history only)", False)):
        store = volga.MemoryOnlineStore(history=1000)
        client = volga.Client(store, data_dir=tempfile.mkdtemp())
        plan = client._plan([user_spent], None)
        out = plan.stored_schema("user_spent")
        job_rows = None

        def sink(name: str, batch: pl.DataFrame) -> None:
            nonlocal job_rows
            job_rows = batch

        from volga.runtime.local.executors import StreamOptions
        from volga.runtime.local.runtime import LocalRuntime

        LocalRuntime().start(plan, "offline", None, sink, block=True, options=StreamOptions())
        assert job_rows is not None
        batch = job_rows if retain else job_rows.select(user_spent.schema.names)
        schema = out if retain else user_spent.schema
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        store.write("user_spent", schema, batch, retain_us=plan.request_time["user_spent"].longest_window_us if retain else None)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        keys = store.latest_count("user_spent")
        # the store's rows are polars frames, which tracemalloc does not see
        columnar = store.snapshot(["user_spent"])["user_spent"]["rows"].estimated_size()
        print(f"  {label:<28} {(after - before + columnar) / keys:,.0f} bytes per key ({(after - before) / keys:,.0f} of Python "
              f"objects; {keys:,} keys, {batch.height / keys:,.0f} rows per key, {batch.width} columns)")


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--events-per-key", type=int, default=100)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args(argv)
    print("in-process lookups")
    lookup_latency(args.keys, args.events_per_key, args.lookups)
    print(f"online store bytes per key, quickstart pipeline ({args.orders:,} orders over 7 days, {args.users:,} users)")
    bytes_per_key(args.orders, args.users)


if __name__ == "__main__":
    main()
