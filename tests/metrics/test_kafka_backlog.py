"""Kafka consumer lag as a metric: offsets behind the high-water marks, scraped while a
deliberately slow job works through a topic."""

from __future__ import annotations

import datetime
import json
import time
import uuid

import confluent_kafka as ck
import confluent_kafka.admin as admin_mod
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import volga
from volga import Count, Entity, entity, field, pipeline, source
from volga.metrics import metrics_for
from volga.sources import KafkaSource

pytestmark = pytest.mark.integration

@entity
class Click:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)


@entity
class Clicks:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int


def backlog(metrics) -> float | None:
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "volga_source_backlog_messages":
                return sample.value
    return None


def test_backlog_rises_while_the_job_lags_and_falls_to_zero(kafka_broker, tmp_path):
    topic = f"t{uuid.uuid4().hex[:10]}"
    bootstrap = kafka_broker.bootstrap_servers
    admin = admin_mod.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([admin_mod.NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(300):
        producer.produce(topic, value=json.dumps({"user": f"u{i % 5}", "at": (start + datetime.timedelta(seconds=i)).isoformat()}))
    assert producer.flush(15) == 0

    @source(Click)
    def clicks() -> volga.Source:
        return KafkaSource(topic, bootstrap, follow=True, start_from="earliest")

    def slowly(row: dict) -> bool:
        time.sleep(0.002)  # 2 ms a row: the job falls behind the topic
        return True

    @pipeline(dependencies=[clicks], output=Clicks)
    def click_count(c: Entity) -> Entity:
        return c.filter(slowly).group_by(keys=["user"]).aggregate([Count(window="1h", into="n")])

    client = volga.Client(data_dir=tmp_path)
    metrics = metrics_for(client)
    job = client.materialize([click_count], mode="online", batch_size=10, block=False)
    try:
        seen: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = backlog(metrics)
            if value is not None:
                seen.append(value)
                if value == 0 and job.metrics.rows_in.get("clicks", 0) == 300:
                    break
            time.sleep(0.05)
        assert seen and max(seen) > 0, seen  # some scrape saw offsets behind the high-water mark
        assert seen[-1] == 0, seen  # and it fell to zero once every message was read
    finally:
        job.stop()
