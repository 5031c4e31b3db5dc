"""The embedded online store: latest row and recent history per key, in process memory.

Per feature it keeps one dict from key (the key value, or a tuple of values for a
composite key) to a bounded deque of row tuples, last written last. The latest row is
the deque's last item. Rows are immutable tuples converted from a whole batch at once,
so a reader sees a row entirely or not at all. Datetime columns are held as their integer
value (microseconds since the epoch, UTC) and turned back into ``Datetime("us", "UTC")``
when a result frame is built from the row tuples and the stored schema.

One lock guards the dicts; it is held only to insert ready-made tuples (``write``) or to
pick them out (reads). Converting batches and building result frames happen outside it.
"""

# No `from __future__ import annotations` here: the docstring example's @entity class needs
# its annotations evaluated where it is defined (doctest inherits a module's future flags).

import bisect
import contextlib
import gc
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from volga.api.entity import Schema
from volga.storage.conform import conform_batch, conform_series, same_shape
from volga.storage.online.base import KEY_INDEX, OnlineStore, WindowRows

KEY_INDEX_DTYPE = pl.UInt32()

Row = tuple[Any, ...]
Key = Any  # the key value, or a tuple of values for a composite key


class _Feature:
    """What is stored under one feature name, and how to convert to and from it."""

    __slots__ = (
        "name",
        "schema",
        "rows",
        "key_pos",
        "key_dtypes",
        "ts_pos",
        "int_cols",
        "out_schema",
        "indexed_schema",
        "null_row",
        "retain_us",
        "evicted_us",
    )

    def __init__(self, name: str, schema: Schema) -> None:
        self.name = name
        self.schema = schema
        self.rows: dict[Key, deque[Row]] = {}
        names = schema.names
        self.key_pos = tuple(names.index(k) for k in schema.keys)
        self.key_dtypes = tuple((k, schema.field(k).dtype) for k in schema.keys)
        self.ts_pos = names.index(schema.timestamp)
        # Datetime columns are held as Int64 microseconds: converting a batch's datetimes to
        # Python objects costs ~4x the rest of a write, and polars reads the ints back as-is.
        self.int_cols = frozenset(f.name for f in schema.fields if isinstance(f.dtype, pl.Datetime))
        self.out_schema: dict[str, pl.DataType] = schema.polars_schema()
        self.indexed_schema = {**self.out_schema, KEY_INDEX: KEY_INDEX_DTYPE}
        self.null_row: Row = (None,) * len(names)
        # Request-time pipelines: rows younger than this (behind the key's newest row) are
        # kept beyond `history`; evicted_us[key] is the newest timestamp evicted since.
        self.retain_us: int | None = None
        self.evicted_us: dict[Key, int] = {}

    def to_rows(self, batch: pl.DataFrame) -> tuple[list[Key], list[Row]]:
        """Row tuples of ``batch`` (in schema order) and the key of each row."""
        frame = conform_batch(batch, self.schema, what=f"online store feature {self.name!r}")
        # Casting a Datetime column to Int64 gives its physical value (microseconds for Datetime("us")).
        columns = [
            (s.cast(pl.Int64) if s.name in self.int_cols else s).to_list() for s in frame.iter_columns()
        ]
        rows = list(zip(*columns))
        if len(self.key_pos) == 1:
            keys = columns[self.key_pos[0]]
        else:
            keys = list(zip(*(columns[i] for i in self.key_pos)))
        return keys, rows

    def request_keys(self, keys: pl.DataFrame) -> list[Key]:
        """The requested keys, as the same Python values ``to_rows`` stores."""
        have = keys.columns
        missing = [k for k in self.schema.keys if k not in have]
        if missing:
            raise ValueError(
                f"online store feature {self.name!r}: key column(s) {missing} missing from the request "
                f"(got columns {have}; the keys are {list(self.schema.keys)})"
            )
        columns: list[list[Any]] = []
        for k, want in self.key_dtypes:
            series = keys.get_column(k)
            if series.dtype != want:
                series = conform_series(series, want, what=f"online store feature {self.name!r}: key")
            if k in self.int_cols:
                series = series.cast(pl.Int64)
            columns.append(series.to_list())
        return columns[0] if len(columns) == 1 else list(zip(*columns))

    def missing_row(self, key: Key) -> Row:
        """The all-null row returned for an unknown key, with the key columns filled in."""
        row = list(self.null_row)
        if len(self.key_pos) == 1:
            row[self.key_pos[0]] = key
        else:
            for pos, value in zip(self.key_pos, key):
                row[pos] = value
        return tuple(row)


class MemoryOnlineStore(OnlineStore):
    """In-process, thread-safe online store keeping the last ``history`` rows per key.

    >>> import datetime
    >>> from volga.api.entity import entity, entity_schema, field
    >>> @entity
    ... class Spend:
    ...     user_id: str = field(key=True)
    ...     at: datetime.datetime = field(timestamp=True)
    ...     total: float
    >>> store = MemoryOnlineStore(history=10)
    >>> at = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    >>> batch = pl.DataFrame({"user_id": ["a", "a"], "at": [at, at], "total": [1.0, 2.0]})
    >>> store.write("spend", entity_schema(Spend), batch)
    >>> store.get_latest("spend", pl.DataFrame({"user_id": ["a", "zz"]}))["total"].to_list()
    [2.0, None]
    """

    def __init__(self, history: int = 1000) -> None:
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"MemoryOnlineStore: history must be an int >= 1 (rows kept per key), got {history!r}")
        self.history = history
        self._features: dict[str, _Feature] = {}
        self._lock = threading.Lock()

    # -- writing ----------------------------------------------------------------------

    def write(self, name: str, schema: Schema, batch: pl.DataFrame, *, retain_us: int | None = None) -> None:
        feature = self._features.get(name)
        if feature is None:
            with self._lock:
                feature = self._features.setdefault(name, _Feature(name, schema))
        if retain_us is not None and feature.retain_us != retain_us:
            with self._lock:
                feature.retain_us = retain_us if feature.retain_us is None else max(feature.retain_us, retain_us)
        if not same_shape(feature.schema, schema):
            raise ValueError(
                f"online store feature {name!r} holds rows of schema {feature.schema.describe()}, "
                f"not {schema.describe()}; call clear({name!r}) before writing a new shape"
            )
        if batch.height == 0:
            conform_batch(batch, schema, what=f"online store feature {name!r}")  # still validate columns
            return
        with _gc_paused():
            self._insert(name, schema, feature, batch)

    def _insert(self, name: str, schema: Schema, feature: "_Feature", batch: pl.DataFrame) -> None:
        keys, rows = feature.to_rows(batch)
        history, stored = self.history, feature.rows
        with self._lock:
            if self._features.get(name) is not feature:  # cleared meanwhile: start afresh
                feature = self._features.setdefault(name, _Feature(name, schema))
                stored = feature.rows
            if feature.retain_us is not None:
                self._insert_retaining(feature, keys, rows)
                return
            for key, row in zip(keys, rows):
                try:  # a known key is the common case: no lookup-then-branch per row
                    stored[key].append(row)
                except KeyError:
                    stored[key] = deque((row,), maxlen=history)

    def _insert_retaining(self, feature: "_Feature", keys: list[Key], rows: list[Row]) -> None:
        """Append, then per touched key drop the oldest rows beyond ``history`` that are
        older than the retention behind the key's newest row."""
        stored, history, retain, ts = feature.rows, self.history, feature.retain_us, feature.ts_pos
        assert retain is not None
        for key, row in zip(keys, rows):
            try:
                stored[key].append(row)
            except KeyError:
                stored[key] = deque((row,))
        for key in set(keys):
            recent = stored[key]
            if len(recent) <= history:
                continue
            cutoff = recent[-1][ts] - retain
            evicted = None
            while len(recent) > history and recent[0][ts] < cutoff:
                evicted = recent.popleft()[ts]
            if evicted is not None:
                feature.evicted_us[key] = evicted

    def clear(self, name: str) -> None:
        with self._lock:
            self._features.pop(name, None)

    # -- reading ----------------------------------------------------------------------

    def schema(self, name: str) -> Schema | None:
        feature = self._features.get(name)
        return None if feature is None else feature.schema

    def latest_count(self, name: str) -> int:
        """Number of keys stored under ``name`` (0 if nothing was written)."""
        feature = self._features.get(name)
        return 0 if feature is None else len(feature.rows)

    def get_latest(self, name: str, keys: pl.DataFrame) -> pl.DataFrame:
        feature = self._feature(name)
        wanted = feature.request_keys(keys)
        get = feature.rows.get
        with self._lock:
            found = [recent[-1] if (recent := get(key)) else None for key in wanted]
        rows = [row if row is not None else feature.missing_row(key) for key, row in zip(wanted, found)]
        return pl.DataFrame(rows, schema=feature.out_schema, orient="row")

    def get_last_n(self, name: str, keys: pl.DataFrame, n: int) -> pl.DataFrame:
        if n < 0:
            raise ValueError(f"get_last_n({name!r}): n must be >= 0, got {n}")
        feature = self._feature(name)
        wanted = feature.request_keys(keys)
        get = feature.rows.get
        n = min(n, self.history)  # rows kept beyond `history` serve request-time windows only
        with self._lock:
            picked = [_tail(recent, n) if (recent := get(key)) else () for key in wanted]
        return _indexed_frame(feature, picked)

    def get_range(self, name: str, keys: pl.DataFrame, start_us: int | None, end_us: int | None) -> pl.DataFrame:
        feature = self._feature(name)
        wanted = feature.request_keys(keys)
        get = feature.rows.get
        with self._lock:
            picked = [_tail(recent, self.history) if (recent := get(key)) else () for key in wanted]
        lo = -(2**63) if start_us is None else start_us
        hi = 2**63 - 1 if end_us is None else end_us
        pos = feature.ts_pos
        in_range = [[row for row in rows if row[pos] is not None and lo <= row[pos] <= hi] for rows in picked]
        return _indexed_frame(feature, in_range)

    def window_rows(self, name: str, keys: pl.DataFrame, start_us: int, end_us: int) -> WindowRows:
        feature = self._feature(name)
        wanted = feature.request_keys(keys)
        get, evicted, ts = feature.rows.get, feature.evicted_us.get, feature.ts_pos
        per_key: list[list[Row]] = []
        gone: list[int | None] = []
        with self._lock:
            for key in wanted:
                recent = get(key)
                per_key.append(list(recent) if recent else [])  # a C-level copy; trimmed outside the lock
                gone.append(evicted(key))
        for i, rows in enumerate(per_key):
            if rows:  # rows are in time order: the window, and the one row before it
                end = bisect.bisect_right(rows, end_us, key=lambda r: r[ts]) if rows[-1][ts] > end_us else len(rows)
                start = bisect.bisect_left(rows, start_us, 0, end, key=lambda r: r[ts])
                per_key[i] = rows[max(start - 1, 0) : end]
        return WindowRows(feature.schema.names, per_key, gone)

    def _feature(self, name: str) -> _Feature:
        feature = self._features.get(name)
        if feature is None:
            raise KeyError(f"online store has no feature {name!r} (nothing was written under that name)")
        return feature

    # -- checkpoints: the store's contents go into a job's checkpoint ---------------------
    def snapshot(self, names: Iterable[str]) -> dict[str, Any]:
        """Every stored row of the features ``names`` (each key's history, oldest first)
        as one frame per feature, with the schema as JSON (``ops.protocol`` State)."""
        from volga.storage.schema_json import schema_to_json

        out: dict[str, Any] = {}
        for name in names:
            feature = self._features.get(name)
            if feature is None:
                continue
            with self._lock:  # row tuples are immutable: copying the references is enough
                rows = [row for recent in feature.rows.values() for row in recent]
            schema = feature.schema
            # datetimes are held as integer microseconds (see the module docstring)
            held = {c: (pl.Int64 if c in feature.int_cols else t) for c, t in feature.out_schema.items()}
            frame = pl.DataFrame(rows, schema=held, orient="row").cast(feature.out_schema)  # type: ignore[arg-type]
            out[name] = {"schema": schema_to_json(schema), "rows": frame, "retain_us": getattr(feature, "retain_us", None)}
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the features in ``state`` with the rows it holds (see :meth:`snapshot`)."""
        from volga.storage.schema_json import schema_from_json

        for name, saved in state.items():
            self.clear(name)
            self.write(name, schema_from_json(saved["schema"]), saved["rows"], retain_us=saved.get("retain_us"))


def _tail(recent: deque[Row], n: int) -> tuple[Row, ...]:
    if n >= len(recent):
        return tuple(recent)
    return tuple(itertools.islice(recent, len(recent) - n, None))


def _indexed_frame(feature: _Feature, per_key: Iterable[Iterable[Row]]) -> pl.DataFrame:
    rows: Iterator[Row] = (row + (index,) for index, rows in enumerate(per_key) for row in rows)
    return pl.DataFrame(list(rows), schema=feature.indexed_schema, orient="row")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC passes while a batch becomes row tuples: a write allocates thousands of
    tuples, and collections triggered mid-write would traverse the whole store (measured:
    writes ~25% faster). Row tuples hold no cycles; collection resumes right after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
