"""Checkpoints of a streaming job: where they live, how they are written and read back.

A checkpoint is one :data:`~volga.ops.protocol.State` tree (every operator's state, each
source's position and watermark, the job's counters, the sink's write counts and, for an
in-memory online store, its contents) written under ``checkpoint_dir`` as::

    chk-000007/arrays-40.arrow  short 1-D arrays and series of one length, a column each
    chk-000007/frame-3.arrow    one file per frame (a long array or series: one table each)
    chk-000007/blobs.arrow      bytes values (pickled DataStream Python objects only)
    chk-000007.json             the manifest: plan fingerprint, plain values, file index
    chunks/5f0c...e1.arrow      row chunks of large tables, shared between checkpoints

Files are Arrow IPC; plain values are JSON. Every file is written under a temporary name
that is then renamed, and the manifest last: a checkpoint without its manifest does not
exist, so a crash while one is written leaves the previous one in force. Locally, each
file and each new name is synced to disk before the manifest is renamed (and after), so
this holds for a power loss too; written files are dropped from the page cache. The
newest ``keep`` checkpoints are kept. Columns of Python objects (DataStream values) are
the one thing pickled, each value in a binary column.

Checkpoints are incremental: a table of at least ``CHUNK_ROWS`` rows (a frame, or one long
array or series on its own) is cut into chunks of ``CHUNK_ROWS`` rows from its first row,
each stored once under the hash of its bytes. State that only grows (a window operator's
row log between compactions, appended store history) keeps its earlier chunks' contents,
so a later checkpoint references them instead of writing them again; only the new tail is
written. Nor is an unchanged chunk encoded and hashed again: a chunk whose Arrow buffers
are the very memory a previous checkpoint of this store encoded (immutable frames, the
append-only part of a row log) reuses that chunk's name. Chunks that no kept manifest
references are deleted when old checkpoints are.

``checkpoint_dir`` is a local path or a URL pyarrow.fs understands, e.g.
``s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000&scheme=http``.

>>> import tempfile, numpy as np
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> store.write({"op": {"ts": np.arange(3), "size": 3}}, {"step 1": "window"})
1
>>> found = store.latest()
>>> found.id, found.state["op"]["ts"].tolist(), found.state["op"]["size"]
(1, [0, 1, 2], 3)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import xxhash

from volga.ops.protocol import State, check_state

__all__ = ["Checkpoint", "CheckpointStore", "DefinitionChanged", "describe_changes"]

_MANIFEST = re.compile(r"chk-(\d{6,})\.json")
_DIR = re.compile(r"chk-(\d{6,})")
_CHUNKS = "chunks"
FORMAT = 2
CHUNK_ROWS = 1 << 18


class DefinitionChanged(ValueError):
    """The job's plan differs from the one its latest checkpoint was taken of."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    id: int
    fingerprint: dict[str, str]
    state: State
    created_unix: float


def describe_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """What differs between two plan fingerprints, one line per step.

    >>> describe_changes({"pipeline p": "a", "step 2": "window x"}, {"pipeline p": "a", "step 2": "window y"})
    ["step 2 (window y): was 'window x', now 'window y'"]
    """
    lines = []
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            lines.append(f"{name}: removed (was {old[name]!r})")
        elif name not in old:
            lines.append(f"{name}: added ({new[name]!r})")
        elif old[name] != new[name]:
            was, now = old[name].split("; "), new[name].split("; ")
            gone = [p for p in was if p not in now]
            came = [p for p in now if p not in was]
            lines.append(f"{name} ({now[0]}): was {'; '.join(gone) or 'nothing'!r}, now {'; '.join(came) or 'nothing'!r}")
    return lines


class CheckpointStore:
    """The checkpoints under one directory or URL."""

    def __init__(self, url: str | Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"checkpoints: keep must be >= 1, got {keep}")
        self.url, self.keep = str(url), keep
        self._chunks: set[str] | None = None
        # chunks of the last checkpoint by the identity of their Arrow buffers (``_identity``);
        # each entry holds its arrays, so that memory is not freed and reused meanwhile. Off
        # where every state arrives in fresh memory (a Ray driver's): nothing to reuse.
        self.reuse_memory = True
        self._encoded: dict[tuple[Any, ...], _Encoded] = {}
        self.last_bytes: int | None = None
        self.last_written_bytes: int | None = None
        try:
            if "://" in self.url:
                self.fs, self.root = pafs.FileSystem.from_uri(self.url)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.url).absolute())
            self.fs.create_dir(self.root, recursive=True)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"checkpoint_dir {self.url!r} cannot be used: {e}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)  # written with os calls: synced, page cache dropped

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r})"

    # -- listing ---------------------------------------------------------------------
    def _ids(self) -> tuple[list[int], list[int]]:
        """(ids with a manifest, ids with a data directory), ascending."""
        manifests, dirs = [], []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            name = info.base_name
            if info.type == pafs.FileType.File and (m := _MANIFEST.fullmatch(name)):
                manifests.append(int(m.group(1)))
            elif info.type == pafs.FileType.Directory and (m := _DIR.fullmatch(name)):
                dirs.append(int(m.group(1)))
        return sorted(manifests), sorted(dirs)

    def ids(self) -> list[int]:
        """Ids of the complete checkpoints, oldest first."""
        return self._ids()[0]

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # -- writing ---------------------------------------------------------------------
    def write(self, state: State, fingerprint: dict[str, str]) -> int:
        """Write ``state`` as the next checkpoint (files, then the manifest); return its id."""
        check_state(state, where="checkpoint")
        manifests, dirs = self._ids()
        ckpt = max([0, *manifests, *dirs]) + 1
        folder = f"chk-{ckpt:06d}"
        self.fs.create_dir(self._path(folder), recursive=True)
        tables = _Tables(self, folder)
        meta, index = _encode(state, tables)
        manifest = {
            "format": FORMAT,
            "id": ckpt,
            "created_unix": time.time(),
            "fingerprint": fingerprint,
            "meta": meta,
            "columns": index,
        }
        if tables.wrote_chunks:
            self._sync_dir(_CHUNKS)
        self._sync_dir(folder)
        self._sync_dir("")  # the new directories' names, before the manifest that needs them
        encoded = json.dumps(manifest).encode()
        self._write_file(f"{folder}.json", encoded)
        self._sync_dir("")
        manifest_bytes = len(encoded)
        self.last_bytes = tables.total_bytes + manifest_bytes  # the whole checkpoint, shared chunks included
        self.last_written_bytes = tables.written_bytes + manifest_bytes  # what this one wrote
        if self.reuse_memory:  # only once the manifest that references them is in place
            self._encoded = tables.encoded
        self._prune(ckpt)
        return ckpt

    def _chunk_names(self) -> set[str]:
        """The chunk files present (listed once per store, then kept up to date)."""
        if self._chunks is None:
            selector = pafs.FileSelector(self._path(_CHUNKS), allow_not_found=True)
            self._chunks = {
                info.base_name for info in self.fs.get_file_info(selector)
                if info.type == pafs.FileType.File and info.base_name.endswith(".arrow")
            }
        return self._chunks

    def _put_chunk(self, data: pa.Buffer) -> tuple[str, bool]:
        """Store one chunk's bytes (once per distinct content): its name, and whether this
        call wrote it. Named by XXH3-128 (content addressing, not security: 30x SHA-1's
        speed here, with collisions as unlikely between chunks nobody crafted)."""
        name = xxhash.xxh3_128_hexdigest(data) + ".arrow"
        known = self._chunk_names()
        if name in known:
            return name, False
        if not known:  # the first chunk this store writes (or the directory was emptied)
            self.fs.create_dir(self._path(_CHUNKS), recursive=True)
        self._write_file(f"{_CHUNKS}/{name}", data)
        known.add(name)
        return name, True

    def _write_file(self, name: str, data: pa.Buffer | bytes) -> None:
        """Write a file whole under a temporary name, then rename it: a crash never leaves
        part of one under its real name. A local file is synced to disk before the rename
        (so a power loss cannot either) and dropped from the page cache: it is read back
        only after a restart, and would otherwise crowd out the job's memory."""
        final = self._path(name)
        staging = final + ".tmp"
        if not self.local:
            with self.fs.open_output_stream(staging) as out:
                out.write(data)
            self.fs.move(staging, final)
            return
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            getattr(os, "fdatasync", os.fsync)(fd)  # macOS has only fsync
            if hasattr(os, "posix_fadvise"):  # Linux
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        os.replace(staging, final)

    def _sync_dir(self, name: str) -> None:
        """Make the names created in a local directory durable (a no-op elsewhere, and on
        Windows, which cannot open a directory)."""
        if self.local and hasattr(os, "O_DIRECTORY"):
            fd = os.open(self._path(name) if name else self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _prune(self, newest: int) -> None:
        manifests, dirs = self._ids()
        kept = set(manifests[-self.keep :])
        for ckpt in manifests:
            if ckpt not in kept:
                self.fs.delete_file(self._path(f"chk-{ckpt:06d}.json"))  # the manifest first: then it is gone
        for ckpt in dirs:
            if ckpt not in kept and ckpt <= newest:
                self.fs.delete_dir(self._path(f"chk-{ckpt:06d}"))
        referenced: set[str] = set()
        for ckpt in kept:
            for entry in self._manifest(ckpt)["columns"]:
                referenced.update(entry.get("chunks", ()))
        for name in sorted(self._chunk_names() - referenced):
            self.fs.delete_file(self._path(f"{_CHUNKS}/{name}"))
            self._chunk_names().discard(name)

    def _manifest(self, ckpt: int) -> dict[str, Any]:
        with self.fs.open_input_stream(self._path(f"chk-{ckpt:06d}.json")) as f:
            manifest: dict[str, Any] = json.loads(f.read())
        return manifest

    # -- reading ---------------------------------------------------------------------
    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None if there is none."""
        manifests = self.ids()
        if not manifests:
            return None
        ckpt = manifests[-1]
        manifest = self._manifest(ckpt)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.url}: checkpoint {ckpt} has format {manifest.get('format')!r}; this Volga reads {FORMAT}")
        state = _decode(manifest["meta"], manifest["columns"], self.fs, self._path(f"chk-{ckpt:06d}"), self._path(_CHUNKS))
        return Checkpoint(ckpt, manifest["fingerprint"], state, manifest["created_unix"])


# -- encoding a State tree ----------------------------------------------------------------

def _leaves(state: State, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in state.items():
        here = (*path, key)
        if isinstance(value, dict) and value:
            out += _leaves(value, here)
        else:
            out.append((here, value))
    return out


def _to_arrow(series: pl.Series) -> tuple[pa.Array | pa.ChunkedArray, bool]:
    """A series as Arrow without copying it, chunk for chunk; Python-object series as
    pickled values (True).

    Through a frame, because ``Series.to_arrow`` first rechunks: a copy of the whole column
    (an appended log has thousands of chunks). Strings and binaries come out as views of
    polars' own memory (``string_view``), so an unchanged chunk keeps its identity between
    checkpoints; ``_plain`` casts what is written to the classic types."""
    if series.dtype == pl.Object:
        return pa.array([pickle.dumps(v) for v in series.to_list()], type=pa.binary()), True
    views = series.dtype in (pl.String, pl.Binary)
    level = pl.CompatLevel.newest() if views else pl.CompatLevel.oldest()
    return series.to_frame().to_arrow(compat_level=level).column(0), False


def _numpy_to_arrow(array: np.ndarray) -> tuple[pa.Array, bool]:
    """A numpy array as Arrow, sharing its memory where Arrow can (booleans as their bytes,
    True: Arrow's bit-packed booleans would be a copy).

    Numbers are wrapped as a buffer: ``pa.array`` on numpy imports pandas (0.15-0.2 s and
    ~50 MB, the first time in a process)."""
    as_bytes = array.dtype == np.bool_
    if as_bytes:
        array = array.view(np.uint8)
    if array.ndim == 1 and array.dtype.kind in "iufmM":
        array = np.ascontiguousarray(array)
        return pa.Array.from_buffers(pa.from_numpy_dtype(array.dtype), len(array), [None, pa.py_buffer(array)]), as_bytes
    return pa.array(array), as_bytes


_CLASSIC = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}


def _plain(table: pa.Table) -> pa.Table:
    """``table`` with string and binary views cast to the classic Arrow types written."""
    if not any(f.type in _CLASSIC for f in table.schema):
        return table
    return pa.table([col.cast(_CLASSIC[col.type]) if col.type in _CLASSIC else col for col in table.columns],
                    names=table.column_names)


def _identity(rows: pa.Table) -> tuple[Any, ...]:
    """What ``rows`` are made of: each column piece's type, offset, length and buffer
    addresses (not sizes: a view of an array that has grown since is over a longer buffer).
    Equal for two tables over the same memory."""
    return tuple(
        (str(piece.type), piece.offset, len(piece), tuple(None if b is None else b.address for b in piece.buffers()))
        for column in rows.columns for piece in column.chunks
    )


def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()  # hashed and written as it is: no copy


@dataclasses.dataclass(frozen=True)
class _Encoded:
    name: str
    size: int
    rows: pa.Table  # the memory it was encoded from, kept alive


class _Tables:
    """Where one checkpoint's tables go: small ones into its folder, large ones as shared
    row chunks. Counts the bytes the checkpoint references and the bytes it wrote."""

    def __init__(self, store: CheckpointStore, folder: str) -> None:
        self.store, self.folder = store, folder
        self.total_bytes = self.written_bytes = 0
        self.wrote_chunks = False
        self.encoded: dict[tuple[Any, ...], _Encoded] = {}

    def put(self, name: str, table: pa.Table) -> dict[str, Any]:
        """Store ``table``; return the index fields that find it again."""
        if table.num_rows < CHUNK_ROWS:
            data = _ipc_bytes(_plain(table).combine_chunks())  # one record batch, not one per appended piece
            self.store._write_file(f"{self.folder}/{name}", data)
            self.total_bytes += data.size
            self.written_bytes += data.size
            return {"file": name}
        chunks = []
        for start in range(0, table.num_rows, CHUNK_ROWS):
            rows = table.slice(start, CHUNK_ROWS)
            key = _identity(rows)
            chunk = self.store._encoded.get(key) or self.encoded.get(key)
            if chunk is None:
                data = _ipc_bytes(_copied(_plain(rows)))
                chunk_name, wrote = self.store._put_chunk(data)
                chunk = _Encoded(chunk_name, data.size, rows)
                self.written_bytes += data.size if wrote else 0
                self.wrote_chunks |= wrote
            self.encoded[key] = chunk
            chunks.append(chunk.name)
            self.total_bytes += chunk.size
        return {"chunks": chunks}


def _copied(rows: pa.Table) -> pa.Table:
    """``rows`` with buffers of their own where a zero-copy slice would write bytes that
    depend on the rows around it (strings, booleans, validity bitmaps), so that equal rows
    make equal chunks. Numbers without nulls are written as sliced."""
    return pa.table([col.combine_chunks() if _slices_exactly(col) else pa.concat_arrays(col.chunks) for col in rows.columns],
                    schema=rows.schema)


def _slices_exactly(col: pa.ChunkedArray) -> bool:
    kind = col.type
    fixed = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)
    return fixed and col.null_count == 0


def _read_table(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as f:
        return pa.ipc.open_file(f).read_all()


def _read_entry(entry: dict[str, Any], fs: pafs.FileSystem, folder: str, chunks: str) -> pa.Table:
    if "chunks" in entry:
        return pa.concat_tables([_read_table(fs, f"{chunks}/{name}") for name in entry["chunks"]])
    return _read_table(fs, f"{folder}/{entry['file']}")


def _encode(state: State, tables: _Tables) -> tuple[list[Any], list[dict[str, Any]]]:
    meta: list[Any] = []
    index: list[dict[str, Any]] = []
    grouped: dict[str, dict[str, pa.Array | pa.ChunkedArray]] = {}  # table name -> its columns
    blobs: dict[str, pa.Array] = {}
    frames = 0
    for path, value in _leaves(state):
        if isinstance(value, (np.ndarray, pl.Series)):
            # Short ones of one length share a table; a long one is chunked on its own, so
            # a column that changed does not make its unchanged neighbours' chunks new.
            table = f"arrays-{len(value)}.arrow" if len(value) < CHUNK_ROWS else f"array-{len(index)}.arrow"
            group = grouped.setdefault(table, {})
            column = f"c{len(group)}"
            if isinstance(value, np.ndarray):
                group[column], as_bytes = _numpy_to_arrow(value)
                entry: dict[str, Any] = {"kind": "array", **({"bool": True} if as_bytes else {})}
            else:
                group[column], pickled = _to_arrow(value)
                entry = {"kind": "series", "name": value.name, "objects": pickled}
            index.append({"path": list(path), **entry, "table": table, "column": column})
        elif isinstance(value, pl.DataFrame):
            columns, objects = {}, []
            for s in value.iter_columns():
                columns[s.name], pickled = _to_arrow(s)
                if pickled:
                    objects.append(s.name)
            name = f"frame-{frames}.arrow"
            frames += 1
            where = tables.put(name, pa.table(columns) if columns else pa.table({}))
            index.append({"path": list(path), "kind": "frame", **where, "objects": objects})
        elif isinstance(value, bytes):
            column = f"c{len(blobs)}"
            blobs[column] = pa.array([value], type=pa.binary())
            index.append({"path": list(path), "kind": "bytes", "table": "blobs.arrow", "column": column})
        else:
            meta.append([list(path), value])
    placed = {table: tables.put(table, pa.table(group)) for table, group in grouped.items()}
    if blobs:
        placed["blobs.arrow"] = tables.put("blobs.arrow", pa.table(blobs))
    for placed_entry in index:  # arrays of one length, and blobs, share a table: say where it went
        if "table" in placed_entry:
            placed_entry.update(placed[placed_entry["table"]])
    return meta, index


def _from_arrow(array: pa.Array | pa.ChunkedArray, name: str, objects: bool) -> pl.Series:
    if objects:
        return pl.Series(name, [pickle.loads(v) for v in array.to_pylist()], dtype=pl.Object)
    return pl.Series(name, array)


def _decode(meta: list[Any], index: list[dict[str, Any]], fs: pafs.FileSystem, folder: str, chunks: str) -> State:
    state: State = {}

    def put(path: list[str], value: Any) -> None:
        node = state
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    for path, value in meta:
        put(path, value)
    tables: dict[str, pa.Table] = {}
    for entry in index:
        name = entry.get("table") or entry.get("file") or ",".join(entry["chunks"])
        if name not in tables:
            tables[name] = _read_entry(entry, fs, folder, chunks)
        table = tables[name]
        kind = entry["kind"]
        if kind == "array":
            array = table.column(entry["column"]).to_numpy()
            put(entry["path"], array.view(np.bool_) if entry.get("bool") else array)
        elif kind == "series":
            put(entry["path"], _from_arrow(table.column(entry["column"]), entry["name"], entry["objects"]))
        elif kind == "bytes":
            put(entry["path"], table.column(entry["column"])[0].as_py())
        else:
            columns = [_from_arrow(table.column(c), c, c in entry["objects"]) for c in table.column_names]
            frame = pl.DataFrame(columns) if columns else pl.DataFrame()
            put(entry["path"], frame)
    return state
