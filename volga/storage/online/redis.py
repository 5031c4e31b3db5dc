"""``RedisOnlineStore``: latest row and a bounded recent history per key, in Redis.

Shared by every process that points at the same server (streaming jobs write, serving
workers read), so ``volga serve --workers N`` sees one store.

Layout, under ``namespace`` (default ``volga``) and the feature name (percent-encoded, so
that one feature's keys never match another's pattern)::

    {ns}:{feature}:meta      hash: schema (JSON), shape (JSON without the entity name)
    {ns}:{feature}:l:{key}   string: the latest row
    {ns}:{feature}:h:{key}   list: the last ``history`` rows, oldest first

``{key}`` is the msgpack encoding of the key value (a list of values for a composite key)
and a row is the msgpack array of its values in schema order, datetimes as integer
microseconds since the epoch (UTC). No pickle: any client that speaks msgpack can read it.

Writes group a batch's rows by key (keeping the last ``history`` of each) and send them in
one Lua script call per ~10k rows, which sets the latest row, appends to the history, trims
it and refreshes the TTL of each key atomically: a reader sees a batch's rows for a key
entirely or not at all. ``get_latest`` is one ``MGET`` (one round trip for any number of
keys); ``get_last_n``/``get_range`` one pipelined ``LRANGE`` per key, also one round trip.

``ttl`` (a duration) expires a key's rows that long after its last write; None keeps them.

Usage (needs a Redis server; tested in ``tests/storage`` against a real one)::

    store = RedisOnlineStore("redis://127.0.0.1:6379/0", ttl="7d")
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

import polars as pl

from volga._optional import optional_import
from volga.api.entity import Schema
from volga.api.types import Duration, parse_duration_us
from volga.storage.conform import conform_batch, conform_series
from volga.storage.online.base import KEY_INDEX, OnlineStore, WindowRows
from volga.storage.schema_json import schema_from_json, schema_to_dict, schema_to_json

__all__ = ["RedisOnlineStore"]

KEY_INDEX_DTYPE = pl.UInt32()
# Rows per Lua call: bounds the arguments of one call and how long it holds the server.
_ROWS_PER_CALL = 10_000
_RPUSH_CHUNK = 4_000  # Lua's unpack() limit is ~8k values

# KEYS: meta, evicted (hash), then (latest, history) per key. ARGV: schema json, shape json,
# history, ttl_ms, retain_us (-1: keep the last `history` rows only), the timestamp's
# position in a row (1-based), then per key: n, row_1 .. row_n (oldest first).
# With retain_us >= 0 (request-time pipelines), rows younger than retain_us behind the
# key's newest row stay beyond `history`; the newest evicted timestamp is recorded in the
# evicted hash under the history key's name.
_WRITE_SCRIPT = """
local meta = KEYS[1]
local shape = redis.call('HGET', meta, 'shape')
if not shape then
  redis.call('HSET', meta, 'schema', ARGV[1], 'shape', ARGV[2])
elseif shape ~= ARGV[2] then
  return redis.error_reply('VOLGA_SHAPE ' .. redis.call('HGET', meta, 'schema'))
end
local hist = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local retain = tonumber(ARGV[5])
local tspos = tonumber(ARGV[6])
local pos = 7
for i = 3, #KEYS, 2 do
  local n = tonumber(ARGV[pos])
  local first, last = pos + 1, pos + n
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[last], 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[last])
  end
  for s = first, last, %d do
    redis.call('RPUSH', KEYS[i + 1], unpack(ARGV, s, math.min(s + %d, last)))
  end
  if retain < 0 then
    redis.call('LTRIM', KEYS[i + 1], -hist, -1)
  else
    local cutoff = cmsgpack.unpack(ARGV[last])[tspos] - retain
    local len = redis.call('LLEN', KEYS[i + 1])
    local evicted = nil
    while len > hist do
      local head = cmsgpack.unpack(redis.call('LINDEX', KEYS[i + 1], 0))[tspos]
      if head >= cutoff then break end
      redis.call('LPOP', KEYS[i + 1])
      len = len - 1
      evicted = head
    end
    if evicted then redis.call('HSET', KEYS[2], KEYS[i + 1], string.format('%%d', evicted)) end
  end
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i + 1], ttl) end
  pos = last + 1
end
return (#KEYS - 2) / 2
""" % (_RPUSH_CHUNK, _RPUSH_CHUNK - 1)  # noqa: UP031 - Lua source; %d is clearer than {} here

# The write script for a contiguous range of a checkpointed job's rows: the last KEYS entry
# is the feature's row counter, the last two ARGV entries the range (first row, count).
# Applied only if the counter is at the range's start; the counter moves with the rows.
_SEQ_SCRIPT = (
    """
local nkeys = #KEYS - 1
local seq_key = KEYS[#KEYS]
local seq_first, seq_n = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local applied = tonumber(redis.call('GET', seq_key) or '0')
if applied >= seq_first + seq_n then return 0 end
if applied ~= seq_first then return redis.error_reply('VOLGA_SEQ counter at ' .. applied .. ', write starts at ' .. seq_first) end
"""
    + _WRITE_SCRIPT.replace("#KEYS", "nkeys")[: _WRITE_SCRIPT.replace("#KEYS", "nkeys").rindex("return (")]
    + "redis.call('SET', seq_key, seq_first + seq_n)\n"
    + _WRITE_SCRIPT.replace("#KEYS", "nkeys")[_WRITE_SCRIPT.replace("#KEYS", "nkeys").rindex("return (") :]
)


class _Feature:
    """A stored feature's schema and how to convert rows and keys to and from Redis values."""

    def __init__(self, prefix: bytes, schema: Schema, schema_json: str) -> None:
        self.schema = schema
        self.schema_json = schema_json
        self.meta_key = prefix + b"meta"
        self.latest_prefix = prefix + b"l:"
        self.history_prefix = prefix + b"h:"
        self.evicted_key = prefix + b"evicted"
        names = schema.names
        self.key_pos = [names.index(k) for k in schema.keys]
        self.ts_pos = names.index(schema.timestamp)
        self.int_cols = frozenset(f.name for f in schema.fields if isinstance(f.dtype, pl.Datetime))
        self.out_schema: dict[str, pl.DataType] = schema.polars_schema()
        self.indexed_schema = {**self.out_schema, KEY_INDEX: KEY_INDEX_DTYPE}


def _shape_json(schema: Schema) -> str:
    """The schema's JSON without its entity name: what must match for rows to be compatible."""
    data = schema_to_dict(schema)
    data.pop("name", None)
    return json.dumps(data, sort_keys=True)


class RedisOnlineStore(OnlineStore):
    """The online store on a Redis server (see the module docstring for the layout).

    ``connect_timeout``/``timeout`` bound connecting and each command; a server that is
    down or refuses the credentials is a ``ConnectionError`` naming the server (never
    its password) at construction.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        ttl: Duration | None = None,
        history: int = 1000,
        namespace: str = "volga",
        connect_timeout: Duration = "5s",
        timeout: Duration = "10s",
    ) -> None:
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"RedisOnlineStore: history must be an int >= 1 (rows kept per key), got {history!r}")
        redis = optional_import("redis", extra="redis", what="RedisOnlineStore")
        msgspec = optional_import("msgspec", extra="redis", what="RedisOnlineStore")
        self.history = history
        self.ttl_ms = 0 if ttl is None else parse_duration_us(ttl, what="RedisOnlineStore: ttl") // 1000
        self.namespace = namespace
        self.url = url
        self._redis = redis
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=parse_duration_us(connect_timeout, what="connect_timeout") / 1e6,
            socket_timeout=parse_duration_us(timeout, what="timeout") / 1e6,
        )
        self._features: dict[str, _Feature] = {}
        self._lock = threading.Lock()
        try:
            self._client.ping()
        except redis.RedisError as e:
            self._client.close()
            raise ConnectionError(f"RedisOnlineStore: cannot use Redis at {self.describe_server()}: {e}") from None
        self._write = self._client.register_script(_WRITE_SCRIPT)

    def describe_server(self) -> str:
        """The server address without credentials."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.describe_server()!r}, namespace={self.namespace!r}, history={self.history})"

    # -- features --------------------------------------------------------------------------

    def _prefix(self, name: str) -> bytes:
        return f"{self.namespace}:{urllib.parse.quote(name, safe='')}:".encode()

    def _feature_from(self, name: str, schema_json: bytes | str | None) -> _Feature | None:
        """The cached feature for ``name`` if its stored schema is ``schema_json``, else a fresh one."""
        if schema_json is None:
            return None
        text = schema_json.decode() if isinstance(schema_json, bytes) else schema_json
        cached = self._features.get(name)
        if cached is not None and cached.schema_json == text:
            return cached
        feature = _Feature(self._prefix(name), schema_from_json(text), text)
        with self._lock:
            self._features[name] = feature
        return feature

    def _stored(self, name: str) -> _Feature:
        """The feature as stored now (one round trip), or KeyError if nothing is."""
        feature = self._feature_from(name, self._client.hget(self._prefix(name) + b"meta", "schema"))
        if feature is None:
            raise KeyError(f"online store has no feature {name!r} (nothing was written under that name)")
        return feature

    def schema(self, name: str) -> Schema | None:
        feature = self._feature_from(name, self._client.hget(self._prefix(name) + b"meta", "schema"))
        return None if feature is None else feature.schema

    def clear(self, name: str) -> None:
        pattern = self._prefix(name).replace(b"\\", b"\\\\") + b"*"
        batch: list[bytes] = []
        for key in self._client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self._client.unlink(*batch)
                batch = []
        if batch:
            self._client.unlink(*batch)
        with self._lock:
            self._features.pop(name, None)

    # -- writing -----------------------------------------------------------------------------

    def write(self, name: str, schema: Schema, batch: pl.DataFrame, *, retain_us: int | None = None) -> None:
        frame = conform_batch(batch, schema, what=f"online store feature {name!r}")
        feature = self._features.get(name)
        if feature is None or feature.schema != schema:
            feature = _Feature(self._prefix(name), schema, schema_to_json(schema))
        shape = _shape_json(schema)
        retain = -1 if retain_us is None else retain_us
        if frame.height == 0:
            self._call_write(name, feature, shape, [], [], retain)
            return
        encode, history = self._encode, self.history
        columns = [(s.cast(pl.Int64) if s.name in feature.int_cols else s).to_list() for s in frame.iter_columns()]
        rows = [encode(row) for row in zip(*columns)]
        if len(feature.key_pos) == 1:
            keys = [encode(k) for k in columns[feature.key_pos[0]]]
        else:
            keys = [encode(list(k)) for k in zip(*(columns[i] for i in feature.key_pos))]
        per_key: dict[bytes, list[bytes]] = {}
        for key, row in zip(keys, rows):
            recent = per_key.get(key)
            if recent is None:
                per_key[key] = [row]
            else:
                recent.append(row)
        key_args: list[bytes] = []
        row_args: list[Any] = []
        pending = 0
        for key, recent in per_key.items():
            if len(recent) > history and retain < 0:
                recent = recent[-history:]
            key_args += [feature.latest_prefix + key, feature.history_prefix + key]
            row_args.append(len(recent))
            row_args += recent
            pending += len(recent)
            if pending >= _ROWS_PER_CALL:
                self._call_write(name, feature, shape, key_args, row_args, retain)
                key_args, row_args, pending = [], [], 0
        if key_args:
            self._call_write(name, feature, shape, key_args, row_args, retain)
        with self._lock:
            self._features[name] = feature

    def _call_write(self, name: str, feature: _Feature, shape: str, keys: list[bytes], rows: list[Any], retain: int) -> None:
        args = [feature.schema_json, shape, self.history, self.ttl_ms, retain, feature.ts_pos + 1, *rows]
        try:
            self._write(keys=[feature.meta_key, feature.evicted_key, *keys], args=args)
        except self._redis.ResponseError as e:
            if "VOLGA_SHAPE" not in str(e):
                raise
            stored = str(e).split("VOLGA_SHAPE ", 1)[1]
            raise ValueError(
                f"online store feature {name!r} holds rows of schema {schema_from_json(stored).describe()}, "
                f"not {feature.schema.describe()}; call clear({name!r}) before writing a new shape"
            ) from None

    # -- reading -----------------------------------------------------------------------------

    def _request_keys(self, name: str, feature: _Feature, keys: pl.DataFrame) -> list[bytes]:
        """Each requested key, encoded as ``write`` encodes it."""
        have = keys.columns
        schema = feature.schema
        missing = [k for k in schema.keys if k not in have]
        if missing:
            raise ValueError(
                f"online store feature {name!r}: key column(s) {missing} missing from the request "
                f"(got columns {have}; the keys are {list(schema.keys)})"
            )
        columns: list[list[Any]] = []
        for k in schema.keys:
            series = keys.get_column(k)
            want = schema.field(k).dtype
            if series.dtype != want:
                series = conform_series(series, want, what=f"online store feature {name!r}: key")
            if k in feature.int_cols:
                series = series.cast(pl.Int64)
            columns.append(series.to_list())
        encode = self._encode
        if len(columns) == 1:
            return [encode(k) for k in columns[0]]
        return [encode(list(k)) for k in zip(*columns)]

    def _missing_row(self, feature: _Feature, keys: pl.DataFrame, index: int) -> tuple[Any, ...]:
        row: list[Any] = [None] * len(feature.out_schema)
        for pos, k in zip(feature.key_pos, feature.schema.keys):
            value = keys.get_column(k)[index]
            row[pos] = value
        return tuple(row)

    def get_latest(self, name: str, keys: pl.DataFrame) -> pl.DataFrame:
        feature = self._features.get(name) or self._stored(name)
        for _ in range(3):
            encoded = self._request_keys(name, feature, keys)
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(feature.meta_key, "schema")
            if encoded:
                pipe.mget([feature.latest_prefix + k for k in encoded])
            replies = pipe.execute()
            current = self._feature_from(name, replies[0])
            if current is None:
                raise KeyError(f"online store has no feature {name!r} (nothing was written under that name)")
            if current is feature:
                break
            feature = current  # the feature was redefined meanwhile: ask again with its key types
        values = replies[1] if encoded else []
        decode = self._decode
        rows = []
        request = None
        for i, value in enumerate(values):
            if value is None:
                if request is None:
                    request = self._typed_keys(name, feature, keys)
                rows.append(self._missing_row(feature, request, i))
            else:
                rows.append(decode(value))
        return pl.DataFrame(rows, schema=feature.out_schema, orient="row")

    def _typed_keys(self, name: str, feature: _Feature, keys: pl.DataFrame) -> pl.DataFrame:
        """The request's key columns with the stored dtypes (for rows of unknown keys)."""
        columns = []
        for k in feature.schema.keys:
            series = keys.get_column(k)
            want = feature.schema.field(k).dtype
            if series.dtype != want:
                series = conform_series(series, want, what=f"online store feature {name!r}: key")
            if k in feature.int_cols:
                series = series.cast(pl.Int64)
            columns.append(series)
        return pl.DataFrame(columns)

    def _histories(self, name: str, keys: pl.DataFrame, start: int, end: int) -> tuple[_Feature, list[list[Any]]]:
        """``LRANGE start end`` of each requested key's history, decoded, in one round trip."""
        feature = self._features.get(name) or self._stored(name)
        for _ in range(3):
            encoded = self._request_keys(name, feature, keys)
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(feature.meta_key, "schema")
            for k in encoded:
                pipe.lrange(feature.history_prefix + k, start, end)
            replies = pipe.execute()
            current = self._feature_from(name, replies[0])
            if current is None:
                raise KeyError(f"online store has no feature {name!r} (nothing was written under that name)")
            if current is feature:
                break
            feature = current
        decode = self._decode
        return feature, [[decode(v) for v in values] for values in replies[1:]]

    def get_last_n(self, name: str, keys: pl.DataFrame, n: int) -> pl.DataFrame:
        if n < 0:
            raise ValueError(f"get_last_n({name!r}): n must be >= 0, got {n}")
        if n == 0:
            feature = self._features.get(name) or self._stored(name)
            self._request_keys(name, feature, keys)  # still check the key columns
            return pl.DataFrame(schema=feature.indexed_schema)
        feature, per_key = self._histories(name, keys, -min(n, self.history), -1)  # beyond `history`: windows only
        return _indexed_frame(feature, per_key)

    def get_range(self, name: str, keys: pl.DataFrame, start_us: int | None, end_us: int | None) -> pl.DataFrame:
        feature, per_key = self._histories(name, keys, -self.history, -1)
        lo = -(2**63) if start_us is None else start_us
        hi = 2**63 - 1 if end_us is None else end_us
        pos = feature.ts_pos
        in_range = [[row for row in rows if row[pos] is not None and lo <= row[pos] <= hi] for rows in per_key]
        return _indexed_frame(feature, in_range)

    def window_rows(self, name: str, keys: pl.DataFrame, start_us: int, end_us: int) -> WindowRows:
        feature = self._features.get(name) or self._stored(name)
        encoded = self._request_keys(name, feature, keys)
        pipe = self._client.pipeline(transaction=False)
        for k in encoded:
            pipe.lrange(feature.history_prefix + k, 0, -1)
        if encoded:
            pipe.hmget(feature.evicted_key, [feature.history_prefix + k for k in encoded])
        replies = pipe.execute()
        decode, ts = self._decode, feature.ts_pos
        per_key: list[list[tuple[Any, ...]]] = []
        for values in replies[: len(encoded)]:
            rows = [tuple(decode(v)) for v in values]
            rows = [r for r in rows if r[ts] <= end_us]
            before = [r for r in rows if r[ts] < start_us]
            per_key.append(before[-1:] + [r for r in rows if r[ts] >= start_us])
        evicted = [None if v is None else int(v) for v in (replies[-1] if encoded else [])]
        return WindowRows(feature.schema.names, per_key, evicted)

    def close(self) -> None:
        self._client.close()

    # -- checkpointed jobs: sequenced, idempotent writes ----------------------------------
    # A checkpointed job numbers its output rows per pipeline (deterministic on replay).
    # ``{ns}:{feature}:seq`` counts the rows applied; each Lua call applies a contiguous
    # range of rows together with the counter, so after a crash at any instant the
    # counter says exactly which replayed rows are already in Redis.

    def applied_rows(self, name: str) -> int:
        """How many rows of ``name`` sequenced writes have applied (0 if none)."""
        value = self._client.get(self._prefix(name) + b"seq")
        return int(value) if value is not None else 0

    def reset_applied(self, name: str) -> None:
        """Number ``name``'s sequenced rows from 0 again (a job starting without a checkpoint)."""
        self._client.delete(self._prefix(name) + b"seq")

    def write_at(self, name: str, schema: Schema, batch: pl.DataFrame, first_row: int, *, retain_us: int | None = None) -> None:
        """Write ``batch`` as rows ``first_row ..`` of ``name``'s sequence (atomically per
        call, with the counter). Rows already applied are skipped; a gap is an error.
        ``retain_us`` as in :meth:`write`."""
        retain = -1 if retain_us is None else retain_us
        applied = self.applied_rows(name)
        if applied > first_row:
            skip = min(applied - first_row, batch.height)
            batch, first_row = batch.slice(skip), first_row + skip
        if batch.height == 0:
            return
        if applied < first_row:
            raise RuntimeError(
                f"online store feature {name!r}: sequenced write of rows from {first_row}, but Redis has "
                f"applied only {applied} rows (was the store cleared while the job ran?)"
            )
        script = getattr(self, "_write_seq", None)
        if script is None:
            script = self._write_seq = self._client.register_script(_SEQ_SCRIPT)
        frame = conform_batch(batch, schema, what=f"online store feature {name!r}")
        feature = _Feature(self._prefix(name), schema, schema_to_json(schema))
        shape = _shape_json(schema)
        seq_key = self._prefix(name) + b"seq"
        for start in range(0, frame.height, _ROWS_PER_CALL):
            chunk = frame.slice(start, _ROWS_PER_CALL)
            keys, rows = self._grouped_args(feature, chunk, retain)
            args = [feature.schema_json, shape, self.history, self.ttl_ms, retain, feature.ts_pos + 1, *rows, first_row + start, chunk.height]
            try:
                script(keys=[feature.meta_key, feature.evicted_key, *keys, seq_key], args=args)
            except self._redis.ResponseError as e:
                if "VOLGA_SEQ" in str(e):
                    raise RuntimeError(f"online store feature {name!r}: another writer moved its row sequence ({e})") from None
                if "VOLGA_SHAPE" not in str(e):
                    raise
                raise ValueError(f"online store feature {name!r} holds rows of another schema; call clear({name!r}) first") from None
        with self._lock:
            self._features[name] = feature

    def _grouped_args(self, feature: _Feature, frame: pl.DataFrame, retain: int) -> tuple[list[bytes], list[Any]]:
        encode = self._encode
        columns = [(s.cast(pl.Int64) if s.name in feature.int_cols else s).to_list() for s in frame.iter_columns()]
        rows = [encode(row) for row in zip(*columns)]
        if len(feature.key_pos) == 1:
            keys = [encode(k) for k in columns[feature.key_pos[0]]]
        else:
            keys = [encode(list(k)) for k in zip(*(columns[i] for i in feature.key_pos))]
        per_key: dict[bytes, list[bytes]] = {}
        for key, row in zip(keys, rows):
            per_key.setdefault(key, []).append(row)
        key_args: list[bytes] = []
        row_args: list[Any] = []
        for key, recent in per_key.items():
            if retain < 0:  # request-time rows are trimmed by time in the script
                recent = recent[-self.history :]
            key_args += [feature.latest_prefix + key, feature.history_prefix + key]
            row_args.append(len(recent))
            row_args += recent
        return key_args, row_args


def _indexed_frame(feature: _Feature, per_key: Sequence[Sequence[Any]]) -> pl.DataFrame:
    rows = [(*row, index) for index, rows in enumerate(per_key) for row in rows]
    return pl.DataFrame(rows, schema=feature.indexed_schema, orient="row")
