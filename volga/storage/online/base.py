"""The online store contract: latest value and a bounded recent history per key.

Stores exchange polars DataFrames (Arrow memory), never rows of Python objects, at
their boundary. Rows are written in processing order, so for each key the last row
written is the latest. Timestamps are ``Datetime("us", "UTC")``.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import polars as pl

from volga.api.entity import Schema

# Column added to multi-row query results: the index (0-based) of the requested key
# the row belongs to.
KEY_INDEX = "__volga_key_index"


class WindowRows(NamedTuple):
    """What a request-time lookup reads: per requested key, its stored rows with
    ``start <= ts <= end`` oldest first, preceded by its latest row with ``ts < start``
    (if any). Rows are tuples in ``columns`` order, datetimes as integer microseconds
    (UTC). ``evicted_us`` per key: the newest timestamp dropped from its retained rows
    (None if none was): rows at or before it are no longer known."""

    columns: list[str]
    rows: list[list[tuple[Any, ...]]]
    evicted_us: list[int | None]


class OnlineStore(abc.ABC):
    @abc.abstractmethod
    def write(self, name: str, schema: Schema, batch: pl.DataFrame, *, retain_us: int | None = None) -> None:
        """Append rows of feature ``name`` (columns = ``schema``), in processing order.

        ``retain_us``: besides the last ``history`` rows, keep every row younger than this
        behind its key's newest row (request-time pipelines need their longest window)."""

    @abc.abstractmethod
    def get_latest(self, name: str, keys: pl.DataFrame) -> pl.DataFrame:
        """One row per row of ``keys`` (columns = the key fields), in order; all-null where unknown."""

    @abc.abstractmethod
    def get_last_n(self, name: str, keys: pl.DataFrame, n: int) -> pl.DataFrame:
        """Up to ``n`` latest rows per key, oldest first, with a ``KEY_INDEX`` column."""

    @abc.abstractmethod
    def get_range(self, name: str, keys: pl.DataFrame, start_us: int | None, end_us: int | None) -> pl.DataFrame:
        """Rows per key with ``start <= ts <= end`` (None = open), oldest first, with ``KEY_INDEX``."""

    @abc.abstractmethod
    def schema(self, name: str) -> Schema | None:
        """The schema last written under ``name``, or None if nothing was."""

    @abc.abstractmethod
    def clear(self, name: str) -> None:
        """Forget everything stored under ``name``."""

    def window_rows(self, name: str, keys: pl.DataFrame, start_us: int, end_us: int) -> WindowRows:
        """See :class:`WindowRows`. Stores override this with a read that stops at the
        window's start; this version reads every row up to ``end``."""
        frame = self.get_range(name, keys, None, end_us)
        columns = [c for c in frame.columns if c != KEY_INDEX]
        ints = [pl.col(c).cast(pl.Int64) for c in columns if isinstance(frame.schema[c], pl.Datetime)]
        if ints:
            frame = frame.with_columns(ints)
        schema = self.schema(name)
        assert schema is not None
        ts = columns.index(schema.timestamp)
        per_key: list[list[tuple[Any, ...]]] = [[] for _ in range(keys.height)]
        for row in frame.select([*columns, KEY_INDEX]).rows():
            per_key[row[-1]].append(row[:-1])
        for i, rows in enumerate(per_key):
            before = [r for r in rows if r[ts] < start_us]
            per_key[i] = before[-1:] + [r for r in rows if r[ts] >= start_us]
        return WindowRows(columns, per_key, [None] * keys.height)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
