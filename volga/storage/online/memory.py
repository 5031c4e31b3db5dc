"""The embedded online store: latest row and recent history per key, in process memory.

Per feature it keeps one dict from key (the key value, or a tuple of values for a
composite key) to a bounded deque of row tuples, last written last. The latest row is
the deque's last item. Rows are immutable tuples converted from a whole batch at once,
so a reader sees a row entirely or not at all. Datetime columns are held as their integer
value (microseconds since the epoch, UTC) and turned back into ``Datetime("us", "UTC")``
when a result frame is built from the row tuples and the stored schema.

One lock guards the dicts; it is held only to insert ready-made tuples (``write``) or to
pick them out (reads). Converting batches and building result frames happen outside it.

Checkpoints: once :meth:`MemoryOnlineStore.record_writes` is called (a checkpointed job does,
as does the first :meth:`~MemoryOnlineStore.snapshot`), each feature also keeps its *write
log*: the conformed frames ``write`` was given, in the order they were inserted. A snapshot
is their concatenation (no per-row Python work) and a restore replays them through
``write``: trimming (``history``, ``retain_us``) depends only on that order and on the
batches' bounds, so the replay rebuilds the same rows per key. The log is compacted when it
holds more than twice the live rows: it becomes one frame of the live rows, so memory and
checkpoint size stay bounded. Between compactions the log only grows, so consecutive
checkpoints share their leading row chunks (``volga.runtime.checkpoint``).
"""

# No `from __future__ import annotations` here: the docstring example's @entity class needs
# its annotations evaluated where it is defined (doctest inherits a module's future flags).

import array
import bisect
import contextlib
import gc
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import polars as pl

from volga.api.entity import Schema
from volga.storage.conform import conform_batch, conform_series, same_shape
from volga.storage.online.base import KEY_INDEX, OnlineStore, WindowRows

KEY_INDEX_DTYPE = pl.UInt32()
# A write log is compacted once it holds more than twice the live rows plus this many: small
# features are not compacted over and over (2**16 is also the checkpoint chunk size).
COMPACT_SLACK_ROWS = 1 << 16
# Writes of fewer rows are merged in the log (up to this many rows, or SMALL_FRAMES frames at
# once): a polars frame costs ~2 KB however few rows it holds, and each one slows the concat.
SMALL_ROWS = 4096
SMALL_FRAMES = 64

Row = tuple[Any, ...]
Key = Any  # the key value, or a tuple of values for a composite key


class _WriteLog:
    """A feature's writes since its log was last compacted (module docstring): the conformed
    frames, in insertion order, and per write its row count and ``retain_us`` (-1: none).
    Consecutive writes without ``retain_us`` count as one (their bounds change nothing)."""

    __slots__ = ("frames", "sizes", "retains", "rows", "small", "small_rows", "open_run", "base_evicted")

    def __init__(self, base: pl.DataFrame | None = None, retain: int | None = None, base_evicted: dict[Key, int] | None = None) -> None:
        self.frames: list[pl.DataFrame] = []
        self.sizes, self.retains = array.array("q"), array.array("q")
        self.rows = 0
        self.small = self.small_rows = 0  # trailing frames of < SMALL_ROWS rows, and their rows
        self.open_run = False  # the last write record may take the next write without retain_us
        self.base_evicted = base_evicted or {}  # the keys' evicted_us when the log was compacted
        if base is not None:
            self.append(base, retain)
            self.seal()

    def append(self, frame: pl.DataFrame, retain: int | None) -> None:
        rows = frame.height
        if retain is None and self.open_run:
            self.sizes[-1] += rows
        else:
            self.sizes.append(rows)
            self.retains.append(-1 if retain is None else retain)
        self.open_run = retain is None
        self.rows += rows
        if rows >= SMALL_ROWS:
            self._merge_small()
            self.small = self.small_rows = 0
            self.frames.append(frame)
            return
        self.frames.append(frame)
        self.small += 1
        self.small_rows += rows
        if self.small >= SMALL_FRAMES or self.small_rows >= SMALL_ROWS:
            self._merge_small()
            if self.small_rows >= SMALL_ROWS:
                self.small = self.small_rows = 0

    def _merge_small(self) -> None:
        if self.small > 1:  # ~0.1 ms for 64 small frames
            merged = pl.concat(self.frames[-self.small :], rechunk=True)
            del self.frames[-self.small :]
            self.frames.append(merged)
            self.small = 1

    def seal(self) -> None:
        """Merge the trailing small frames, and leave the frames and write records so far
        as they are: later writes only add after them (a compaction replaces them)."""
        self._merge_small()
        self.small = self.small_rows = 0
        self.open_run = False

    def batches(self) -> tuple[np.ndarray, np.ndarray]:
        """Each write's row count and retain_us (-1: none), as arrays."""
        return np.frombuffer(self.sizes, dtype=np.int64).copy(), np.frombuffer(self.retains, dtype=np.int64).copy()


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
        "log",
        "next_check",
        "compacting",
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
        self.log: _WriteLog | None = None  # None while the store does not record writes
        self.next_check = COMPACT_SLACK_ROWS  # log rows above which to count the live rows
        self.compacting = False

    def conform(self, batch: pl.DataFrame) -> pl.DataFrame:
        return conform_batch(batch, self.schema, what=f"online store feature {self.name!r}")

    def to_rows(self, frame: pl.DataFrame) -> tuple[list[Key], list[Row]]:
        """Row tuples of a conformed ``frame`` (in schema order) and the key of each row."""
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

    @property
    def float_keys(self) -> bool:
        return any(dtype.is_float() for _, dtype in self.key_dtypes)

    def rows_frame(self, rows: list[Row]) -> pl.DataFrame:
        """Row tuples as a frame of the schema (per-row Python work: the slow way)."""
        # datetimes are held as integer microseconds (see the module docstring)
        held = {c: (pl.Int64 if c in self.int_cols else t) for c, t in self.out_schema.items()}
        return pl.DataFrame(rows, schema=held, orient="row").cast(self.out_schema)  # type: ignore[arg-type]

    def keys_frame(self, keys: list[Key]) -> pl.DataFrame:
        """The key columns of ``keys`` (values as ``to_rows`` holds them)."""
        names = [k for k, _ in self.key_dtypes]
        columns = [keys] if len(names) == 1 else [list(c) for c in zip(*keys)] or [[] for _ in names]
        held = {k: (pl.Int64 if k in self.int_cols else t) for k, t in self.key_dtypes}
        return pl.DataFrame(dict(zip(names, columns)), schema=held).cast(dict(self.key_dtypes))

    def live_frame(self, frames: list[pl.DataFrame], history: int, live: int) -> pl.DataFrame:
        """The rows a history-only store keeps after the writes ``frames``: each key's last
        ``history`` rows, in write order (``live`` of them).

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
        return log[picked]

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
        self._record = False  # keep write logs (record_writes)

    # -- writing ----------------------------------------------------------------------

    def write(self, name: str, schema: Schema, batch: pl.DataFrame, *, retain_us: int | None = None) -> None:
        feature = self._features.get(name)
        if feature is None:
            with self._lock:
                feature = self._features.get(name) or self._features.setdefault(name, self._new_feature(name, schema))
        if retain_us is not None and feature.retain_us != retain_us:
            with self._lock:
                if feature.retain_us is None:
                    _unbound(feature)
                feature.retain_us = retain_us if feature.retain_us is None else max(feature.retain_us, retain_us)
        if not same_shape(feature.schema, schema):
            raise ValueError(
                f"online store feature {name!r} holds rows of schema {feature.schema.describe()}, "
                f"not {schema.describe()}; call clear({name!r}) before writing a new shape"
            )
        if batch.height == 0:
            feature.conform(batch)  # still validate columns
            return
        with _gc_paused():
            due = self._insert(name, schema, feature, batch)
        if due is not None:
            self._compact(name, due)

    def _new_feature(self, name: str, schema: Schema) -> _Feature:
        feature = _Feature(name, schema)
        if self._record:
            feature.log = _WriteLog()
        return feature

    def _insert(self, name: str, schema: Schema, feature: "_Feature", batch: pl.DataFrame) -> "_Feature | None":
        """Insert ``batch``'s rows; return the feature if its write log is due for a compaction check."""
        frame = feature.conform(batch)
        keys, rows = feature.to_rows(frame)
        history, stored = self.history, feature.rows
        with self._lock:
            if self._features.get(name) is not feature:  # cleared meanwhile: start afresh
                feature = self._features.setdefault(name, self._new_feature(name, schema))
                stored = feature.rows
            if feature.retain_us is not None:
                self._insert_retaining(feature, keys, rows)
            else:
                for key, row in zip(keys, rows):
                    try:  # a known key is the common case: no lookup-then-branch per row
                        stored[key].append(row)
                    except KeyError:
                        stored[key] = deque((row,), maxlen=history)
            if feature.log is None:
                return None
            # in insertion order, under the lock: a replay must see the writes in this order
            feature.log.append(frame, feature.retain_us)
            return feature if feature.log.rows > feature.next_check else None

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

    # -- the write log (module docstring) ----------------------------------------------

    def record_writes(self) -> None:
        """Keep each feature's write log from now on, so :meth:`snapshot` is cheap.

        A checkpointed job calls this as it starts; the first :meth:`snapshot` does too. A
        feature already holding rows starts its log with one frame of them (converted from
        row tuples once, under the lock).

        >>> store = MemoryOnlineStore()
        >>> store.record_writes()
        >>> store.snapshot(["nothing written"])
        {}
        """
        with self._lock:
            self._record = True
            for feature in self._features.values():
                if feature.log is None:
                    self._start_log(feature)

    def _start_log(self, feature: _Feature) -> None:
        """A log of one frame of ``feature``'s rows (lock held: no write may slip in before it)."""
        held = [row for recent in feature.rows.values() for row in recent]
        base = feature.rows_frame(held) if held else None
        feature.log = _WriteLog(base, feature.retain_us, dict(feature.evicted_us))
        feature.next_check = 2 * len(held) + COMPACT_SLACK_ROWS

    def _compact(self, name: str, feature: _Feature) -> None:
        """Replace the write log by one frame of the live rows if it holds more than twice them.

        A log of history-only writes is cut columnar (each key's last ``history`` rows, in
        log order) outside the lock; with ``retain_us`` (trimming depends on batch bounds) or
        float keys (NaN keys are each their own key in the dict, not in polars) the live row
        tuples are copied under the lock and converted outside it. Writes made meanwhile stay
        in the log after the new frame."""
        with self._lock:
            if feature.compacting or feature.log is None or self._features.get(name) is not feature:
                return
            log = feature.log
            live = sum(map(len, feature.rows.values()))
            if log.rows <= 2 * live + COMPACT_SLACK_ROWS:
                feature.next_check = 2 * live + COMPACT_SLACK_ROWS  # live rows grow at most as fast as the log
                return
            feature.compacting = True
            log.seal()  # the frames and write records now in the log stay as they are
            frames, writes = list(log.frames), len(log.sizes)
            columnar = not log.base_evicted and not feature.float_keys and all(r < 0 for r in log.retains)
            held = None if columnar else [row for recent in feature.rows.values() for row in recent]
            evicted, retain = dict(feature.evicted_us), (None if columnar else feature.retain_us)
        try:
            base = feature.live_frame(frames, self.history, live) if held is None else feature.rows_frame(held)
        except BaseException:
            with self._lock:
                feature.compacting = False
            raise
        with self._lock:
            feature.compacting = False  # only now: a second compaction must see this one's log
            if self._features.get(name) is not feature:  # cleared meanwhile
                return
            old, new = feature.log, _WriteLog(base, retain, evicted)
            assert old is log, "only a compaction replaces a log, and one runs at a time"
            new.frames += old.frames[len(frames) :]
            new.sizes += old.sizes[writes:]
            new.retains += old.retains[writes:]
            new.rows += old.rows - sum(f.height for f in frames)
            new.small, new.small_rows, new.open_run = old.small, old.small_rows, old.open_run
            feature.log = new
            feature.next_check = 2 * base.height + COMPACT_SLACK_ROWS

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
        """The write log of the features ``names`` as one frame per feature (``ops.protocol``
        State): its rows, oldest write first; each write's row count and ``retain_us``
        (-1: none); the schema as JSON; and the keys' eviction times when the log was last
        compacted. No per-row work: the log's frames are concatenated as they are."""
        from volga.storage.schema_json import schema_to_json

        if not self._record:
            self.record_writes()
        out: dict[str, Any] = {}
        for name in names:
            feature = self._features.get(name)
            if feature is None:
                continue
            with self._lock:  # the log's frames are immutable: copying the references is enough
                if feature.log is None:  # created by a write that raced record_writes
                    self._start_log(feature)
                log = feature.log
                assert log is not None
                frames, (sizes, retains), evicted, retain = list(log.frames), log.batches(), log.base_evicted, feature.retain_us
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
        if not self._record:
            self.record_writes()
        with _gc_paused():  # not between the replayed writes either: each would end in a collection
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
                    assert feature.log is not None
                    feature.log.base_evicted = dict(zip(keys, saved["evicted"]["at_us"].tolist()))
                    feature.evicted_us.update(feature.log.base_evicted)
        self.write(name, schema, rows.head(0), retain_us=saved.get("retain_us"))  # retain_us set without a row


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


def _unbound(feature: _Feature) -> None:
    """Retention is on from now: rows written before keep their history by time as well
    (their deques were bounded to ``history``)."""
    for key, recent in feature.rows.items():
        if recent.maxlen is not None:
            feature.rows[key] = deque(recent)


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
