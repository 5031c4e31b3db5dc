"""The job the SIGKILL test runs in a subprocess: quickstart from a Kafka topic into Redis
and the offline store, checkpointed every ``--interval``, until ``--expect`` rows are out.

It prints ``rows <n>`` whenever the job's count of output rows changes (so the test can
kill it at a chosen point of its progress) and ``checkpointing`` just before each
checkpoint's manifest is written (after its data files), pausing ``--pause`` seconds there
so that the test can kill it mid-checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import volga
from tests.durable.job_output import pause_before_manifests, say
from volga.sources import KafkaSource
from volga.storage import ParquetOfflineStore
from volga.storage.online.redis import RedisOnlineStore
from volga.testing.quickstart import offline_rows, quickstart


def run_job(bootstrap: str, topic: str, redis_url: str, root: Path, expect: int, interval: str = "100ms") -> volga.Client:
    store = RedisOnlineStore(redis_url, namespace=topic)
    client = volga.Client(store, ParquetOfflineStore(root / "offline"))
    pipe = quickstart(lambda online: KafkaSource(topic, bootstrap, group_id=topic, follow=online))
    job = client.materialize(
        [pipe], mode="online", params={"online": True}, block=False, write_offline=True, batch_size=25,
        checkpoint_dir=root / "checkpoints", checkpoint_interval=interval,
    )
    deadline = time.monotonic() + 150
    shown = -1
    while (stored := offline_rows(client)) < expect:
        out = job.metrics.rows_out.get("user_spent", 0)
        if out != shown:
            say(f"rows {out}")
            shown = out
            if out >= expect:  # (all out: the offline rows should follow at once; say so if not)
                say(f"all rows out, {stored} offline")
        if not job.running:
            job.wait()  # raises the job's error
            raise RuntimeError("job ended early")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stored} of {expect} offline rows ({out} out) after 150 s; {_sources(job)}")
        time.sleep(0.002)
    say("stopping")  # (a hang after this line is in job.stop())
    job.stop()
    return client




def _sources(job: Any) -> str:
    """Where each source stands (to tell rows not read from rows held back by a watermark)."""
    now, parts = time.perf_counter(), []
    for name, stage in job._stages.items():
        reader = stage.reader
        line = (f"source {name}: watermark {stage.watermark}, released to {getattr(stage, 'released_to', None)}, "
                f"{0 if stage.buffer is None else stage.buffer.height} rows held, positions {reader.position()}")
        for p in stage.partitions or ():
            line += (f"; partition {p}: max {stage.part_max[p]}, last row {now - stage.part_last_row_at[p]:.1f} s ago, "
                     f"caught up {reader.caught_up(p)}")
        parts.append(line)
    return " | ".join(parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "topic", "redis_url", "root"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--interval", default="100ms")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()
    if args.pause:
        pause_before_manifests(args.pause)
    run_job(args.bootstrap, args.topic, args.redis_url, Path(args.root), args.expect, args.interval)
    say("done")
    sys.exit(0)
