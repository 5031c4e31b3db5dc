"""A checkpointed job killed with SIGKILL at random instants, restarted each time, ends with
exactly the stores of an uninterrupted run: Kafka (3 partitions) -> Redis + offline store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import confluent_kafka.admin as admin_mod
import polars as pl
import pytest

from tests.support.servers import KafkaBroker
from volga.storage import ParquetOfflineStore
from volga.storage.online.redis import RedisOnlineStore
from volga.testing.quickstart import N_USERS
from volga.testing.quickstart import order_records as make_orders

from .kill_job import run_job

pytestmark = pytest.mark.integration

def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = admin_mod.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([admin_mod.NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(10)


def produce(bootstrap: str, topic: str, messages: list[dict[str, Any]]) -> None:
    """JSON orders keyed by buyer: each partition holds its buyers' orders in event-time order."""
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for m in messages:
        producer.produce(topic, key=m["buyer_id"], value=json.dumps(m))
    assert producer.flush(15) == 0

KEYS = pl.DataFrame({"user_id": [str(i) for i in range(N_USERS)]})
SCRIPT = Path(__file__).with_name("kill_job.py")


def contents(redis_url: str, namespace: str, root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(Redis latest rows, Redis history rows, offline rows in written order)."""
    store = RedisOnlineStore(redis_url, namespace=namespace)
    try:
        latest = store.get_latest("user_spent", KEYS)
        history = store.get_range("user_spent", KEYS, None, None)
    finally:
        store.close()
    offline = ParquetOfflineStore(root / "offline").scan("user_spent")
    assert offline is not None
    return latest, history, offline.collect()


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_at(proc: subprocess.Popen[str], target: int, *, mid_checkpoint: bool) -> int | None:
    """SIGKILL ``proc`` once it reports ``target`` output rows (then, with ``mid_checkpoint``,
    at its next checkpoint, between data files and manifest). Returns the row count it
    reported last, or None if it exited first."""
    assert proc.stdout is not None
    progress, armed = 0, False
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if time.monotonic() > deadline:
            raise AssertionError("the job made no progress for 60 s")
        word, _, number = line.strip().partition(" ")
        if word == "rows":
            progress = int(number)
            armed = armed or progress >= target
        if armed and (not mid_checkpoint or word == "checkpointing"):
            proc.send_signal(signal.SIGKILL)
            return progress
    return None


def test_sigkill_at_random_points_then_restart_ends_with_the_uninterrupted_stores(
    kafka_broker: KafkaBroker, redis_server: Any, tmp_path: Path, unique: str
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders = make_orders(2500)
    create_topic(bootstrap, unique, partitions=3)
    produce(bootstrap, unique, orders)
    expect = sum(o["product_type"] == "ON_SALE" for o in orders)

    reference = f"{unique}-ref"
    create_topic(bootstrap, reference, partitions=3)
    produce(bootstrap, reference, orders)
    run_job(bootstrap, reference, redis_server.url, tmp_path / "reference", expect)
    want = contents(redis_server.url, reference, tmp_path / "reference")
    assert want[2].height == expect

    rng = random.Random(13)
    root = tmp_path / "killed"
    args = ["--bootstrap", bootstrap, "--topic", unique, "--redis_url", redis_server.url, "--root", str(root), "--expect", str(expect)]
    targets = sorted(rng.sample(range(1, expect - 1), 20))  # kill points spread over the whole run
    kills = mid_checkpoint = 0
    for target in targets:
        during_checkpoint = kills % 3 == 0
        proc = _start([*args, "--pause", "0.05"] if during_checkpoint else args)
        try:
            reached = _kill_at(proc, target, mid_checkpoint=during_checkpoint)
        finally:
            proc.wait(30)
        if reached is None:
            break  # it finished before this kill
        kills += 1
        mid_checkpoint += during_checkpoint
    assert kills == 20 and mid_checkpoint == 7, f"only {kills} kills ({mid_checkpoint} mid-checkpoint): the job finished too early"

    last = _start(args)
    try:
        out, err = last.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        last.kill()
        out, err = last.communicate()
        raise AssertionError(f"the restarted job did not finish in 180 s; its output ends: {out[-1500:]!r} {err[-1500:]!r}") from None
    assert last.returncode == 0, err[-3000:]
    got = contents(redis_server.url, unique, root)
    assert got[0].equals(want[0]), "latest rows in Redis differ"
    assert got[1].equals(want[1]), "history rows in Redis differ (lost or written twice)"
    assert got[2].equals(want[2]), "offline rows differ"
