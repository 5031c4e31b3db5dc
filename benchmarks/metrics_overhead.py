"""What Prometheus metrics cost the online engine.

    .venv/bin/python benchmarks/metrics_overhead.py [--orders 2000000] [--batch-size 10000] [--repeats 5 (0: only the accounted figure)]

Two measurements, because on a shared machine run-to-run noise (±10-20%) hides a few percent:

1. End to end: the engine benchmark's online part (``benchmarks/engine.py``'s pipeline,
   3 windowed aggregates) run alternately without and with ``volga.metrics`` attached and
   scraped every second, each in a fresh process; medians of ``--repeats`` runs.
2. Accounted: the job with metrics counts its micro-batches and steps; the inline
   instruments (a timing wrapper per step per micro-batch, the store-write wrapper) and a
   scrape are timed in isolation; their sum over the run's length is the cost share.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engine  # noqa: E402 - a sibling script, importable once HERE is on the path


def end_to_end(data: Path, batch_size: int, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(repeats):
        for key, flag in (("off", []), ("on", ["--metrics"])):
            cmd = [sys.executable, str(HERE / "engine.py"), "--part", "online-expr", "--data", str(data), "--aggregates", "3",
                   "--online-batch-size", str(batch_size), *flag]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[key].append(json.loads(done.stdout.strip().splitlines()[-1])["events_per_s"])
    return out


def accounted(data: Path, batch_size: int) -> dict[str, float]:
    from prometheus_client import generate_latest

    import volga
    from volga.metrics import _timed, metrics_for

    client = volga.Client(data_dir=tempfile.mkdtemp(prefix="volga_metrics_"))
    metrics = metrics_for(client)
    plan_steps: list[int] = []
    client.plan_observers.append(lambda plan: plan_steps.append(sum(1 for s in plan.steps if s.kind != "source")))
    pipe = engine.build(data, filter_kind="expr", aggregates="3")
    engine._warm_up_jit(client, data)
    t0 = time.perf_counter()
    job = client.materialize([pipe], mode="online", batch_size=batch_size)
    seconds = time.perf_counter() - t0
    batches, steps = job.metrics.batches, plan_steps[-1]

    # the timing wrapper around a step, net of the call it wraps
    child = metrics.operator_seconds.labels("bench", "0", "chain")
    def noop(batch: pl.DataFrame) -> pl.DataFrame:
        return batch

    timed = _timed(noop, child.observe)
    n = 200_000
    t = time.perf_counter()
    for _ in range(n):
        noop(None)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        timed(None)
    wrap_s = (time.perf_counter() - t - plain) / n

    # the store-write wrapper's extra work on one micro-batch of output rows
    out = pl.DataFrame({"timestamp": pl.datetime_range(engine.START, engine.START + datetime.timedelta(seconds=batch_size - 1),
                                                       "1s", eager=True, time_zone="UTC")})
    t = time.perf_counter()
    for _ in range(200):
        metrics.store_write_seconds.labels("bench").observe(0.001)
        out["timestamp"].dt.epoch("us").max()
    write_s = (time.perf_counter() - t) / 200

    t = time.perf_counter()
    for _ in range(20):
        generate_latest(metrics.registry)
    scrape_s = (time.perf_counter() - t) / 20
    inline = batches * (steps * wrap_s + write_s)
    scrapes = seconds * scrape_s  # one scrape per second
    return {"seconds": seconds, "batches": batches, "steps": steps, "wrap_us": wrap_s * 1e6, "write_us": write_s * 1e6,
            "scrape_ms": scrape_s * 1e3, "share": (inline + scrapes) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="volga_metrics_bench_")) / "full"
    engine.make_data(data, args.orders)
    acc = accounted(data, args.batch_size)
    print(f"accounted: {acc['batches']} micro-batches x {acc['steps']} timed steps in {acc['seconds']:.2f}s; "
          f"timing wrapper {acc['wrap_us']:.2f} us/step, store-write extras {acc['write_us']:.1f} us/batch, "
          f"scrape {acc['scrape_ms']:.2f} ms/s -> {acc['share']:.3%} of the run")
    if args.repeats < 1:
        return
    runs = end_to_end(data, args.batch_size, args.repeats)
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    print(f"end to end ({args.orders:,} orders, batches of {args.batch_size:,}, median of {args.repeats}): "
          f"without {off:,.0f} ev/s, with {on:,.0f} ev/s ({on / off - 1:+.1%}); "
          f"runs without {[round(x) for x in runs['off']]}, with {[round(x) for x in runs['on']]}")


if __name__ == "__main__":
    main()
