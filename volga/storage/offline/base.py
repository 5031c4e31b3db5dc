"""The offline store contract: every output row of a pipeline, for training and audit."""

from __future__ import annotations

import abc
import datetime

import polars as pl

from volga.api.entity import Schema
from volga.api.times import to_utc


class OfflineStore(abc.ABC):
    @abc.abstractmethod
    def replace(self, name: str, schema: Schema, rows: pl.DataFrame) -> None:
        """Atomically replace every stored row of ``name`` (a backfill re-run never duplicates)."""

    @abc.abstractmethod
    def append(self, name: str, schema: Schema, rows: pl.DataFrame) -> None:
        """Add rows of ``name`` (streaming jobs that also write offline)."""

    @abc.abstractmethod
    def scan(self, name: str) -> pl.LazyFrame | None:
        """All rows of ``name`` in write order as a lazy frame, or None if nothing is stored."""

    def read(
        self, name: str, start: datetime.datetime | None = None, end: datetime.datetime | None = None
    ) -> pl.DataFrame | None:
        """Rows of ``name`` with ``start <= ts <= end``; None if nothing is stored."""
        lazy = self.scan(name)
        schema = self.schema(name)
        if lazy is None or schema is None:
            return None
        ts = pl.col(schema.timestamp)
        if start is not None:
            lazy = lazy.filter(ts >= to_utc(start))
        if end is not None:
            lazy = lazy.filter(ts <= to_utc(end))
        return lazy.collect()

    @abc.abstractmethod
    def schema(self, name: str) -> Schema | None:
        """The schema stored for ``name``, or None."""
