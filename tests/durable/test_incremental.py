"""Incremental checkpoints: large tables are stored as content-addressed row chunks shared
between checkpoints, so state that only grows writes just its new tail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from volga.runtime.checkpoint import CHUNK_ROWS, CheckpointStore


def log_state(rows: int) -> dict:
    """A window-log-like state: columns that only grow, plus a small part that changes."""
    ids = np.arange(rows, dtype=np.int64)
    return {
        "window": {"rows": {"ts": ids * 1000, "kid": ids % 97}, "size": rows},
        "store": {"history": pl.DataFrame({"key": (ids % 13).astype(str), "value": ids * 0.5})},
        "counters": {"per_key": np.full(97, rows, dtype=np.int64)},
    }


def chunk_files(root: Path) -> set[str]:
    return {p.name for p in (root / "chunks").glob("*.arrow")}


def test_a_grown_state_writes_only_its_new_chunks_and_restores_whole(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.write(log_state(3 * CHUNK_ROWS + 5), {})
    first_total, first_written = store.last_bytes, store.last_written_bytes
    assert first_written == first_total  # nothing to share yet
    store.write(log_state(3 * CHUNK_ROWS + 500), {})
    assert store.last_written_bytes is not None and store.last_bytes is not None
    assert store.last_written_bytes < store.last_bytes / 3  # the three full chunks of each table are reused
    restored = store.latest()
    assert restored is not None
    expected = log_state(3 * CHUNK_ROWS + 500)
    assert np.array_equal(restored.state["window"]["rows"]["ts"], expected["window"]["rows"]["ts"])
    assert restored.state["store"]["history"].equals(expected["store"]["history"])
    assert restored.state["window"]["size"] == 3 * CHUNK_ROWS + 500


def test_chunks_no_kept_checkpoint_references_are_deleted(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.write(log_state(2 * CHUNK_ROWS), {})
    before = chunk_files(tmp_path)
    store.write({"window": {"rows": {"ts": np.arange(2 * CHUNK_ROWS, dtype=np.int64) + 7}}}, {})
    after = chunk_files(tmp_path)
    assert before and after and not (before & after)  # the first checkpoint's chunks went with it
    latest = store.latest()
    assert latest is not None and latest.state["window"]["rows"]["ts"][0] == 7


def test_a_chunk_left_half_written_by_a_crash_is_never_read(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.write(log_state(CHUNK_ROWS + 1), {})
    # a crash while writing the next checkpoint's chunk leaves only a temporary file
    (tmp_path / "chunks" / ("0" * 32 + ".arrow.tmp")).write_bytes(b"partial")
    again = CheckpointStore(tmp_path, keep=3)  # a restarted job lists the chunks afresh
    again.write(log_state(CHUNK_ROWS + 2), {})
    latest = again.latest()
    assert latest is not None and latest.state["window"]["size"] == CHUNK_ROWS + 2
    assert "0" * 32 + ".arrow" not in chunk_files(tmp_path)


def test_chunks_over_memory_a_previous_checkpoint_encoded_are_not_encoded_again(tmp_path: Path, monkeypatch) -> None:
    """A long array that only grows, and immutable frames, are the same memory at the next
    checkpoint: those chunks reuse their names without being encoded and hashed again."""
    from volga.runtime import checkpoint

    encoded = []
    ipc_bytes = checkpoint._ipc_bytes
    monkeypatch.setattr(checkpoint, "_ipc_bytes", lambda table: encoded.append(table.num_rows) or ipc_bytes(table))
    log = np.arange(10 * CHUNK_ROWS, dtype=np.int64)  # the operator's array; views of it are snapshots
    flags = np.arange(10 * CHUNK_ROWS) % 3 == 0
    history = pl.concat([pl.DataFrame({"key": [f"user-{i}" for i in range(j, j + 1000)], "value": np.arange(1000) * 0.5})
                         for j in range(0, 3 * CHUNK_ROWS, 1000)], rechunk=False)
    store = CheckpointStore(tmp_path, keep=2)
    store.write({"log": log[: 3 * CHUNK_ROWS + 7], "flags": flags[: 3 * CHUNK_ROWS + 7], "history": history}, {})
    encoded.clear()
    store.write({"log": log[: 5 * CHUNK_ROWS], "flags": flags[: 5 * CHUNK_ROWS], "history": history}, {})
    # the log and flags: 3 full chunks shared, the 4th and 5th new; the history: nothing new
    assert sorted(encoded) == [CHUNK_ROWS] * 4
    latest = store.latest()
    assert latest is not None
    assert np.array_equal(latest.state["log"], log[: 5 * CHUNK_ROWS])
    assert latest.state["flags"].dtype == np.bool_ and np.array_equal(latest.state["flags"], flags[: 5 * CHUNK_ROWS])
    assert latest.state["history"].equals(history)


def test_a_chunk_whose_memory_changed_is_encoded_again(tmp_path: Path) -> None:
    """A fresh copy with other values is other memory: never mistaken for the chunk before."""
    store = CheckpointStore(tmp_path, keep=2)
    values = np.arange(2 * CHUNK_ROWS, dtype=np.float64)
    store.write({"sums": values.copy()}, {})
    values[5] = -1.0
    store.write({"sums": values.copy()}, {})
    latest = store.latest()
    assert latest is not None and latest.state["sums"][5] == -1.0
    assert np.array_equal(latest.state["sums"], values)


def test_every_file_and_name_is_on_disk_before_the_manifest_that_needs_it(tmp_path: Path, monkeypatch) -> None:
    """Power-loss safety, locally: each file is synced before it is renamed into place, the
    directories holding new names before the manifest is renamed, and the root after it."""
    import os

    events: list[tuple[str, str]] = []
    paths: dict[int, str] = {}
    real_open, real_fdatasync, real_fsync, real_replace = os.open, os.fdatasync, os.fsync, os.replace

    def opened(path, *a, **k):
        fd = real_open(path, *a, **k)
        paths[fd] = str(path)
        return fd

    def fdatasync(fd):
        events.append(("sync", paths[fd]))
        real_fdatasync(fd)

    def fsync(fd):
        events.append(("sync", paths[fd]))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = CheckpointStore(tmp_path)
    store.write(log_state(CHUNK_ROWS + 5), {})

    renamed = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    for i in renamed:  # each renamed file was synced just before
        assert events[i - 1] == ("sync", events[i][1]), events[i - 1 : i + 1]
    chunk_renames = [i for i in renamed if "/chunks/" in events[i][1]]
    manifest = events.index(("rename", str(tmp_path / "chk-000001.json.tmp")))
    assert chunk_renames and max(chunk_renames) < manifest
    before = events[max(renamed[:-1]) : manifest]
    for directory in (tmp_path / "chunks", tmp_path / "chk-000001", tmp_path):
        assert ("sync", str(directory)) in before, f"{directory} not synced before the manifest"
    assert events[manifest + 1] == ("sync", str(tmp_path))
    assert store.latest() is not None
