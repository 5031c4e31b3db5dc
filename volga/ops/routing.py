"""How rows are spread over partitions, and the column that keeps their order when
partitions are merged again.

**Sequence numbers.** A runtime that runs a stage as several partitions numbers every
source row with ``SEQ``, its arrival position in its source; merging partitions by
``(event time, SEQ)`` restores exactly the order one process processes rows in.
Operators built ``sequenced`` carry the column through: a chain keeps it on surviving
rows, a window output row takes its input row's, a join output row its left row's.

**Routing.** A row goes to partition ``partition_ids(rows, keys, n)``: polars' row hash with
a fixed seed (the same value in every process for one polars version), independent of
column names, so a join's left ``buyer_id`` and right ``user_id`` meet on one partition.

>>> import polars as pl
>>> ids = partition_ids(pl.DataFrame({"user": ["a", "b", "a"]}), ["user"], 2)
>>> bool(ids[0] == ids[2])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

__all__ = ["HASH_SEED", "SEQ", "concat_rows", "partition_ids", "split_rows"]

SEQ = "__volga_seq"
HASH_SEED = 0x5EED


def partition_ids(rows: pl.DataFrame, keys: Sequence[str], n: int) -> np.ndarray:
    """The partition of every row: a stable hash of its key values (by position) mod ``n``."""
    if n == 1:
        return np.zeros(rows.height, dtype=np.int64)
    keyed = rows.select([_hashable(rows[k]).alias(f"k{i}") for i, k in enumerate(keys)])
    return (keyed.hash_rows(seed=HASH_SEED).to_numpy() % np.uint64(n)).astype(np.int64)


def _hashable(col: pl.Series) -> pl.Series:
    """Python-object keys (``key_by(fn)``) hash by their ``repr``: the same in every process
    (``hash()`` of a str is salted per process)."""
    if col.dtype == pl.Object:
        return pl.Series(col.name, [repr(v) for v in col.to_list()], dtype=pl.String)
    return col


def split_rows(rows: pl.DataFrame | None, keys: tuple[str, ...], n: int) -> list[pl.DataFrame | None]:
    """``rows`` per partition (None where a partition gets none), for redistributing state."""
    if rows is None or not rows.height:
        return [None] * n
    part = partition_ids(rows, keys, n)
    return [rows.filter(pl.Series(part == q)) for q in range(n)]


def concat_rows(frames: list[pl.DataFrame | None], order: list[str] | None = None) -> pl.DataFrame | None:
    """The pieces one partition received, in ``order`` (None if there are none)."""
    present = [f for f in frames if f is not None and f.height]
    if not present:
        return None
    rows = pl.concat(present, how="vertical_relaxed")
    return rows.sort(order, maintain_order=True) if order else rows
