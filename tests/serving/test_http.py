"""The HTTP server and ``OnDemandClient``: endpoints, every bad input, auth, errors, HTTP/1.1."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import threading
import time

import pytest
from serving_defs import ON_DEMAND, CountingStore, UserSpentInfo, UserStats, user_spent

import volga
from volga import on_demand
from volga.serving import (
    BadRequest,
    FeatureFunctionError,
    FeatureNotFound,
    InvalidKeys,
    PayloadTooLarge,
    Unauthorized,
)


def raw(server, data: bytes, *, read_until_close: bool = False, timeout: float = 5.0) -> bytes:
    """Send raw bytes; return what comes back (one response, or everything until close)."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks += chunk
            if not read_until_close and b"\r\n\r\n" in chunks:
                head, _, body = chunks.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                if len(body) >= length:
                    break
        return chunks


def post(server, body: bytes, headers: str = "") -> tuple[int, dict]:
    response = raw(server, b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers.encode(), body))
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


def key(user: str) -> dict:
    return {"user_id": user}


# -- endpoints ------------------------------------------------------------------------------

def test_request_returns_rows_in_key_order_with_null_for_missing(http, served, known_users):
    a, b = known_users[:2]
    out = http.request(["user_stats"], {"user_stats": [key(a), key("999"), key(b)]})
    expected = served.get_on_demand("user_stats", [key(a), key("999"), key(b)])
    assert out["user_stats"][1] is None
    for got, want in zip(out["user_stats"], expected):
        if want is not None:
            assert got == {"user_id": want.user_id, "timestamp": want.timestamp, "total_spent": want.total_spent,
                           "purchase_count": want.purchase_count}
            assert got["timestamp"].tzinfo == datetime.timezone.utc


def test_several_targets_shared_keys_and_args(http, served, known_users):
    u = known_users[0]
    out = http.request(["user_stats", "spend_trend", "window_spend"], keys=[key(u)],
                       query_args={"n": 2, "user_spent": {"start": None, "end": None}}, udf_args={"spend_trend": {"threshold": -1}})
    assert set(out) == {"user_stats", "spend_trend", "window_spend"}
    assert out["spend_trend"][0]["recent_count"] == 2 and out["spend_trend"][0]["above_threshold"] is True
    assert out["window_spend"][0]["rows"] == len(served.get_range("user_spent", [key(u)], None, None)[0])


def test_json_on_the_wire_uses_iso_8601_utc(server, known_users):
    status, body = post(server, json.dumps({"target_features": ["user_stats"], "keys": [key(known_users[0])]}).encode())
    assert status == 200
    stamp = body["results"]["user_stats"][0]["timestamp"]
    assert stamp.endswith("+00:00") and datetime.datetime.fromisoformat(stamp).tzinfo is not None


def test_features_listing_and_health(http, server):
    listing = {f["name"]: f for f in http.features()}
    assert {"user_stats", "spend_trend", "window_spend", "user_spent"} <= set(listing)
    trend = listing["spend_trend"]
    assert trend["kind"] == "on_demand" and trend["keys"] == ["user_id"]
    assert trend["args"] == [{"name": "threshold", "type": "float", "default": 100.0}]
    assert trend["query_args"] == {"user_spent": ["n"]}
    assert trend["output"]["fields"]["above_threshold"] == "bool"
    assert listing["user_spent"]["kind"] == "pipeline"
    assert [a["name"] for a in listing["user_offer"]["args"]] == ["boost"]  # 'offer' comes from the key
    health = http.health()
    assert health["status"] == "ok"


def test_openapi_document(server):
    spec = json.loads(raw(server, b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n").partition(b"\r\n\r\n")[2])
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/features", "/health", "/openapi.json"}
    schemas = spec["components"]["schemas"]
    assert "user_stats" in schemas["FeaturesRequest"]["properties"]["target_features"]["items"]["enum"]
    stats = schemas["user_stats.UserStats"]
    assert stats["properties"]["timestamp"] == {"type": "string", "format": "date-time"}
    assert stats["properties"]["total_spent"]["type"] == "number"


def test_async_client_batches_and_reuses_connections(server, served, known_users):
    async def main():
        async with volga.OnDemandClient(server.url) as client:
            outs = await asyncio.gather(*[client.arequest(["user_stats"], {"user_stats": [key(u)]}) for u in known_users[:6]])
            again = await client.arequest(["user_stats"], keys=[key(u) for u in known_users[:6]])
            pooled = len(client._pools[id(asyncio.get_running_loop())])
            return outs, again, pooled

    outs, again, pooled = asyncio.run(main())
    assert [o["user_stats"][0] for o in outs] == again["user_stats"]
    assert 1 <= pooled <= 6
    assert again["user_stats"][0]["total_spent"] == served.get_on_demand("user_stats", [key(known_users[0])])[0].total_spent


# -- bad input: each a 4xx JSON error naming the field ---------------------------------------

@pytest.mark.parametrize(
    "body, status, error_type, field",
    [
        (b"{not json", 400, "BadRequest", "body"),
        (b"", 400, "BadRequest", "body"),
        (b"[1, 2]", 400, "BadRequest", "body"),
        (b'{"keys": [{"user_id": "1"}]}', 400, "BadRequest", "target_features"),
        (b'{"target_features": "user_stats", "keys": []}', 400, "BadRequest", "target_features"),
        (b'{"target_features": ["user_stats"], "keys": [], "colour": 1}', 400, "BadRequest", "colour"),
        (b'{"target_features": ["nope"], "keys": []}', 404, "FeatureNotFound", "target_features[0]"),
        (b'{"target_features": ["user_stats"]}', 400, "InvalidKeys", "feature_keys.user_stats"),
        (b'{"target_features": ["user_stats"], "feature_keys": {"spend_trend": []}, "keys": []}', 400, "BadRequest", "feature_keys.spend_trend"),
        (b'{"target_features": ["user_stats"], "keys": [{"uid": "1"}]}', 400, "InvalidKeys", "keys[0].user_id"),
        (b'{"target_features": ["user_stats"], "feature_keys": {"user_stats": [{"user_id": 7}]}}', 400, "InvalidKeys", "feature_keys.user_stats[0].user_id"),
        (b'{"target_features": ["window_spend"], "keys": [{"user_id": "1"}]}', 400, "BadRequest", "query_args.user_spent.start"),
        (b'{"target_features": ["window_spend"], "keys": [{"user_id": "1"}], "query_args": {"start": "2025-01-01"}}',
         400, "BadRequest", "query_args.user_spent.end"),
        (b'{"target_features": ["user_stats"], "keys": [{"user_id": "1"}], "udf_args": {"threshold": 1}}', 400, "BadRequest", "udf_args.threshold"),
        (b'{"target_features": ["spend_trend"], "keys": [{"user_id": "1"}], "query_args": {"n": 2, "m": 1}}', 400, "BadRequest", "query_args.m"),
        (b'{"target_features": ["spend_trend"], "keys": [{"user_id": "1"}], "query_args": {"n": 2}, "udf_args": {"n": 1}}', 400, "BadRequest", "udf_args.n"),
        (b'{"target_features": ["spend_trend"], "keys": [{"user_id": "1"}], "query_args": {"n": "2"}}', 400, "BadRequest", "query_args.user_spent.n"),
        (b'{"target_features": ["spend_trend"], "keys": [{"user_id": "1"}], "query_args": 5}', 400, "BadRequest", "query_args"),
    ],
)
def test_bad_input(server, body, status, error_type, field):
    got_status, payload = post(server, body)
    assert got_status == status
    assert payload["error"]["type"] == error_type
    assert payload["error"]["field"] == field
    assert payload["error"]["status"] == status and payload["error"]["message"]


def test_client_raises_the_servers_errors(http):
    with pytest.raises(FeatureNotFound, match="unknown feature 'nope'") as caught:
        http.request(["nope"], keys=[key("1")])
    assert caught.value.field == "target_features[0]" and caught.value.status == 404
    with pytest.raises(InvalidKeys) as caught:
        http.request(["user_stats"], {"user_stats": [{"user_id": 1}]})
    assert caught.value.field == "feature_keys.user_stats[0].user_id"
    with pytest.raises(BadRequest, match="needs 'start'"):
        asyncio.run(http.arequest(["window_spend"], keys=[key("1")]))


def test_oversized_body_is_413(served):
    with served.serve(port=0, max_body_bytes=200) as small:
        status, payload = post(small, json.dumps({"target_features": ["user_stats"], "keys": [key(str(i)) for i in range(50)]}).encode())
        assert status == 413 and payload["error"]["field"] == "body" and "limit of 200 bytes" in payload["error"]["message"]
        with pytest.raises(PayloadTooLarge):
            volga.OnDemandClient(small.url).request(["user_stats"], keys=[key(str(i)) for i in range(50)])
        assert volga.OnDemandClient(small.url).request(["user_stats"], keys=[key("1")])  # still serving


def test_function_error_is_500_and_server_keeps_serving(tmp_path, served, known_users):
    @on_demand(dependencies=[user_spent])
    def exploding(spent: UserSpentInfo) -> UserStats:
        raise KeyError("boom")

    client = volga.Client(online_store=served.online_store, data_dir=tmp_path)
    client.register(exploding, user_spent)
    with client.serve(port=0) as server:
        status, payload = post(server, json.dumps({"target_features": ["exploding"], "keys": [key(known_users[0])]}).encode())
        assert status == 500
        assert payload["error"]["feature"] == "exploding" and payload["error"]["exception"] == "KeyError"
        with pytest.raises(FeatureFunctionError) as caught:
            volga.OnDemandClient(server.url).request(["exploding"], keys=[key(known_users[0])])
        assert caught.value.feature == "exploding" and caught.value.exception == "KeyError"
        assert volga.OnDemandClient(server.url).request(["user_spent"], keys=[key(known_users[0])])["user_spent"][0]


# -- auth -----------------------------------------------------------------------------------

def test_bearer_token_auth(served, known_users):
    with served.serve(port=0, auth_token="s3cret") as server:
        body = json.dumps({"target_features": ["user_stats"], "keys": [key(known_users[0])]}).encode()
        status, payload = post(server, body)
        assert status == 401 and payload["error"]["type"] == "Unauthorized"
        assert b"WWW-Authenticate: Bearer" in raw(server, b"GET /features HTTP/1.1\r\nHost: x\r\n\r\n")
        assert post(server, body, "Authorization: Bearer wrong\r\n")[0] == 401
        assert post(server, body, "Authorization: Bearer s3cret\r\n")[0] == 200
        assert b"200 OK" in raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # health stays open
        with pytest.raises(Unauthorized):
            volga.OnDemandClient(server.url).request(["user_stats"], keys=[key("1")])
        ok = volga.OnDemandClient(server.url, auth_token="s3cret").request(["user_stats"], keys=[key(known_users[0])])
        assert ok["user_stats"][0]["user_id"] == known_users[0]


# -- HTTP/1.1 details -------------------------------------------------------------------------

def test_pipelined_requests_on_one_connection(server, known_users):
    one = json.dumps({"target_features": ["user_stats"], "keys": [key(known_users[0])]}).encode()
    request = b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(one), one)
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = raw(server, request * 3 + last, read_until_close=True)
    assert response.count(b"HTTP/1.1 200 OK") == 4 and response.count(b"Connection: close") == 1


def test_protocol_errors(server):
    assert b"404 Not Found" in raw(server, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"405 Method Not Allowed" in raw(server, b"DELETE /features HTTP/1.1\r\nHost: x\r\n\r\n")
    # chunked request bodies are read (llhttp frames them); this one is valid JSON of the wrong shape
    chunked = raw(server, b"POST /features HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
    assert b"400 Bad Request" in chunked and b"got list" in chunked
    assert b"400 Bad Request" in raw(server, b"NONSENSE\r\n\r\n", read_until_close=True)
    assert b"400 Bad Request" in raw(server, b"POST /features HTTP/1.1\r\nContent-Length: x\r\n\r\n", read_until_close=True)
    http10 = raw(server, b"GET /health HTTP/1.0\r\n\r\n", read_until_close=True)
    assert b"200 OK" in http10 and b"Connection: close" in http10


def test_expect_100_continue(server, known_users):
    body = json.dumps({"target_features": ["user_stats"], "keys": [key(known_users[0])]}).encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"POST /features HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_client_timeouts_and_unreachable_server():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    port = silent.getsockname()[1]
    try:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            volga.OnDemandClient(f"http://127.0.0.1:{port}", timeout=0.3).request(["user_stats"], keys=[key("1")])
        with pytest.raises(TimeoutError):
            asyncio.run(volga.OnDemandClient(f"http://127.0.0.1:{port}", timeout=0.3).arequest(["user_stats"], keys=[key("1")]))
        assert time.perf_counter() - started < 3
    finally:
        silent.close()
    with pytest.raises(ConnectionError):
        volga.OnDemandClient(f"http://127.0.0.1:{port}", timeout=1).request(["user_stats"], keys=[key("1")])
    with pytest.raises(ValueError, match="url must look like http://host:port"):
        volga.OnDemandClient("ftp://x")


def test_server_stop_closes_everything(served):
    server = served.serve(port=0)
    client = volga.OnDemandClient(server.url, timeout=2)
    assert client.health()["status"] == "ok"
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionError):
        client.health()


def test_concurrent_threads_share_one_client(http, served, known_users):
    expected = {u: served.get_on_demand("user_stats", [key(u)])[0].total_spent for u in known_users[:4]}
    errors: list[BaseException] = []

    def worker(user: str) -> None:
        try:
            for _ in range(20):
                assert http.request(["user_stats"], keys=[key(user)])["user_stats"][0]["total_spent"] == expected[user]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(u,)) for u in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_stores_that_do_io_are_read_off_the_event_loop(tmp_path, served, known_users):
    store = CountingStore(served.online_store, delay_s=0.05)
    client = volga.Client(online_store=store, data_dir=tmp_path)
    client.register(*ON_DEMAND)
    with client.serve(port=0) as server:
        http = volga.OnDemandClient(server.url)
        assert http.health()["inline"] is False
        started = time.perf_counter()
        threads = [threading.Thread(target=http.request, args=(["user_stats"],), kwargs={"keys": [key(known_users[0])]}) for _ in range(4)]
        for t in threads:
            t.start()
        assert http.health()["status"] == "ok"  # the loop stays responsive while reads block
        for t in threads:
            t.join()
        assert time.perf_counter() - started < 0.19  # four 50 ms reads overlapped
        one = json.dumps({"target_features": ["user_stats"], "keys": [key(known_users[0])]}).encode()
        request = b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(one), one)
        response = raw(server, request * 2 + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n", read_until_close=True)
        assert response.count(b"200 OK") == 3


def test_async_feature_waits_off_the_event_loop(tmp_path):
    """An ``async def`` feature awaiting I/O must not hold the loop: other requests (here
    /health) are answered while it waits, though the store is in memory."""
    import serving_defs

    client = serving_defs.make_client(tmp_path)
    release = threading.Event()

    @on_demand(dependencies=[])
    async def waits_for_io(user_id: str, now: datetime.datetime) -> UserStats:
        while not release.is_set():  # an I/O wait the test ends
            await asyncio.sleep(0.01)
        return UserStats(user_id=user_id, timestamp=now, total_spent=0.0, purchase_count=0)

    client.register(waits_for_io)
    with client.serve(port=0) as server:
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(post(server, b'{"target_features":["waits_for_io"],"keys":[{"user_id":"1"}]}')[0]))
        slow.start()
        time.sleep(0.2)  # the slow request is in flight
        health = raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert health.startswith(b"HTTP/1.1 200"), health
        assert slow.is_alive() and answers == [], "/health waited for the async feature"
        release.set()
        slow.join(10)
        assert answers == [200]
        assert json.loads(health.partition(b"\r\n\r\n")[2])["inline"] is False
