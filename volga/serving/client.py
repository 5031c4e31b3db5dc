"""``volga.OnDemandClient``: call a Volga feature server from Python, sync or async.

Connections are kept alive and reused (one per thread for ``request``, a small pool per
event loop for ``arequest``). Errors come back as the exceptions the server described:
:class:`~volga.serving.errors.BadRequest`, ``InvalidKeys``, ``FeatureNotFound``,
``Unauthorized``, ``FeatureFunctionError``... each with the server's message and the
request ``field`` at fault. A timeout raises ``TimeoutError``; an unreachable server
``ConnectionError``.

Rows come back as dicts (:class:`~volga.serving.codec.Row`) of the output entity's fields;
datetime fields (known from ``GET /features``, read once) are parsed back into aware UTC
datetimes, so a row equals what ``client.get_on_demand`` returns in-process.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from volga.api.types import to_utc
from volga.serving import codec
from volga.serving.errors import InternalError, ServingError, error_from_payload

Keys = Sequence[Mapping[str, Any]]


class OnDemandClient:
    """A client of ``POST /features`` (and ``GET /features``, ``GET /health``).

    >>> client = OnDemandClient("http://127.0.0.1:8000", timeout=2.0)
    >>> client.url
    'http://127.0.0.1:8000'
    """

    def __init__(self, url: str, *, timeout: float = 10.0, auth_token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"OnDemandClient: url must look like http://host:port, got {url!r}")
        if timeout <= 0:
            raise ValueError(f"OnDemandClient: timeout must be > 0 seconds, got {timeout!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.prefix = parsed.path.rstrip("/")
        self.url = f"http://{parsed.netloc}{self.prefix}"
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Host": parsed.netloc}
        if auth_token:
            self._headers["Authorization"] = f"Bearer {auth_token}"
        self._local = threading.local()
        self._pools: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._datetime_fields: dict[str, list[str]] = {}
        self._datetime_lists: dict[str, list[str]] = {}

    # -- the feature request ------------------------------------------------------------
    def request(
        self,
        target_features: Sequence[str],
        feature_keys: Mapping[str, Keys] | None = None,
        query_args: Mapping[str, Any] | None = None,
        udf_args: Mapping[str, Any] | None = None,
        *,
        keys: Keys | None = None,
        at: datetime.datetime | str | None = None,
    ) -> dict[str, list[dict[str, Any] | None]]:
        """``{feature: [row | None, ...]}``, one entry per key in order.

        ``feature_keys`` gives keys per feature; ``keys`` gives keys shared by all targets.
        ``query_args`` (``n``, ``start``, ``end``) and ``udf_args`` (function arguments)
        apply to every feature taking them, or per feature as ``{"user_spent": {"n": 5}}``.
        ``at``: the request time (a datetime, naive means UTC, or ISO 8601); default now.
        """
        body = _body(target_features, feature_keys, query_args, udf_args, keys, at)
        results = self._call("POST", "/features", body)["results"]
        missing = [name for name in results if name not in self._datetime_fields]
        if missing:
            self._learn(self._call("GET", "/features", None))
        return self._parse(results)

    async def arequest(
        self,
        target_features: Sequence[str],
        feature_keys: Mapping[str, Keys] | None = None,
        query_args: Mapping[str, Any] | None = None,
        udf_args: Mapping[str, Any] | None = None,
        *,
        keys: Keys | None = None,
        at: datetime.datetime | str | None = None,
    ) -> dict[str, list[dict[str, Any] | None]]:
        """The async twin of :meth:`request`."""
        body = _body(target_features, feature_keys, query_args, udf_args, keys, at)
        results = (await self._acall("POST", "/features", body))["results"]
        if any(name not in self._datetime_fields for name in results):
            self._learn(await self._acall("GET", "/features", None))
        return self._parse(results)

    def features(self) -> list[dict[str, Any]]:
        """What the server serves: each feature's kind, keys, output schema and arguments."""
        listing = self._call("GET", "/features", None)
        self._learn(listing)
        return listing["features"]

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health", None)

    # -- plumbing ----------------------------------------------------------------------
    def _learn(self, listing: dict[str, Any]) -> None:
        for feature in listing.get("features", []):
            fields = feature.get("output", {}).get("fields", {})
            self._datetime_fields[feature["name"]] = [n for n, t in fields.items() if t in ("datetime", "Optional[datetime]")]
            self._datetime_lists[feature["name"]] = [
                n for n, t in fields.items() if t in ("list[datetime]", "Optional[list[datetime]]")
            ]

    def _parse(self, results: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, rows in results.items():
            fields = self._datetime_fields.get(name) or []
            lists = self._datetime_lists.get(name) or []
            for i, row in enumerate(rows):
                if row is not None:
                    rows[i] = codec.parse_datetime_fields(codec.Row(row), fields, lists) if fields or lists else codec.Row(row)
        return results

    def _call(self, method: str, path: str, body: bytes | None) -> Any:
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            fresh = conn is None
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, self.prefix + path, body=body, headers=self._headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if response.will_close:
                    self._drop()
                break
            except TimeoutError:  # socket.timeout is TimeoutError since 3.10
                self._drop()
                raise TimeoutError(f"{method} {self.url}{path}: no answer within {self.timeout}s") from None
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self._drop()
                if fresh or attempt:  # a reused keep-alive connection may have been closed by the server: retry once
                    raise ConnectionError(f"{method} {self.url}{path}: {type(e).__name__}: {e}") from e
        return _decode(status, data)

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    async def _acall(self, method: str, path: str, body: bytes | None) -> Any:
        try:
            return await asyncio.wait_for(self._aexchange(method, path, body), self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{method} {self.url}{path}: no answer within {self.timeout}s") from None

    async def _aexchange(self, method: str, path: str, body: bytes | None) -> Any:
        pool = self._pools.setdefault(id(asyncio.get_running_loop()), [])
        head = [f"{method} {self.prefix}{path} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in self._headers.items()]
        head.append(f"Content-Length: {len(body or b'')}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        for attempt in (0, 1):
            reused = bool(pool)
            if reused:
                reader, writer = pool.pop()
            else:
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                except OSError as e:
                    raise ConnectionError(f"{method} {self.url}{path}: {type(e).__name__}: {e}") from e
            try:
                writer.write(message)
                status, headers, data = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                writer.close()
                if not reused or attempt:
                    raise ConnectionError(f"{method} {self.url}{path}: {type(e).__name__}: {e}") from e
                continue
            except BaseException:  # cancelled or timed out mid-exchange: the connection is unusable
                writer.close()
                raise
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                pool.append((reader, writer))
            return _decode(status, data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop()

    async def aclose(self) -> None:
        """Close the pooled connections of the running event loop."""
        for _, writer in self._pools.pop(id(asyncio.get_running_loop()), []):
            writer.close()

    def __enter__(self) -> OnDemandClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> OnDemandClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"OnDemandClient({self.url!r})"


def _body(
    target_features: Sequence[str],
    feature_keys: Mapping[str, Keys] | None,
    query_args: Mapping[str, Any] | None,
    udf_args: Mapping[str, Any] | None,
    keys: Keys | None,
    at: datetime.datetime | str | None = None,
) -> bytes:
    if isinstance(target_features, str):
        target_features = [target_features]
    body: dict[str, Any] = {"target_features": list(target_features)}
    for name, value in (("feature_keys", feature_keys), ("keys", keys), ("query_args", query_args), ("udf_args", udf_args)):
        if value is not None:
            body[name] = value
    if at is not None:
        body["at"] = at if isinstance(at, str) else to_utc(at).isoformat()
    return codec.dumps(body)


def _decode(status: int, data: bytes) -> Any:
    try:
        payload = codec.loads(data) if data else None
    except codec.JSONDecodeError:
        payload = data.decode("utf-8", "replace")
    if 200 <= status < 300:
        if payload is None or isinstance(payload, str):
            raise InternalError(f"HTTP {status} with a body that is not JSON: {str(payload)[:200]!r}")
        return payload
    raise error_from_payload(status, payload)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP response: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    data = await reader.readexactly(length) if length else b""
    return status, headers, data


__all__ = ["OnDemandClient", "ServingError"]
