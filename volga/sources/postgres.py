"""``PostgresSource``: rows of a query (or a table) in PostgreSQL, read bounded or polled (psycopg 3).

* **bounded** (offline, ``follow=False``): the query's result as of open, fetched
  ``chunk_rows`` at a time through a server-side cursor (never all in memory), in the
  query's own order (``ORDER BY cursor_column`` when one is given). Then finished.
* **following** (online, ``follow=True``, needs ``cursor_column``): every ``poll_interval`` the
  rows whose ``cursor_column`` is greater than the last one seen (all rows at first, or those
  after ``start_after``), in ``cursor_column`` order. A full page that ends inside a run of
  equal cursor values is cut before that run, so no row is skipped at a page boundary. The
  cursor column must grow with each new row (a sequence or an insert timestamp); rows
  inserted later with a smaller value are not seen (e.g. a long transaction committing an
  earlier sequence value). ``reader.last_value`` is the position reached.

Give exactly one of ``query`` (the first argument: a SELECT, or a plain table name such as
``orders`` or ``public.orders`` meaning all its rows) and ``table=`` (a table name, always
quoted as an identifier: ``"public.orders"`` is table ``orders`` of schema ``public``; a
tuple ``("my schema", "odd.name")`` names parts that contain dots; it is never SQL text).
Columns are matched to the entity by name; ``numeric`` is read as float, ``timestamp``
without time zone as UTC. A row that doesn't fit the entity never stops the job: it is
counted (``reader.malformed_count``), kept in ``reader.rejected`` and written with its
reason to ``dead_letter_path`` (JSON lines) if given.

``open`` fails within ``connect_timeout`` with a ``ConnectionError`` naming the server
(never the password) when PostgreSQL is unreachable or refuses the credentials. Following,
a lost connection is retried with backoff (logged, never fatal); a bounded read that loses
its connection fails the job (its server-side cursor is gone).

>>> PostgresSource("orders", "postgresql://app:secret@db:5432/shop", cursor_column="id")
PostgresSource(query='orders', dsn='postgresql://app@db:5432/shop', cursor_column='id')
>>> PostgresSource(table="public.orders", dsn="postgresql://app@db/shop")
PostgresSource(table='public.orders', dsn='postgresql://app@db/shop')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from volga.api.entity import Schema
from volga.api.types import Duration, parse_duration_us
from volga.sources.base import Rejected, Source, SourceMode, SourceReader
from volga.sources.messages import Backoff, DeadLetter, DeadLetterFile, DeadLetterRecord, DeadLetters, optional_import
from volga.sources.validation import conform_indexed

__all__ = ["PostgresSource"]

log = logging.getLogger("volga.sources.postgres")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def table_parts(table: str | tuple[str, ...]) -> tuple[str, ...]:
    """A ``table=`` value as identifier parts: ``"s.t"`` -> ``("s", "t")``; a tuple as it is."""
    parts = tuple(table.split(".")) if isinstance(table, str) else tuple(table) if isinstance(table, (tuple, list)) else ()
    if not 1 <= len(parts) <= 3 or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(
            f"PostgresSource: table= must be a table name ('orders', 'public.orders') or a tuple of "
            f"name parts (('public', 'orders')), not {table!r}"
        )
    return parts


def redact_dsn(dsn: str) -> str:
    """A connection string without its password (URL or ``key=value`` form)."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or ""
        netloc = f"{user}{host}:{parts.port}" if parts.port else f"{user}{host}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return re.sub(r"password\s*=\s*('[^']*'|\S+)", "password=********", dsn)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class PostgresSource(Source):
    """A PostgreSQL query or table. See the module docstring for both ways of reading."""

    query: str | None = None
    dsn: str | None = None
    table: str | tuple[str, ...] | None = dataclasses.field(default=None, kw_only=True)
    cursor_column: str | None = dataclasses.field(default=None, kw_only=True)
    follow: bool | None = dataclasses.field(default=None, kw_only=True)
    start_after: Any = dataclasses.field(default=None, kw_only=True)
    poll_interval: Duration = dataclasses.field(default="1s", kw_only=True)
    chunk_rows: int = dataclasses.field(default=10_000, kw_only=True)
    dead_letter_path: str | Path | None = dataclasses.field(default=None, kw_only=True)
    connect_timeout: Duration = dataclasses.field(default="5s", kw_only=True)

    def __post_init__(self) -> None:
        if (self.query is None) == (self.table is None):
            given = "both query and table=" if self.query is not None else "neither query nor table="
            raise ValueError(
                f"PostgresSource: give exactly one of query (a SELECT, or a table name) and table= "
                f"(a table name); got {given}"
            )
        if self.query is not None and (not isinstance(self.query, str) or not self.query.strip()):
            raise ValueError(f"PostgresSource: query must be a SELECT or a table name, not {self.query!r}")
        if self.table is not None:
            parts = table_parts(self.table)  # raises on a bad name
            object.__setattr__(self, "table", self.table if isinstance(self.table, str) else parts)
        owner = f"PostgresSource({self._target()[:40]!r})"
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ValueError(f"{owner}: dsn (the connection string, e.g. 'postgresql://user:pw@host:5432/db') is required")
        if self.follow and self.cursor_column is None:
            raise ValueError(
                f"{owner}: follow=True needs cursor_column= (a column that grows with every new row, "
                "e.g. a serial id or an insert timestamp) to know which rows are new"
            )
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise ValueError(f"{owner}: chunk_rows must be a positive int, not {self.chunk_rows!r}")
        parse_duration_us(self.poll_interval, what=f"{owner}: poll_interval")
        parse_duration_us(self.connect_timeout, what=f"{owner}: connect_timeout")

    @property
    def bounded(self) -> bool:
        return self.follow is not True

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        follow = self.follow if self.follow is not None else mode == "online"
        if follow and self.cursor_column is None:
            raise ValueError(
                f"source '{name}': reading {self.describe()} in online mode needs cursor_column= "
                "(a column that grows with every new row) to know which rows are new"
            )
        return PostgresReader(self, schema, name=name, follow=follow)

    def _target(self) -> str:
        if self.query is not None:
            return self.query
        return self.table if isinstance(self.table, str) else ".".join(self.table or ())

    def base_query(self, sql: Any) -> Any:
        """The rows to read as a ``psycopg.sql`` composable (``sql`` is ``psycopg.sql``)."""
        if self.table is not None:
            return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*table_parts(self.table)))
        assert self.query is not None
        text = self.query.strip().rstrip(";")
        if _TABLE_NAME.match(text):
            return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*text.split(".")))
        return sql.SQL(text)  # the user's own query text

    def describe(self) -> str:
        cursor = f", cursor_column={self.cursor_column!r}" if self.cursor_column else ""
        follow = "" if self.follow is None else f", follow={self.follow}"
        what = f"query={self.query!r}" if self.query is not None else f"table={self.table!r}"
        return f"PostgresSource({what}, dsn={redact_dsn(self.dsn or '')!r}{cursor}{follow})"

    __repr__ = describe


class PostgresReader(SourceReader):
    def __init__(self, source: PostgresSource, schema: Schema, *, name: str, follow: bool) -> None:
        super().__init__()
        self._pg = optional_import("psycopg", extra="postgres", what="PostgresSource")
        self._source, self._schema, self._name, self._follow = source, schema, name, follow
        self._dsn: str = source.dsn or ""
        self._timeout_s = parse_duration_us(source.connect_timeout) / 1e6
        self._interval_s = parse_duration_us(source.poll_interval) / 1e6
        self._backoff = Backoff(first_s=0.2)
        self._next_poll = 0.0
        self._conn: Any = None
        self._cursor: Any = None
        self._columns: list[str] = []
        self._cursor_pos = 0
        self._finished = False
        self._rows_seen = 0
        self.last_value: Any = source.start_after
        self._base = source.base_query(self._pg.sql)
        sinks: list[DeadLetter] = [DeadLetterFile(source.dead_letter_path)] if source.dead_letter_path else []
        self._dead = DeadLetters(sinks)
        try:
            self._connect()
            if not follow:
                self._open_cursor()
        except BaseException:
            self.close()
            raise

    def _where(self) -> str:
        return f"source '{self._name}': PostgreSQL at {redact_dsn(self._dsn)!r}"

    def _connect(self) -> None:
        pg = self._pg
        try:
            self._conn = pg.connect(self._dsn, connect_timeout=max(1, round(self._timeout_s)), autocommit=self._follow)
        except pg.OperationalError as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ConnectionError(f"{self._where()}: cannot connect ({reason})") from None
        from psycopg.types.numeric import FloatLoader

        self._conn.adapters.register_loader("numeric", FloatLoader)

    def _open_cursor(self) -> None:
        """Bounded: a server-side (named) cursor over the whole query, in a transaction."""
        sql = self._pg.sql
        query = self._base
        if self._source.cursor_column:
            query = sql.SQL("SELECT * FROM ({}) AS volga_q ORDER BY {}").format(
                query, sql.Identifier(self._source.cursor_column)
            )
        self._cursor = self._conn.cursor(name=f"volga_{uuid.uuid4().hex[:12]}")
        try:
            self._cursor.execute(query)
        except self._pg.Error as e:
            raise ValueError(f"{self._where()}: query failed: {str(e).strip()}") from None

    # -- reading -------------------------------------------------------------------------

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        if self._finished:
            return None
        if not self._follow:
            return self._poll_bounded(max_rows)
        now = time.perf_counter()
        if now < self._next_poll or self._backoff.waiting():
            return None
        try:
            rows = self._page(max_rows)
        except (self._pg.OperationalError, self._pg.InterfaceError, ConnectionError) as e:
            # ConnectionError: the reconnect itself failed (e.g. "the database system is
            # starting up" right after a restart); following keeps retrying with backoff.
            delay = self._backoff.next_delay()
            log.warning("%s: %s; reconnecting in %.1fs", self._where(), str(e).strip(), delay)
            self._drop_connection()
            return None
        self._backoff.reset()
        if len(rows) < max_rows:
            self._next_poll = now + self._interval_s
        if not rows:
            return None
        self.entered_at = now
        return self._to_frame(rows)

    def _poll_bounded(self, max_rows: int) -> pl.DataFrame | None:
        try:
            rows = self._cursor.fetchmany(min(max_rows, self._source.chunk_rows))
            if self._columns == [] and self._cursor.description:
                self._columns = [c.name for c in self._cursor.description]
        except self._pg.OperationalError as e:
            raise ConnectionError(f"{self._where()}: connection lost during a bounded read: {str(e).strip()}") from None
        if len(rows) < min(max_rows, self._source.chunk_rows):
            self._finished = True
            self._cursor.close()
            self._conn.rollback()
        if not rows:
            return None
        self.entered_at = time.perf_counter()
        return self._to_frame(rows)

    def _page(self, max_rows: int) -> list[tuple[Any, ...]]:
        """The next rows after ``last_value`` in cursor order (a page cut before a run of equal values)."""
        if self._conn is None or self._conn.closed:
            self._connect()
        sql = self._pg.sql
        column = sql.Identifier(self._source.cursor_column)
        if self.last_value is None:
            where, params = sql.SQL(""), []
        else:
            where, params = sql.SQL("WHERE volga_q.{} > %s").format(column), [self.last_value]
        query = sql.SQL("SELECT * FROM ({}) AS volga_q {} ORDER BY volga_q.{} LIMIT %s").format(self._base, where, column)
        with self._conn.cursor() as cur:
            cur.execute(query, [*params, max_rows])
            rows = cur.fetchall()
            self._columns = [c.name for c in cur.description]
            assert self._source.cursor_column is not None
            pos = self._columns.index(self._source.cursor_column)
            if len(rows) == max_rows and rows:
                last = rows[-1][pos]
                cut = len(rows)
                while cut > 0 and rows[cut - 1][pos] == last:
                    cut -= 1
                if cut > 0:
                    rows = rows[:cut]
                else:  # the whole page shares one value: take every row with it
                    same = sql.SQL("SELECT * FROM ({}) AS volga_q WHERE volga_q.{} = %s").format(self._base, column)
                    cur.execute(same, [last])
                    rows = cur.fetchall()
        if rows:
            self.last_value = rows[-1][pos]
        return rows

    def _to_frame(self, rows: list[tuple[Any, ...]]) -> pl.DataFrame | None:
        columns = self._columns
        records = [dict(zip(columns, row)) for row in rows]
        df, problems = conform_indexed(records, self._schema)
        first = self._rows_seen + 1
        self._rows_seen += len(rows)
        if problems:
            bad = [(first + i, records[i], reason) for i, reason in problems]
            self._dead.write(
                [DeadLetterRecord(self._name, reason, json.dumps(record, default=str), {"row": n}) for n, record, reason in bad]
            )
            self.rejected += [Rejected(self._name, f"row {n}: {reason}", record) for n, record, reason in bad]
        self.rows_read += df.height
        return df if df.height else None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def malformed_count(self) -> int:
        """Rows set aside so far."""
        return self._dead.count

    def commit(self, position: dict[str, int] | None = None) -> None:
        self._dead.flush()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to release
                log.debug("%s: error closing a broken connection", self._where(), exc_info=True)

    def close(self) -> None:
        try:
            self._dead.close()
        finally:
            self._drop_connection()
