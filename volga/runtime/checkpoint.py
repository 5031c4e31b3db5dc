"""Checkpoints of a streaming job: where they live, how they are written and read back.

A checkpoint is one :data:`~volga.ops.protocol.State` tree (every operator's state, each
source's position and watermark, the job's counters, the sink's write counts and, for an
in-memory online store, its contents) written under ``checkpoint_dir`` as::

    chk-000007/arrays-0.arrow   1-D arrays and series of one length, one column each
    chk-000007/frame-3.arrow    one file per frame
    chk-000007/blobs.arrow      bytes values (pickled DataStream Python objects only)
    chk-000007.json             the manifest: plan fingerprint, plain values, file index

Files are Arrow IPC; plain values are JSON. The manifest is written last, under a
temporary name that is then renamed (on S3, a single PUT): a checkpoint without its
manifest does not exist, so a crash while one is written leaves the previous one in
force. The newest ``keep`` checkpoints are kept. Columns of Python objects (DataStream
values) are the one thing pickled, each value in a binary column.

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
import pickle
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from volga.ops.protocol import State, check_state

__all__ = ["Checkpoint", "CheckpointStore", "DefinitionChanged", "describe_changes"]

_MANIFEST = re.compile(r"chk-(\d{6,})\.json")
_DIR = re.compile(r"chk-(\d{6,})")
FORMAT = 1


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
        try:
            if "://" in self.url:
                self.fs, self.root = pafs.FileSystem.from_uri(self.url)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.url).absolute())
            self.fs.create_dir(self.root, recursive=True)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"checkpoint_dir {self.url!r} cannot be used: {e}") from None

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
        meta, index = _encode(state, self.fs, self._path(folder))
        manifest = {
            "format": FORMAT,
            "id": ckpt,
            "created_unix": time.time(),
            "fingerprint": fingerprint,
            "meta": meta,
            "columns": index,
        }
        final = self._path(f"{folder}.json")
        staging = final + ".tmp"
        with self.fs.open_output_stream(staging) as out:
            out.write(json.dumps(manifest).encode())
        self.fs.move(staging, final)
        files = self.fs.get_file_info(pafs.FileSelector(self._path(folder), recursive=True))
        self.last_bytes = sum(f.size or 0 for f in files if f.type == pafs.FileType.File) + len(json.dumps(manifest))
        self._prune(ckpt)
        return ckpt

    def _prune(self, newest: int) -> None:
        manifests, dirs = self._ids()
        kept = set(manifests[-self.keep :])
        for ckpt in manifests:
            if ckpt not in kept:
                self.fs.delete_file(self._path(f"chk-{ckpt:06d}.json"))  # the manifest first: then it is gone
        for ckpt in dirs:
            if ckpt not in kept and ckpt <= newest:
                self.fs.delete_dir(self._path(f"chk-{ckpt:06d}"))

    # -- reading ---------------------------------------------------------------------
    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None if there is none."""
        manifests = self.ids()
        if not manifests:
            return None
        ckpt = manifests[-1]
        with self.fs.open_input_stream(self._path(f"chk-{ckpt:06d}.json")) as f:
            manifest = json.loads(f.read())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.url}: checkpoint {ckpt} has format {manifest.get('format')!r}; this Volga reads {FORMAT}")
        state = _decode(manifest["meta"], manifest["columns"], self.fs, self._path(f"chk-{ckpt:06d}"))
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


def _to_arrow(series: pl.Series) -> tuple[pa.Array, bool]:
    """A series as an Arrow array; Python-object series as pickled values (True)."""
    if series.dtype == pl.Object:
        return pa.array([pickle.dumps(v) for v in series.to_list()], type=pa.binary()), True
    return series.to_arrow(), False


def _write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    with fs.open_output_stream(path) as out, pa.ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)


def _read_table(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as f:
        return pa.ipc.open_file(f).read_all()


def _encode(state: State, fs: pafs.FileSystem, folder: str) -> tuple[list[Any], list[dict[str, Any]]]:
    meta: list[Any] = []
    index: list[dict[str, Any]] = []
    by_length: dict[int, dict[str, pa.Array]] = {}
    blobs: dict[str, pa.Array] = {}
    frames = 0
    for path, value in _leaves(state):
        if isinstance(value, np.ndarray):
            group = by_length.setdefault(len(value), {})
            column = f"c{len(group)}"
            group[column] = pa.array(value)
            index.append({"path": list(path), "kind": "array", "file": f"arrays-{len(value)}.arrow", "column": column})
        elif isinstance(value, pl.Series):
            group = by_length.setdefault(len(value), {})
            column = f"c{len(group)}"
            group[column], pickled = _to_arrow(value)
            index.append({"path": list(path), "kind": "series", "file": f"arrays-{len(value)}.arrow", "column": column,
                          "name": value.name, "objects": pickled})
        elif isinstance(value, pl.DataFrame):
            columns, objects = {}, []
            for s in value.iter_columns():
                columns[s.name], pickled = _to_arrow(s)
                if pickled:
                    objects.append(s.name)
            name = f"frame-{frames}.arrow"
            frames += 1
            _write_table(fs, f"{folder}/{name}", pa.table(columns) if columns else pa.table({}))
            index.append({"path": list(path), "kind": "frame", "file": name, "objects": objects})
        elif isinstance(value, bytes):
            column = f"c{len(blobs)}"
            blobs[column] = pa.array([value], type=pa.binary())
            index.append({"path": list(path), "kind": "bytes", "file": "blobs.arrow", "column": column})
        else:
            meta.append([list(path), value])
    for length, group in by_length.items():
        _write_table(fs, f"{folder}/arrays-{length}.arrow", pa.table(group))
    if blobs:
        _write_table(fs, f"{folder}/blobs.arrow", pa.table(blobs))
    return meta, index


def _from_arrow(array: pa.Array | pa.ChunkedArray, name: str, objects: bool) -> pl.Series:
    if objects:
        return pl.Series(name, [pickle.loads(v) for v in array.to_pylist()], dtype=pl.Object)
    return pl.Series(name, array)


def _decode(meta: list[Any], index: list[dict[str, Any]], fs: pafs.FileSystem, folder: str) -> State:
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
        name = entry["file"]
        if name not in tables:
            tables[name] = _read_table(fs, f"{folder}/{name}")
        table = tables[name]
        kind = entry["kind"]
        if kind == "array":
            put(entry["path"], table.column(entry["column"]).to_numpy())
        elif kind == "series":
            put(entry["path"], _from_arrow(table.column(entry["column"]), entry["name"], entry["objects"]))
        elif kind == "bytes":
            put(entry["path"], table.column(entry["column"])[0].as_py())
        else:
            columns = [_from_arrow(table.column(c), c, c in entry["objects"]) for c in table.column_names]
            frame = pl.DataFrame(columns) if columns else pl.DataFrame()
            put(entry["path"], frame)
    return state
