"""The quickstart pipeline (issue 2) over any order source, for connector tests and benchmarks.

``quickstart(factory)`` defines it with orders from ``factory(online)``; ``order_records``
makes JSON-ready orders (event times strictly increasing, so no ties); ``batch_result`` is
what offline mode computes from the same orders read from a Parquet file, the reference
every connector's output is compared with.

>>> import tempfile, pathlib
>>> batch_result(order_records(50), pathlib.Path(tempfile.mkdtemp())).columns
['user_id', 'timestamp', 'avg_spent_7d', 'num_purchases_1h', 'max_price_1d']
"""

# No `from __future__ import annotations` here: the @entity classes below need their
# annotations evaluated where they are defined.

import datetime
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import polars.testing

import volga
from volga import Avg, Count, Entity, Max, entity, field, pipeline, source
from volga.sources import MemorySource, ParquetSource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore

__all__ = [
    "OUTPUT_COLUMNS",
    "Order",
    "User",
    "UserSpentInfo",
    "assert_same_rows",
    "batch_result",
    "latest_rows",
    "offline_rows",
    "online_latest",
    "order_records",
    "quickstart",
    "wait_until",
]

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
N_USERS = 20


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
    avg_spent_7d: float | None  # None at a request time whose window holds no order
    num_purchases_1h: int
    max_price_1d: float | None


USERS = [{"user_id": str(i), "registered_at": T0, "name": f"u{i}"} for i in range(N_USERS)]

OrderSourceFactory = Callable[[bool], volga.Source]


def quickstart(
    order_source_factory: OrderSourceFactory, *, idle_timeout: str | None = "200ms", users: Any = USERS
) -> Any:
    """The quickstart pipeline (issue 2) with orders from ``order_source_factory(online)``
    and ``users`` (records or a polars frame of ``User``).

    The order source's ``idle_timeout`` lets a following source's last events out: the join
    releases an order once every input's watermark has passed it, and with no later order
    to move the watermark, only idleness does.
    """

    @source(User)
    def user_source() -> volga.Source:
        return MemorySource(users)

    @source(Order, idle_timeout=idle_timeout)
    def order_source(online: bool = False) -> volga.Source:
        return order_source_factory(online)

    @pipeline(dependencies=[user_source, order_source], output=UserSpentInfo)
    def user_spent(users: Entity, orders: Entity) -> Entity:
        on_sale = orders.filter(lambda o: o["product_type"] == "ON_SALE")
        per_user = on_sale.join(users, left_on=["buyer_id"], right_on=["user_id"], how="left")
        return (
            per_user.group_by(keys=["buyer_id"])
            .aggregate(
                [
                    Avg(on="product_price", window="7d", into="avg_spent_7d"),
                    Count(window="1h", into="num_purchases_1h"),
                    Max(on="product_price", window="1d", into="max_price_1d"),
                ]
            )
            .rename(columns={"purchased_at": "timestamp", "buyer_id": "user_id"})
        )

    return user_spent


def order_records(n: int, *, seed: int = 1, first: int = 0) -> list[dict[str, Any]]:
    """``n`` orders as JSON-ready dicts, event times 90 s apart (strictly increasing) from order ``first``."""
    rng = random.Random(seed * 1_000_003 + first)
    return [
        {
            "buyer_id": str(rng.randrange(N_USERS)),
            "product_id": f"p{rng.randrange(50)}",
            "product_type": rng.choice(["ON_SALE", "REGULAR"]),
            "purchased_at": (T0 + datetime.timedelta(seconds=90 * i)).isoformat(),
            "product_price": round(rng.random() * 100, 2),
        }
        for i in range(first, first + n)
    ]


def batch_result(orders: "list[dict[str, Any]] | pl.DataFrame", tmp_path: Path) -> pl.DataFrame:
    """What offline mode computes from the same orders (records or a frame) read from a Parquet file."""
    path = tmp_path / f"orders-{uuid.uuid4().hex[:6]}.parquet"
    if isinstance(orders, pl.DataFrame):
        frame = orders
    else:
        frame = pl.DataFrame(orders).with_columns(pl.col("purchased_at").str.to_datetime(time_zone="UTC"))
    frame.write_parquet(path)
    client = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / f"batch-{uuid.uuid4().hex[:6]}"))
    client.materialize([quickstart(lambda online: ParquetSource(path))], mode="offline")
    return client.get_offline("user_spent")


def assert_same_rows(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Same rows (order aside), floats within 1e-9 relative."""
    keys = ["user_id", "timestamp"]
    assert got.height == want.height, f"{got.height} rows, expected {want.height}"
    polars.testing.assert_frame_equal(got.sort(keys), want.sort(keys), check_exact=False, rel_tol=1e-9, abs_tol=0.0)


def latest_rows(batch: pl.DataFrame) -> dict[str, tuple[Any, ...]]:
    """Per user, the last output row of the batch result (what the online store should hold)."""
    last = batch.sort("timestamp").group_by("user_id", maintain_order=True).last()
    return {row[0]: row for row in last.select(OUTPUT_COLUMNS).rows()}


OUTPUT_COLUMNS = ["user_id", "timestamp", "avg_spent_7d", "num_purchases_1h", "max_price_1d"]


def online_latest(client: volga.Client, users: list[str]) -> dict[str, tuple[Any, ...]]:
    """The online store's latest row per user (the row written at its last event), as
    tuples in OUTPUT_COLUMNS order."""
    found = client.get_latest("user_spent", keys=[{"user_id": u} for u in users], as_of="last_event")
    return {u: tuple(getattr(row, c) for c in OUTPUT_COLUMNS) for u, row in zip(users, found) if row is not None}


def wait_until(check: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def offline_rows(client: volga.Client) -> int:
    """How many output rows the offline store holds for the quickstart pipeline (0 if none)."""
    try:
        return client.get_offline("user_spent").height
    except KeyError:
        return 0
