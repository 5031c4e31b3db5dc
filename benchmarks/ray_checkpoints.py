"""Checkpoint overhead on the Ray runtime: the quickstart online job with and without
checkpoints, and what a restart from a checkpoint costs.

    .venv/bin/python benchmarks/ray_checkpoints.py [--orders 300000] [--parallelism 2]

Same data and pipeline as ``benchmarks/engine.py`` (Parquet orders, in-memory users,
filter -> as-of join -> 3 windows), online in micro-batches of 10k rows into the in-memory
online store, on a local Ray session. Each configuration runs ``--repeat`` times after a
warm-up of the same job (the median run is printed); a checkpointed job also writes its starting point (an initial checkpoint) and a
final one. Printed per run: input events/s, the ratio to the run without checkpoints,
checkpoints written, the seconds the sources stood still for periodic checkpoints
(pause, drain of every edge, snapshot of every actor), and the last checkpoint's size and
duration. Then a restart: the keyed actor is killed at about half way and the time from
the kill to the job's end is compared with an uninterrupted run's second half.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
HERE = Path(__file__).resolve().parent


def _engine_module() -> Any:
    spec = importlib.util.spec_from_file_location("volga_bench_engine", HERE / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(pipe: Any, parallelism: int, interval: str | None, kill_at: float | None = None) -> dict[str, Any]:
    import ray

    import volga

    root = Path(tempfile.mkdtemp(prefix="volga_ray_ckpt_bench_"))
    client = volga.Client(data_dir=root, runtime=volga.RayRuntime(parallelism=parallelism))
    options: dict[str, Any] = {"mode": "online", "batch_size": 10_000, "block": False}
    if interval is not None:
        options.update(checkpoint_dir=root / "checkpoints", checkpoint_interval=interval)
    t0 = time.perf_counter()
    job = client.materialize([pipe], **options)
    killed_at = None
    if kill_at is not None:
        while job.running and job.metrics.rows_out.get(pipe.name, 0) < kill_at:
            time.sleep(0.005)
        stage = next(i for i, s in enumerate(job.driver.topology.stages) if s.kind == "keyed")
        ray.kill(job.actors()[stage][0])
        killed_at = time.perf_counter()
    job.wait()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds, "rows_in": sum(job.metrics.rows_in.values()), "rows_out": job.metrics.rows_out.get(pipe.name, 0),
        "checkpoints": job.metrics.checkpoints, "paused_s": job.checkpoint_pause_s,
        "last_s": job.metrics.checkpoint_seconds, "last_bytes": job.metrics.checkpoint_bytes,
        "restarts": job.restarts, "after_kill_s": None if killed_at is None else time.perf_counter() - killed_at,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is printed")
    args = parser.parse_args()
    import polars as pl
    import ray

    engine = _engine_module()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="volga_ray_ckpt_data_"))
    engine.make_data(root, args.orders)
    pipe = engine.build(root, filter_kind="expr", aggregates="3")
    print(f"data: {args.orders:,} orders; {os.cpu_count()} cores; ray {ray.__version__}, polars {pl.__version__}; "
          f"parallelism {args.parallelism}")
    run(pipe, args.parallelism, None)  # warm-up: numba, actors
    def median(interval: str | None) -> dict[str, Any]:
        runs = sorted((run(pipe, args.parallelism, interval) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        return runs[len(runs) // 2]

    base = median(None)
    rate = base["rows_in"] / base["seconds"]
    print(f"no checkpoints        {rate:>10,.0f} ev/s  1.00x  {base['seconds']:.2f} s")
    for interval in ("10s", "1s", "250ms"):
        r = median(interval)
        size = f"{r['last_bytes'] / 1e6:.1f} MB" if r["last_bytes"] else "-"
        print(f"checkpoint every {interval:<5} {r['rows_in'] / r['seconds']:>10,.0f} ev/s  "
              f"{r['rows_in'] / r['seconds'] / rate:.2f}x  {r['seconds']:.2f} s; {r['checkpoints']} checkpoints, "
              f"sources paused {r['paused_s']:.2f} s, last one {r['last_s']:.2f} s / {size}")
    half = base["rows_out"] / 2
    r = run(pipe, args.parallelism, "1s", kill_at=half)
    print(f"keyed actor killed at half way (checkpoints every 1s): {r['restarts']} restart, "
          f"{r['after_kill_s']:.2f} s from the kill to the end (uninterrupted second half: ~{base['seconds'] / 2:.2f} s)")
    ray.shutdown()


if __name__ == "__main__":
    main()
