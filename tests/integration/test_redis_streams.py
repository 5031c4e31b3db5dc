"""RedisStreamSource against a real redis-server, in both modes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import volga
from tests.support.servers import RedisServer, free_port
from volga.api.entity import entity_schema
from volga.sources import RedisStreamSource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.storage.online.redis import RedisOnlineStore
from volga.testing.quickstart import (
    N_USERS,
    Order,
    assert_same_rows,
    batch_result,
    latest_rows,
    offline_rows,
    online_latest,
    quickstart,
    wait_until,
)
from volga.testing.quickstart import order_records as make_orders

pytestmark = pytest.mark.integration

def add(url: str, stream: str, messages: list[Any], *, as_fields: bool = False) -> None:
    """Dicts as JSON in the ``data`` field (or as the entry's fields); bytes as ``data`` as they are."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for m in messages:
        if as_fields:
            pipe.xadd(stream, {k: str(v) for k, v in m.items()})
        else:
            pipe.xadd(stream, {"data": json.dumps(m) if isinstance(m, dict) else m})
    pipe.execute()
    client.close()


def new_client(tmp_path: Path, online_store: Any = None) -> volga.Client:
    return volga.Client(online_store or MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "offline"))


@pytest.mark.parametrize("as_fields", [False, True], ids=["json", "fields"])
def test_offline_reads_the_stream_to_its_end_and_matches_the_parquet_batch(
    redis_server: RedisServer, tmp_path: Path, unique: str, as_fields: bool
) -> None:
    orders = make_orders(1500)
    add(redis_server.url, unique, orders, as_fields=as_fields)
    client = new_client(tmp_path)
    fmt = "fields" if as_fields else "json"

    job = client.materialize([quickstart(lambda online: RedisStreamSource(unique, redis_server.url, format=fmt))], mode="offline")

    assert job.metrics.rows_in["order_source"] == len(orders)
    assert_same_rows(client.get_offline("user_spent"), batch_result(orders, tmp_path))


def test_online_follows_the_stream_and_entries_added_while_running_reach_redis(
    redis_server: RedisServer, tmp_path: Path, unique: str
) -> None:
    before, during = make_orders(500), make_orders(500, first=500)
    add(redis_server.url, unique, before)
    store = RedisOnlineStore(redis_server.url, namespace=unique)
    client = new_client(tmp_path, store)
    pipe = quickstart(lambda online: RedisStreamSource(unique, redis_server.url, group="features"))
    want = batch_result(before + during, tmp_path)

    job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True, batch_size=200)
    try:
        wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(before), what="the first entries")
        add(redis_server.url, unique, during)
        wait_until(lambda: offline_rows(client) == want.height, what="every output row")
        users = [str(i) for i in range(N_USERS)]
        wait_until(lambda: online_latest(client, users) == latest_rows(want), what="the latest rows in Redis")
    finally:
        job.stop()
    assert_same_rows(client.get_offline("user_spent"), want)
    pending = redis.Redis.from_url(redis_server.url).xpending(unique, "features")
    assert pending["pending"] == 0  # every entry acknowledged after being written
    store.close()


def test_malformed_entries_are_counted_and_dead_lettered_with_their_reason(
    redis_server: RedisServer, tmp_path: Path, unique: str
) -> None:
    good = make_orders(200)
    bad: list[Any] = [b"not json", {**make_orders(1, first=200)[0], "buyer_id": 7}]
    add(redis_server.url, unique, good[:100] + bad + good[100:])
    dead_file = tmp_path / "dead.jsonl"
    source = RedisStreamSource(
        unique, redis_server.url, follow=False, dead_letter_stream=unique + "-dlq", dead_letter_path=dead_file
    )
    client = new_client(tmp_path)

    job = client.materialize([quickstart(lambda online: source)], mode="online", params={"online": True}, write_offline=True)

    assert_same_rows(client.get_offline("user_spent"), batch_result(good, tmp_path))
    reasons = [r.reason for r in job.rejected if r.source == "order_source"]
    assert len(reasons) == 2
    assert "invalid JSON" in reasons[0] and "field 'buyer_id': expected str, got 7" in reasons[1]
    lines = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [line["raw"] for line in lines][:1] == ["not json"] and lines[0]["stream"] == unique
    dead = redis.Redis.from_url(redis_server.url).xrange(unique + "-dlq")
    assert [fields[b"raw"] for _, fields in dead][:1] == [b"not json"]
    assert dead[1][1][b"reason"].decode() == lines[1]["reason"] and dead[1][1][b"id"].decode() == lines[1]["id"]


def test_a_restarted_server_loses_no_acknowledged_entries_and_the_job_reconnects(tmp_path: Path, unique: str) -> None:
    before, after = make_orders(400), make_orders(400, first=400)
    with RedisServer() as server:
        add(server.url, unique, before)
        client = new_client(tmp_path)
        pipe = quickstart(lambda online: RedisStreamSource(unique, server.url, group="g"))
        want = batch_result(before + after, tmp_path)
        job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True)
        try:
            wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(before), what="the first entries")
            wait_until(lambda: redis.Redis.from_url(server.url).xpending(unique, "g")["pending"] == 0, what="the acks")
            server.restart()  # the stream and the group's acks survive (append-only file)
            add(server.url, unique, after)
            wait_until(lambda: offline_rows(client) == want.height, timeout_s=60, what="the entries after the restart")
        finally:
            job.stop()
        assert job.error is None
        assert job.metrics.rows_in["order_source"] == len(before) + len(after)  # nothing read twice
        assert_same_rows(client.get_offline("user_spent"), want)


def test_a_restarted_job_rereads_only_what_it_had_not_acknowledged(
    redis_server: RedisServer, tmp_path: Path, unique: str
) -> None:
    add(redis_server.url, unique, make_orders(50))
    schema = entity_schema(Order)
    source = RedisStreamSource(unique, redis_server.url, group="g", follow=True)
    first = source.open(schema, name="orders")
    assert first.poll(30).height == 30
    first.commit()
    assert first.poll(100).height == 20  # handed out, but the job "dies" before writing them
    first.close()

    again = source.open(schema, name="orders")
    assert again.poll(100).height == 20  # the 20 unacknowledged entries come back
    again.commit()
    assert again.poll(100) is None
    again.close()


def test_wrong_password_and_unreachable_server_are_clear_errors(tmp_path: Path, unique: str) -> None:
    schema = entity_schema(Order)
    with RedisServer(password="right-password") as server:
        wrong = server.url.replace("right-password", "wrong-password")
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="authentication failed") as info:
            RedisStreamSource(unique, wrong, connect_timeout="2s").open(schema, name="orders")
        assert "wrong-password" not in str(info.value)
        with pytest.raises(ConnectionError, match="cannot use Redis"):
            RedisOnlineStore(wrong, connect_timeout="2s")
        assert time.monotonic() - started < 10
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionError, match=r"Redis at 'redis://127\.0\.0\.1:\d+/0': cannot connect"):
        RedisStreamSource(unique, unreachable, connect_timeout="2s").open(schema, name="orders")
