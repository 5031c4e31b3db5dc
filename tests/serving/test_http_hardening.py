"""The feature server from raw sockets, as an attacker or a broken client would talk to it:
request smuggling shapes, limits, slow heads and bodies, pipelining without reading, the
connection cap, auth before the body, deep nesting, 500s with a request id, draining.

Each server here runs with small limits so that every deadline passes in about a second;
tests wait on the server's answer (or its close) with a socket timeout that fails
loudly, never on a sleep.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import httptools
import pytest

from volga.serving.http import _MAX_PENDING, HttpProtocol, ServerLimits, ServingApp, _Connections

pytestmark = pytest.mark.integration

TOKEN = "s3cret"
AUTH = b"Authorization: Bearer s3cret\r\n"
SMALL = ServerLimits(
    max_head_bytes=16 * 1024, max_body_bytes=64 * 1024, max_keys=10, head_timeout_s=1.0, body_timeout_s=1.0,
    keep_alive_s=1.0, drain_timeout_s=5.0,
)


class Reply:
    """One parsed HTTP response (parsing it checks that it is well-formed)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = b""
        self.status = 0

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Replies:
    def __init__(self) -> None:
        self.done: list[Reply] = []
        self.current = Reply()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.status = self.parser.get_status_code()
        if self.current.status != 100:
            self.done.append(self.current)
        self.current = Reply()


def parse_replies(data: bytes) -> list[Reply]:
    """Every complete response in ``data``; raises if the bytes are not well-formed HTTP."""
    replies = _Replies()
    replies.parser.feed_data(data)
    return replies.done


def connect(server: Any, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or the socket timeout (False)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def exchange(server: Any, data: bytes, timeout: float = 5.0) -> tuple[list[Reply], bool]:
    """Send ``data``; return the responses and whether the server closed the connection."""
    with connect(server, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: read its answer
        received, closed = read_until_closed(sock)
    return parse_replies(received), closed


def read_replies(sock: socket.socket, count: int) -> list[Reply]:
    """Read until ``count`` responses arrived (socket timeout fails the test)."""
    replies = _Replies()
    while len(replies.done) < count:
        chunk = sock.recv(65536)
        assert chunk, f"server closed after {len(replies.done)} of {count} responses"
        replies.parser.feed_data(chunk)
    return replies.done


def features_request(body: bytes, extra: bytes = b"", close: bool = True) -> bytes:
    return (
        b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + extra
        + b"Content-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close else b"")
        + body
    )


def body_for(*users: str) -> bytes:
    return json.dumps({"target_features": ["user_stats"], "keys": [{"user_id": u} for u in users]}).encode()


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def start(served):
    """Start servers with the given limits on free ports; stop them after the test."""
    running = []

    def make(limits: ServerLimits = SMALL, **options: Any) -> Any:
        server = served.serve(port=0, auth_token=TOKEN, limits=limits, **options)
        running.append(server)
        return server

    yield make
    for server in running:
        server.stop(timeout=10)


@pytest.fixture
def hard(start):
    return start()


def assert_rejected(replies: list[Reply], closed: bool, status: int, *words: str) -> None:
    assert [r.status for r in replies] == [status], f"expected exactly one {status}, got {replies}"
    assert closed, "the server must close the connection after this answer"
    assert replies[0].headers.get("connection") == "close"
    message = replies[0].json["error"]["message"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# -- framing: every ambiguous shape is a 400 and a close, and what follows is never run ------

AFTER = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # a request hidden behind the bad framing

SMUGGLING = {
    "two different Content-Length": b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 36\r\n\r\n{}",
    "two equal Content-Length": b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "Content-Length list": b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
    "obs-fold continuation with a colon": b"POST /features HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Content-Length: 36\r\n\r\n",
    "bare LF hides a header": b"POST /features HTTP/1.1\r\nHost: x\r\nX-A: a\nContent-Length: 36\r\n\r\n",
    "bare LF line endings": b"GET /health HTTP/1.1\nHost: x\n\n",
    "signed Content-Length": b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
    "underscore in Content-Length": b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 0_2\r\n\r\n{}",
    "Transfer-Encoding with Content-Length": (
        b"POST /features HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding not chunked": b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: gzip\r\n\r\n{}",
    "chunked not last": b"POST /features HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "space before the colon": b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}",
    "HTTP/1.7": b"GET /health HTTP/1.7\r\nHost: x\r\n\r\n",
    "no version (HTTP/0.9)": b"GET /health\r\n\r\n",
    "NUL in a header": b"GET /health HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    "CR in a header": b"GET /health HTTP/1.1\r\nHost: x\ry\r\n\r\n",
    "control byte in the method": b"G\x01T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage": b"NONSENSE\r\n\r\n",
    "bad chunk size": b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("shape", list(SMUGGLING))
def test_ambiguous_framing_is_400_and_close(hard, shape):
    replies, closed = exchange(hard, SMUGGLING[shape] + AFTER)
    assert_rejected(replies, closed, 400)


def test_chunked_body_is_read(hard, known_users):
    body = body_for(known_users[0])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    request = b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked
    replies, closed = exchange(hard, request)
    assert [r.status for r in replies] == [200] and closed
    assert replies[0].json["results"]["user_stats"][0]["user_id"] == known_users[0]


# -- limits ----------------------------------------------------------------------------------

def test_head_over_limit_in_one_write_is_431(hard):
    long_line = b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n"
    assert_rejected(*exchange(hard, long_line), 431, "request head larger than 16384 bytes")
    many = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(3000)) + b"\r\n"
    assert_rejected(*exchange(hard, many), 431)


def test_default_limits_refuse_the_issues_heads(server):
    """The shapes from issue 15 against default limits (64 KiB): both used to get 200."""
    long_line = b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n"
    assert_rejected(*exchange(server, long_line), 431, "65536")
    many = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(10_000)) + b"\r\n"
    assert_rejected(*exchange(server, many), 431)


def test_head_over_limit_across_reads_is_431(hard):
    with connect(hard) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        try:
            for i in range(48):  # 48 KiB of header lines, 1 KiB per write, never ending the head
                sock.sendall(b"X-%02d: " % i + b"a" * 1018 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, closed = read_until_closed(sock)
    # without counting across reads it would wait for the head until the 408 deadline
    assert_rejected(parse_replies(received), closed, 431)


def test_head_just_under_limit_and_big_pipelined_body_are_served(hard, known_users):
    near = b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 15_000 + b"\r\n\r\n"
    replies, _ = exchange(hard, near + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert [r.status for r in replies] == [200, 200]
    # a 60 KB body then another request in one write: the next head is not charged for the body
    big = json.dumps({"target_features": ["user_stats"], "keys": [{"user_id": known_users[0]}], "udf_args": {}}).encode()
    big = big[:-1] + b" " * (60_000 - len(big)) + b"}"
    replies, closed = exchange(hard, features_request(big, close=False) + features_request(body_for(known_users[1])))
    assert [r.status for r in replies] == [200, 200] and closed


def test_body_over_limit_is_413_before_the_body_is_sent(hard):
    head = b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 10000000\r\n\r\n"
    assert_rejected(*exchange(hard, head), 413, "10000000 bytes is larger than the limit of 65536")
    chunk = b"a" * 30_000
    chunked = b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))
    assert_rejected(*exchange(hard, chunked), 413, "limit of 65536")


def test_too_many_keys_is_413(hard, known_users):
    replies, _ = exchange(hard, features_request(body_for(*[known_users[0]] * 11)))
    assert [r.status for r in replies] == [413]
    assert replies[0].json["error"]["field"] == "keys" and "11 keys" in replies[0].json["error"]["message"]
    per_feature = json.dumps({"target_features": ["user_stats"], "feature_keys": {"user_stats": [{"user_id": "1"}] * 11}})
    replies, _ = exchange(hard, features_request(per_feature.encode()))
    assert [r.status for r in replies] == [413] and replies[0].json["error"]["field"] == "feature_keys"
    replies, _ = exchange(hard, features_request(body_for(*[known_users[0]] * 10)))
    assert [r.status for r in replies] == [200]


# -- deadlines ---------------------------------------------------------------------------------

def test_slow_head_is_408(hard):
    replies, closed = exchange(hard, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert_rejected(replies, closed, 408, "request head not received within 1s")


def test_trickled_head_is_408_although_bytes_keep_coming(hard):
    """Progress does not reset the head deadline: one header line every 20 ms still gets 408."""
    with connect(hard) as sock:
        sock.settimeout(0.02)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        received, deadline = b"", time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X-A: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
    assert [r.status for r in parse_replies(received)] == [408]


def test_slow_body_is_408(hard):
    head = b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 100\r\n\r\n" + b"{" * 10
    assert_rejected(*exchange(hard, head), 408, "request body not received within 1s")


def test_idle_keep_alive_connection_is_closed(hard):
    with connect(hard) as sock:
        sock.sendall(HEALTH)
        data, closed = read_until_closed(sock)
    assert [r.status for r in parse_replies(data)] == [200] and closed


# -- auth ----------------------------------------------------------------------------------------

def test_auth_is_checked_before_the_body(hard):
    """No token, a 60 KB body announced and never sent: 401 at once (not a 408 after the body deadline)."""
    head = b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
    replies, closed = exchange(hard, head)
    assert_rejected(replies, closed, 401, "missing bearer token")
    assert replies[0].headers["www-authenticate"] == 'Bearer realm="volga"'


def test_only_health_is_open_without_the_token(hard):
    for target in (b"/health?probe=1", b"/health"):
        replies, _ = exchange(hard, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % target)
        assert [r.status for r in replies] == [200]
    for target in (b"/healthz", b"/health/../features", b"/features"):
        replies, closed = exchange(hard, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % target)
        assert [r.status for r in replies] == [401] and closed, target


@pytest.mark.parametrize("value, status", [
    (b"Bearer s3cret", 200), (b"bearer s3cret", 200), (b"BEARER s3cret", 200), (b"Bearer   s3cret", 200),
    (b"Bearer s3cre", 401), (b"Bearer s3cret2", 401), (b"Basic s3cret", 401), (b"Bearers3cret", 401), (b"s3cret", 401),
])
def test_bearer_scheme_is_case_insensitive(hard, known_users, value, status):
    body = body_for(known_users[0])
    request = b"POST /features HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        value, len(body), body)
    replies, _ = exchange(hard, request)
    assert [r.status for r in replies] == [status]


# -- connection cap and back-pressure ---------------------------------------------------------

def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def test_connections_over_the_cap_get_503(start):
    server = start(ServerLimits(max_connections=3))
    held = [connect(server) for _ in range(3)]
    try:
        for sock in held:  # each is open and served
            sock.sendall(HEALTH)
            assert read_replies(sock, 1)[0].status == 200
        replies, closed = exchange(server, HEALTH)
        assert_rejected(replies, closed, 503, "maximum of 3 connections")
        assert replies[0].headers["retry-after"] == "1"
        held.pop().close()
        wait_for(lambda: len(server._connections.open) == 2, "the server to see the close")
        replies, _ = exchange(server, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert [r.status for r in replies] == [200]
    finally:
        for sock in held:
            sock.close()


def test_pipelining_without_reading_stops_reading_and_answering(start):
    """A client that pipelines many requests and reads nothing: the server stops reading and
    stops answering when its write buffer is full, and resumes, in order, once the client reads."""
    server = start(ServerLimits(write_buffer_bytes=16 * 1024))
    handled = []
    handle = server.app.handle
    server.app.handle = lambda *a: (handled.append(1), handle(*a))[1]
    count = 1000
    request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n" + AUTH + b"X-Pad: " + b"p" * 4000 + b"\r\n\r\n"
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    wait_for(lambda: len(server._connections.open) == 1, "the server to accept the connection")
    # A fixed kernel send buffer on the server's side: autotuned, it grows towards tcp_wmem's
    # maximum (4 MiB here, more elsewhere) and could swallow every answer without a pause.
    (conn,) = server._connections.open
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sender = threading.Thread(target=lambda: sock.sendall(request * count), daemon=True)
    sender.start()
    try:
        def paused() -> bool:
            return any(not c.reading and c.write_paused_at is not None for c in list(server._connections.open))

        wait_for(paused, "the server to pause the connection", timeout=30.0)
        assert len(handled) < count and len(conn.pending) <= _MAX_PENDING + 65536 // len(request) + 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # now read fast
        replies = read_replies(sock, count)  # reading lets the server resume, to the last request
        assert [r.status for r in replies] == [200] * count and len(handled) == count
    finally:
        sock.close()
        sender.join(10)


class _FakeTransport:
    """A transport whose write buffer is 'full' after ``room`` writes."""

    def __init__(self, protocol: HttpProtocol, room: int) -> None:
        self.protocol, self.room = protocol, room
        self.written: list[bytes] = []
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if len(self.written) == self.room:
            self.protocol.pause_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_back_pressure_answers_nothing_more_while_the_write_buffer_is_full(served):
    app = ServingApp(served._on_demand)
    protocol = HttpProtocol(app, _Connections())
    transport = _FakeTransport(protocol, room=2)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(HEALTH * 10)
    assert len(transport.written) == 2 and not transport.reading and len(protocol.pending) == 8
    protocol.data_received(HEALTH)  # already read by the loop before the pause took effect: queued only
    assert len(transport.written) == 2 and len(protocol.pending) == 9
    transport.room = 0
    protocol.resume_writing()
    assert len(transport.written) == 11 and transport.reading and not protocol.pending
    assert all(b" 200 OK" in w for w in transport.written)


# -- client data that must not crash request checking ---------------------------------------

def test_deeply_nested_key_is_400_without_a_traceback(hard, caplog):
    caplog.set_level(logging.ERROR, logger="volga.serving")
    body = b'{"target_features": ["user_stats"], "keys": [{"user_id": ' + b"[" * 1000 + b'"1"' + b"]" * 1000 + b"}]}"
    replies, _ = exchange(hard, features_request(body))
    assert [r.status for r in replies] == [400]
    error = replies[0].json["error"]
    assert error["field"] == "keys[0].user_id" and "must be str, got [[[[...]]]]" in error["message"]
    deeper = b'{"target_features": ["user_stats"], "keys": [{"user_id": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    replies, _ = exchange(hard, features_request(deeper))
    assert [r.status for r in replies] == [400] and "not valid JSON" in replies[0].json["error"]["message"]
    assert not caplog.records


def test_unexpected_failure_is_500_with_request_id_and_one_log_line(start, known_users, caplog):
    server = start()
    caplog.set_level(logging.ERROR, logger="volga.serving")

    class Broken:  # an executor with a bug
        def __init__(self, real: Any) -> None:
            self.store = real.store
            self.definitions = real.definitions

        def request(self, *args: Any) -> Any:
            raise KeyError("a bug")

    server.app.executor = Broken(server.app.executor)
    ids = []
    for _ in range(3):
        replies, _ = exchange(server, features_request(body_for(known_users[0])))
        assert [r.status for r in replies] == [500]
        error, header = replies[0].json["error"], replies[0].headers["x-request-id"]
        assert error["type"] == "InternalError" and error["request_id"] == header and header in error["message"]
        ids.append(header)
    assert len(set(ids)) == 3
    records = [r for r in caplog.records if r.name == "volga.serving"]
    assert [ids[i] in records[i].getMessage() for i in range(3)] == [True] * 3 and len(records) == 3
    # the first failure of a kind carries the traceback; repeats are one line each
    assert records[0].exc_info is not None and records[1].exc_info is None and records[2].exc_info is None


# -- draining ------------------------------------------------------------------------------------

def test_stop_drains_requests_in_flight_and_health_says_draining(start, known_users):
    server = start(ServerLimits(drain_timeout_s=5.0))  # (default head deadline: the half-sent head must wait)
    busy = connect(server)
    idle = connect(server)
    idle.sendall(HEALTH)
    assert read_replies(idle, 1)[0].status == 200
    busy.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a request in flight: its head half sent
    wait_for(lambda: any(c.phase != 0 for c in list(server._connections.open)), "the server to start reading it")
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    try:
        wait_for(lambda: server.draining, "the server to start draining")
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection((server.host, server.port), timeout=2).close()
        assert read_until_closed(idle) == (b"", True)  # idle connections close at once
        busy.sendall(b"\r\n")
        data, closed = read_until_closed(busy)
        (reply,) = parse_replies(data)
        assert reply.status == 503 and reply.json["status"] == "draining" and closed
    finally:
        stopper.join(10)
        busy.close()
        idle.close()
    assert not server.running


def server_has_read(server_port: int, sock: socket.socket) -> bool:
    """True once the server process has read everything ``sock`` sent (its receive queue for
    this connection, in /proc/net/tcp, is empty): it then knows the request is in flight."""
    client_port = sock.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return int(queues.split(":")[1], 16) == 0
    return False  # not accepted yet


@pytest.mark.slow
def test_sigterm_drains_volga_serve():
    """SIGTERM: the listening socket closes, a request already begun is answered, exit code 0."""
    import signal
    from urllib.parse import urlsplit

    from serve_process import start as start_cli
    from serve_process import wait_url

    process = start_cli("cli_app.py", "--port", "0", "--drain-timeout", "20")
    try:
        address = urlsplit(wait_url(process))
        with socket.create_connection((address.hostname, address.port), timeout=10) as busy:
            busy.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            busy.sendall(b"X-A: 1\r\n")  # (head not finished: the request is in flight)
            wait_for(lambda: server_has_read(address.port, busy), "volga serve to read the half request")
            process.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    socket.create_connection((address.hostname, address.port), timeout=1).close()
                except OSError:
                    return True
                return False

            wait_for(refused, "volga serve to stop accepting")
            assert process.poll() is None, "it must wait for the request in flight"
            busy.sendall(b"\r\n")
            data, closed = read_until_closed(busy)
        (reply,) = parse_replies(data)
        assert reply.status == 503 and reply.json["status"] == "draining" and closed
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_second_sigterm_stops_volga_serve_at_once():
    """While draining, a second SIGTERM stops without waiting for the request in flight."""
    import signal
    from urllib.parse import urlsplit

    from serve_process import start as start_cli
    from serve_process import wait_url

    process = start_cli("cli_app.py", "--port", "0", "--drain-timeout", "600", "--head-timeout", "600")
    try:
        address = urlsplit(wait_url(process))
        with socket.create_connection((address.hostname, address.port), timeout=30) as busy:
            busy.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # in flight, never finished
            wait_for(lambda: server_has_read(address.port, busy), "volga serve to read the half request")
            process.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    socket.create_connection((address.hostname, address.port), timeout=1).close()
                except OSError:
                    return True
                return False

            wait_for(refused, "volga serve to start draining")
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0  # not the 600 s drain
            assert read_until_closed(busy) == (b"", True)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
