"""``MemorySource``: rows held in memory, handed out at once or paced like a live stream.

Paced mode (``rate_per_s``) is how tests and benchmarks simulate an online source without
a broker: row ``i`` becomes available ``i / rate_per_s`` seconds (processing time) after the
first poll, and the reader reports when each batch was due in ``entered_at`` so that
event -> store latency can be measured from the moment a row "arrived".

>>> import datetime
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Tick:
...     sym: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     px: float
>>> reader = MemorySource([Tick(sym="A", at=datetime.datetime(2024, 1, 1), px=1.5)]).open(
...     entity_schema(Tick), name="ticks")
>>> reader.poll(10).rows()
[('A', datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 1.5)]
>>> reader.finished
True
"""

# No `from __future__ import annotations` here: the doctest above declares an @entity, whose
# annotations must resolve at class creation, which that import would defer.

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import polars as pl

from volga.api.entity import Schema
from volga.sources.base import Source, SourceMode, SourceReader
from volga.sources.validation import conform, require_columns


class MemoryReader(SourceReader):
    """Slices of one validated DataFrame; paced by the wall clock when a rate is set."""

    def __init__(self, df: pl.DataFrame, rate_per_s: float | None) -> None:
        super().__init__()
        self._df = df
        self._rate = rate_per_s
        self.total_rows = df.height
        self._pos = 0
        self._start: float | None = None  # perf_counter() of the first poll (paced mode)

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        now = time.perf_counter()
        end = min(self._pos + max_rows, self._df.height, self._due(now))
        if end <= self._pos:
            return None
        if self._rate is not None and self._start is not None:
            self.entered_at = self._start + self._pos / self._rate  # when the oldest row was due
        else:
            self.entered_at = now
        out = self._df.slice(self._pos, end - self._pos)
        self._pos = end
        self.rows_read += out.height
        return out

    def _due(self, now: float) -> int:
        """How many rows are due by ``now`` (all of them when unpaced)."""
        if self._rate is None:
            return self._df.height
        if self._start is None:
            self._start = now
        return math.floor((now - self._start) * self._rate) + 1

    @property
    def finished(self) -> bool:
        return self._pos >= self._df.height


@dataclasses.dataclass(frozen=True, eq=False)
class MemorySource(Source):
    """Entity instances, dicts, or a polars or pandas DataFrame, read in order. Always bounded.

    ``rate_per_s`` paces the rows in processing time (see the module docstring); the source
    still ends when the rows run out. Rows are validated once, when the source is opened;
    the ones that don't fit the entity land in ``reader.rejected``. A DataFrame must have
    every entity column (a missing column is an error at open, not a bad row); dicts may
    omit Optional fields.
    """

    rows: Sequence[Any] | pl.DataFrame
    rate_per_s: float | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.rate_per_s is not None and not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError(
                f"MemorySource: rate_per_s must be a positive number of rows per second, not {self.rate_per_s!r}"
            )
        if _is_pandas_frame(self.rows):  # converted once (pandas needs pyarrow for this)
            object.__setattr__(self, "rows", pl.from_pandas(self.rows))
        if not isinstance(self.rows, (pl.DataFrame, Sequence)) or isinstance(self.rows, (str, bytes)):
            raise TypeError(
                f"MemorySource: rows must be a list of entity instances or dicts, or a polars or pandas DataFrame, "
                f"not {type(self.rows).__name__} (the rows are read again at every open, so an iterator "
                "won't do; pass list(...))"
            )

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> MemoryReader:
        if isinstance(self.rows, pl.DataFrame):
            require_columns(self.rows.columns, schema, source=name, where="the in-memory DataFrame")
        df, rejected = conform(self.rows, schema, source=name)
        reader = MemoryReader(df, self.rate_per_s)
        reader.rejected.extend(rejected)
        return reader

    def describe(self) -> str:
        count = self.rows.height if isinstance(self.rows, pl.DataFrame) else len(self.rows)
        pace = f", {self.rate_per_s:g} rows/s" if self.rate_per_s is not None else ""
        return f"MemorySource({count} rows{pace})"


def _is_pandas_frame(rows: object) -> bool:
    return type(rows).__name__ == "DataFrame" and type(rows).__module__.startswith("pandas")
