"""Ray runtime scaling: the quickstart pipeline embedded vs Ray at parallelism 1 and 2.

    .venv/bin/python benchmarks/ray_scaling.py [--orders 1000000] [--hop-batches 400]

Same data and pipeline as ``benchmarks/engine.py`` (filter -> as-of join -> 3 windowed
aggregates -> rename; Parquet orders, in-memory users). For each runtime it runs offline
(backfill into the Parquet offline store) and online (micro-batches of 10k rows into the
in-memory online store) after a warm-up run of the same job (numba compile, and as
many actors started as the job uses: a multi-row-group Parquet file is read by
``parallelism`` source actors, so a smaller warm-up file would leave one to start), and
prints input events/s and the ratio to the embedded runtime. Then the overhead of one
batch hop: a tiny micro-batch pipeline run embedded and on Ray at parallelism 1, the
difference per micro-batch (a batch crosses source actor -> keyed actor -> driver queue).
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
HERE = Path(__file__).resolve().parent


def _engine_module() -> Any:
    spec = importlib.util.spec_from_file_location("volga_bench_engine", HERE / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timed_run(runtime: Any, pipe: Any, mode: str, batch_size: int = 10_000) -> tuple[float, Any]:
    import volga

    client = volga.Client(data_dir=tempfile.mkdtemp(prefix="volga_ray_bench_"), runtime=runtime)
    t0 = time.perf_counter()
    job = client.materialize([pipe], mode=mode, batch_size=batch_size)
    return time.perf_counter() - t0, job


def hop_pipeline(n_batches: int, rows_per_batch: int) -> Any:
    import volga
    from volga import Count, Entity, entity, field, pipeline, source
    from volga.sources import MemorySource

    @entity
    class Tick:
        key: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)

    @entity
    class Ticks:
        key: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        n: int

    t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [{"key": f"k{i % 4}", "at": t0 + datetime.timedelta(seconds=i)} for i in range(n_batches * rows_per_batch)]

    @source(Tick)
    def ticks() -> volga.Source:
        return MemorySource(rows)

    @pipeline(dependencies=[ticks], output=Ticks)
    def tick_counts(ticks: Entity) -> Entity:
        return ticks.group_by(keys=["key"]).aggregate([Count(window="forever", into="n")])

    return tick_counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--hop-batches", type=int, default=400)
    args = parser.parse_args()

    import ray

    import volga

    engine = _engine_module()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(engine)
    root = Path(tempfile.mkdtemp(prefix="volga_ray_scaling_"))
    engine.make_data(root / "full", args.orders)
    pipe = engine.build(root / "full", filter_kind="expr", aggregates="3")
    print(f"data: {args.orders:,} orders, {engine.N_USERS:,} users; {os.cpu_count()} cores; ray {ray.__version__}, polars {pl.__version__}")

    runtimes: list[tuple[str, Any]] = [("embedded", None), ("ray p=1", volga.RayRuntime(parallelism=1)), ("ray p=2", volga.RayRuntime(parallelism=2))]
    base: dict[str, float] = {}
    for mode in ("offline", "online"):
        for label, runtime in runtimes:
            timed_run(runtime, pipe, mode)  # numba compile; every actor the job uses started and pooled
            seconds, job = timed_run(runtime, pipe, mode)
            rate = args.orders / seconds
            base.setdefault(mode, rate)
            line = f"{mode:8s} {label:9s} {seconds:7.2f} s {rate:>12,.0f} ev/s  {rate / base[mode]:4.2f}x embedded"
            if runtime is not None:
                busy = ", ".join(f"stage {i} busy {s.busy_s:5.2f} s" for i, s in enumerate(job.stage_stats()))
                line += f"   ({busy})"
            print(line)

    n, per = args.hop_batches, 10
    hop = hop_pipeline(n, per)
    timings = {}
    for label, runtime in runtimes[:2]:
        timed_run(runtime, hop, "online", batch_size=per)
        timings[label], _ = timed_run(runtime, hop, "online", batch_size=per)
    overhead_ms = (timings["ray p=1"] - timings["embedded"]) / n * 1e3
    print(
        f"batch hop: {n} micro-batches of {per} rows: embedded {timings['embedded'] / n * 1e3:.2f} ms/batch, "
        f"ray p=1 {timings['ray p=1'] / n * 1e3:.2f} ms/batch -> {overhead_ms:.2f} ms overhead per micro-batch "
        "(source actor -> keyed actor -> driver)"
    )
    volga.RayRuntime.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
