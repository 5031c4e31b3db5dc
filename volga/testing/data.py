"""Synthetic users and orders for the quickstart, tests and benchmarks (vectorised)."""

import datetime

import numpy as np
import polars as pl

from volga.api.times import datetime_to_us

PRODUCT_TYPES = ["ON_SALE", "REGULAR", "CLEARANCE"]


def make_users(n_users: int, *, start: datetime.datetime, seed: int = 0) -> pl.DataFrame:
    """``n_users`` users ``"0"``, ``"1"``, ... registered in the 30 days before ``start``,
    in registration order (as a table read in creation order would be).

    >>> make_users(3, start=datetime.datetime(2025, 1, 1)).columns
    ['user_id', 'registered_at', 'name']
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(n_users).astype(str)
    offsets_us = rng.integers(0, 30 * 86_400_000_000, n_users)
    start_us = datetime_to_us(start)
    return pl.DataFrame(
        {
            "user_id": ids,
            "registered_at": pl.Series(start_us - offsets_us).cast(pl.Datetime("us", "UTC")),
            "name": np.char.add("user_", ids),
        }
    ).sort("registered_at")


def make_orders(
    n_orders: int, *, n_users: int, start: datetime.datetime, days: float, seed: int = 1
) -> pl.DataFrame:
    """``n_orders`` orders spread over ``days`` from ``start``, in event-time order.

    >>> make_orders(5, n_users=2, start=datetime.datetime(2025, 1, 1), days=1).height
    5
    """
    rng = np.random.default_rng(seed)
    start_us = datetime_to_us(start)
    ts = np.sort(rng.integers(0, int(days * 86_400_000_000), n_orders)) + start_us
    buyers = rng.zipf(1.3, n_orders) % n_users  # a few heavy buyers, a long tail
    return pl.DataFrame(
        {
            "buyer_id": buyers.astype(str),
            "product_id": np.char.add("p", rng.integers(0, 5_000, n_orders).astype(str)),
            "product_type": np.array(PRODUCT_TYPES)[rng.integers(0, 3, n_orders)],
            "purchased_at": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "product_price": np.round(rng.gamma(2.0, 20.0, n_orders), 2),
        }
    )
