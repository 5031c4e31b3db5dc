"""Definitions shared by the serving tests and the ``volga serve`` test app.

The quickstart pipeline (``user_spent``) over small generated data, and on-demand
features over it: ``latest`` (``user_stats``), a chain with ``last_n`` and a per-request
argument (``spend_trend``), ``range`` (``window_spend``), a composite request key filled
from the key (``user_offer``), and an Optional dependency (``spend_level``).
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any, Optional

import polars as pl

import volga
from volga import Avg, Count, Entity, Max, entity, field, on_demand, pipeline, source
from volga.sources import MemorySource
from volga.storage import MemoryOnlineStore, OnlineStore
from volga.testing.data import make_orders, make_users
from volga.testing.quickstart import Order, User, UserSpentInfo

# Two days before the current hour: lookups "now" see every event in the 7-day window and
# none in the 1-hour and 1-day ones, the same for every request of a test run.
START = datetime.datetime.now(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0) - datetime.timedelta(days=2)
N_USERS = 12  # users "0".."11"; orders go to a few of them only (zipf), so some have no data
USERS = make_users(N_USERS, start=START)
ORDERS = make_orders(400, n_users=N_USERS, start=START, days=1, seed=3)


@entity
class UserStats:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    total_spent: float
    purchase_count: int


@entity
class SpendTrend:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    recent_count: int
    recent_max: float
    above_threshold: bool
    total_spent: float


@entity
class WindowSpend:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    rows: int
    max_avg: float


@entity
class UserOffer:
    user_id: str = field(key=True)
    offer: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    score: float


@entity
class SpendLevel:
    user_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    level: str


@source(User)
def user_source() -> volga.Source:
    return MemorySource(USERS)


@source(Order)
def order_source(orders: Any = None, rate_per_s: Optional[float] = None) -> volga.Source:
    return MemorySource(ORDERS if orders is None else orders, rate_per_s=rate_per_s)


@pipeline(dependencies=[user_source, order_source], output=UserSpentInfo)
def user_spent(users: Entity, orders: Entity) -> Entity:
    on_sale = orders.filter(pl.col("product_type") == "ON_SALE")
    per_user = on_sale.join(users, left_on=["buyer_id"], right_on=["user_id"], how="left")
    return per_user.group_by(keys=["buyer_id"]).aggregate([
        Avg(on="product_price", window="7d", into="avg_spent_7d"),
        Count(window="1h", into="num_purchases_1h"),
        Max(on="product_price", window="1d", into="max_price_1d"),
    ]).rename(columns={"purchased_at": "timestamp", "buyer_id": "user_id"})


@on_demand(dependencies=[(user_spent, "latest")])
def user_stats(spent: UserSpentInfo) -> UserStats:
    return UserStats(
        user_id=spent.user_id,
        timestamp=spent.timestamp,
        total_spent=spent.avg_spent_7d * spent.num_purchases_1h,
        purchase_count=spent.num_purchases_1h,
    )


@on_demand(dependencies=[user_stats, (user_spent, "last_n")])
def spend_trend(stats: UserStats, recent: list[UserSpentInfo], threshold: float = 100.0) -> SpendTrend:
    return SpendTrend(
        user_id=stats.user_id,
        timestamp=stats.timestamp,
        recent_count=len(recent),
        recent_max=max(r.max_price_1d for r in recent),
        above_threshold=stats.total_spent > threshold,
        total_spent=stats.total_spent,
    )


@on_demand(dependencies=[(user_spent, "range")])
def window_spend(rows: list[UserSpentInfo]) -> Optional[WindowSpend]:
    if not rows:
        return None
    return WindowSpend(user_id=rows[-1].user_id, timestamp=rows[-1].timestamp, rows=len(rows),
                       max_avg=max(r.avg_spent_7d for r in rows))


@on_demand(dependencies=[user_stats])
def user_offer(stats: UserStats, offer: str = "", boost: float = 1.0) -> UserOffer:
    return UserOffer(user_id=stats.user_id, offer=offer, timestamp=stats.timestamp,
                     score=stats.total_spent * boost * (2.0 if offer == "gold" else 1.0))


@on_demand(dependencies=[user_spent])
def spend_level(spent: Optional[UserSpentInfo], user_id: str = "") -> SpendLevel:
    if spent is None:  # no purchases yet: still an answer, keyed by the request key
        return SpendLevel(user_id=user_id, timestamp=START, level="none")
    return SpendLevel(user_id=user_id, timestamp=spent.timestamp, level="high" if spent.avg_spent_7d > 50 else "low")


ON_DEMAND = [user_stats, spend_trend, window_spend, user_offer, spend_level]


def make_client(data_dir: Any, orders: Any = None) -> volga.Client:
    """A client with every definition registered and ``orders`` materialized online."""
    client = volga.Client(data_dir=data_dir)
    client.register(*ON_DEMAND)
    client.materialize([user_spent], mode="offline", write_online=True, params={"orders": orders})
    return client


class CountingStore(OnlineStore):
    """Delegates to a memory store, recording each read (and optionally slowing it)."""

    def __init__(self, inner: MemoryOnlineStore, delay_s: float = 0.0) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.calls: list[tuple[str, str, int]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def _track(self, kind, name, keys, fn):
        with self._lock:
            self.calls.append((kind, name, keys.height))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
            return fn()
        finally:
            with self._lock:
                self.active -= 1

    def write(self, name, schema, batch, *, retain_us=None):
        self.inner.write(name, schema, batch, retain_us=retain_us)

    def get_latest(self, name, keys):
        return self._track("latest", name, keys, lambda: self.inner.get_latest(name, keys))

    def get_last_n(self, name, keys, n):
        return self._track("last_n", name, keys, lambda: self.inner.get_last_n(name, keys, n))

    def get_range(self, name, keys, start_us, end_us):
        return self._track("range", name, keys, lambda: self.inner.get_range(name, keys, start_us, end_us))

    def window_rows(self, name, keys, start_us, end_us):  # request-time reads of a pipeline's value
        return self._track("window", name, keys, lambda: self.inner.window_rows(name, keys, start_us, end_us))

    def schema(self, name):
        return self.inner.schema(name)

    def clear(self, name):
        self.inner.clear(name)
