"""The feature server: a lean asyncio HTTP/1.1 server in front of the on-demand executor.

Endpoints: ``POST /features`` (compute features), ``GET /features`` (what is served),
``GET /health`` (never needs auth) and ``GET /openapi.json``. JSON in and out; errors are
``{"error": {"type", "status", "message", "field"}}`` (see :mod:`volga.serving.errors`).

Why not an ASGI framework: a request here is ~50 µs of feature work, and a framework
stack costs several times that per request in CPython, capping one process far below
5k requests/s. This server parses HTTP/1.1 by hand (Content-Length bodies, keep-alive,
pipelining, ``Expect: 100-continue``; no chunked request bodies), answers requests for
the in-memory store on the event loop itself, and hands requests for stores that do I/O
to a thread pool so the loop keeps accepting. It uses uvloop when installed.

Several processes can share one port (``reuse_port=True``, ``SO_REUSEPORT``): the kernel
spreads connections over them. That only makes sense with an online store they share.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from volga.serving import codec
from volga.serving.errors import BadRequest, FeatureFunctionError, InternalError, PayloadTooLarge, ServingError, Unauthorized
from volga.serving.executor import OnDemandExecutor
from volga.serving.openapi import feature_listing, openapi_spec
from volga.storage import MemoryOnlineStore

log = logging.getLogger("volga.serving")

MAX_HEAD_BYTES = 64 * 1024
KEEP_ALIVE_S = 60.0
REQUEST_FIELDS = ("target_features", "feature_keys", "keys", "query_args", "udf_args", "at")
_REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented",
}
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "

Response = tuple[int, bytes, bytes]  # status, body, extra header lines


class ServingApp:
    """Routing, auth and JSON: everything but the sockets (so it is testable directly)."""

    def __init__(
        self, executor: OnDemandExecutor, *, auth_token: str | None = None, max_body_bytes: int = 1 << 20,
        extra_routes: dict[str, Callable[[str, str, dict[str, str], bytes], Response]] | None = None,
        observer: Callable[[str, str, bytes, int, float], None] | None = None,
    ) -> None:
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
        self.executor = executor
        # Hooks for volga.metrics and volga.console: GET/POST under a path prefix go to a
        # handler (which checks auth itself: a browser sends a cookie, not a bearer header),
        # and observer(method, path, body, status, seconds) sees every request.
        self.extra_routes = dict(extra_routes or {})
        self.observer = observer
        self.max_body_bytes = max_body_bytes
        self._expected = f"Bearer {auth_token}".encode() if auth_token else None

    @property
    def inline(self) -> bool:
        """True when requests are cheap enough to answer on the event loop (in-memory store)."""
        return isinstance(self.executor.store(), MemoryOnlineStore)

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
        except ServingError as e:
            if isinstance(e, FeatureFunctionError):
                log.error("%s", e, exc_info=e.__cause__)
            return error_response(e)
        except Exception as e:  # a bug, not the request's fault: answer 500 and keep serving
            log.exception("feature server: %s %s failed", method, path)
            return error_response(InternalError(f"{type(e).__name__}: {e}"))

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        if self.extra_routes and path != "/features":
            prefix = "/" + path[1:].split("/", 1)[0].split("?", 1)[0]
            if prefix in self.extra_routes:
                return self.extra_routes[prefix](method, path, headers, body)
            path = path.split("?", 1)[0]
        if path == "/health":
            if method != "GET":
                return _not_allowed("GET")
            return 200, codec.dumps({"status": "ok", "pid": os.getpid(), "inline": self.inline}), b""
        if self._expected is not None:
            given = headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, self._expected):
                error = Unauthorized(
                    "missing bearer token: send 'Authorization: Bearer <token>'" if not given else "wrong bearer token",
                    field="Authorization",
                )
                return error.status, _error_body(error), b'WWW-Authenticate: Bearer realm="volga"\r\n'
        if path == "/features":
            if method == "POST":
                return 200, self.features(body), b""
            if method == "GET":
                return 200, codec.dumps(feature_listing(self.executor.definitions)), b""
            return _not_allowed("GET, POST")
        if path == "/openapi.json":
            if method != "GET":
                return _not_allowed("GET")
            spec = openapi_spec(self.executor.definitions, auth=self._expected is not None)
            return 200, codec.dumps(spec), b""
        missing = ServingError(
            f"no route {method} {path}; try POST /features, GET /features, GET /health, GET /openapi.json", field="path"
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
                raise BadRequest(f"unknown field {name!r}; a request has {list(REQUEST_FIELDS)}", field=name)
        if "target_features" not in request:
            raise BadRequest("target_features is required: a list of feature names", field="target_features")
        targets = request["target_features"]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise BadRequest(f"target_features must be a non-empty list of feature names, got {targets!r}", field="target_features")
        results = self.executor.request(
            targets,
            request.get("feature_keys"),
            request.get("keys"),
            request.get("query_args"),
            request.get("udf_args"),
            _request_time(request.get("at")),
        )
        return codec.dumps({"results": results})


def _request_time(at: Any) -> str | None:
    """``"at"``: the request time as an ISO 8601 string (absent or null: now)."""
    if at is not None and not isinstance(at, str):
        raise BadRequest(f"at must be an ISO 8601 datetime string (or null for now), got {type(at).__name__}", field="at")
    return at


def _error_body(error: ServingError) -> bytes:
    return codec.dumps({"error": error.payload()})


def error_response(error: ServingError) -> Response:
    return error.status, _error_body(error), b""


def _not_allowed(allow: str) -> Response:
    error = ServingError(f"method not allowed; use {allow}", field="method")
    error.status = 405
    return 405, _error_body(error), f"Allow: {allow}\r\n".encode()


class _Connections:
    """The server's open connections (for shutdown and the keep-alive sweep)."""

    def __init__(self, pool: ThreadPoolExecutor | None) -> None:
        self.open: set[HttpProtocol] = set()
        self.pool = pool


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests from the byte stream, answer them in order."""

    def __init__(self, app: ServingApp, connections: _Connections) -> None:
        self.app = app
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered off the loop; later ones wait in the buffer
        self.continued = False
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.open.discard(self)
        self.transport = None

    def pause_writing(self) -> None:  # the client is not reading its answers: stop reading its requests
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.busy:
            request = self._parse()
            if request is None:
                return
            method, path, headers, body, keep_alive = request
            if path == "/features" and method == "POST" and not self.app.inline:
                self.busy = True
                asyncio.get_running_loop().create_task(self._off_loop(method, path, headers, body, keep_alive))
                return
            self._send(self.app.handle(method, path, headers, body), keep_alive)

    async def _off_loop(self, method: str, path: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self.connections.pool, self.app.handle, method, path, headers, body)
        finally:
            self.busy = False
        self._send(response, keep_alive)
        self._process()

    def _parse(self) -> tuple[str, str, dict[str, str], bytes, bool] | None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self._fail(431, f"request head larger than {MAX_HEAD_BYTES} bytes", "headers")
            return None
        lines = buffer[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._fail(400, f"malformed request line {lines[0][:100]!r}", "request line")
            return None
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._fail(400, f"malformed header line {line[:100]!r}", "headers")
                return None
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            self._fail(501, "chunked request bodies are not supported; send Content-Length", "Transfer-Encoding")
            return None
        try:
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self._fail(400, f"bad Content-Length {headers.get('content-length')!r}", "Content-Length")
            return None
        if length > self.app.max_body_bytes:
            self._fail(413, f"body of {length} bytes is larger than the limit of {self.app.max_body_bytes} bytes", "body")
            return None
        total = end + 4 + length
        if len(buffer) < total:
            if not self.continued and headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.continued = True
            return None
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        self.continued = False
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        path = target if self.app.extra_routes else target.split("?", 1)[0]  # extra routes read the query
        return method, path, headers, body, keep_alive

    def _send(self, response: Response, keep_alive: bool) -> None:
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
                transport.close()
        self.last_active = time.monotonic()

    def _fail(self, status: int, message: str, field: str) -> None:
        """Answer a request we cannot read further, then close the connection."""
        error = PayloadTooLarge(message, field=field) if status == 413 else ServingError(message, field=field)
        error.status = status
        self.buffer.clear()
        self._send((status, _error_body(error), b""), keep_alive=False)


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


async def _run(app: ServingApp, sock: socket.socket, stop: asyncio.Event, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    pool = None if app.inline else ThreadPoolExecutor(max_workers=16, thread_name_prefix="volga-serve")
    connections = _Connections(pool)
    server = await loop.create_server(lambda: HttpProtocol(app, connections), sock=sock)

    def sweep() -> None:  # close keep-alive connections idle for too long
        cutoff = time.monotonic() - KEEP_ALIVE_S
        for conn in list(connections.open):
            if not conn.busy and conn.last_active < cutoff and conn.transport is not None:
                conn.transport.close()
        handle[0] = loop.call_later(KEEP_ALIVE_S / 4, sweep)

    handle = [loop.call_later(KEEP_ALIVE_S / 4, sweep)]
    ready()
    try:
        await stop.wait()
    finally:
        handle[0].cancel()
        server.close()
        for conn in list(connections.open):
            if conn.transport is not None:
                conn.transport.close()
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

    def _main(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        try:
            self._loop.run_until_complete(_run(self.app, sock, self._stop, self._ready.set))
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

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; wait for the thread to end."""
        if self._thread.is_alive() and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
            self._thread.join(timeout)

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
    max_body_bytes: int = 1 << 20,
    reuse_port: bool = False,
    **hooks: Any,
) -> Server:
    """Start serving ``executor``'s features from a background thread (port 0 = any free port;
    ``reuse_port`` lets several processes listen on one port, as ``volga serve --ray`` does)."""
    app = ServingApp(executor, auth_token=auth_token, max_body_bytes=max_body_bytes, **hooks)  # extra_routes, observer
    return Server(app, _bind(host, port, reuse_port=reuse_port)).start()


def serve_forever(
    executor: OnDemandExecutor,
    *,
    host: str,
    port: int,
    auth_token: str | None = None,
    max_body_bytes: int = 1 << 20,
    reuse_port: bool = False,
    on_ready: Callable[[str], None] | None = None,
    **hooks: Any,
) -> None:
    """Serve in this thread until SIGINT/SIGTERM (the ``volga serve`` worker loop)."""
    import signal

    app = ServingApp(executor, auth_token=auth_token, max_body_bytes=max_body_bytes, **hooks)  # extra_routes, observer
    sock = _bind(host, port, reuse_port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(_run(app, sock, stop, lambda: on_ready(url) if on_ready else None))
    finally:
        loop.close()
        sock.close()
