"""``DatagenSource``: synthetic events of an entity, for demos, tests and benchmarks.

``DatagenSource(entity, rate_per_s=None, keys=1000, *, count=None, values={}, start=None,
event_interval=None, seed=0)``. The ``entity`` (an ``@entity`` class) defines the columns:
every field gets values of its type. Row ``i`` has event time ``start + i * event_interval``
and key(s) drawn uniformly from ``keys`` (an int ``n`` means the values ``0 .. n-1``, as
strings for ``str`` keys; or a list of values). Other fields are random by type (floats in
[0, 100), ints in [0, 1000), booleans, strings ``"<field>-<k>"`` with ``k < 10``, datetimes
within a day of ``start``, lists of 0-3 items) unless ``values`` gives a column: a list of
choices, or a function ``(numpy Generator, n) -> sequence of n values``. Optional fields are
never null. The same ``seed`` gives the same rows, whatever the micro-batch sizes (rows are
made in fixed blocks).

The source must feed an ``@source`` of the same entity (or one with the very same fields,
types, keys and timestamp): ``open`` names any difference.

``count`` rows and then the source ends (bounded); ``count=None`` never ends (online mode
only). ``rate_per_s`` paces rows in processing time like ``MemorySource``; None hands them
out as fast as they are asked for. ``event_interval`` defaults to ``1 / rate_per_s`` seconds
(one millisecond when unpaced).

>>> import datetime
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Order:
...     buyer_id: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     price: float
...     kind: str
>>> src = DatagenSource(Order, keys=3, count=5, values={"kind": ["ON_SALE", "REGULAR"]},
...                     start=datetime.datetime(2024, 1, 1), event_interval="1s")
>>> df = src.open(entity_schema(Order), name="orders").poll(10)
>>> df.columns, df.height, sorted(set(df["buyer_id"])) <= ["0", "1", "2"]
(['buyer_id', 'at', 'price', 'kind'], 5, True)
>>> df["at"].dt.second().to_list()
[0, 1, 2, 3, 4]
"""

# No `from __future__ import annotations` here: the doctest above declares an @entity, whose
# annotations must resolve at class creation, which that import would defer.

import dataclasses
import datetime
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from volga.api.entity import FieldSpec, Schema, entity_schema, is_entity
from volga.api.times import datetime_to_us, to_utc
from volga.api.types import TIMESTAMP_DTYPE, Duration, parse_duration_us
from volga.sources.base import Source, SourceMode, SourceReader

__all__ = ["DatagenSource"]

BLOCK_ROWS = 4096
ValueSpec = Sequence[Any] | Callable[[np.random.Generator, int], Sequence[Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class DatagenSource(Source):
    """Synthetic rows of ``entity`` (an ``@entity`` class); see the module docstring."""

    entity: type
    rate_per_s: float | None = None
    keys: int | Sequence[Any] = 1000
    count: int | None = dataclasses.field(default=None, kw_only=True)
    values: Mapping[str, ValueSpec] = dataclasses.field(default_factory=dict, kw_only=True)
    start: datetime.datetime | None = dataclasses.field(default=None, kw_only=True)
    event_interval: Duration | None = dataclasses.field(default=None, kw_only=True)
    seed: int = dataclasses.field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        if not is_entity(self.entity):
            raise TypeError(
                f"DatagenSource: the first argument must be the @entity class whose rows to generate "
                f"(DatagenSource(Order, rate_per_s, keys, ...)), not {self.entity!r}"
            )
        if self.rate_per_s is not None and not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError(f"DatagenSource: rate_per_s must be a positive number of rows per second, not {self.rate_per_s!r}")
        if isinstance(self.keys, int):
            if self.keys < 1:
                raise ValueError(f"DatagenSource: keys must be >= 1 (how many distinct keys), not {self.keys}")
        elif isinstance(self.keys, (str, bytes)) or not isinstance(self.keys, Sequence) or not self.keys:
            raise ValueError("DatagenSource: keys must be a number of keys or a non-empty list of key values")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 0):
            raise ValueError(f"DatagenSource: count must be an int >= 0 or None (endless), not {self.count!r}")
        if self.event_interval is not None:
            parse_duration_us(self.event_interval, what="DatagenSource: event_interval")
        own = self.schema
        unknown = sorted(set(self.values) - set(own.names))
        if unknown:
            raise ValueError(f"DatagenSource: values= names unknown field(s) {unknown} of {own.name} ({own.names})")

    @property
    def schema(self) -> Schema:
        """The schema of the rows generated: the entity's."""
        return entity_schema(self.entity)

    @property
    def bounded(self) -> bool:
        return self.count is not None

    def open(self, schema: Schema | None = None, *, name: str | None = None, mode: SourceMode | None = None) -> SourceReader:
        """A reader of the rows; ``schema`` (the ``@source``'s entity) must match the source's entity."""
        own = self.schema
        name = name if name is not None else own.name
        if schema is None:
            schema = own
        else:
            mismatch = schema_mismatch(own, schema)
            if mismatch:
                raise ValueError(
                    f"source '{name}': DatagenSource generates {own.name} rows but the source is declared for "
                    f"{schema.name}, whose schema differs: {'; '.join(mismatch)}. "
                    f"Give DatagenSource the source's entity: DatagenSource({schema.name}, ...)"
                )
        if self.event_interval is not None:
            interval_us = parse_duration_us(self.event_interval)
        else:
            interval_us = round(1e6 / self.rate_per_s) if self.rate_per_s else 1000
        start = to_utc(self.start) if self.start is not None else datetime.datetime.now(datetime.timezone.utc)
        start_us = datetime_to_us(start)
        return DatagenReader(self, schema, start_us=start_us, interval_us=interval_us)

    def describe(self) -> str:
        rate = f"{self.rate_per_s:g} rows/s" if self.rate_per_s else "unpaced"
        count = f"{self.count} rows" if self.count is not None else "endless"
        return f"DatagenSource({self.entity.__name__}, {count}, {rate})"


def _describe_field(f: FieldSpec) -> str:
    role = " (key)" if f.key else " (timestamp)" if f.timestamp else ""
    return f"{f.type_name}{role}"


def schema_mismatch(own: Schema, want: Schema) -> list[str]:
    """How the generated schema ``own`` differs from ``want`` (empty: same fields, in any order)."""
    problems = []
    mine, theirs = {f.name: f for f in own.fields}, {f.name: f for f in want.fields}
    missing = [n for n in want.names if n not in mine]
    extra = [n for n in own.names if n not in theirs]
    if missing:
        problems.append(f"{own.name} has no field(s) {missing}")
    if extra:
        problems.append(f"{want.name} has no field(s) {extra}")
    for n in want.names:
        if n in mine and mine[n] != theirs[n]:
            problems.append(f"field '{n}' is {_describe_field(mine[n])} in {own.name} but {_describe_field(theirs[n])} in {want.name}")
    return problems


class DatagenReader(SourceReader):
    def __init__(self, source: DatagenSource, schema: Schema, *, start_us: int, interval_us: int) -> None:
        super().__init__()
        self._source, self._schema = source, schema
        self._start_us, self._interval_us = start_us, interval_us
        self._rng = np.random.default_rng(source.seed)
        self._made = 0  # rows generated so far (whole blocks)
        self._pos = 0  # rows handed out
        self._buffer: pl.DataFrame | None = None
        self._first_poll: float | None = None

    def _due(self, now: float) -> int:
        limit = self._source.count if self._source.count is not None else 2**62
        if self._source.rate_per_s is None:
            return limit
        if self._first_poll is None:
            self._first_poll = now
        return min(limit, math.floor((now - self._first_poll) * self._source.rate_per_s) + 1)

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        now = time.perf_counter()
        end = min(self._pos + max_rows, self._due(now))
        if end <= self._pos:
            return None
        parts = []
        while self._pos < end:
            if self._buffer is None or self._buffer.height == 0:
                self._buffer = self._block()
            take = self._buffer.head(end - self._pos)
            self._buffer = self._buffer.slice(take.height)
            self._pos += take.height
            parts.append(take)
        if self._source.rate_per_s is not None and self._first_poll is not None:
            self.entered_at = self._first_poll + (self._pos - sum(p.height for p in parts)) / self._source.rate_per_s
        else:
            self.entered_at = now
        out = parts[0] if len(parts) == 1 else pl.concat(parts)
        self.rows_read += out.height
        return out

    def _block(self) -> pl.DataFrame:
        """The next BLOCK_ROWS rows (fewer at the end of a bounded source)."""
        n = BLOCK_ROWS
        if self._source.count is not None:
            n = min(n, self._source.count - self._made)
        first = self._made
        self._made += n
        columns = [self._column(f, n, first) for f in self._schema.fields]
        return pl.DataFrame(columns)

    def _column(self, f: FieldSpec, n: int, first: int) -> pl.Series:
        rng = self._rng
        if f.name == self._schema.timestamp:
            us = self._start_us + (np.arange(first, first + n, dtype=np.int64) * self._interval_us)
            return pl.Series(f.name, us).cast(TIMESTAMP_DTYPE)
        spec = self._source.values.get(f.name)
        if spec is None and f.name in self._schema.keys:
            keys = self._source.keys
            if isinstance(keys, int):
                idx = rng.integers(0, keys, n)
                return self._typed(f, idx)
            spec = keys
        if spec is not None:
            if callable(spec):
                return pl.Series(f.name, list(spec(rng, n)), dtype=f.dtype)
            choices = list(spec)
            picked = rng.integers(0, len(choices), n)
            return pl.Series(f.name, [choices[i] for i in picked], dtype=f.dtype)
        return self._random(f, n)

    def _typed(self, f: FieldSpec, idx: np.ndarray) -> pl.Series:
        """Key indexes as the key field's type."""
        series = pl.Series(f.name, idx)
        if f.dtype == pl.String:
            return series.cast(pl.String)
        return series.cast(f.dtype)

    def _random(self, f: FieldSpec, n: int) -> pl.Series:
        rng, dtype = self._rng, f.dtype
        if dtype == pl.Float64:
            return pl.Series(f.name, rng.random(n) * 100.0)
        if dtype == pl.Int64:
            return pl.Series(f.name, rng.integers(0, 1000, n))
        if dtype == pl.Boolean:
            return pl.Series(f.name, rng.random(n) < 0.5)
        if dtype == pl.String:
            return pl.Series(f.name, [f"{f.name}-{k}" for k in rng.integers(0, 10, n)])
        if dtype == TIMESTAMP_DTYPE:
            us = self._start_us + rng.integers(0, 86_400_000_000, n)
            return pl.Series(f.name, us).cast(TIMESTAMP_DTYPE)
        if isinstance(dtype, pl.List):
            lengths = rng.integers(0, 4, n)
            inner = dataclasses.replace(f, dtype=dtype.inner)  # type: ignore[arg-type]
            flat = self._random(inner, int(lengths.sum()))
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            items = flat.to_list()
            return pl.Series(f.name, [items[offsets[i] : offsets[i + 1]] for i in range(n)], dtype=dtype)
        raise TypeError(f"DatagenSource: no generator for field '{f.name}' of type {dtype}; give one in values=")

    @property
    def finished(self) -> bool:
        return self._source.count is not None and self._pos >= self._source.count
