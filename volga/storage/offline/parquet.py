"""The embedded offline store: Parquet files under a local directory.

Layout, one directory per feature name::

    root/<name>/CURRENT                      names the live version, e.g. "v000002"
    root/<name>/v000002/_schema.json         the schema (see volga.storage.schema_json)
    root/<name>/v000002/part-000001.parquet  rows, in write order across parts
    root/<name>/v000002/part-000002.parquet

``replace`` writes a complete new version directory under a temporary name, renames it
into place, then swaps ``CURRENT`` with an atomic rename; a reader resolves ``CURRENT``
once, so it sees the old rows or the new rows, never a mix or a half-written file. A
replaced version is deleted by a later ``replace`` once it has been out of date for
``old_version_grace_s`` seconds, so a lazy frame handed out before a swap still reads.
``append`` writes a new part file under a temporary name and renames it into the live
version.

Writes from one store object are serialised by a lock; several processes writing the same
feature at once are not supported.
"""

# No `from __future__ import annotations` here: the docstring example's @entity class needs
# its annotations evaluated where it is defined (doctest inherits a module's future flags).

import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import polars as pl

from volga.api.entity import Schema
from volga.storage.conform import conform_batch, same_shape
from volga.storage.offline.base import OfflineStore
from volga.storage.schema_json import schema_from_json, schema_to_json

CURRENT = "CURRENT"
SCHEMA_FILE = "_schema.json"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"v(\d{6,})")
_PART = re.compile(r"part-(\d{6,})\.parquet")


def check_feature_name(name: str) -> str:
    """Return ``name`` if it is safe as a directory name, else raise ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"feature name {name!r} cannot be stored in the Parquet offline store: use only letters, "
            "digits, '_', '.' and '-', not starting with '.'"
        )
    return name


class ParquetOfflineStore(OfflineStore):
    """Every output row of each feature, as Parquet files under ``root``.

    >>> import datetime, tempfile
    >>> from volga.api.entity import entity, entity_schema, field
    >>> @entity
    ... class Spend:
    ...     user_id: str = field(key=True)
    ...     at: datetime.datetime = field(timestamp=True)
    ...     total: float
    >>> store = ParquetOfflineStore(tempfile.mkdtemp())
    >>> at = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    >>> rows = pl.DataFrame({"user_id": ["a"], "at": [at], "total": [1.0]})
    >>> store.replace("spend", entity_schema(Spend), rows)
    >>> store.append("spend", entity_schema(Spend), rows.with_columns(total=pl.lit(2.0)))
    >>> store.read("spend")["total"].to_list()
    [1.0, 2.0]
    """

    def __init__(self, root: str | Path, *, old_version_grace_s: float = 60.0) -> None:
        if old_version_grace_s < 0:
            raise ValueError(f"ParquetOfflineStore: old_version_grace_s must be >= 0, got {old_version_grace_s}")
        self.root = Path(root)
        self.old_version_grace_s = old_version_grace_s
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ParquetOfflineStore({str(self.root)!r})"

    # -- writing ----------------------------------------------------------------------

    def replace(self, name: str, schema: Schema, rows: pl.DataFrame) -> None:
        feature_dir = self._feature_dir(name)
        frame = conform_batch(rows, schema, what=f"offline store feature {name!r}")
        with self._lock:
            _write_version(feature_dir, schema, frame, self.old_version_grace_s)

    def append(self, name: str, schema: Schema, rows: pl.DataFrame) -> None:
        feature_dir = self._feature_dir(name)
        frame = conform_batch(rows, schema, what=f"offline store feature {name!r}")
        with self._lock:
            version = _current_version(feature_dir)
            if version is None:
                _write_version(feature_dir, schema, frame, self.old_version_grace_s)
                return
            version_dir = feature_dir / version
            stored = _read_schema(version_dir)
            if not same_shape(stored, schema):
                raise ValueError(
                    f"offline store feature {name!r} holds rows of schema {stored.describe()}, not "
                    f"{schema.describe()}; use replace() to store a new shape"
                )
            if frame.height:
                _write_part(version_dir, _next_number(version_dir, _PART), frame)

    # -- reading ----------------------------------------------------------------------

    def scan(self, name: str) -> pl.LazyFrame | None:
        version_dir = self._version_dir(name)
        if version_dir is None:
            return None
        parts = _parts(version_dir)
        if not parts:
            return None
        return pl.scan_parquet([str(p) for p in parts], hive_partitioning=False)

    def schema(self, name: str) -> Schema | None:
        version_dir = self._version_dir(name)
        return None if version_dir is None else _read_schema(version_dir)

    def names(self) -> list[str]:
        """Names of the features stored under ``root``, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).is_file())

    # -- helpers ----------------------------------------------------------------------

    def _feature_dir(self, name: str) -> Path:
        return self.root / check_feature_name(name)

    def _version_dir(self, name: str) -> Path | None:
        feature_dir = self._feature_dir(name)
        version = _current_version(feature_dir)
        return None if version is None else feature_dir / version


def _write_version(feature_dir: Path, schema: Schema, frame: pl.DataFrame, grace_s: float) -> None:
    """Stage a complete new version, rename it in, point CURRENT at it, drop expired versions."""
    feature_dir.mkdir(parents=True, exist_ok=True)
    version = f"v{_next_number(feature_dir, _VERSION):06d}"
    staging = feature_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        (staging / SCHEMA_FILE).write_text(schema_to_json(schema), encoding="utf-8")
        _write_part(staging, 1, frame)
        os.rename(staging, feature_dir / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _atomic_write_text(feature_dir / CURRENT, version)
    _remove_expired_versions(feature_dir, version, grace_s)


def _write_part(directory: Path, number: int, frame: pl.DataFrame) -> None:
    """Write ``part-<number>.parquet`` under a temporary name, then rename it into place."""
    part = directory / f"part-{number:06d}.parquet"
    staging = directory / f".tmp-{part.name}-{uuid.uuid4().hex[:8]}"
    try:
        frame.write_parquet(staging)
        os.rename(staging, part)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    found = []
    for entry in directory.iterdir():
        match = pattern.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _next_number(directory: Path, pattern: re.Pattern[str]) -> int:
    numbered = _numbered(directory, pattern)
    return numbered[-1][0] + 1 if numbered else 1


def _parts(version_dir: Path) -> list[Path]:
    return [path for _, path in _numbered(version_dir, _PART)]


def _current_version(feature_dir: Path) -> str | None:
    try:
        version = (feature_dir / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not _VERSION.fullmatch(version):
        raise ValueError(f"offline store: {feature_dir / CURRENT} is corrupt (names {version!r}, not a version)")
    return version


def _read_schema(version_dir: Path) -> Schema:
    return schema_from_json((version_dir / SCHEMA_FILE).read_text(encoding="utf-8"))


def _atomic_write_text(path: Path, text: str) -> None:
    staging = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    with open(staging, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, path)


def _remove_expired_versions(feature_dir: Path, current: str, grace_s: float) -> None:
    """Delete versions replaced more than ``grace_s`` ago (when their successor was written)."""
    versions = [path for _, path in _numbered(feature_dir, _VERSION)]
    now = time.time()
    for path, successor in zip(versions, versions[1:]):
        if path.name != current and now - successor.stat().st_mtime >= grace_s:
            shutil.rmtree(path, ignore_errors=True)
