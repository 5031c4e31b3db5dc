"""Fuzzing the running feature server: random bytes, random HTTP-shaped requests and random
JSON bodies. Whatever arrives, the server answers well-formed HTTP responses (or closes),
never a 500 for bad input, never stops: a good request is served after every example."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_hardening import AUTH, TOKEN, body_for, parse_replies, read_until_closed

from volga.serving.http import ServerLimits

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LIMITS = ServerLimits(max_head_bytes=8 * 1024, max_body_bytes=32 * 1024, max_keys=50, head_timeout_s=1.0, body_timeout_s=1.0)


@pytest.fixture(scope="module")
def fuzzed(served):
    with served.serve(port=0, auth_token=TOKEN, limits=LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def good(known_users):
    body = body_for(known_users[0])
    request = b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    return request + body


def send(server, data: bytes) -> tuple[list, bool]:
    """Send, half-close (so an incomplete request ends at once), read until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, closed = read_until_closed(sock)
    assert closed, f"the server neither answered nor closed after {data[:200]!r}"
    return parse_replies(received), closed  # parse_replies raises on malformed HTTP


def still_serving(server, good: bytes) -> None:
    replies, _ = send(server, good)
    assert [r.status for r in replies] == [200], f"a good request after the fuzz case got {replies}"


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(fuzzed, good, data):
    replies, _ = send(fuzzed, data)
    assert all(r.status < 500 for r in replies), replies  # (mostly 400: what random bytes deserve)
    still_serving(fuzzed, good)


TOKEN_CHARS = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=30)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "G E T", "", "POST\x00"])
PATHS = st.sampled_from(["/features", "/health", "/openapi.json", "/", "*", "http://x/features", "/features?x=1", "/%00"])
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.7", "HTTP/2.0", "HTTP/1.1 ", "http/1.1", ""])
HEADER_NAMES = st.sampled_from(
    ["Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect", "Authorization", "X-A", "content-length"]
) | TOKEN_CHARS
HEADER_VALUES = st.sampled_from(
    ["0", "5", "-1", "+5", "chunked", "close", "keep-alive", "100-continue", "Bearer s3cret", "bearer s3cret", "1, 2"]
) | TOKEN_CHARS
SEPARATORS = st.sampled_from(["\r\n", "\n", "\r", "\r\n "])


@FUZZ
@given(
    method=METHODS, path=PATHS, version=VERSIONS, eol=SEPARATORS,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8), body=st.binary(max_size=300),
    repeat=st.integers(1, 3),
)
def test_random_http_shaped_requests(fuzzed, good, method, path, version, eol, headers, body, repeat):
    head = f"{method} {path} {version}{eol}" + "".join(f"{n}: {v}{eol}" for n, v in headers) + eol
    replies, _ = send(fuzzed, (head.encode("latin-1") + body) * repeat)
    assert all(r.status < 500 for r in replies), replies
    still_serving(fuzzed, good)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
KEYS = st.lists(st.fixed_dictionaries({"user_id": JSON}) | JSON, max_size=4) | JSON
REQUESTS = st.fixed_dictionaries(
    {"target_features": st.lists(st.sampled_from(["user_stats", "user_spent", "nope", ""]), max_size=3) | JSON},
    optional={
        "keys": KEYS,
        "feature_keys": st.dictionaries(st.sampled_from(["user_stats", "user_spent", "x"]), KEYS, max_size=2) | JSON,
        "query_args": st.dictionaries(st.sampled_from(["n", "start", "end", "user_spent"]), JSON, max_size=3) | JSON,
        "udf_args": st.dictionaries(st.text(max_size=8), JSON, max_size=3) | JSON,
        "extra": JSON,
    },
) | JSON


@FUZZ
@given(request=REQUESTS)
def test_random_json_bodies_get_4xx_or_200_never_500(fuzzed, good, request):
    body = json.dumps(request).encode()
    head = b"POST /features HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    replies, _ = send(fuzzed, head + body)
    assert len(replies) == 1, replies
    (reply,) = replies
    assert reply.status in (200, 400, 404, 413), f"{request!r} -> {reply}"
    if reply.status != 200:
        error = reply.json["error"]
        assert error["message"] and error["type"], reply
    still_serving(fuzzed, good)
