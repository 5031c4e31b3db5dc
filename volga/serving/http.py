"""The feature server: a lean asyncio HTTP/1.1 server in front of the on-demand executor.

Endpoints: ``POST /features`` (compute features), ``GET /features`` (what is served),
``GET /health`` (never needs auth) and ``GET /openapi.json``. JSON in and out; errors are
``{"error": {"type", "status", "message", "field"}}`` (see :mod:`volga.serving.errors`).

Why not an ASGI framework: a request here is ~50 µs of feature work, and a framework
stack costs several times that per request in CPython, capping one process far below
5k requests/s. This server is one small asyncio protocol; the bytes are parsed by
``httptools`` (Node's llhttp, strict mode), which rejects every ambiguous framing
(duplicate or signed ``Content-Length``, obs-fold, bare LF, control bytes, unknown
versions, ``Transfer-Encoding`` with ``Content-Length``): any parse error is a 400 and the
connection is closed. Keep-alive, pipelining, ``Expect: 100-continue`` and chunked request
bodies are supported. Requests for the in-memory store are answered on the event loop
itself; requests for stores that do I/O, or for `async def` features, go to a thread pool so the
loop keeps accepting.
It uses uvloop when installed.

Limits and timeouts are :class:`ServerLimits`. The bearer token is checked as soon as a
request's head is complete, before its body is read. Stopping (``Server.stop()``, or
SIGTERM for ``volga serve``) drains: the listening socket closes, requests already
received are answered (``/health`` says ``draining`` meanwhile), then connections close.

Several processes can share one port (``reuse_port=True``, ``SO_REUSEPORT``): the kernel
spreads connections over them. That only makes sense with an online store they share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import inspect
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httptools

from volga.api.on_demand import OnDemandDef
from volga.serving import codec
from volga.serving.errors import (
    BadRequest,
    FeatureFunctionError,
    InternalError,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    describe,
)
from volga.serving.executor import OnDemandExecutor
from volga.serving.openapi import feature_listing, openapi_spec
from volga.storage import MemoryOnlineStore

log = logging.getLogger("volga.serving")

REQUEST_FIELDS = ("target_features", "feature_keys", "keys", "query_args", "udf_args", "at")
_REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable",
}
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
# Requests parsed but not yet answered, per connection, before we stop reading from it:
# a client pipelining without reading its answers is held to this many (plus one read).
_MAX_PENDING = 64
# After a final answer: how long the server keeps reading (and dropping) what the client sends.
_LINGER_S = 2.0

Response = tuple[int, bytes, bytes]  # status, body, extra header lines


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Limits and timeouts of the feature server (all per process).

    >>> ServerLimits(head_timeout_s=5.0).max_connections
    4096
    >>> ServerLimits(max_keys=0)
    Traceback (most recent call last):
    ...
    ValueError: ServerLimits.max_keys must be a positive number, got 0
    """

    max_head_bytes: int = 64 * 1024
    """Request line + headers, counted across reads; larger heads get 431 and a close."""
    max_body_bytes: int = 1 << 20
    """Request body (``Content-Length`` or chunked); larger gets 413 and a close."""
    max_keys: int = 10_000
    """Lookup keys in one request (``keys`` plus every ``feature_keys`` list); more gets 413."""
    head_timeout_s: float = 10.0
    """From a request's first byte to the end of its head; slower gets 408 and a close."""
    body_timeout_s: float = 30.0
    """From the end of the head to the end of the body; slower gets 408 and a close. Also
    how long a client may leave its answers unread before it is disconnected."""
    keep_alive_s: float = 60.0
    """An idle keep-alive connection is closed after this long."""
    max_connections: int = 4096
    """Open connections; one more is answered 503 and closed at once."""
    write_buffer_bytes: int = 256 * 1024
    """Unsent answer bytes per connection above which the server stops reading from it and
    stops answering its pipelined requests until the client has read them."""
    drain_timeout_s: float = 10.0
    """On stop: how long requests already received may take to be answered."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"ServerLimits.{field.name} must be a positive number, got {value!r}")


class ServingApp:
    """Routing, auth and JSON: everything but the sockets (so it is testable directly)."""

    def __init__(
        self,
        executor: OnDemandExecutor,
        *,
        auth_token: str | None = None,
        max_body_bytes: int | None = None,
        limits: ServerLimits | None = None,
        extra_routes: dict[str, Callable[[str, str, dict[str, str], bytes], Response]] | None = None,
        observer: Callable[[str, str, bytes, int, float], None] | None = None,
    ) -> None:
        if max_body_bytes is not None and (not isinstance(max_body_bytes, int) or max_body_bytes < 1):
            raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
        limits = limits or ServerLimits()
        if max_body_bytes is not None:
            limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
        self.executor = executor
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        self._token = auth_token.encode() if auth_token else None
        self.draining = False  # set while the server stops: /health answers 503
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._traced: set[str] = set()  # kinds of failure already logged with a traceback
        # Hooks for volga.metrics and volga.console: GET/POST under a path prefix go to a
        # handler (which checks auth itself: a browser sends a cookie, not a bearer header),
        # and observer(method, path, body, status, seconds) sees every request.
        self.extra_routes = dict(extra_routes or {})
        self.observer = observer

    @property
    def inline(self) -> bool:
        """True when requests are cheap enough to answer on the event loop: an in-memory store
        and no ``async def`` on-demand function (those wait on I/O, which must not hold the
        loop and every other connection). Definitions may be registered while serving."""
        if not isinstance(self.executor.store(), MemoryOnlineStore):
            return False
        return not any(
            isinstance(d, OnDemandDef) and inspect.iscoroutinefunction(d.fn) for d in self.executor.definitions.values()
        )

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    def bearer_checked(self, target: str) -> bool:
        """Whether a request for ``target`` needs the bearer token: all but ``/health`` and the
        extra routes (which check auth themselves)."""
        path = target.split("?", 1)[0]
        return path != "/health" and "/" + path[1:].split("/", 1)[0] not in self.extra_routes

    def unauthorized(self, headers: dict[str, str]) -> Response | None:
        """The 401 answer when ``headers`` lack the bearer token, else None. The scheme is
        case-insensitive (RFC 9110 §11.1); the token is compared in constant time."""
        if self._token is None:
            return None
        given = headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(" ").encode("latin-1"), self._token):
            return None
        error = Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>'" if not given else "wrong bearer token",
            field="Authorization",
        )
        return error.status, _error_body(error), b'WWW-Authenticate: Bearer realm="volga"\r\n'

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        if self.observer is None:
            return self._handle(method, path, headers, body)
        started = time.perf_counter()
        response = self._handle(method, path, headers, body)
        self.observer(method, path, body, response[0], time.perf_counter() - started)
        return response

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        try:
            return self._route(method, path, headers, body)
        except FeatureFunctionError as e:  # the user's function raised: say so, keep serving
            return self._failed(e, f"{e.feature}:{e.exception}", e.__cause__, method, path)
        except ServingError as e:
            return error_response(e)
        except Exception as e:  # a bug, not the request's fault: answer 500 and keep serving
            error = InternalError(f"{type(e).__name__}: {describe(str(e), limit=300)}")
            return self._failed(error, type(e).__name__, e, method, path)

    def _failed(self, error: ServingError, kind: str, cause: BaseException | None, method: str, path: str) -> Response:
        """A 500: one log line with a request id (a traceback only the first time per kind of
        failure, so a flood of bad requests cannot flood the log), the id in body and header."""
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        first = kind not in self._traced and len(self._traced) < 1000
        self._traced.add(kind)
        log.error("request %s: %s %s failed: %s", request_id, method, path, error, exc_info=cause if first else None)
        payload = error.payload()
        payload["message"] = f"{error.message} (request id {request_id}; see the server log)"
        payload["request_id"] = request_id
        return error.status, codec.dumps({"error": payload}), b"X-Request-Id: %s\r\n" % request_id.encode()

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        if self.extra_routes and path != "/features":
            prefix = "/" + path[1:].split("/", 1)[0].split("?", 1)[0]
            if prefix in self.extra_routes:
                return self.extra_routes[prefix](method, path, headers, body)
            path = path.split("?", 1)[0]
        if path == "/health":
            if method != "GET":
                return _not_allowed("GET")
            if self.draining:
                return 503, codec.dumps({"status": "draining", "pid": os.getpid()}), b""
            return 200, codec.dumps({"status": "ok", "pid": os.getpid(), "inline": self.inline}), b""
        denied = self.unauthorized(headers)
        if denied is not None:
            return denied
        if path == "/features":
            if method == "POST":
                return 200, self.features(body), b""
            if method == "GET":
                return 200, codec.dumps(feature_listing(self.executor.definitions)), b""
            return _not_allowed("GET, POST")
        if path == "/openapi.json":
            if method != "GET":
                return _not_allowed("GET")
            spec = openapi_spec(self.executor.definitions, auth=self._token is not None)
            return 200, codec.dumps(spec), b""
        missing = ServingError(
            f"no route {describe(method, 20)} {describe(path, 100)}; "
            "try POST /features, GET /features, GET /health, GET /openapi.json",
            field="path",
        )
        missing.status = 404
        return 404, _error_body(missing), b""

    def features(self, body: bytes) -> bytes:
        """``POST /features``: validate the body's shape, run the executor, encode results."""
        if not body:
            raise BadRequest('empty body: send a JSON object like {"target_features": [...], "keys": [...]}', field="body")
        try:
            request = codec.loads(body)
        except codec.JSONDecodeError as e:
            raise BadRequest(f"body is not valid JSON: {e}", field="body") from None
        if not isinstance(request, dict):
            raise BadRequest(f"body must be a JSON object with {list(REQUEST_FIELDS)}, got {type(request).__name__}", field="body")
        for name in request:
            if name not in REQUEST_FIELDS:
                raise BadRequest(f"unknown field {describe(name, 60)}; a request has {list(REQUEST_FIELDS)}", field=name[:60])
        if "target_features" not in request:
            raise BadRequest("target_features is required: a list of feature names", field="target_features")
        targets = request["target_features"]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise BadRequest(
                f"target_features must be a non-empty list of feature names, got {describe(targets)}", field="target_features"
            )
        self._check_key_count(request)
        results = self.executor.request(
            targets,
            request.get("feature_keys"),
            request.get("keys"),
            request.get("query_args"),
            request.get("udf_args"),
            _request_time(request.get("at")),
        )
        return codec.dumps({"results": results})

    def _check_key_count(self, request: dict[str, Any]) -> None:
        keys, per_feature = request.get("keys"), request.get("feature_keys")
        count = len(keys) if isinstance(keys, list) else 0
        if isinstance(per_feature, dict):
            count += sum(len(v) for v in per_feature.values() if isinstance(v, list))
        if count > self.limits.max_keys:
            raise PayloadTooLarge(
                f"{count} keys in one request; the server's limit is {self.limits.max_keys} (split the request)",
                field="keys" if isinstance(keys, list) else "feature_keys",
            )


def _request_time(at: Any) -> str | None:
    """``"at"``: the request time as an ISO 8601 string (absent or null: now)."""
    if at is not None and not isinstance(at, str):
        raise BadRequest(f"at must be an ISO 8601 datetime string (or null for now), got {type(at).__name__}", field="at")
    return at


def _error_body(error: ServingError) -> bytes:
    return codec.dumps({"error": error.payload()})


def error_response(error: ServingError) -> Response:
    return error.status, _error_body(error), b""


def _status_error(status: int, message: str, field: str) -> ServingError:
    error = PayloadTooLarge(message, field=field) if status == 413 else ServingError(message, field=field)
    error.status = status
    return error


def _not_allowed(allow: str) -> Response:
    error = ServingError(f"method not allowed; use {allow}", field="method")
    error.status = 405
    return 405, _error_body(error), f"Allow: {allow}\r\n".encode()


class _Connections:
    """The server's open connections (for deadlines, the connection cap and draining)."""

    def __init__(self) -> None:
        self.open: set[HttpProtocol] = set()
        self.pool: ThreadPoolExecutor | None = None
        self.closed_all = asyncio.Event()  # set when draining and the last connection closed

    def sweep(self, limits: ServerLimits) -> None:
        now = time.monotonic()
        for conn in list(self.open):
            conn.check_deadlines(now, limits)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (the answer is already queued)."""


_IDLE, _HEAD, _BODY = 0, 1, 2
# Request headers the server (and ServingApp.handle) reads, by their lower-case name.
_KEPT_HEADERS = {
    n.encode(): n for n in ("authorization", "content-length", "transfer-encoding", "expect", "connection", "cookie")
}


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests from the byte stream, answer them in order.

    Parsed requests wait in ``pending``; they are answered one at a time, in order, and
    only while the transport's write buffer is below its high-water mark. Reading stops
    while the client is not reading its answers or too many requests wait.
    """

    def __init__(self, app: ServingApp, connections: _Connections) -> None:
        self.app = app
        self.limits = app.limits
        self.max_head_bytes = app.limits.max_head_bytes
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[str, str, dict[str, str], bytes, bool] | Response] = deque()
        self.busy = False  # a request is being answered off the loop; later ones wait
        self.write_paused_at: float | None = None
        self.reading = True
        self.closing = False  # no more requests will be read (a fatal answer is queued)
        self.lingering = False  # the last answer is sent: reading and dropping input until close
        self.last_active = time.monotonic()
        # the request being parsed
        self.phase = _IDLE
        self.phase_started = 0.0
        self.head_bytes = 0  # bytes of reads that arrived while the head was incomplete
        self.head_tally = 0  # bytes of URL and header lines seen by the parser callbacks
        self.completed_in_read = False
        self.url: list[bytes] = []
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_bytes = 0

    # -- connection events -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.connections.open) >= self.limits.max_connections:
            # over the cap: answer at once and close, without reading anything
            error = _status_error(503, f"the server has its maximum of {self.limits.max_connections} connections open", "connection")
            self.closing = True
            self._write((503, _error_body(error), b"Retry-After: 1\r\n"), keep_alive=False)
            return
        self.connections.open.add(self)
        self.transport.set_write_buffer_limits(high=self.limits.write_buffer_bytes)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.open.discard(self)
        self.transport = None
        self.pending.clear()
        if self.app.draining and not self.connections.open:
            self.connections.closed_all.set()

    def pause_writing(self) -> None:  # the client is not reading its answers
        self.write_paused_at = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused_at = None
        self._process()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.completed_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade request: answered as a plain request, then the connection closes
            self._close_after_pending()
        except httptools.HttpParserCallbackError:
            if not self.closing:  # a callback failed for a reason other than _Stop: a bug here
                log.exception("feature server: parser callback failed")
                self._fatal(400, "malformed HTTP request", "request")
        except httptools.HttpParserError as e:
            self._fatal(400, f"malformed HTTP request: {e}", "request")
        else:
            if self.phase == _HEAD and not self.completed_in_read:
                # the whole read belongs to this head (nothing else completed in it; a head that
                # began in the read is reset to 0 by on_message_begin first)
                self.head_bytes += len(data)
                if self.head_bytes > self.limits.max_head_bytes:
                    self._fatal(431, f"request head larger than {self.limits.max_head_bytes} bytes", "headers")
        self._process()

    # -- parser callbacks (called from feed_data) ----------------------------------------
    def on_message_begin(self) -> None:
        self.phase = _HEAD
        self.phase_started = time.monotonic()
        self.head_bytes = 0
        self.head_tally = 0
        self.url = []
        self.headers = {}
        self.body = []
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.head_tally += len(url)
        if self.head_tally > self.limits.max_head_bytes:
            self._stop(431, f"request head larger than {self.limits.max_head_bytes} bytes", "headers")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_tally += len(name) + len(value) + 4
        if self.head_tally > self.max_head_bytes:
            self._stop(431, f"request head larger than {self.max_head_bytes} bytes", "headers")
        kept = _KEPT_HEADERS.get(name.lower())
        if kept is not None:  # (only the headers the server reads: this runs for every header)
            self.headers[kept] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._stop(400, f"unsupported HTTP version {version!r}; send HTTP/1.1", "request line")
        headers = self.headers
        length = headers.get("content-length")  # llhttp checked: digits only, at most one
        if length is not None and int(length) > self.limits.max_body_bytes:
            self._stop(413, f"body of {length} bytes is larger than the limit of {self.limits.max_body_bytes} bytes", "body")
        if self.app.auth_required and self.app.bearer_checked(b"".join(self.url).decode("latin-1")):
            denied = self.app.unauthorized(headers)
            if denied is not None:  # before reading the body
                self._stop_with(denied)
        self.phase = _BODY
        self.phase_started = time.monotonic()
        if (
            (length != "0" if length is not None else "transfer-encoding" in headers)
            and headers.get("expect", "").lower() == "100-continue"
            and not self.pending
            and not self.busy
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:  # chunked bodies: no length up front
            self._stop(413, f"body larger than the limit of {self.limits.max_body_bytes} bytes", "body")
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        target = b"".join(self.url).decode("latin-1")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        keep_alive = self.parser.should_keep_alive() and not self.app.draining
        path = target if self.app.extra_routes else target.split("?", 1)[0]  # extra routes read the query
        self.pending.append((method, path, self.headers, body, keep_alive))
        self.phase = _IDLE
        self.completed_in_read = True
        self.last_active = time.monotonic()

    # -- answering -------------------------------------------------------------------------
    def _process(self) -> None:
        pending = self.pending
        while pending and not self.busy and self.write_paused_at is None and self.transport is not None:
            item = pending.popleft()
            if len(item) == 3:  # a fatal answer: the last thing this connection says
                self._write(item, keep_alive=False)
                return
            method, path, headers, body, keep_alive = item
            if self.app.draining and not pending and self.phase == _IDLE:
                keep_alive = False  # the last request of a draining connection
            if path == "/features" and method == "POST" and not self.app.inline:
                self.busy = True
                asyncio.get_running_loop().create_task(self._off_loop(method, path, headers, body, keep_alive))
                return
            self._write(self.app.handle(method, path, headers, body), keep_alive)
        self._update_reading()
        if self.app.draining and not pending and not self.busy and self.phase == _IDLE and self.transport is not None:
            self.transport.close()

    async def _off_loop(self, method: str, path: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self.connections.pool, self.app.handle, method, path, headers, body)
        finally:
            self.busy = False
        self._write(response, keep_alive)
        self._process()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.lingering:  # (a lingering close reads until it ends)
            return
        want = not self.closing and self.write_paused_at is None and len(self.pending) < _MAX_PENDING
        if want != self.reading:
            self.reading = want
            if want:
                if self.phase != _IDLE:  # the client could not send while we were not reading
                    self.phase_started = time.monotonic()
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _write(self, response: Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        status, body, extra = response
        if status == 200 and not extra and keep_alive:
            transport.write(b"%s%d\r\n\r\n%s" % (_OK_HEAD, len(body), body))
        else:
            head = b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n%s%s\r\n" % (
                status,
                _REASONS.get(status, "Error").encode(),
                b"" if extra.startswith(b"Content-Type:") else b"Content-Type: application/json\r\n",
                len(body),
                extra,
                b"" if keep_alive else b"Connection: close\r\n",
            )
            transport.write(head + body)
            if not keep_alive:
                self.closing = True
                self._linger(transport)
        self.last_active = time.monotonic()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after the last answer without losing it: send FIN after the answer, then read
        and discard what the client still sends for up to ``_LINGER_S``. Closing with unread
        input makes the kernel reset the connection (RST), which can destroy the answer before
        the client reads it (RFC 9112 §9.6)."""
        if self.lingering:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        if not self.reading:
            self.reading = True
            transport.resume_reading()
        asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    # -- failures ----------------------------------------------------------------------------
    def _fatal(self, status: int, message: str, field: str) -> None:
        """Queue the answer to a request we cannot read further; the connection then closes."""
        self._fatal_with((status, _error_body(_status_error(status, message, field)), b""))

    def _fatal_with(self, response: Response) -> None:
        if self.closing:
            return
        self.closing = True
        self.phase = _IDLE
        self.body = []
        self.pending.append(response)
        self._update_reading()

    def _stop(self, status: int, message: str, field: str) -> None:
        self._fatal(status, message, field)
        raise _Stop

    def _stop_with(self, response: Response) -> None:
        self._fatal_with(response)
        raise _Stop

    def _close_after_pending(self) -> None:
        self.closing = True
        if self.pending and len(self.pending[-1]) == 5:
            method, path, headers, body, _ = self.pending[-1]
            self.pending[-1] = (method, path, headers, body, False)
        self._update_reading()

    def check_deadlines(self, now: float, limits: ServerLimits) -> None:
        """Called about every quarter of the shortest timeout by the server's sweep."""
        transport = self.transport
        if transport is None:
            return
        if self.write_paused_at is not None and now - self.write_paused_at > limits.body_timeout_s:
            transport.abort()  # it has not read its answers for that long: give up on it
        elif self.closing or not self.reading:  # (its deadlines do not run while we do not read)
            return
        elif self.phase == _HEAD and now - self.phase_started > limits.head_timeout_s:
            self._fatal(408, f"request head not received within {limits.head_timeout_s:g}s", "headers")
            self._process()
        elif self.phase == _BODY and now - self.phase_started > limits.body_timeout_s:
            self._fatal(408, f"request body not received within {limits.body_timeout_s:g}s", "body")
            self._process()
        elif self.phase == _IDLE and not self.pending and not self.busy and now - self.last_active > limits.keep_alive_s:
            transport.close()

    def drain(self) -> None:
        """The server is stopping: close now if idle, else after answering what was received."""
        if self.transport is None:
            return
        if self.phase == _IDLE and not self.pending and not self.busy:
            self.transport.close()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise OSError("several workers on one port need SO_REUSEPORT, which this platform lacks")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (measurably faster here), else asyncio's."""
    if os.environ.get("VOLGA_NO_UVLOOP") != "1":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _warn_if_few_descriptors(limits: ServerLimits) -> None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and soft < limits.max_connections + 64:
        log.warning(
            "feature server: max_connections=%d but this process may open only %d files (ulimit -n); "
            "connections beyond that fail to be accepted instead of getting 503", limits.max_connections, soft,
        )


async def _run(
    app: ServingApp, sock: socket.socket, stop: asyncio.Event, ready: Callable[[], None], connections: _Connections
) -> None:
    loop = asyncio.get_running_loop()
    limits = app.limits
    # Threads start on first use: an inline server (in-memory store, no async features) never
    # starts one, but a feature registered later may need them.
    pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="volga-serve")
    connections.pool = pool
    server = await loop.create_server(lambda: HttpProtocol(app, connections), sock=sock)
    _warn_if_few_descriptors(limits)
    every = min(max(min(limits.head_timeout_s, limits.body_timeout_s, limits.keep_alive_s) / 4, 0.02), 1.0)

    def sweep() -> None:
        connections.sweep(limits)
        handle[0] = loop.call_later(every, sweep)

    handle = [loop.call_later(every, sweep)]
    ready()
    try:
        await stop.wait()
        # drain: stop accepting, answer what was received, then close
        app.draining = True
        server.close()
        for conn in list(connections.open):
            conn.drain()
        if connections.open:
            try:
                await asyncio.wait_for(connections.closed_all.wait(), limits.drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("feature server: %d connections still busy after %gs of draining; closing them",
                            len(connections.open), limits.drain_timeout_s)
    finally:
        handle[0].cancel()
        server.close()
        for conn in list(connections.open):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()
        if pool is not None:
            pool.shutdown(wait=False)


class Server:
    """A feature server running in a background thread (see ``Client.serve``)."""

    def __init__(self, app: ServingApp, sock: socket.socket) -> None:
        self.app = app
        address = sock.getsockname()
        self.host, self.port = address[0], address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self._loop = new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(sock,), name=f"volga-serve:{self.port}", daemon=True)
        self._connections = _Connections()  # read by tests: the state of each open connection

    @property
    def limits(self) -> ServerLimits:
        return self.app.limits

    @property
    def draining(self) -> bool:
        """True once ``stop()`` began and until the server has stopped."""
        return self.app.draining and self.running

    def _main(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        try:
            self._loop.run_until_complete(_run(self.app, sock, self._stop, self._ready.set, self._connections))
        except BaseException as e:  # reported by start()/stop()
            self._error = e
        finally:
            self._ready.set()
            self._loop.close()
            sock.close()

    def start(self) -> Server:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop: close the listening socket, answer requests already received
        (within ``limits.drain_timeout_s``), close every connection, wait for the thread."""
        if self._thread.is_alive() and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
            self._thread.join(self.limits.drain_timeout_s + 5.0 if timeout is None else timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<volga feature server {self.url}{'' if self.running else ' (stopped)'}>"


def serve_in_thread(
    executor: OnDemandExecutor,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    auth_token: str | None = None,
    max_body_bytes: int | None = None,
    reuse_port: bool = False,
    limits: ServerLimits | None = None,
    **hooks: Any,
) -> Server:
    """Start serving ``executor``'s features from a background thread (port 0 = any free port;
    ``reuse_port`` lets several processes listen on one port, as ``volga serve --ray`` does;
    ``max_body_bytes`` overrides ``limits.max_body_bytes``; ``hooks`` are ``extra_routes`` and
    ``observer``, see :class:`ServingApp`)."""
    app = ServingApp(executor, auth_token=auth_token, max_body_bytes=max_body_bytes, limits=limits, **hooks)
    return Server(app, _bind(host, port, reuse_port=reuse_port)).start()


def serve_forever(
    executor: OnDemandExecutor,
    *,
    host: str,
    port: int,
    auth_token: str | None = None,
    max_body_bytes: int | None = None,
    reuse_port: bool = False,
    limits: ServerLimits | None = None,
    on_ready: Callable[[str], None] | None = None,
    **hooks: Any,
) -> None:
    """Serve in this thread until SIGINT/SIGTERM, then drain (the ``volga serve`` worker loop).
    A second signal while draining stops at once."""
    import signal

    app = ServingApp(executor, auth_token=auth_token, max_body_bytes=max_body_bytes, limits=limits, **hooks)  # extra_routes, observer
    sock = _bind(host, port, reuse_port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    main = loop.create_task(_run(app, sock, stop, lambda: on_ready(url) if on_ready else None, _Connections()))

    def on_signal() -> None:
        if stop.is_set():
            main.cancel()  # second signal: no more draining
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        loop.run_until_complete(main)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
        sock.close()
