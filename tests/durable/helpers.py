"""The quickstart job with checkpoints, and what its stores hold at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

import volga
from volga.sources import MemorySource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.testing.quickstart import N_USERS, order_records, quickstart

ORDERS = pl.DataFrame(order_records(1500)).with_columns(pl.col("purchased_at").str.to_datetime(time_zone="UTC"))
USER_KEYS = pl.DataFrame({"user_id": [str(i) for i in range(N_USERS)]})


def pipeline(orders: pl.DataFrame = ORDERS) -> Any:
    return quickstart(lambda online: MemorySource(orders))


def run(root: Path, *, online_store: Any = None, pipe: Any = None, **kwargs: Any) -> tuple[volga.Client, volga.Job]:
    """One (resumable) run of the checkpointed quickstart job over bounded orders."""
    client = volga.Client(online_store or MemoryOnlineStore(), ParquetOfflineStore(root / "offline"))
    options = {"write_offline": True, "batch_size": 60, "checkpoint_dir": root / "checkpoints", "checkpoint_interval": "0s"}
    options.update(kwargs)
    options.setdefault("mode", "online")
    job = client.materialize([pipe or pipeline()], **options)
    return client, job


def stores(client: volga.Client) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(offline rows in written order, every online history row per user)."""
    offline = client.offline_store.scan("user_spent")
    assert offline is not None
    history = client.online_store.get_range("user_spent", USER_KEYS, None, None)
    return offline.collect(), history
