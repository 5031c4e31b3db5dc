"""The driver the driver-kill test runs in a subprocess: the checkpointed quickstart job of
``test_ray_checkpoints`` on the test's Ray cluster (``--address``), printing ``rows <n>``
as its output grows and ``checkpoints <n>`` as they are written, until killed (or done)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

import volga  # noqa: E402
from volga.sources import MemorySource  # noqa: E402
from volga.storage import MemoryOnlineStore, ParquetOfflineStore  # noqa: E402
from volga.testing.quickstart import order_records, quickstart  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--orders", type=int, required=True)
    args = parser.parse_args()
    ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    orders = order_records(args.orders)
    root = Path(args.root)
    client = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(root / "offline"), runtime=volga.RayRuntime(parallelism=2))
    pipe = quickstart(lambda online: MemorySource(orders, rate_per_s=2500))
    job = client.materialize([pipe], mode="online", block=False, write_offline=True, batch_size=50,
                             checkpoint_dir=root / "checkpoints", checkpoint_interval="200ms")
    shown = (-1, -1)
    while job.running:
        now = (job.metrics.rows_out.get("user_spent", 0), job.metrics.checkpoints)
        if now != shown:
            print(f"rows {now[0]} checkpoints {now[1]}", flush=True)
            shown = now
        time.sleep(0.01)
    job.wait()
    print("done", flush=True)
    sys.exit(0)
