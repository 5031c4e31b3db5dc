"""The online store contract: latest value and a bounded recent history per key.

Stores exchange polars DataFrames (Arrow memory), never rows of Python objects, at
their boundary. Rows are written in processing order, so for each key the last row
written is the latest. Timestamps are ``Datetime("us", "UTC")``.
"""

from __future__ import annotations

import abc

import polars as pl

from volga.api.entity import Schema

# Column added to multi-row query results: the index (0-based) of the requested key
# the row belongs to.
KEY_INDEX = "__volga_key_index"


class OnlineStore(abc.ABC):
    @abc.abstractmethod
    def write(self, name: str, schema: Schema, batch: pl.DataFrame) -> None:
        """Append rows of feature ``name`` (columns = ``schema``), in processing order."""

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
