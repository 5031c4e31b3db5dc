"""The embedded online store: latest row and recent history per key, in process memory.

Per feature, the rows are held columnar: the conformed frames ``write`` was given, in the
order they were inserted (the feature's *log*). Each row has a sequence number, counted
from the feature's first write; per key, the store keeps an ``array('q')`` of its rows'
numbers and timestamps (interleaved), last written last. A read picks the numbers under
the lock and gathers the rows from the frames outside it (frames are immutable), so a
reader sees a row entirely or not at all. Timestamps are held as integer microseconds
(UTC); a null timestamp as ``NULL_TS``.

No per-row Python objects: a row costs its columnar bytes plus 16 bytes of numbers,
against ~290 bytes as row tuples (measured on the quickstart's feature), and a write
converts only the key and timestamp columns to Python values. Request-time reads, which
need a key's rows as tuples, keep those of the keys they read (``_Feature.read_rows``) and
convert only the rows written since on the next read; at most ``read_cache_rows`` tuples
per feature, the least recently read keys' dropped first.

The log is compacted when it holds more than twice the live rows: it becomes one frame of
the live rows (which keep their numbers), so memory stays bounded. Checkpoints: a snapshot
is the log's frames concatenated, with each write's row count and ``retain_us`` (no
per-row Python work), and a restore replays them through ``write``: trimming
(``history``, ``retain_us``) depends only on that order and on the batches' bounds, so the
replay rebuilds the same rows per key. Between compactions the log only grows, so
consecutive checkpoints share their leading row chunks (``volga.runtime.checkpoint``).
"""

# No `from __future__ import annotations` here: the docstring example's @entity class needs
# its annotations evaluated where it is defined (doctest inherits a module's future flags).

import array
import bisect
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from volga.api.entity import Schema
from volga.storage.conform import conform_batch, conform_series, same_shape
from volga.storage.online.base import KEY_INDEX, OnlineStore, WindowRows

KEY_INDEX_DTYPE = pl.UInt32()
# A log is compacted once it holds more than twice the live rows plus this many: small
# features are not compacted over and over (2**16 is also the checkpoint chunk size).
COMPACT_SLACK_ROWS = 1 << 16
# Writes of fewer rows are merged in the log (up to this many rows, or SMALL_FRAMES frames at
# once): a polars frame costs ~2 KB however few rows it holds, and each one slows the concat.
SMALL_ROWS = 4096
SMALL_FRAMES = 64
NULL_TS = -(2**63)  # a null timestamp in the per-key arrays

Key = Any  # the key value, or a tuple of values for a composite key
Row = tuple[Any, ...]


class _Columns:
    """One frame's columns as numpy arrays, made on its first row-wise read: picking a few
    rows from them costs ~1-5 us a column, from a polars frame (or Arrow) ~10-100 us.
    Numeric columns are shared with the frame where polars can (no nulls) or kept with
    their null mask; other columns (strings, lists, ...) become object arrays."""

    __slots__ = ("frame", "_arrays")

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self._arrays: list[tuple[np.ndarray, np.ndarray | None]] | None = None

    def rows(self, at: np.ndarray, int_cols: frozenset[str]) -> list[Row]:
        """The rows at positions ``at``, as tuples (datetimes as integer microseconds)."""
        if self._arrays is None:
            self._arrays = [_column(s, s.name in int_cols) for s in self.frame.iter_columns()]
        columns = []
        for values, nulls in self._arrays:
            picked = values[at].tolist()
            if nulls is not None:
                picked = [None if null else value for value, null in zip(picked, nulls[at].tolist())]
            columns.append(picked)
        return list(zip(*columns))


def _column(series: pl.Series, as_int: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A column's values as numpy, and its null mask if it has nulls."""
    if as_int:  # its physical value (microseconds for Datetime("us"))
        series = series.cast(pl.Int64)
    if series.dtype.is_numeric() or series.dtype == pl.Boolean:
        if series.null_count() == 0:
            return series.to_numpy(), None
        return series.fill_null(0 if series.dtype != pl.Boolean else False).to_numpy(), series.is_null().to_numpy()
    return np.fromiter(series.to_list(), dtype=object, count=series.len()), None


class _View:
    """The log's frames at one instant (immutable: readable without the lock)."""

    __slots__ = ("frames", "columns", "firsts", "offsets", "base_seqs", "_whole")

    def __init__(self, columns: tuple[_Columns, ...], firsts: np.ndarray, base_seqs: np.ndarray | None) -> None:
        self.columns = columns
        self.frames = tuple(c.frame for c in columns)
        self.firsts = firsts  # each frame's first sequence number
        self.offsets = np.cumsum([0, *(f.height for f in self.frames[:-1])], dtype=np.int64)  # its first position
        self.base_seqs = base_seqs  # the numbers of frames[0]'s rows, if it is a compacted base
        self._whole: pl.DataFrame | None = None

    def whole(self) -> pl.DataFrame:
        """The frames as one (not rechunked: ~1 us per frame, once per view)."""
        if self._whole is None:
            self._whole = pl.concat(self.frames, rechunk=False)
        return self._whole

    def positions(self, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's frame (-1 for the number -1) and position in the log."""
        which = np.searchsorted(self.firsts, seqs, side="right") - 1
        at = self.offsets[which] + seqs - self.firsts[which]
        if self.base_seqs is not None:
            base = which == 0
            at[base] = np.searchsorted(self.base_seqs, seqs[base])
        return which, at


class _Log:
    """A feature's rows since its last compaction (module docstring): the conformed frames,
    in insertion order, and per write its row count and ``retain_us`` (-1: none).
    Consecutive writes without ``retain_us`` count as one (their bounds change nothing)."""

    __slots__ = ("columns", "firsts", "base_seqs", "sizes", "retains", "rows", "small", "small_rows", "open_run", "base_evicted", "_view")

    def __init__(self) -> None:
        self.columns: list[_Columns] = []  # the frames (with their columns for row-wise reads)
        self.firsts = array.array("q")
        self.base_seqs: np.ndarray | None = None
        self.sizes, self.retains = array.array("q"), array.array("q")
        self.rows = 0
        self.small = self.small_rows = 0  # trailing frames of < SMALL_ROWS rows, and their rows
        self.open_run = False  # the last write record may take the next write without retain_us
        self.base_evicted: dict[Key, int] = {}  # the keys' evicted_us when the log was compacted
        self._view: _View | None = None  # view() until the frames change

    @classmethod
    def compacted(cls, base: pl.DataFrame, seqs: np.ndarray, retain: int | None, evicted: dict[Key, int]) -> "_Log":
        log = cls()
        log.base_evicted = evicted
        if base.height:
            log.append(base, retain, int(seqs[0]))
            log.base_seqs = seqs
        log.seal()
        return log

    def append(self, frame: pl.DataFrame, retain: int | None, first: int) -> None:
        """Add the rows of one write, numbered from ``first``."""
        rows = frame.height
        if retain is None and self.open_run:
            self.sizes[-1] += rows
        else:
            self.sizes.append(rows)
            self.retains.append(-1 if retain is None else retain)
        self.open_run = retain is None
        self.rows += rows
        self._view = None
        if rows >= SMALL_ROWS:
            self._merge_small()
            self.small = self.small_rows = 0
        self.columns.append(_Columns(frame))
        self.firsts.append(first)
        if rows >= SMALL_ROWS:
            return
        self.small += 1
        self.small_rows += rows
        if self.small >= SMALL_FRAMES or self.small_rows >= SMALL_ROWS:
            self._merge_small()
            if self.small_rows >= SMALL_ROWS:
                self.small = self.small_rows = 0

    def _merge_small(self) -> None:
        """Merge the trailing small frames into one (~0.1 ms for 64); their rows are numbered
        consecutively, so the merged frame starts at the first one's number."""
        if self.small > 1:
            merged = pl.concat([c.frame for c in self.columns[-self.small :]], rechunk=True)
            del self.columns[-self.small :]
            del self.firsts[len(self.firsts) - self.small + 1 :]
            self.columns.append(_Columns(merged))
            self.small = 1
            self._view = None

    def seal(self) -> None:
        """Merge the trailing small frames, and leave the frames and write records so far
        as they are: later writes only add after them (a compaction replaces them)."""
        self._merge_small()
        self.small = self.small_rows = 0
        self.open_run = False

    def view(self) -> _View:
        if self._view is None:
            self._view = _View(tuple(self.columns), np.frombuffer(self.firsts, dtype=np.int64).copy(), self.base_seqs)
        return self._view

    def batches(self) -> tuple[np.ndarray, np.ndarray]:
        """Each write's row count and retain_us (-1: none), as arrays."""
        return np.frombuffer(self.sizes, dtype=np.int64).copy(), np.frombuffer(self.retains, dtype=np.int64).copy()


def _seqs(view: _View) -> np.ndarray:
    """The sequence numbers of ``view``'s rows, in log order."""
    parts = [
        view.base_seqs if i == 0 and view.base_seqs is not None else np.arange(first, first + frame.height, dtype=np.int64)
        for i, (frame, first) in enumerate(zip(view.frames, view.firsts.tolist()))
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class _Feature:
    """What is stored under one feature name, and how to convert to and from it."""

    __slots__ = (
        "name",
        "schema",
        "rows",
        "key_dtypes",
        "int_cols",
        "out_schema",
        "indexed_schema",
        "retain_us",
        "evicted_us",
        "log",
        "next_seq",
        "next_check",
        "compacting",
        "read_rows",
        "read_rows_held",
    )

    def __init__(self, name: str, schema: Schema) -> None:
        self.name = name
        self.schema = schema
        # per key: its rows' (sequence number, timestamp) pairs, interleaved, oldest first
        self.rows: dict[Key, array.array[int]] = {}
        self.key_dtypes = tuple((k, schema.field(k).dtype) for k in schema.keys)
        # Datetime key values are held as Int64 microseconds, as the timestamps are.
        self.int_cols = frozenset(f.name for f in schema.fields if isinstance(f.dtype, pl.Datetime))
        self.out_schema: dict[str, pl.DataType] = schema.polars_schema()
        self.indexed_schema = {**self.out_schema, KEY_INDEX: KEY_INDEX_DTYPE}
        # Request-time pipelines: rows younger than this (behind the key's newest row) are
        # kept beyond `history`; evicted_us[key] is the newest timestamp evicted since.
        self.retain_us: int | None = None
        self.evicted_us: dict[Key, int] = {}
        self.log = _Log()
        self.next_seq = 0  # the number of the next row written
        self.next_check = COMPACT_SLACK_ROWS  # log rows above which to count the live rows
        self.compacting = False
        # Keys read row-wise (request-time windows): their rows' numbers and row tuples when
        # last read. A key's numbers only lose a prefix and gain a suffix, so the next read
        # converts only the rows written since (~1 us a row), not the key's whole history.
        # Least recently read first; read_rows_held counts their tuples (read_cache_rows).
        self.read_rows: dict[Key, tuple[array.array[int], list[Row]]] = {}
        self.read_rows_held = 0

    def conform(self, batch: pl.DataFrame) -> pl.DataFrame:
        return conform_batch(batch, self.schema, what=f"online store feature {self.name!r}")

    def _values(self, series: pl.Series) -> list[Any]:
        # Casting a Datetime column to Int64 gives its physical value (microseconds for Datetime("us")).
        return (series.cast(pl.Int64) if series.name in self.int_cols else series).to_list()

    def keys_and_times(self, frame: pl.DataFrame) -> tuple[list[Key], list[int]]:
        """The key of each row of a conformed ``frame``, and its timestamp (``NULL_TS`` if null)."""
        columns = [self._values(frame.get_column(k)) for k, _ in self.key_dtypes]
        keys = columns[0] if len(columns) == 1 else list(zip(*columns))
        times = frame.get_column(self.schema.timestamp).cast(pl.Int64).fill_null(NULL_TS).to_list()
        return keys, times

    def take_rows(self, view: "_View", seqs: np.ndarray) -> list[Row]:
        """The rows numbered ``seqs`` (none -1), in that order, as tuples (datetimes as
        integer microseconds)."""
        if seqs.size == 0:
            return []
        which, at = view.positions(seqs)
        at -= view.offsets[which]
        if (which == which[0]).all():
            return view.columns[int(which[0])].rows(at, self.int_cols)
        rows: list[Row] = [()] * seqs.size
        order = np.argsort(which, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(which[order])) + 1):
            for i, row in zip(group.tolist(), view.columns[int(which[group[0]])].rows(at[group], self.int_cols)):
                rows[i] = row
        return rows

    def request_keys(self, keys: pl.DataFrame) -> list[Key]:
        """The requested keys, as the same Python values ``keys_and_times`` gives."""
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
            columns.append(self._values(series))
        return columns[0] if len(columns) == 1 else list(zip(*columns))

    @property
    def float_keys(self) -> bool:
        return any(dtype.is_float() for _, dtype in self.key_dtypes)

    def keys_frame(self, keys: list[Key]) -> pl.DataFrame:
        """The key columns of ``keys`` (values as ``keys_and_times`` gives them)."""
        names = [k for k, _ in self.key_dtypes]
        columns = [keys] if len(names) == 1 else [list(c) for c in zip(*keys)] or [[] for _ in names]
        held = {k: (pl.Int64 if k in self.int_cols else t) for k, t in self.key_dtypes}
        return pl.DataFrame(dict(zip(names, columns)), schema=held).cast(dict(self.key_dtypes))

    def take(self, view: _View, seqs: np.ndarray) -> pl.DataFrame:
        """The rows numbered ``seqs``, in that order; -1 gives an all-null row.

        polars spends ~30 us on any gather and ~2 us on a slice: one row is a slice, rows
        from one frame one gather, rows from several frames one gather from them all."""
        if seqs.size == 0:
            return pl.DataFrame(schema=self.out_schema)
        if not view.frames:
            return pl.DataFrame(schema=self.out_schema).clear(seqs.size)
        which, at = view.positions(seqs)
        if (which < 0).all():
            return pl.DataFrame(schema=self.out_schema).clear(seqs.size)
        first = int(which[0])
        if seqs.size == 1:
            return view.frames[first].slice(int(at[0] - view.offsets[first]), 1)
        if (which == first).all():
            return view.frames[first][pl.Series(at - view.offsets[first])]
        index = pl.Series(at)
        missing = np.flatnonzero(which < 0)
        return view.whole()[index.scatter(missing, None) if missing.size else index]

    def live_frame(self, frames: list[pl.DataFrame], history: int, live: int) -> tuple[pl.DataFrame, np.ndarray]:
        """The rows a history-only store keeps after the writes ``frames``: each key's last
        ``history`` rows, in write order (``live`` of them), and their positions.

        Grouped by a 64-bit hash of the key first (about twice as fast as by strings). Two
        keys with one hash would share a group holding fewer than their rows: then fewer
        than ``live`` rows come out, and the keys themselves are grouped instead."""
        log = pl.concat(frames, rechunk=False)
        keys = list(self.schema.keys)
        row = "_row" + "_" * max(len(n) for n in self.schema.names)  # a name no column has
        hashed = pl.struct(keys).hash() if len(keys) > 1 else pl.col(keys[0]).hash()
        for by in ([hashed.alias(row + "h")], keys):
            picked = (
                log.select(by).with_row_index(row).group_by(pl.exclude(row)).agg(pl.col(row).tail(history))
                .get_column(row).explode().sort()
            )
            if picked.len() == live:
                break
        positions = picked.to_numpy().astype(np.int64)
        return log[positions], positions


class MemoryOnlineStore(OnlineStore):
    """In-process, thread-safe online store keeping the last ``history`` rows per key.

    Request-time reads keep up to ``read_cache_rows`` row tuples per feature (about 300
    bytes each), so that a key's next read converts only its new rows (module docstring).

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

    read_cache_rows = 1 << 20

    def __init__(self, history: int = 1000) -> None:
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"MemoryOnlineStore: history must be an int >= 1 (rows kept per key), got {history!r}")
        self.history = history
        self._features: dict[str, _Feature] = {}
        self._lock = threading.Lock()
        self._read_cache_lock = threading.Lock()  # request-time readers' tuples (``read_rows``)

    # -- writing ----------------------------------------------------------------------

    def write(self, name: str, schema: Schema, batch: pl.DataFrame, *, retain_us: int | None = None) -> None:
        feature = self._features.get(name)
        if feature is None:
            with self._lock:
                feature = self._features.get(name) or self._features.setdefault(name, _Feature(name, schema))
        if retain_us is not None and feature.retain_us != retain_us:
            with self._lock:
                if feature.retain_us is None:
                    self._cut_to_history(feature)
                feature.retain_us = retain_us if feature.retain_us is None else max(feature.retain_us, retain_us)
        if not same_shape(feature.schema, schema):
            raise ValueError(
                f"online store feature {name!r} holds rows of schema {feature.schema.describe()}, "
                f"not {schema.describe()}; call clear({name!r}) before writing a new shape"
            )
        if batch.height == 0:
            feature.conform(batch)  # still validate columns
            return
        due = self._insert(name, schema, feature, batch)
        if due is not None:
            self._compact(name, due)

    def _insert(self, name: str, schema: Schema, feature: _Feature, batch: pl.DataFrame) -> _Feature | None:
        """Insert ``batch``'s rows; return the feature if its log is due for a compaction check."""
        frame = feature.conform(batch)
        keys, times = feature.keys_and_times(frame)
        with self._lock:
            if self._features.get(name) is not feature:  # cleared meanwhile: start afresh
                feature = self._features.setdefault(name, _Feature(name, schema))
            first = feature.next_seq
            feature.next_seq += frame.height
            stored = feature.rows
            for key, pair in zip(keys, zip(range(first, feature.next_seq), times)):
                try:  # a known key is the common case: no lookup-then-branch per row
                    stored[key].extend(pair)
                except KeyError:
                    stored[key] = array.array("q", pair)
            if feature.retain_us is not None:
                self._evict(feature, keys)
            # in insertion order, under the lock: a replay must see the writes in this order
            feature.log.append(frame, feature.retain_us, first)
            return feature if feature.log.rows > feature.next_check else None

    def _evict(self, feature: _Feature, keys: list[Key]) -> None:
        """Per key just written, drop the oldest rows beyond ``history`` that are older than
        the retention behind the key's newest row (lock held)."""
        stored, history, retain = feature.rows, self.history, feature.retain_us
        assert retain is not None
        for key in set(keys):
            held = stored[key]
            rows = len(held) // 2
            if rows <= history:
                continue
            cutoff = held[-1] - retain
            drop = 0
            while rows - drop > history and held[2 * drop + 1] < cutoff:
                drop += 1
            if drop:
                feature.evicted_us[key] = held[2 * drop - 1]
                del held[: 2 * drop]

    def _cut_to_history(self, feature: _Feature) -> None:
        """Cut each key's array to its last ``history`` rows (lock held). A history-only
        feature's arrays are cut when its log is compacted (until then they hold at most
        the log's rows); when retention turns on, the rows written before keep their
        ``history`` rows and, from then on, the rows within the retention as well."""
        keep = -2 * self.history
        for held in feature.rows.values():
            if len(held) > -keep:
                del held[:keep]

    def clear(self, name: str) -> None:
        with self._lock:
            self._features.pop(name, None)

    # -- compaction (module docstring) -------------------------------------------------

    def _live_rows(self, feature: _Feature) -> int:
        """How many rows the keys hold (lock held)."""
        held = np.fromiter(map(len, feature.rows.values()), dtype=np.int64, count=len(feature.rows)) // 2
        return int(held.sum() if feature.retain_us is not None else np.minimum(held, self.history).sum())

    def _live_seqs(self, feature: _Feature) -> np.ndarray:
        """The numbers of the rows the keys hold, in log order (lock held)."""
        last = None if feature.retain_us is not None else -2 * self.history
        pairs = _joined([held[last:] if last else held for held in feature.rows.values()])
        return np.sort(pairs[0::2])

    def _compact(self, name: str, feature: _Feature) -> None:
        """Replace the log by one frame of the live rows if it holds more than twice them.

        A log of history-only writes is cut columnar (each key's last ``history`` rows, in
        log order) outside the lock; with ``retain_us`` (trimming depends on batch bounds) or
        float keys (NaN keys are each their own key in the dict, not in polars) the live rows'
        numbers are read under the lock and the rows gathered outside it. Writes made
        meanwhile stay in the log after the new frame."""
        with self._lock:
            if feature.compacting or self._features.get(name) is not feature:
                return
            log = feature.log
            live = self._live_rows(feature)
            if log.rows <= 2 * live + COMPACT_SLACK_ROWS:
                feature.next_check = 2 * live + COMPACT_SLACK_ROWS  # live rows grow at most as fast as the log
                return
            feature.compacting = True
            log.seal()  # the frames and write records now in the log stay as they are
            view, writes = log.view(), len(log.sizes)
            columnar = not log.base_evicted and not feature.float_keys and all(r < 0 for r in log.retains)
            seqs = None if columnar else self._live_seqs(feature)
            evicted, retain = dict(feature.evicted_us), (None if columnar else feature.retain_us)
        try:
            if seqs is None:
                base, positions = feature.live_frame(list(view.frames), self.history, live)
                seqs = _seqs(view)[positions]
            else:
                base = feature.take(view, seqs)
        except BaseException:
            with self._lock:
                feature.compacting = False
            raise
        with self._lock:
            feature.compacting = False  # only now: a second compaction must see this one's log
            if self._features.get(name) is not feature:  # cleared meanwhile
                return
            old, new = feature.log, _Log.compacted(base, seqs, retain, evicted)
            assert old is log, "only a compaction replaces a log, and one runs at a time"
            done = len(view.frames)
            new.columns += old.columns[done:]
            new.firsts += old.firsts[done:]
            new.sizes += old.sizes[writes:]
            new.retains += old.retains[writes:]
            new.rows += old.rows - sum(f.height for f in view.frames)
            new.small, new.small_rows, new.open_run = old.small, old.small_rows, old.open_run
            feature.log = new
            feature.next_check = 2 * base.height + COMPACT_SLACK_ROWS
            if feature.retain_us is None:
                self._cut_to_history(feature)

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
            seqs = [held[-2] if (held := get(key)) else -1 for key in wanted]
            view = feature.log.view()
        out = feature.take(view, np.array(seqs, dtype=np.int64))
        if -1 in seqs:  # unknown keys: all-null rows with the key columns filled in
            found = pl.Series([seq >= 0 for seq in seqs])
            asked = feature.keys_frame(wanted)
            out = out.with_columns(out.get_column(k).zip_with(found, asked.get_column(k)) for k in feature.schema.keys)
        return out

    def get_last_n(self, name: str, keys: pl.DataFrame, n: int) -> pl.DataFrame:
        if n < 0:
            raise ValueError(f"get_last_n({name!r}): n must be >= 0, got {n}")
        n = min(n, self.history)  # rows kept beyond `history` serve request-time windows only
        return self._indexed(name, keys, lambda held: held[-2 * n :] if n else held[:0], None, None)

    def get_range(self, name: str, keys: pl.DataFrame, start_us: int | None, end_us: int | None) -> pl.DataFrame:
        last = -2 * self.history
        return self._indexed(name, keys, lambda held: held[last:], start_us, end_us)

    def _indexed(self, name: str, keys: pl.DataFrame, pick: Any, start_us: int | None, end_us: int | None) -> pl.DataFrame:
        """Per requested key, the rows ``pick`` takes from its pairs (under the lock), with
        ``start <= ts <= end`` if either is given; with ``KEY_INDEX``."""
        feature = self._feature(name)
        wanted = feature.request_keys(keys)
        get = feature.rows.get
        empty = array.array("q")
        with self._lock:
            picked = [pick(held) if (held := get(key)) else empty for key in wanted]
            view = feature.log.view()
        pairs = _joined(picked)
        seqs, times = pairs[0::2], pairs[1::2]
        index = np.repeat(np.arange(len(wanted), dtype=np.uint32), [len(p) // 2 for p in picked])
        if start_us is not None or end_us is not None:
            keep = times != NULL_TS
            if start_us is not None:
                keep &= times >= start_us
            if end_us is not None:
                keep &= times <= end_us
            seqs, index = seqs[keep], index[keep]
        return feature.take(view, seqs).with_columns(pl.Series(KEY_INDEX, index, dtype=KEY_INDEX_DTYPE))

    def window_rows(self, name: str, keys: pl.DataFrame, start_us: int, end_us: int) -> WindowRows:
        feature = self._feature(name)
        wanted = feature.request_keys(keys)
        get, evicted = feature.rows.get, feature.evicted_us.get
        last = None if feature.retain_us is not None else -2 * self.history
        held_rows: list[array.array[int] | None] = []
        gone: list[int | None] = []
        with self._lock:
            for key in wanted:
                held = get(key)
                held_rows.append(held[last:] if held else None)  # a C-level copy; cut outside the lock
                gone.append(evicted(key))
            view = feature.log.view()
        plan: list[tuple[Key, array.array[int], list[Row], int, int] | None] = []
        fresh: list[array.array[int]] = []  # per key read, the numbers of its rows not yet read
        for key, held in zip(wanted, held_rows):
            if not held:
                plan.append(None)
                fresh.append(array.array("q"))
                continue
            times, seqs = held[1::2], held[0::2]  # in time order: the window, and the one row before it
            end = bisect.bisect_right(times, end_us) if times[-1] > end_us else len(times)
            start = bisect.bisect_left(times, start_us, 0, end)
            known, rows = feature.read_rows.get(key, _NOT_READ)
            drop = bisect.bisect_left(known, seqs[0])
            kept = len(known) - drop
            if kept > len(seqs) or (kept and seqs[kept - 1] != known[-1]):  # (cannot happen: see read_rows)
                drop, kept = len(known), 0
            fresh.append(seqs[kept:])
            plan.append((key, seqs, rows[drop:], max(start - 1, 0), end))
        converted = feature.take_rows(view, _joined(fresh))
        per_key: list[list[Row]] = []
        at = 0
        cache = feature.read_rows
        with self._read_cache_lock:
            for entry, new in zip(plan, fresh):
                if entry is None:
                    per_key.append([])
                    continue
                key, seqs, rows, start, end = entry
                rows = rows + converted[at : at + len(new)]
                at += len(new)
                before = cache.pop(key, None)  # and put back last: the most recently read
                cache[key] = (seqs, rows)
                feature.read_rows_held += len(rows) - (len(before[1]) if before else 0)
                per_key.append(rows[start:end])
            while feature.read_rows_held > self.read_cache_rows:
                feature.read_rows_held -= len(cache.pop(next(iter(cache)))[1])
        return WindowRows(feature.schema.names, per_key, gone)

    def _feature(self, name: str) -> _Feature:
        feature = self._features.get(name)
        if feature is None:
            raise KeyError(f"online store has no feature {name!r} (nothing was written under that name)")
        return feature

    # -- checkpoints: the store's contents go into a job's checkpoint ---------------------
    def snapshot(self, names: Iterable[str]) -> dict[str, Any]:
        """The log of the features ``names`` as one frame per feature (``ops.protocol``
        State): its rows, oldest write first; each write's row count and ``retain_us``
        (-1: none); the schema as JSON; and the keys' eviction times when the log was last
        compacted. No per-row work: the log's frames are concatenated as they are.

        >>> MemoryOnlineStore().snapshot(["nothing written"])
        {}
        """
        from volga.storage.schema_json import schema_to_json

        out: dict[str, Any] = {}
        for name in names:
            feature = self._features.get(name)
            if feature is None:
                continue
            with self._lock:  # the log's frames are immutable: copying the references is enough
                log = feature.log
                frames, (sizes, retains), evicted, retain = log.view().frames, log.batches(), log.base_evicted, feature.retain_us
            saved: dict[str, Any] = {
                "schema": schema_to_json(feature.schema),
                "rows": pl.concat(frames, rechunk=False) if frames else pl.DataFrame(schema=feature.out_schema),
                "retain_us": retain,
                "batch_rows": sizes,
                "batch_retain_us": retains,
            }
            if evicted:  # replaced, never mutated, once set: safe to read outside the lock
                saved["evicted"] = {"keys": feature.keys_frame(list(evicted)), "at_us": np.array(list(evicted.values()), dtype=np.int64)}
            out[name] = saved
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the features in ``state`` with what it holds (see :meth:`snapshot`): its
        writes are replayed in order, each with its ``retain_us`` (consecutive writes without
        one as one batch: their trimming does not depend on the batches' bounds)."""
        for name, saved in state.items():
            self._restore(name, saved)

    def _restore(self, name: str, saved: dict[str, Any]) -> None:
        from volga.storage.schema_json import schema_from_json

        schema, rows = schema_from_json(saved["schema"]), saved["rows"]
        self.clear(name)
        if "batch_rows" not in saved:  # a checkpoint from before write logs: each key's rows, oldest first
            self.write(name, schema, rows, retain_us=saved.get("retain_us"))
            return
        batches = _replay_batches(name, rows.height, saved["batch_rows"], saved["batch_retain_us"])
        if not batches:
            self.write(name, schema, rows)  # no rows: the feature and its schema still exist
        for i, (start, length, retain) in enumerate(batches):
            self.write(name, schema, rows.slice(start, length), retain_us=retain)
            if i == 0 and "evicted" in saved:  # the first write is the compacted log's live rows
                feature = self._features[name]
                keys = feature.request_keys(saved["evicted"]["keys"])
                with self._lock:
                    feature.log.base_evicted = dict(zip(keys, saved["evicted"]["at_us"].tolist()))
                    feature.evicted_us.update(feature.log.base_evicted)
        self.write(name, schema, rows.head(0), retain_us=saved.get("retain_us"))  # retain_us set without a row


_NOT_READ: "tuple[array.array[int], list[Row]]" = (array.array("q"), [])


def _joined(arrays: "Iterable[array.array[int]]") -> np.ndarray:
    """The int64 arrays one after the other, as one numpy array (one C-level copy)."""
    return np.frombuffer(b"".join([a.tobytes() for a in arrays]), dtype=np.int64)


def _replay_batches(name: str, height: int, lengths: Any, retains: Any) -> list[tuple[int, int, int | None]]:
    """(first row, row count, retain_us) of each write to replay from a snapshot."""
    sizes, retained = [int(n) for n in lengths], [None if r < 0 else int(r) for r in retains]
    if len(sizes) != len(retained) or sum(sizes) != height or any(n < 0 for n in sizes):
        raise ValueError(
            f"online store snapshot of feature {name!r} is inconsistent: {height} rows, but batch sizes "
            f"summing to {sum(sizes)} ({len(sizes)} sizes, {len(retained)} retain_us values)"
        )
    out: list[tuple[int, int, int | None]] = []
    start = 0
    for n, retain in zip(sizes, retained):
        if out and retain is None and out[-1][2] is None:  # history-only writes: one batch
            first, count, _ = out[-1]
            out[-1] = (first, count + n, None)
        else:
            out.append((start, n, retain))
        start += n
    return out
