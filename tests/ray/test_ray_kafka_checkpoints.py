"""On Ray with the real broker and Redis: a 3-partition topic followed online, checkpointed,
with a keyed actor killed mid-run, ends with the Redis rows (latest and history) and the
offline rows of an uninterrupted embedded run, and those rows are the offline run's and
the reference's (per-partition watermarks on Ray: no late rows)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import volga
from tests.durable.kill_job import run_job
from tests.durable.test_sigkill import contents, create_topic, produce
from tests.integration.test_kafka_partitions import reference_rows
from tests.support.servers import KafkaBroker
from volga.sources import KafkaSource
from volga.storage import ParquetOfflineStore
from volga.storage.online.redis import RedisOnlineStore
from volga.testing.quickstart import assert_same_rows, offline_rows, quickstart, wait_until
from volga.testing.quickstart import order_records as make_orders

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def test_three_partitions_on_ray_with_a_killed_actor_end_as_the_uninterrupted_run(
    kafka_broker: KafkaBroker, redis_server: Any, tmp_path: Path, ray_session: Any
) -> None:
    unique = f"r{uuid.uuid4().hex[:10]}"
    bootstrap = kafka_broker.bootstrap_servers
    orders = make_orders(3000)
    expect = sum(o["product_type"] == "ON_SALE" for o in orders)
    for topic in (unique, f"{unique}-ref"):
        create_topic(bootstrap, topic, partitions=3)
        produce(bootstrap, topic, orders)

    reference = f"{unique}-ref"  # the embedded runtime, uninterrupted, into its own Redis namespace
    run_job(bootstrap, reference, redis_server.url, tmp_path / "reference", expect)
    want = contents(redis_server.url, reference, tmp_path / "reference")
    reference_frame = reference_rows(orders)
    assert_same_rows(want[2].select(reference_frame.columns), reference_frame)

    offline = volga.Client(offline_store=ParquetOfflineStore(tmp_path / "offline-run"))
    offline.materialize([quickstart(lambda online: KafkaSource(unique, bootstrap))], mode="offline")

    store = RedisOnlineStore(redis_server.url, namespace=unique)
    client = volga.Client(store, ParquetOfflineStore(tmp_path / "killed" / "offline"), runtime=volga.RayRuntime(parallelism=2))
    pipe = quickstart(lambda online: KafkaSource(unique, bootstrap, group_id=unique, follow=online))
    job = client.materialize(
        [pipe], mode="online", params={"online": True}, block=False, write_offline=True, batch_size=10,
        checkpoint_dir=tmp_path / "killed" / "checkpoints", checkpoint_interval="100ms",
    )
    try:
        wait_until(lambda: job.metrics.rows_out.get("user_spent", 0) >= expect // 3 or not job.running, what="a third of the rows")
        assert job.metrics.rows_out["user_spent"] < expect and job.metrics.checkpoints >= 2
        keyed = next(i for i, s in enumerate(job.driver.topology.stages) if s.kind == "keyed")
        ray_session.kill(job.actors()[keyed][0])
        wait_until(lambda: offline_rows(client) == expect and job.restarts == 1 or not job.running,
                   timeout_s=120, what="every output row after the restart")
    finally:
        job.stop(timeout=60)
        store.close()
    assert job.restarts == 1
    assert job.metrics.late.get("order_source", 0) == 0 and job.late_events("order_source").height == 0
    got = contents(redis_server.url, unique, tmp_path / "killed")
    assert got[0].equals(want[0]), "latest rows in Redis differ from the uninterrupted run"
    assert got[1].equals(want[1]), "history rows in Redis differ (lost or written twice)"
    assert got[2].equals(want[2]), "offline rows differ from the uninterrupted run"
    batch = offline.get_offline("user_spent")
    assert got[2].select(batch.columns).equals(batch), "online on Ray differs from the offline run of the topic"
