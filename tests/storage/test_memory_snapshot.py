"""The in-memory store's checkpoint snapshot: its write log, replayed by ``restore``, gives
back the same store on every read path (and the same store for the writes that follow),
after trims by ``history`` and ``retain_us``, clears and compactions; consecutive
checkpoints of a growing store share their leading row chunks."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volga.api.entity import Schema, entity, entity_schema, field
from volga.runtime.checkpoint import CHUNK_ROWS, CheckpointStore
from volga.storage import MemoryOnlineStore
from volga.storage.online import memory

T0_US = 1_700_000_000_000_000


@entity
class Tick:
    k: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    v: float


@entity
class Pair:
    shop: str = field(key=True)
    slot: int = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int


@entity
class Level:
    level: float = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    v: float


@entity
class Stamp:
    day: datetime.datetime = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    v: float


TICK, PAIR, LEVEL, STAMP = (entity_schema(e) for e in (Tick, Pair, Level, Stamp))


def at(us: list[int]) -> pl.Series:
    return pl.Series([T0_US + u for u in us], dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))


def tick_rows(keys: list[str], us: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"k": keys, "at": at(us), "v": [float(u) for u in us]})


def pair_rows(keys: list[tuple[str, int]], us: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"shop": [k[0] for k in keys], "slot": [k[1] for k in keys], "at": at(us), "n": list(range(len(us)))})


def level_rows(keys: list[float], us: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"level": keys, "at": at(us), "v": [float(u) for u in us]})


def key_frame(schema: Schema, keys: list[Any]) -> pl.DataFrame:
    """The request frame asking for ``keys`` of ``schema``."""
    if schema is PAIR:
        return pl.DataFrame({"shop": [k[0] for k in keys], "slot": [k[1] for k in keys]}, schema={"shop": pl.String, "slot": pl.Int64})
    name = schema.keys[0]
    return pl.DataFrame({name: keys}, schema={name: schema.field(name).dtype})


def reads(store: MemoryOnlineStore, name: str, keys: pl.DataFrame) -> dict[str, Any]:
    """Everything a reader can see of ``name`` for ``keys``."""
    lo, hi = T0_US + 3, T0_US + 9
    window = store.window_rows(name, keys, lo, hi)
    everything = store.window_rows(name, keys, -(2**62), 2**62)
    return {
        "schema": store.schema(name),
        "keys": store.latest_count(name),
        "latest": store.get_latest(name, keys).rows(),
        "last_n": store.get_last_n(name, keys, store.history + 3).rows(),
        "last_1": store.get_last_n(name, keys, 1).rows(),
        "range": store.get_range(name, keys, None, None).rows(),
        "range_bounded": store.get_range(name, keys, lo, hi).rows(),
        "window": (window.columns, window.rows, window.evicted_us),
        "window_all": (everything.rows, everything.evicted_us),
    }


def assert_same_store(a: MemoryOnlineStore, b: MemoryOnlineStore, features: dict[str, tuple[Schema, list[Any]]]) -> None:
    for name, (schema, keys) in features.items():
        if a.schema(name) is None:
            assert b.schema(name) is None, f"{name}: restored store has a feature the original has not"
            continue
        asked = key_frame(schema, keys)
        assert reads(a, name, asked) == reads(b, name, asked), f"feature {name!r} differs after restore"


def restored(store: MemoryOnlineStore, names: list[str], via: Path | None = None) -> MemoryOnlineStore:
    """A fresh store restored from ``store``'s snapshot (through checkpoint files if ``via``)."""
    state = store.snapshot(names)
    if via is not None:
        checkpoints = CheckpointStore(via)
        checkpoints.write({"online": state} if state else {"online": {"none": 0}}, {})
        latest = checkpoints.latest()
        assert latest is not None
        state = latest.state["online"] if state else {}
    again = MemoryOnlineStore(history=store.history)
    again.restore(state)
    return again


# -- round trips -------------------------------------------------------------------------

def test_history_trims_round_trip_through_checkpoint_files(tmp_path: Path) -> None:
    store = MemoryOnlineStore(history=3)
    store.write("tick", TICK, tick_rows(["a", "b", "a", "a"], [1, 2, 3, 4]))
    store.write("tick", TICK, tick_rows(["a", "a", "c", "b"], [9, 5, 5, 5]))  # out of order for "a", ties
    store.write("pair", PAIR, pair_rows([("s", 1), ("s", 2), ("s", 1)], [1, 1, 2]))
    store.write("stamp", STAMP, pl.DataFrame({"day": at([0, 0, 1]), "at": at([1, 2, 3]), "v": [1.0, 2.0, 3.0]}))
    features = {"tick": (TICK, ["a", "b", "c", "zz"]), "pair": (PAIR, [("s", 1), ("s", 2), ("t", 1)]),
                "stamp": (STAMP, list(at([0, 1, 7])))}
    again = restored(store, list(features), via=tmp_path)
    assert again.get_last_n("tick", key_frame(TICK, ["a"]), 10)["v"].to_list() == [4.0, 9.0, 5.0]  # the last 3 written
    assert_same_store(store, again, features)


def test_retention_trims_and_evictions_round_trip(tmp_path: Path) -> None:
    store = MemoryOnlineStore(history=2)
    store.write("tick", TICK, tick_rows(["a"] * 5, [0, 1, 2, 3, 4]), retain_us=2)
    store.write("tick", TICK, tick_rows(["a", "b", "a"], [5, 5, 9]), retain_us=2)
    everything = store.window_rows("tick", key_frame(TICK, ["a"]), 0, 2**62)
    # trimmed after each batch: 0, 1 after the first (2 is within 2 us of 4), 2..4 after the second
    assert everything.evicted_us == [T0_US + 4] and [r[1] - T0_US for r in everything.rows[0]] == [5, 9]
    features = {"tick": (TICK, ["a", "b", "zz"])}
    assert_same_store(store, restored(store, ["tick"], via=tmp_path), features)


def test_batch_bounds_matter_with_retention_and_are_kept() -> None:
    # the same rows in one batch trim differently (the cutoff is taken after each batch)
    store = MemoryOnlineStore(history=1)
    store.write("tick", TICK, tick_rows(["a", "a"], [0, 10]), retain_us=3)  # 0 is evicted
    store.write("tick", TICK, tick_rows(["a"], [2]), retain_us=3)  # a late row: the cutoff falls to -1
    one_batch = MemoryOnlineStore(history=1)
    one_batch.write("tick", TICK, tick_rows(["a", "a", "a"], [0, 10, 2]), retain_us=3)  # 0 is kept
    asked = key_frame(TICK, ["a"])
    assert reads(store, "tick", asked) != reads(one_batch, "tick", asked)
    assert_same_store(store, restored(store, ["tick"]), {"tick": (TICK, ["a"])})


def test_a_cleared_feature_restores_from_its_writes_since() -> None:
    store = MemoryOnlineStore(history=4)
    store.write("tick", TICK, tick_rows(["a", "b"], [1, 2]))
    store.clear("tick")
    store.write("tick", TICK, tick_rows(["c"], [3]))
    state = store.snapshot(["tick", "never written"])
    assert list(state) == ["tick"] and state["tick"]["rows"]["k"].to_list() == ["c"]
    again = restored(store, ["tick"])
    assert again.latest_count("tick") == 1
    assert_same_store(store, again, {"tick": (TICK, ["a", "b", "c"])})


def test_restore_replaces_what_the_store_held() -> None:
    store = MemoryOnlineStore(history=4)
    store.write("tick", TICK, tick_rows(["a"], [1]))
    state = store.snapshot(["tick"])
    store.write("tick", TICK, tick_rows(["b"], [2]))
    store.restore(state)
    assert store.latest_count("tick") == 1
    assert store.snapshot(["tick"])["tick"]["rows"]["k"].to_list() == ["a"]


def test_a_feature_with_no_rows_keeps_its_schema() -> None:
    store = MemoryOnlineStore()
    store.write("tick", TICK, tick_rows([], []))
    again = restored(store, ["tick"])
    assert again.schema("tick") == TICK and again.latest_count("tick") == 0


def test_the_snapshot_holds_the_writes_in_order() -> None:
    store = MemoryOnlineStore(history=2)
    store.write("tick", TICK, tick_rows(["a", "a", "a", "b"], [1, 2, 3, 4]))
    store.write("tick", TICK, tick_rows(["b"], [5]))
    state = store.snapshot(["tick"])["tick"]
    assert state["rows"]["v"].to_list() == [1.0, 2.0, 3.0, 4.0, 5.0] and state["batch_rows"].tolist() == [5]
    assert_same_store(store, restored(store, ["tick"]), {"tick": (TICK, ["a", "b"])})


def test_a_checkpoint_from_before_write_logs_still_restores() -> None:
    from volga.storage.schema_json import schema_to_json

    old = {"tick": {"schema": schema_to_json(TICK), "rows": tick_rows(["a", "a", "b"], [1, 2, 3]), "retain_us": None}}
    store = MemoryOnlineStore(history=5)
    store.restore(old)
    assert store.get_last_n("tick", key_frame(TICK, ["a"]), 5)["v"].to_list() == [1.0, 2.0]


def test_an_inconsistent_snapshot_is_refused_with_the_feature_named() -> None:
    store = MemoryOnlineStore()
    store.write("tick", TICK, tick_rows(["a", "b"], [1, 2]))
    state = store.snapshot(["tick"])
    state["tick"]["batch_rows"] = np.array([1], dtype=np.int64)
    with pytest.raises(ValueError, match="snapshot of feature 'tick' is inconsistent: 2 rows"):
        MemoryOnlineStore().restore(state)


def test_turning_retention_on_keeps_recent_rows_of_keys_written_before() -> None:
    store = MemoryOnlineStore(history=1)
    store.write("tick", TICK, tick_rows(["a"], [1]))
    store.write("tick", TICK, tick_rows(["a"], [2]), retain_us=10)  # both rows are within 10 us of the newest
    assert [r[1] for r in store.window_rows("tick", key_frame(TICK, ["a"]), 0, 2**62).rows[0]] == [T0_US + 1, T0_US + 2]


@pytest.mark.parametrize("retain", [None, 3])
def test_small_writes_are_merged_in_the_log_and_keep_their_bounds(retain: int | None) -> None:
    store = MemoryOnlineStore(history=2)
    for i in range(1000):
        store.write("tick", TICK, tick_rows([str(i % 7)], [i % 50]), retain_us=retain)
    log = store._features["tick"].log
    assert len(log.columns) <= 1000 // memory.SMALL_FRAMES + memory.SMALL_FRAMES  # not 1000 frames
    state = store.snapshot(["tick"])["tick"]
    assert state["rows"].height == 1000
    # writes with retain_us keep their own bounds (trimming depends on them); without, one run
    assert state["batch_rows"].tolist() == ([1000] if retain is None else [1] * 1000)
    assert_same_store(store, restored(store, ["tick"]), {"tick": (TICK, [str(k) for k in range(8)])})


# -- compaction --------------------------------------------------------------------------

def test_the_log_is_compacted_to_the_live_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "COMPACT_SLACK_ROWS", 4)
    store = MemoryOnlineStore(history=2)
    for i in range(20):
        store.write("tick", TICK, tick_rows(["a", "b", "c"], [i, i, i]))
    state = store.snapshot(["tick"])["tick"]
    rows = state["rows"]
    assert rows.height <= 2 * 6 + 4  # never more than twice the 6 live rows, plus the slack (60 written)
    base = rows.head(int(state["batch_rows"][0]))  # the last compaction: each key's last 2 rows, in write order
    newest = int(base["v"].max())
    assert base["k"].to_list() == ["a", "b", "c"] * 2 and base["v"].to_list() == [float(newest - 1)] * 3 + [float(newest)] * 3
    assert_same_store(store, restored(store, ["tick"]), {"tick": (TICK, ["a", "b", "c"])})


def test_compaction_groups_by_the_keys_when_hashing_them_loses_rows() -> None:
    store = MemoryOnlineStore(history=2)
    store.write("pair", PAIR, pair_rows([("s", 1), ("s", 2), ("s", 1), ("s", 1), ("t", 1)], [1, 2, 3, 4, 5]))
    feature = store._features["pair"]
    frames = [pair_rows([("s", 1), ("s", 2), ("s", 1), ("s", 1), ("t", 1)], [1, 2, 3, 4, 5])]
    assert feature.live_frame(frames, 2, live=4)[0]["n"].to_list() == [1, 2, 3, 4]  # the last 2 of (s, 1): rows 2 and 3
    # a count that the hashed grouping does not give (as after a hash collision): grouped by the keys instead
    assert feature.live_frame(frames, 2, live=3)[1].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("schema", [LEVEL, TICK], ids=["float key", "retention"])
def test_compaction_from_row_tuples_keeps_evictions(schema: Schema, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(memory, "COMPACT_SLACK_ROWS", 2)
    store = MemoryOnlineStore(history=1)
    keys: list[Any] = [0.5, 1.5] if schema is LEVEL else ["a", "b"]
    retain = None if schema is LEVEL else 2
    for i in range(12):
        batch = level_rows(keys, [i, i]) if schema is LEVEL else tick_rows(keys, [i, i])
        store.write("f", schema, batch, retain_us=retain)
    state = store.snapshot(["f"])
    assert state["f"]["rows"].height < 12 * 2  # compacted
    if retain is not None:
        assert state["f"]["evicted"]["keys"].height == 2  # both keys' evictions before the compaction
    features = {"f": (schema, [*keys, 9.0 if schema is LEVEL else "zz"])}
    assert_same_store(store, restored(store, ["f"], via=tmp_path), features)


@entity
class Account:
    account: int = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    v: float


ACCOUNT = entity_schema(Account)


@pytest.mark.parametrize(
    "schema",
    [
        ACCOUNT,
        TICK,  # a string column: chunks are copied before they are hashed
    ],
    ids=["int key", "string key"],
)
def test_consecutive_checkpoints_of_a_grown_store_share_leading_chunks(schema: Schema, tmp_path: Path) -> None:
    def rows(start: int, end: int) -> pl.DataFrame:
        keys = [i % 5000 for i in range(start, end)]
        frame = pl.DataFrame({"k": keys, "at": at(list(range(start, end))), "v": [float(i) for i in range(start, end)]})
        return frame.rename({"k": "account"}) if schema is ACCOUNT else frame.with_columns(pl.col("k").cast(pl.String))

    n = 3 * CHUNK_ROWS + 5
    store = MemoryOnlineStore(history=1000)
    for start in range(0, n, 10_000):
        store.write("tick", schema, rows(start, min(start + 10_000, n)))
    checkpoints = CheckpointStore(tmp_path, keep=2)
    checkpoints.write({"online": store.snapshot(["tick"])}, {})
    first, first_bytes = json_chunks(tmp_path, 1), checkpoints.last_bytes
    store.write("tick", schema, rows(n, n + 1000))
    checkpoints.write({"online": store.snapshot(["tick"])}, {})
    second = json_chunks(tmp_path, 2)
    assert len(first) == len(second) == 4 and second[:3] == first[:3]  # the three full chunks are kept, the tail is new
    assert checkpoints.last_written_bytes is not None and first_bytes is not None
    assert checkpoints.last_written_bytes < first_bytes / 3
    again = MemoryOnlineStore(history=1000)
    latest = checkpoints.latest()
    assert latest is not None
    again.restore(latest.state["online"])
    keys: list[Any] = [0, 1, 4999, 5000] if schema is ACCOUNT else ["0", "1", "4999", "none"]
    assert_same_store(store, again, {"tick": (schema, keys)})


def test_writers_on_threads_while_logs_compact_and_snapshots_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(memory, "COMPACT_SLACK_ROWS", 8)
    store = MemoryOnlineStore(history=2)
    snapshots: list[dict[str, Any]] = []

    def writer(prefix: str, retain: int | None) -> None:
        for i in range(300):
            store.write(f"f{prefix}", TICK, tick_rows([f"{prefix}{i % 5}", f"{prefix}{i % 3}"], [i, i - 2]), retain_us=retain)
            store.write("shared", TICK, tick_rows([f"{prefix}{i % 4}"], [i]))

    threads = [threading.Thread(target=writer, args=(p, r)) for p, r in (("a", None), ("b", 4), ("c", None))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        snapshots.append(store.snapshot(["fa", "fb", "shared"]))
    for t in threads:
        t.join()
    for snap in snapshots[-3:]:  # taken mid-run: each restores without error to a consistent store
        MemoryOnlineStore(history=2).restore(snap)
    keys = [f"{p}{i}" for p in "abc" for i in range(5)]
    features = {name: (TICK, keys) for name in ("fa", "fb", "fc", "shared")}
    assert_same_store(store, restored(store, list(features)), features)


def json_chunks(root: Path, ckpt: int) -> list[str]:
    """The row chunks of checkpoint ``ckpt``'s store frame."""
    import json

    manifest = json.loads((root / f"chk-{ckpt:06d}.json").read_text())
    (entry,) = [e for e in manifest["columns"] if e["path"] == ["online", "tick", "rows"]]
    return list(entry["chunks"])


# -- random write sequences ----------------------------------------------------------------

KEYS = {"tick": st.sampled_from(["a", "b", "c"]), "pair": st.tuples(st.sampled_from(["s", "t"]), st.integers(0, 1)),
        "level": st.sampled_from([0.5, -1.0, 2.25])}
SCHEMAS = {"tick": TICK, "pair": PAIR, "level": LEVEL}
BUILD = {"tick": tick_rows, "pair": pair_rows, "level": level_rows}


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, str, Any, int | None]]:
    ops: list[tuple[str, str, Any, int | None]] = []
    for _ in range(draw(st.integers(1, 14))):
        name = draw(st.sampled_from(list(SCHEMAS)))
        if draw(st.integers(0, 9)) == 0:
            ops.append(("clear", name, None, None))
            continue
        rows = draw(st.lists(st.tuples(KEYS[name], st.integers(0, 12)), max_size=8))  # ties and out of order
        retain = draw(st.sampled_from([None, None, 2, 5])) if name != "level" else None
        ops.append(("write", name, rows, retain))
    return ops


def apply(store: MemoryOnlineStore, ops: list[tuple[str, str, Any, int | None]]) -> None:
    for op, name, rows, retain in ops:
        if op == "clear":
            store.clear(name)
        else:
            store.write(name, SCHEMAS[name], BUILD[name]([k for k, _ in rows], [t for _, t in rows]), retain_us=retain)


@settings(max_examples=150, deadline=None)
@given(ops=operations(), later=operations(), history=st.integers(1, 3), slack=st.sampled_from([0, 3, 1 << 16]),
       small=st.sampled_from([(2, 3), (3, 100), (64, 4096)]))
def test_restore_of_a_snapshot_reads_as_the_original(
    ops: list[Any], later: list[Any], history: int, slack: int, small: tuple[int, int]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "COMPACT_SLACK_ROWS", slack)  # 0 and 3: compactions all along
        patch.setattr(memory, "SMALL_FRAMES", small[0])  # small writes' frames merged in the log all along
        patch.setattr(memory, "SMALL_ROWS", small[1])
        store = MemoryOnlineStore(history=history)
        apply(store, ops)
        again = restored(store, list(SCHEMAS))
        features = {name: (SCHEMAS[name], all_keys(name)) for name in SCHEMAS}
        assert_same_store(store, again, features)
        apply(store, later)  # and the stores go on alike: same trims, bounds and evictions
        apply(again, later)
        assert_same_store(store, again, features)


def all_keys(name: str) -> list[Any]:
    if name == "tick":
        return ["a", "b", "c", "unknown"]
    if name == "pair":
        return [(s, i) for s in "stu" for i in (0, 1)]
    return [0.5, -1.0, 2.25, 7.0]
