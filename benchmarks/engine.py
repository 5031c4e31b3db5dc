"""Engine benchmark: the quickstart pipeline offline and online vs hand-written polars.

    .venv/bin/python benchmarks/engine.py [--orders 2000000] [--rate 100000]

Each measurement runs in a fresh process (so peak memory is its own) over the same
generated data (Parquet in a temp dir). Prints one line per measurement, then ratios
against hand-written polars (DESIGN.md "Numbers to reach"). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

START = datetime.datetime(2025, 1, 1)
N_USERS = 10_000


# -- the pipeline, as a user writes it ------------------------------------------------
def build(data: Path, *, filter_kind: str, aggregates: str, online_rate: float | None = None):
    import volga
    from volga import Avg, Count, Entity, Max, Min, Sum, entity, field, pipeline, source
    from volga.sources import MemorySource, ParquetSource

    @entity
    class User:
        user_id: str = field(key=True)
        registered_at: datetime.datetime = field(timestamp=True)
        name: str

    @entity
    class Order:
        buyer_id: str = field(key=True)
        product_id: str
        product_type: str
        purchased_at: datetime.datetime = field(timestamp=True)
        product_price: float

    six = aggregates == "6"
    spent_fields = {
        "user_id": str, "timestamp": datetime.datetime, "avg_spent_7d": float, "num_purchases_1h": int,
        "max_price_1d": float, **({"sum_spent_1d": float, "min_price_1d": float, "num_purchases_7d": int} if six else {}),
    }
    namespace = {"__annotations__": spent_fields, "user_id": field(key=True), "timestamp": field(timestamp=True)}
    UserSpentInfo = entity(type("UserSpentInfo", (), namespace))
    users = pl.read_parquet(data / "users.parquet")

    @source(User)
    def user_source() -> volga.Source:
        return MemorySource(users)

    @source(Order)
    def order_source() -> volga.Source:
        if online_rate is not None:
            return MemorySource(pl.read_parquet(data / "orders.parquet"), rate_per_s=online_rate)
        return ParquetSource(data / "orders.parquet")

    aggs = [
        Avg(on="product_price", window="7d", into="avg_spent_7d"),
        Count(window="1h", into="num_purchases_1h"),
        Max(on="product_price", window="1d", into="max_price_1d"),
    ]
    if six:
        aggs += [
            Sum(on="product_price", window="1d", into="sum_spent_1d"),
            Min(on="product_price", window="1d", into="min_price_1d"),
            Count(window="7d", into="num_purchases_7d"),
        ]

    @pipeline(dependencies=[user_source, order_source], output=UserSpentInfo)
    def user_spent(users: Entity, orders: Entity) -> Entity:
        if filter_kind == "expr":
            on_sale = orders.filter(volga.col("product_type") == "ON_SALE")
        else:
            on_sale = orders.filter(lambda o: o["product_type"] == "ON_SALE")
        per_user = on_sale.join(users, left_on=["buyer_id"], right_on=["user_id"], how="left")
        return per_user.group_by(keys=["buyer_id"]).aggregate(aggs).rename(
            columns={"purchased_at": "timestamp", "buyer_id": "user_id"}
        )

    return user_spent


def handwritten(data: Path, aggregates: str) -> int:
    """The same computation written directly in polars (DESIGN.md's practical limit)."""
    orders = pl.read_parquet(data / "orders.parquet")
    users = pl.read_parquet(data / "users.parquet")
    on_sale = orders.filter(pl.col("product_type") == "ON_SALE")
    joined = on_sale.join_asof(
        users.sort("registered_at"), left_on="purchased_at", right_on="registered_at",
        by_left="buyer_id", by_right="user_id", strategy="backward",
    )
    joined = joined.with_columns(pl.lit(1, dtype=pl.Int64).alias("one"))  # a column of ones to count
    price, one, ts = pl.col("product_price"), pl.col("one"), "purchased_at"
    exprs = [
        price.rolling_mean_by(ts, "7d", closed="both").over("buyer_id").alias("avg_spent_7d"),
        one.rolling_sum_by(ts, "1h", closed="both").over("buyer_id").alias("num_purchases_1h"),
        price.rolling_max_by(ts, "1d", closed="both").over("buyer_id").alias("max_price_1d"),
    ]
    if aggregates == "6":
        exprs += [
            price.rolling_sum_by(ts, "1d", closed="both").over("buyer_id").alias("sum_spent_1d"),
            price.rolling_min_by(ts, "1d", closed="both").over("buyer_id").alias("min_price_1d"),
            one.rolling_sum_by(ts, "7d", closed="both").over("buyer_id").alias("num_purchases_7d"),
        ]
    out = joined.select("buyer_id", ts, *exprs).rename({"purchased_at": "timestamp", "buyer_id": "user_id"})
    out.write_parquet(data / "handwritten_out.parquet")  # the offline store write, for fairness
    return out.height


# -- one measurement per process ----------------------------------------------------------
def run_part(part: str, data: Path, aggregates: str, rate: float, batch_size: int, metrics: bool = False) -> dict:
    import volga

    n_orders = pl.scan_parquet(data / "orders.parquet").select(pl.len()).collect().item()
    result: dict = {"part": part, "aggregates": aggregates, "orders": n_orders, "batch_size": batch_size}
    if part == "polars":
        t0 = time.perf_counter()
        result["rows_out"] = handwritten(data, aggregates)
        result["seconds"] = time.perf_counter() - t0
    else:
        mode, filter_kind = part.split("-")  # offline-expr, online-lambda, latency-expr ...
        pipe = build(data, filter_kind=filter_kind, aggregates=aggregates, online_rate=rate if mode == "latency" else None)
        client = volga.Client(data_dir=tempfile.mkdtemp(prefix="volga_bench_"))
        _warm_up_jit(client, data)
        scraping = _scrape_every_second(client) if metrics else None  # Prometheus metrics on, scraped as in production
        t0 = time.perf_counter()
        if mode == "offline":
            job = client.materialize([pipe], mode="offline")
        else:
            job = client.materialize([pipe], mode="online", batch_size=batch_size)
        result["seconds"] = time.perf_counter() - t0
        if scraping is not None:
            scraping.set()
        result["rows_out"] = job.metrics.rows_out["user_spent"]
        if mode == "latency":
            m = job.metrics
            result.update(
                offered_per_s=rate,
                p50_ms=m.latency_percentile(50) * 1e3,
                p99_ms=m.latency_percentile(99) * 1e3,
                batches=m.batches,
            )
    result["events_per_s"] = n_orders / result["seconds"]
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _scrape_every_second(client):
    """Attach volga.metrics to ``client`` and scrape it once a second from a thread; set the
    returned event to stop."""
    import threading

    from prometheus_client import generate_latest

    from volga.metrics import metrics_for

    registry = metrics_for(client).registry
    done = threading.Event()

    def scrape() -> None:
        while not done.wait(1.0):
            generate_latest(registry)

    threading.Thread(target=scrape, daemon=True).start()
    return done


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_up_jit(client, data: Path) -> None:
    """Compile the numba kernels (cached on disk) outside the timed region."""
    small = data.parent / "warmup"
    if not (small / "orders.parquet").exists():
        make_data(small, 5_000)
    pipe = build(small, filter_kind="expr", aggregates="6")
    client.materialize([pipe], mode="offline")


def make_data(directory: Path, n_orders: int) -> None:
    from volga.testing.data import make_orders, make_users

    directory.mkdir(parents=True, exist_ok=True)
    make_users(N_USERS, start=START).write_parquet(directory / "users.parquet")
    make_orders(n_orders, n_users=N_USERS, start=START, days=30).write_parquet(directory / "orders.parquet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=100_000.0, help="offered events/s for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--online-batch-size", type=int, default=10_000, help="micro-batch size of the online throughput runs")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--aggregates", default="3", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", action="store_true", help="attach volga.metrics and scrape it every second")
    parser.add_argument("--only", default=None, help="run only this part (e.g. online-expr) with 3 aggregates")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, Path(args.data), args.aggregates, args.rate, args.online_batch_size, args.metrics)))
        return

    root = Path(tempfile.mkdtemp(prefix="volga_engine_bench_"))
    make_data(root / "full", args.orders)
    make_data(root / "paced", int(args.rate * args.latency_seconds))
    print(f"data: {args.orders:,} orders, {N_USERS:,} users, 30 days; online micro-batches of {args.online_batch_size:,} rows; "
          f"python {sys.version.split()[0]}, polars {pl.__version__}")
    results: dict[tuple[str, str], dict] = {}
    plan = [(p, a, "full") for a in ("3", "6") for p in ("polars", "offline-expr", "offline-lambda", "online-expr", "online-lambda")]
    plan.append(("latency-expr", "3", "paced"))
    if args.only:
        plan = [(p, a, d) for p, a, d in plan if p == args.only and a == "3"]
    for part, aggs, data in plan:
        cmd = [sys.executable, __file__, "--part", part, "--data", str(root / data), "--aggregates", aggs, "--rate", str(args.rate),
               "--online-batch-size", str(args.online_batch_size)] + (["--metrics"] if args.metrics else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{part} ({aggs} aggs) FAILED:\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[(part, aggs)] = r
        extra = f"  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms at {r['offered_per_s']:,.0f} ev/s offered" if "p50_ms" in r else ""
        print(f"{part:15s} {aggs} aggs  {r['seconds']:7.2f} s  {r['events_per_s']:>12,.0f} ev/s  peak {r['peak_rss_mb']:7.0f} MB{extra}")

    print("\nratios vs hand-written polars (same data, same run):")
    for aggs in ("3", "6"):
        base = results.get(("polars", aggs))
        if not base:
            continue
        for part in ("offline-expr", "offline-lambda", "online-expr", "online-lambda"):
            r = results.get((part, aggs))
            if r:
                target = 0.5 if part.startswith("offline") else 0.2
                ratio = r["events_per_s"] / base["events_per_s"]
                print(f"  {aggs} aggs {part:15s} {ratio:5.2f}x  (target >= {target}x) {'OK' if ratio >= target else 'SHORT'}")
    lat = results.get(("latency-expr", "3"))
    if lat:
        ok = lat["p99_ms"] <= 20
        print(f"  latency p99 {lat['p99_ms']:.1f} ms at {lat['offered_per_s']:,.0f} ev/s (target <= 20 ms) {'OK' if ok else 'SHORT'}")
    off = results.get(("offline-expr", "3"))
    if off:
        print(f"  offline peak memory {off['peak_rss_mb']:.0f} MB for {off['orders']:,} orders (target < 4096 MB)")


if __name__ == "__main__":
    main()
