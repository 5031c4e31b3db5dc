"""KafkaSource against a real Kafka-protocol broker (Tansu), in both modes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import confluent_kafka.admin as admin_mod
import pytest

import volga
from tests.support.servers import KafkaBroker, free_port
from volga.sources import KafkaSource
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

def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = admin_mod.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([admin_mod.NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(10)


def produce(bootstrap: str, topic: str, messages: list[Any]) -> None:
    """Dicts as JSON keyed by buyer (one buyer's orders stay in one partition); bytes as they are."""
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for m in messages:
        if isinstance(m, dict):
            producer.produce(topic, key=str(m.get("buyer_id", "")), value=json.dumps(m))
        else:
            producer.produce(topic, key=b"raw", value=m)
    assert producer.flush(15) == 0


def new_client(tmp_path: Path, online_store: Any = None) -> volga.Client:
    return volga.Client(online_store or MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "offline"))


def test_offline_reads_every_partition_up_to_the_end_and_matches_the_parquet_batch(
    kafka_broker: KafkaBroker, tmp_path: Path, unique: str
) -> None:
    orders = make_orders(2000)
    create_topic(kafka_broker.bootstrap_servers, unique, partitions=3)
    produce(kafka_broker.bootstrap_servers, unique, orders)
    client = new_client(tmp_path)

    job = client.materialize([quickstart(lambda online: KafkaSource(unique, kafka_broker.bootstrap_servers))], mode="offline")

    assert job.metrics.rows_in["order_source"] == len(orders)
    assert_same_rows(client.get_offline("user_spent"), batch_result(orders, tmp_path))


def test_online_follows_the_topic_and_events_produced_while_running_reach_redis(
    kafka_broker: KafkaBroker, redis_server: Any, tmp_path: Path, unique: str
) -> None:
    before, during = make_orders(600), make_orders(600, first=600)
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, unique)
    produce(bootstrap, unique, before)
    store = RedisOnlineStore(redis_server.url, namespace=unique)
    client = new_client(tmp_path, store)
    pipe = quickstart(lambda online: KafkaSource(unique, bootstrap, group_id=unique, follow=online))
    want = batch_result(before + during, tmp_path)

    job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True, batch_size=200)
    try:
        wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(before), what="the first events")
        produce(bootstrap, unique, during)
        wait_until(lambda: offline_rows(client) == want.height, what="every output row")
        users = [str(i) for i in range(N_USERS)]
        wait_until(lambda: online_latest(client, users) == latest_rows(want), what="the latest rows in Redis")
    finally:
        job.stop()
    assert job.running is False
    assert_same_rows(client.get_offline("user_spent"), want)
    store.close()


def test_malformed_messages_are_counted_and_dead_lettered_with_their_reason(
    kafka_broker: KafkaBroker, tmp_path: Path, unique: str
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    good = make_orders(300)
    missing_price = {k: v for k, v in make_orders(1, first=300)[0].items() if k != "product_price"}
    bad: list[Any] = [b"{not json", b"[1, 2]", {**make_orders(1, first=301)[0], "product_price": "12.5"}, missing_price]
    messages = good[:100] + bad[:2] + good[100:200] + bad[2:] + good[200:]
    create_topic(bootstrap, unique)
    create_topic(bootstrap, unique + "-dlq")
    produce(bootstrap, unique, messages)
    dead_file = tmp_path / "dead.jsonl"
    client = new_client(tmp_path)
    source = KafkaSource(unique, bootstrap, follow=False, dead_letter_topic=unique + "-dlq", dead_letter_path=dead_file)

    job = client.materialize([quickstart(lambda online: source)], mode="online", params={"online": True}, write_offline=True)

    want = batch_result(good, tmp_path)
    assert_same_rows(client.get_offline("user_spent"), want)
    assert online_latest(client, [str(i) for i in range(N_USERS)]) == latest_rows(want)
    rejected = [r for r in job.rejected if r.source == "order_source"]
    reasons = [r.reason for r in rejected]
    assert len(rejected) == 4
    assert "invalid JSON" in reasons[0] and "expected a JSON object, got list" in reasons[1]
    assert "field 'product_price': expected float, got '12.5'" in reasons[2]
    assert "field 'product_price'" in reasons[3] and "missing" in reasons[3]
    lines = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [line["reason"] for line in lines] == [r.split(": ", 1)[1] for r in reasons]
    assert lines[0]["raw"] == "{not json" and lines[0]["topic"] == unique and lines[0]["offset"] == 100
    dlq = _consume_all(bootstrap, unique + "-dlq", 4)
    assert [m.value() for m in dlq][:2] == [b"{not json", b"[1, 2]"]
    headers = dict(dlq[0].headers())
    assert headers["volga.reason"].decode() == lines[0]["reason"]
    assert headers["volga.offset"] == b"100" and headers["volga.source"] == b"order_source"


def _consume_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "check", "auto.offset.reset": "earliest"})
    consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
    out: list[Any] = []
    deadline = time.monotonic() + 15
    while len(out) < n and time.monotonic() < deadline:
        out += [m for m in consumer.consume(n, timeout=0.5) if m.error() is None]
    consumer.close()
    return out


def test_a_restarted_job_resumes_after_the_committed_offsets(kafka_broker: KafkaBroker, tmp_path: Path, unique: str) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    first, second = make_orders(400), make_orders(300, first=400)
    create_topic(bootstrap, unique)
    produce(bootstrap, unique, first)
    client = new_client(tmp_path)
    pipe = quickstart(lambda online: KafkaSource(unique, bootstrap, group_id=unique, follow=online))

    job = client.materialize([pipe], mode="online", params={"online": True}, block=False)
    wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(first), what="the first events")
    job.stop()
    produce(bootstrap, unique, second)
    again = client.materialize([pipe], mode="online", params={"online": True}, block=False)
    wait_until(lambda: again.metrics.rows_in.get("order_source", 0) >= len(second), what="the new events")
    time.sleep(0.3)  # nothing more may arrive: the first events were committed
    again.stop()

    assert again.metrics.rows_in["order_source"] == len(second)
    consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": unique})
    committed = consumer.committed([ck.TopicPartition(unique, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == len(first) + len(second)


def test_a_checkpointed_reader_commits_the_checkpoints_offsets_not_what_it_read_since(
    kafka_broker: KafkaBroker, unique: str,
) -> None:
    """After a checkpoint is written, the group offsets committed are that checkpoint's
    positions, also when the reader closes. Rows read since are in no checkpoint: a job
    restarted from it starts a partition it had not read yet from the committed offset,
    so committing past the checkpoint would skip them."""
    from volga.api.entity import entity_schema

    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, unique)
    produce(bootstrap, unique, make_orders(300))
    reader = KafkaSource(unique, bootstrap, group_id=unique, follow=True).open(
        entity_schema(Order), name="orders", mode="online"  # type: ignore[arg-type]
    )

    def read_until(n: int, rows: int) -> int:
        deadline = time.monotonic() + 10
        while rows < n and time.monotonic() < deadline:
            batch = reader.poll(min(50, n - rows))
            rows += 0 if batch is None else batch.height
        return rows

    rows = read_until(100, 0)
    checkpoint = reader.position()  # taken here, written while the reader goes on
    assert rows == 100 and checkpoint == {"0": 100}
    assert read_until(300, rows) == 300
    reader.commit(checkpoint)
    reader.close()  # waits for the commit
    consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": unique})
    committed = consumer.committed([ck.TopicPartition(unique, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 100


def test_the_job_reconnects_after_the_broker_was_down_and_loses_nothing(tmp_path: Path, unique: str) -> None:
    """The broker goes away mid-stream (every connection cut, new ones refused), then comes
    back: the job reconnects, resumes where it was, and every event reaches the stores. (The
    test broker keeps its log in memory, so a process restart would wipe the topic itself;
    its clients are cut off through a proxy instead.)"""
    before, after = make_orders(300), make_orders(300, first=300)
    with KafkaBroker(proxy=True) as broker:
        bootstrap = broker.bootstrap_servers
        create_topic(bootstrap, unique)
        produce(bootstrap, unique, before)
        client = new_client(tmp_path)
        pipe = quickstart(lambda online: KafkaSource(unique, bootstrap, group_id=unique, follow=online, config={"reconnect.backoff.max.ms": 500}))
        want = batch_result(before + after, tmp_path)
        job = client.materialize([pipe], mode="online", params={"online": True}, block=False, write_offline=True)
        try:
            wait_until(lambda: job.metrics.rows_in.get("order_source", 0) == len(before), what="the first events")
            broker.outage()
            time.sleep(1.5)
            assert job.running
            broker.resume()
            produce(bootstrap, unique, after)
            wait_until(lambda: offline_rows(client) == want.height, timeout_s=60, what="the events after the outage")
        finally:
            job.stop()
        assert job.error is None
        assert_same_rows(client.get_offline("user_spent"), want)


def test_an_unreachable_broker_is_a_clear_error_within_the_timeout(tmp_path: Path, unique: str) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    client = new_client(tmp_path)
    pipe = quickstart(lambda online: KafkaSource(unique, bootstrap, connect_timeout="2s"))

    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"Kafka at '{bootstrap}': no answer within 2s.*Connection refused"):
        client.materialize([pipe], mode="offline")
    assert time.monotonic() - started < 10


def test_failed_sasl_login_is_a_clear_error_that_never_shows_the_password(kafka_broker: KafkaBroker, unique: str) -> None:
    source = KafkaSource(
        unique, kafka_broker.bootstrap_servers, sasl_username="svc", sasl_password="hunter2-secret",
        sasl_mechanism="SCRAM-SHA-256", connect_timeout="2s",
    )  # fmt: skip
    from volga.api.entity import entity_schema

    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        source.open(entity_schema(Order), name="orders")
    assert time.monotonic() - started < 10
    assert "SASL" in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(source)


def test_a_missing_topic_is_named(kafka_broker: KafkaBroker, tmp_path: Path, unique: str) -> None:
    client = new_client(tmp_path)
    with pytest.raises(ValueError, match=rf"topic '{unique}' does not exist"):
        client.materialize([quickstart(lambda online: KafkaSource(unique, kafka_broker.bootstrap_servers))], mode="offline")


def test_the_job_mode_decides_how_a_source_without_follow_reads(kafka_broker: KafkaBroker, unique: str) -> None:
    from volga.api.entity import entity_schema

    create_topic(kafka_broker.bootstrap_servers, unique)
    produce(kafka_broker.bootstrap_servers, unique, make_orders(10))
    source = KafkaSource(unique, kafka_broker.bootstrap_servers)
    assert source.bounded and not KafkaSource(unique, "x:1", follow=True).bounded

    for mode, ends in (("offline", True), ("online", False)):
        reader = source.open(entity_schema(Order), name="orders", mode=mode)  # type: ignore[arg-type]
        rows = 0
        deadline = time.monotonic() + 10
        while rows < 10 and time.monotonic() < deadline:
            batch = reader.poll(100)
            rows += 0 if batch is None else batch.height
        assert rows == 10
        assert reader.poll(100) is None
        assert reader.finished is ends
        reader.close()
