"""File connectors: Parquet, CSV and JSON lines (optionally followed as a live log).

Every reader streams its file in chunks (Parquet row batches, CSV blocks, JSON-lines byte
blocks) and validates each chunk with :func:`~volga.sources.validation.conform`, so a file
never has to fit in memory and a bad row never stops a job; it lands in ``reader.rejected``
with its position (``row 12`` in Parquet, ``line 12`` in CSV and JSON lines) and the raw
record.

Policies, the same for all three:

* ``path`` is a ``str`` or ``pathlib.Path``; a missing file is a ``FileNotFoundError`` at open
  naming the source and the path.
* Parquet and CSV must have every entity column (extra columns are ignored): a missing
  column is a ``ValueError`` at open naming the file and the field(s), since it means the
  wrong file or a renamed column rather than a bad row. JSON lines are records: a line
  lacking a non-Optional field is a rejected row, lacking an Optional one reads null.
* CSV is text, so numbers, booleans (``true/false/1/0``) and lists (JSON text) are parsed
  from it; an empty unquoted cell is null. JSON values must already have the right JSON
  type (``"12"`` is not an int). Timestamps are ISO-8601 strings (naive means UTC) or, in
  Parquet, timestamp columns of any unit or zone; epoch numbers in a field declared with
  ``field(timestamp=True, unit="ms")``.

>>> import datetime, pathlib, tempfile
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Click:
...     user: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "clicks.jsonl"
>>> _ = path.write_text('{"user": "u1", "at": "2024-01-01T00:00:00"}\\nnot json\\n')
>>> reader = JsonLinesSource(path).open(entity_schema(Click), name="clicks")
>>> reader.poll(100).height, reader.finished
(1, True)
>>> reader.rejected[0].reason
'line 2: invalid JSON: Expecting value at column 1'
"""

# No `from __future__ import annotations` here: the doctest above declares an @entity, whose
# annotations must resolve at class creation, which that import would defer.

import abc
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from volga.api.entity import Schema
from volga.api.types import Duration, parse_duration_us
from volga.sources.base import Rejected, Source, SourceMode, SourceReader
from volga.sources.validation import conform_indexed, require_columns

__all__ = ["CsvSource", "JsonLinesSource", "ParquetSource"]

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_BLOCK_BYTES = 4 << 20


def _existing_file(path: str | Path, *, source: str, kind: str) -> Path:
    """The path as a Path, or a FileNotFoundError that says which source wanted it."""
    file = Path(path)
    if not file.is_file():
        problem = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise FileNotFoundError(f"source '{source}': {kind} file {str(file)!r} {problem}")
    return file


def _check_positive(value: int, what: str, owner: str) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {what} must be a positive int, not {value!r}")


# --------------------------------------------------------------------------- chunked reader


class ChunkedReader(SourceReader):
    """Hands out validated chunks in file order, at most ``max_rows`` rows per poll.

    Subclasses implement :meth:`_next_chunk`; this class keeps the unconsumed rest of the
    last chunk so a poll can be smaller or larger than the chunks the file is read in.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer: pl.DataFrame | None = None
        self._eof = False

    @abc.abstractmethod
    def _next_chunk(self) -> pl.DataFrame | None:
        """The next validated chunk (possibly empty), or None when nothing more is readable now.

        Set ``self._eof`` once the input has ended for good.
        """

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        parts: list[pl.DataFrame] = []
        taken = 0
        while taken < max_rows:
            if self._buffer is None or self._buffer.height == 0:
                self._buffer = self._next_chunk()
                if self._buffer is None:
                    break
                continue
            part = self._buffer.head(max_rows - taken)
            self._buffer = self._buffer.slice(part.height)
            parts.append(part)
            taken += part.height
        if not parts:
            return None
        self.rows_read += taken
        self.entered_at = time.perf_counter()
        return parts[0] if len(parts) == 1 else pl.concat(parts)

    @property
    def finished(self) -> bool:
        """True once every row has been handed out (may read ahead to find the end)."""
        while not self._eof and (self._buffer is None or self._buffer.height == 0):
            self._buffer = self._next_chunk()
            if self._buffer is None:
                break
        return self._eof and (self._buffer is None or self._buffer.height == 0)


# --------------------------------------------------------------------------- Parquet


@dataclasses.dataclass(frozen=True)
class ParquetSource(Source):
    """A Parquet file, read ``batch_rows`` rows at a time. Bounded."""

    path: str | Path
    batch_rows: int = dataclasses.field(default=DEFAULT_BATCH_ROWS, kw_only=True)

    def __post_init__(self) -> None:
        _check_positive(self.batch_rows, "batch_rows", f"ParquetSource({str(self.path)!r})")

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        file = _existing_file(self.path, source=name, kind="Parquet")
        return ParquetReader(file, schema, name=name, batch_rows=self.batch_rows)

    def partitions(self) -> int:
        """The file's row groups: a parallel offline read splits them between readers.

        A missing file counts as one part (``open`` then names the problem)."""
        file = Path(self.path)
        if not file.is_file():
            return 1
        return max(1, pq.ParquetFile(file).metadata.num_row_groups)

    def open_partition(
        self, schema: Schema, index: int, count: int, *, name: str, mode: SourceMode | None = None
    ) -> SourceReader:
        """Part ``index`` of ``count``: a contiguous run of row groups (groups dealt out evenly
        by number). ``first_position`` is the file row index of the part's first row."""
        if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
            raise ValueError(f"{self.describe()}: partition {index!r} of {count!r} does not exist")
        file = _existing_file(self.path, source=name, kind="Parquet")
        groups = pq.ParquetFile(file).metadata.num_row_groups
        if count > max(1, groups):
            raise ValueError(f"{self.describe()}: {count} partitions asked, the file has {groups} row group(s)")
        first, last = _contiguous_share(groups, index, count)
        return ParquetReader(file, schema, name=name, batch_rows=self.batch_rows, row_groups=range(first, last))

    def describe(self) -> str:
        return f"ParquetSource({str(self.path)!r})"


def _contiguous_share(items: int, index: int, count: int) -> tuple[int, int]:
    """``[first, last)`` of part ``index`` when ``items`` are dealt into ``count`` runs."""
    base, extra = divmod(items, count)
    first = index * base + min(index, extra)
    return first, first + base + (1 if index < extra else 0)


class ParquetReader(ChunkedReader):
    """Reads the whole file, or only ``row_groups`` (a contiguous range) of it."""

    def __init__(
        self, file: Path, schema: Schema, *, name: str, batch_rows: int, row_groups: range | None = None
    ) -> None:
        super().__init__()
        self._schema, self._name = schema, name
        self._file = pq.ParquetFile(file)
        require_columns(self._file.schema_arrow.names, schema, source=name, where=f"Parquet file {str(file)!r}")
        if row_groups is None:
            self.total_rows = self._file.metadata.num_rows
            self._batches = self._file.iter_batches(batch_size=batch_rows, columns=schema.names)
        else:
            meta = self._file.metadata
            self.first_position = sum(meta.row_group(g).num_rows for g in range(row_groups.start))
            self.total_rows = sum(meta.row_group(g).num_rows for g in row_groups)
            self._batches = self._file.iter_batches(
                batch_size=batch_rows, row_groups=list(row_groups), columns=schema.names
            ) if len(row_groups) else iter(())
        self._rows_seen = self.first_position  # rejected rows are numbered within the whole file

    def _next_chunk(self) -> pl.DataFrame | None:
        batch = next(self._batches, None)
        if batch is None:
            self._eof = True
            return None
        frame = pl.DataFrame(pa.Table.from_batches([batch]))
        df, problems = conform_indexed(frame, self._schema)
        first = self._rows_seen + 1
        self.rejected += [
            Rejected(self._name, f"row {first + i}: {reason}", frame.row(i, named=True)) for i, reason in problems
        ]
        self._rows_seen += frame.height
        return df

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- CSV


@dataclasses.dataclass(frozen=True)
class CsvSource(Source):
    """A CSV file with a header row, read ``block_bytes`` at a time. Bounded.

    Every cell is text, parsed into the entity's types; an empty unquoted cell is null. A
    row with the wrong number of cells is rejected (``line N: expected 3 cells, got 2``).
    Line numbers count the header as line 1 (a quoted value spanning lines counts once).
    """

    path: str | Path
    separator: str = dataclasses.field(default=",", kw_only=True)
    block_bytes: int = dataclasses.field(default=DEFAULT_BLOCK_BYTES, kw_only=True)

    def __post_init__(self) -> None:
        owner = f"CsvSource({str(self.path)!r})"
        _check_positive(self.block_bytes, "block_bytes", owner)
        if len(self.separator) != 1:
            raise ValueError(f"{owner}: separator must be one character, not {self.separator!r}")

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        file = _existing_file(self.path, source=name, kind="CSV")
        return CsvReader(file, schema, name=name, separator=self.separator, block_bytes=self.block_bytes)

    def describe(self) -> str:
        return f"CsvSource({str(self.path)!r})"


class CsvReader(ChunkedReader):
    def __init__(self, file: Path, schema: Schema, *, name: str, separator: str, block_bytes: int) -> None:
        super().__init__()
        self._schema, self._name = schema, name
        header = _csv_header(file, separator, source=name)
        require_columns(header, schema, source=name, where=f"CSV file {str(file)!r}")
        self._skipped: list[int] = []  # line numbers of malformed rows, ascending
        self._malformed: list[tuple[int, str, Any]] = []  # (line, reason, raw) not yet reported
        self._parsed = 0  # rows handed to conform so far
        self._reader = pacsv.open_csv(
            file,
            read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=separator, newlines_in_values=True, invalid_row_handler=self._on_invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=schema.names,
                column_types={n: pa.string() for n in schema.names},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )

    def _on_invalid_row(self, row: Any) -> str:
        """Called by Arrow for a row with the wrong cell count: reject it and read on."""
        line = row.number if row.number is not None else 0
        self._skipped.append(line)
        reason = f"expected {row.expected_columns} cells, got {row.actual_columns}"
        self._malformed.append((line, reason, row.text))
        return "skip"

    def _next_chunk(self) -> pl.DataFrame | None:
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self._eof = True
            self.rejected += [Rejected(self._name, f"line {line}: {why}", raw) for line, why, raw in self._malformed]
            self._malformed = []
            return None
        frame = pl.DataFrame(pa.Table.from_batches([batch]))
        df, problems = conform_indexed(frame, self._schema, parse_strings=True)
        bad = [(self._line_of(self._parsed + i), reason, frame.row(i, named=True)) for i, reason in problems]
        self._parsed += frame.height
        last_line = self._line_of(self._parsed - 1) if self._parsed else 1
        # Malformed rows are reported by Arrow while it parses (possibly a block ahead):
        # report those up to this batch's end, in line order with this batch's rejects.
        bad += [m for m in self._malformed if m[0] <= last_line]
        self._malformed = [m for m in self._malformed if m[0] > last_line]
        bad.sort(key=lambda item: item[0])
        self.rejected += [Rejected(self._name, f"line {line}: {reason}", raw) for line, reason, raw in bad]
        return df

    def _line_of(self, parsed_index: int) -> int:
        """The line number of the ``parsed_index``-th well-formed row (header = line 1)."""
        line = parsed_index + 2
        for skipped in self._skipped:
            if skipped > line:
                break
            line += 1
        return line

    def close(self) -> None:
        self._reader.close()


def _csv_header(file: Path, separator: str, *, source: str) -> list[str]:
    with file.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle, delimiter=separator), None)
    if not header:
        raise ValueError(f"source '{source}': CSV file {str(file)!r} is empty; expected a header row")
    return header


# --------------------------------------------------------------------------- JSON lines


@dataclasses.dataclass(frozen=True)
class JsonLinesSource(Source):
    """One JSON object per line. Bounded, or with ``follow=True`` a live, append-only log.

    Following, the reader remembers how far it has read and picks up lines appended later;
    only complete lines (ending in a newline) are consumed, so a half-written line waits for
    its end. When nothing new is there, the file is checked again after ``poll_interval``.
    Blank lines are skipped. A bad line (invalid JSON, not an object, a missing or
    ill-typed field) is rejected with its line number; its record is the raw line.
    """

    path: str | Path
    follow: bool = dataclasses.field(default=False, kw_only=True)
    poll_interval: Duration = dataclasses.field(default="100ms", kw_only=True)
    block_bytes: int = dataclasses.field(default=DEFAULT_BLOCK_BYTES, kw_only=True)

    def __post_init__(self) -> None:
        owner = f"JsonLinesSource({str(self.path)!r})"
        parse_duration_us(self.poll_interval, what=f"{owner}: poll_interval")
        _check_positive(self.block_bytes, "block_bytes", owner)

    @property
    def bounded(self) -> bool:
        return not self.follow

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        file = _existing_file(self.path, source=name, kind="JSON lines")
        interval_s = parse_duration_us(self.poll_interval) / 1e6
        return JsonLinesReader(
            file, schema, name=name, follow=self.follow, poll_interval_s=interval_s, block_bytes=self.block_bytes
        )

    def describe(self) -> str:
        return f"JsonLinesSource({str(self.path)!r}{', follow=True' if self.follow else ''})"


class JsonLinesReader(ChunkedReader):
    def __init__(
        self, file: Path, schema: Schema, *, name: str, follow: bool, poll_interval_s: float, block_bytes: int
    ) -> None:
        super().__init__()
        self._schema, self._name = schema, name
        self._follow, self._interval_s, self._block_bytes = follow, poll_interval_s, block_bytes
        self._handle: BinaryIO = file.open("rb")
        self._offset = 0  # bytes consumed: everything before it has been parsed
        self._partial = b""  # bytes read past the last newline (a line still being written)
        self._line_no = 0
        self._idle_until = 0.0  # perf_counter() before which a follower doesn't look again

    def _next_chunk(self) -> pl.DataFrame | None:
        if self._eof or time.perf_counter() < self._idle_until:
            return None
        data = self._handle.read(self._block_bytes)
        if not data:
            return self._at_end()
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        self._offset += cut
        return self._parse(data[:cut].split(b"\n")[:-1])

    def _at_end(self) -> pl.DataFrame | None:
        """End of the bytes written so far: wait (following) or finish with the last line."""
        if self._follow:
            self._idle_until = time.perf_counter() + self._interval_s
            return None
        self._eof = True
        if not self._partial:
            return None
        last, self._partial = self._partial, b""
        self._offset += len(last)
        return self._parse([last])

    def _parse(self, lines: list[bytes]) -> pl.DataFrame:
        """Decode lines to records, validate them, and reject the bad ones by line number."""
        records: list[dict[str, Any]] = []
        raws: list[str] = []
        numbers: list[int] = []
        bad: list[tuple[int, str, str]] = []  # (line, reason, raw)
        for raw_bytes in lines:
            self._line_no += 1
            try:
                raw = raw_bytes.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as e:
                bad.append((self._line_no, f"invalid UTF-8 at byte {e.start}", repr(raw_bytes)))
                continue
            if not raw.strip():
                continue
            record, problem = _json_object(raw)
            if record is None:
                bad.append((self._line_no, problem, raw))
                continue
            records.append(record)
            raws.append(raw)
            numbers.append(self._line_no)
        df, problems = conform_indexed(records, self._schema)
        bad += [(numbers[i], reason, raws[i]) for i, reason in problems]
        bad.sort(key=lambda item: item[0])
        self.rejected += [Rejected(self._name, f"line {line}: {reason}", raw) for line, reason, raw in bad]
        return df

    @property
    def finished(self) -> bool:
        return not self._follow and super().finished

    @property
    def bytes_consumed(self) -> int:
        """Byte offset up to which the file has been parsed (the start of any partial line)."""
        return self._offset

    def close(self) -> None:
        self._handle.close()


def _json_object(raw: str) -> tuple[dict[str, Any] | None, str]:
    """``(record, "")`` for a JSON object line, else ``(None, why not)``."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at column {e.colno}"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    return value, ""
