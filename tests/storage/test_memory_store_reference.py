"""The in-memory store against a slow reference: rows per key as plain lists of tuples,
trimmed by ``history`` and ``retain_us`` one row at a time. Random writes, clears,
compactions and merges of small frames; every read path must give what the reference does."""

from __future__ import annotations

import bisect
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.storage.test_memory_snapshot import SCHEMAS, all_keys, apply, key_frame, operations, reads
from volga.api.entity import Schema
from volga.storage import MemoryOnlineStore
from volga.storage.online import memory
from volga.storage.online.base import KEY_INDEX, WindowRows


class _Feature:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows: dict[Any, list[tuple[Any, ...]]] = {}
        self.retain: int | None = None
        self.evicted: dict[Any, int] = {}
        self.ts = schema.names.index(schema.timestamp)
        self.key_pos = [schema.names.index(k) for k in schema.keys]

    def key(self, row: tuple[Any, ...]) -> Any:
        return row[self.key_pos[0]] if len(self.key_pos) == 1 else tuple(row[i] for i in self.key_pos)

    def frame(self, rows: list[tuple[Any, ...]], indexed: bool = False) -> pl.DataFrame:
        held = {c: (pl.Int64 if isinstance(t, pl.Datetime) else t) for c, t in self.schema.polars_schema().items()}
        if indexed:
            held[KEY_INDEX] = pl.UInt32
        return pl.DataFrame(rows, schema=held, orient="row").cast(
            {c: t for c, t in self.schema.polars_schema().items() if isinstance(t, pl.Datetime)}
        )


class ReferenceStore:
    """What the store's contract says, the slow way (datetimes held as integer microseconds)."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.features: dict[str, _Feature] = {}

    def write(self, name: str, schema: Schema, batch: pl.DataFrame, *, retain_us: int | None = None) -> None:
        feature = self.features.setdefault(name, _Feature(schema))
        if retain_us is not None:
            if feature.retain is None:
                for key, rows in feature.rows.items():
                    feature.rows[key] = rows[-self.history :]
            feature.retain = retain_us if feature.retain is None else max(feature.retain, retain_us)
        datetimes = [c for c, t in schema.polars_schema().items() if isinstance(t, pl.Datetime)]
        touched = []
        for row in batch.select(schema.names).with_columns(pl.col(datetimes).cast(pl.Int64)).rows():
            key = feature.key(row)
            feature.rows.setdefault(key, []).append(row)
            touched.append(key)
        for key in dict.fromkeys(touched):
            rows = feature.rows[key]
            if feature.retain is None:
                del rows[: -self.history]
                continue
            while len(rows) > self.history and rows[0][feature.ts] < rows[-1][feature.ts] - feature.retain:
                feature.evicted[key] = rows.pop(0)[feature.ts]

    def clear(self, name: str) -> None:
        self.features.pop(name, None)

    # -- the read paths `reads` uses ---------------------------------------------------------
    def schema(self, name: str) -> Schema | None:
        feature = self.features.get(name)
        return None if feature is None else feature.schema

    def latest_count(self, name: str) -> int:
        return len(self.features[name].rows) if name in self.features else 0

    def _asked(self, name: str, keys: pl.DataFrame) -> tuple[_Feature, list[Any]]:
        feature = self.features[name]
        columns = keys.with_columns(pl.col(pl.Datetime).cast(pl.Int64)).rows()
        return feature, [row[0] if len(row) == 1 else row for row in columns]

    def _recent(self, feature: _Feature, key: Any) -> list[tuple[Any, ...]]:
        return feature.rows.get(key, [])[-self.history :]

    def get_latest(self, name: str, keys: pl.DataFrame) -> pl.DataFrame:
        feature, asked = self._asked(name, keys)
        out = []
        for key in asked:
            rows = feature.rows.get(key)
            if rows:
                out.append(rows[-1])
            else:
                row: list[Any] = [None] * len(feature.schema.names)
                for pos, value in zip(feature.key_pos, key if len(feature.key_pos) > 1 else (key,)):
                    row[pos] = value
                out.append(tuple(row))
        return feature.frame(out)

    def get_last_n(self, name: str, keys: pl.DataFrame, n: int) -> pl.DataFrame:
        feature, asked = self._asked(name, keys)
        n = min(n, self.history)
        out = [row + (i,) for i, key in enumerate(asked) for row in (self._recent(feature, key)[-n:] if n else [])]
        return feature.frame(out, indexed=True)

    def get_range(self, name: str, keys: pl.DataFrame, start: int | None, end: int | None) -> pl.DataFrame:
        feature, asked = self._asked(name, keys)
        lo, hi = -(2**63) if start is None else start, 2**63 if end is None else end
        out = [row + (i,) for i, key in enumerate(asked) for row in self._recent(feature, key)
               if row[feature.ts] is not None and lo <= row[feature.ts] <= hi]
        return feature.frame(out, indexed=True)

    def window_rows(self, name: str, keys: pl.DataFrame, start: int, end: int) -> WindowRows:
        feature, asked = self._asked(name, keys)
        per_key = []
        for key in asked:
            rows = feature.rows.get(key, []) if feature.retain is not None else self._recent(feature, key)
            times = [r[feature.ts] for r in rows]  # in time order: the window and the row before it
            stop = bisect.bisect_right(times, end) if times and times[-1] > end else len(times)
            first = bisect.bisect_left(times, start, 0, stop)
            per_key.append(rows[max(first - 1, 0) : stop])
        return WindowRows(feature.schema.names, per_key, [feature.evicted.get(key) for key in asked])


@settings(max_examples=200, deadline=None)
@given(ops=operations(), history=st.integers(1, 3), slack=st.sampled_from([0, 3, 1 << 16]),
       small=st.sampled_from([(2, 3), (3, 100), (64, 4096)]), read_cache=st.sampled_from([3, 1 << 20]))
def test_every_read_matches_the_reference(
    ops: list[Any], history: int, slack: int, small: tuple[int, int], read_cache: int,
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "COMPACT_SLACK_ROWS", slack)  # 0 and 3: compactions all along
        patch.setattr(memory, "SMALL_FRAMES", small[0])
        patch.setattr(memory, "SMALL_ROWS", small[1])
        store, reference = MemoryOnlineStore(history=history), ReferenceStore(history)
        store.read_cache_rows = read_cache  # 3: request-time reads drop cached keys all along
        for i in range(len(ops)):  # after every operation, not only at the end
            apply(store, ops[i : i + 1])
            apply(reference, ops[i : i + 1])  # type: ignore[arg-type]
            for name, schema in SCHEMAS.items():
                if reference.schema(name) is None:
                    assert store.schema(name) is None
                    continue
                asked = key_frame(schema, all_keys(name))
                assert reads(store, name, asked) == reads(reference, name, asked), (name, ops[: i + 1])  # type: ignore[arg-type]


def test_the_reference_is_not_trivially_equal() -> None:
    """The comparison above can fail: a store that keeps one row too many differs."""
    from tests.storage.test_memory_snapshot import TICK, tick_rows

    store, reference = MemoryOnlineStore(history=3), ReferenceStore(history=2)
    for s in (store, reference):
        s.write("tick", TICK, tick_rows(["a", "a", "a"], [1, 2, 3]))
    asked = key_frame(TICK, ["a"])
    assert reads(store, "tick", asked)["latest"] == reads(reference, "tick", asked)["latest"]  # type: ignore[arg-type]
    assert reads(store, "tick", asked) != reads(reference, "tick", asked)  # type: ignore[arg-type]


def test_request_time_reads_keep_a_bounded_number_of_row_tuples() -> None:
    """The row tuples kept for request-time reads stay within ``read_cache_rows`` (the least
    recently read keys' dropped first), and a key read again after its tuples were dropped
    gets the same rows."""
    from tests.storage.test_memory_snapshot import T0_US, TICK, tick_rows

    store = MemoryOnlineStore(history=10)
    store.read_cache_rows = 5
    store.write("tick", TICK, tick_rows(["a"] * 4 + ["b"] * 3 + ["c"] * 2, [1, 2, 3, 4, 1, 2, 3, 1, 2]))
    feature = store._features["tick"]

    def read(key: str) -> list[Any]:
        return store.window_rows("tick", key_frame(TICK, [key]), T0_US, T0_US + 10).rows[0]

    def cached() -> list[int]:  # tuples kept per key, least recently read first
        return [len(rows) for _, rows in feature.read_rows.values()]

    first_a = read("a")
    assert [r[2] for r in first_a] == [1.0, 2.0, 3.0, 4.0] and cached() == [4]
    read("b")  # 7 tuples: a's, the least recently read, are dropped
    assert cached() == [3] and feature.read_rows_held == 3
    read("c")
    assert cached() == [3, 2] and feature.read_rows_held == 5
    store.read_cache_rows = 6
    assert read("a") == first_a  # converted again: the same rows; b's dropped
    assert cached() == [2, 4] and feature.read_rows_held == 6
