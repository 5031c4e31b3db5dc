"""Volga quickstart: one pipeline definition, backfilled offline, then run online.

Run it with ``make demo`` (or ``python quickstart.py`` inside the venv).
"""

import datetime
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import volga
from volga import Avg, Count, Entity, Max, entity, field, pipeline, source
from volga.sources import ChainSource, MemorySource, ParquetSource
from volga.testing.data import make_orders, make_users

N_USERS = 10_000
N_HISTORY = int(os.environ.get("VOLGA_DEMO_ORDERS", 1_000_000))  # smaller in the smoke test
N_LIVE = max(1_000, N_HISTORY // 50)
# History over the last 30 days, then a live tail up to now: lookups are evaluated now
# (request-time windows), so recent data shows live values.
START = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(days=30.5)
DATA = Path(".")  # set by main() to a temporary directory, removed at the end


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


@entity
class UserSpentInfo:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    avg_spent_7d: Optional[float]  # None at a request time whose window holds no order
    num_purchases_1h: int
    max_price_1d: Optional[float]


users = make_users(N_USERS, start=START)
history = make_orders(N_HISTORY, n_users=N_USERS, start=START, days=30)
live = make_orders(N_LIVE, n_users=N_USERS, start=START + datetime.timedelta(days=30), days=0.5, seed=7)


@source(User)
def user_source() -> volga.Source:
    return MemorySource(users)


@source(Order)
def order_source(online: bool = False) -> volga.Source:
    history_file = ParquetSource(DATA / "orders.parquet")
    if online:  # replay the history through the streaming engine, then follow live orders
        return ChainSource([history_file, MemorySource(live, rate_per_s=5_000)])
    return history_file


@pipeline(dependencies=[user_source, order_source], output=UserSpentInfo)
def user_spent(users: Entity, orders: Entity) -> Entity:
    on_sale = orders.filter(volga.col("product_type") == "ON_SALE")
    per_user = on_sale.join(users, left_on=["buyer_id"], right_on=["user_id"], how="left")
    return per_user.group_by(keys=["buyer_id"]).aggregate([
        Avg(on="product_price", window="7d", into="avg_spent_7d"),
        Count(window="1h", into="num_purchases_1h"),
        Max(on="product_price", window="1d", into="max_price_1d"),
    ]).rename(columns={"purchased_at": "timestamp", "buyer_id": "user_id"})


def show(rows: list) -> str:
    def money(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.2f}"

    return "  ".join(
        f"user {r.user_id}: avg7d={money(r.avg_spent_7d)} n1h={r.num_purchases_1h} max1d={money(r.max_price_1d)}"
        for r in rows if r is not None
    )


def main() -> None:
    global DATA
    with tempfile.TemporaryDirectory(prefix="volga_demo_") as tmp:  # nothing is left on disk
        DATA = Path(tmp)
        history.write_parquet(DATA / "orders.parquet")
        run(volga.Client(data_dir=DATA / "volga_data"))


def run(client: volga.Client) -> None:
    print(client.explain([user_spent]), "\n")

    t0 = time.perf_counter()
    client.materialize([user_spent], mode="offline")
    seconds = time.perf_counter() - t0
    offline = client.get_offline("user_spent")
    print(f"offline backfill: {N_HISTORY:,} orders -> {offline.height:,} feature rows "
          f"in {seconds:.2f}s ({N_HISTORY / seconds:,.0f} orders/s)")
    print(offline.tail(3), "\n")

    watch = [{"user_id": u} for u in ("1", "2", "3")]
    job = client.materialize([user_spent], mode="online", params={"online": True}, block=False)
    last = None
    while job.running:
        now = client.get_latest("user_spent", keys=watch)
        if now != last:
            print(f"[{job.metrics.seconds:5.1f}s] {show(now)}")
            last = now
        time.sleep(0.5)
    job.wait()
    m = job.metrics
    p50, p99 = m.latency_percentile(50), m.latency_percentile(99)
    print(f"\nonline: {m.rows_in['order_source']:,} orders streamed in {m.seconds:.2f}s "
          f"({m.rows_in['order_source'] / m.seconds:,.0f} orders/s incl. the paced live tail), "
          f"{m.rows_out['user_spent']:,} feature rows; event->store latency p50 "
          f"{p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    same = client.get_latest("user_spent", keys=watch)
    print("latest now:", show(same))


if __name__ == "__main__":
    main()
