"""Checkpoint benchmark: what checkpoints cost an online quickstart job, and recovery time.

    .venv/bin/python benchmarks/recovery.py [--orders 3000000] [--users 10000] [--keys 1000000]
                                            [--sustained-orders 20000000] [--repeat 10]

1. Throughput of the online quickstart job (embedded runtime, MemorySource, micro-batches
   of 10k rows, in-memory online store) without checkpoints, with ``checkpoint_interval``
   10 s and 1 s (each run in a fresh process; the last checkpoint, taken when the job ends,
   is inside the measured time). Per checkpoint: how long the job stood still (the snapshot
   at the boundary, of which the in-memory store's part; files are written in the
   background, except the final checkpoint's). Overhead: 1 - ev/s / ev/s without.
2. Sustained: the same job over ``--sustained-orders`` orders (long enough for several
   10 s checkpoints to fall inside the run; 0 skips it), without checkpoints and every
   10 s, ``--repeat`` pairs, alternating in ABBA order: the overhead of the medians end
   to end and steady (without the job's start, where the starting point is written, and
   its final checkpoint: a job that runs for months pays those once), and per pair (median
   and mean; a pair's runs are adjacent in time, so share the machine's speed), in wall
   time and in the job thread's CPU time.
3. State of ``--keys`` users (two orders each): duration and size of one checkpoint of
   the job's state (operators + the in-memory store's contents), split by part.
4. Recovery: the same job started again on that checkpoint directory: time to load and
   restore the latest checkpoint.

Prints one line per figure. Not part of ``make test``.
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
from typing import Any

import numpy as np
import polars as pl

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def orders_frame(n: int, n_users: int, *, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "buyer_id": pl.Series(rng.integers(0, n_users, n)).cast(pl.String),
            "product_id": pl.Series(rng.integers(0, 50, n)).cast(pl.String),
            "product_type": np.where(rng.random(n) < 0.5, "ON_SALE", "REGULAR"),
            "purchased_at": pl.Series(T0.timestamp() * 1e6 + np.arange(n) * 1000, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "product_price": np.round(rng.random(n) * 100, 2),
        }
    )


def users_frame(n_users: int) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [str(i) for i in range(n_users)], "registered_at": [T0] * n_users, "name": "u"})


def _client(root: Path) -> Any:
    import volga
    from volga.storage import MemoryOnlineStore, ParquetOfflineStore

    return volga.Client(MemoryOnlineStore(), ParquetOfflineStore(root / "offline"))


def _pipeline(orders: pl.DataFrame, users: pl.DataFrame) -> Any:
    from volga.sources import MemorySource
    from volga.testing.quickstart import quickstart

    return quickstart(lambda online: MemorySource(orders), users=users)


def throughput(n_orders: int, n_users: int, interval: str | None) -> dict[str, Any]:
    """One run in this process: events per second, checkpoints taken."""
    from volga.runtime.checkpoint import CheckpointStore
    from volga.runtime.local.checkpointing import Checkpointer
    from volga.storage.online.memory import MemoryOnlineStore

    orders, users = orders_frame(n_orders, n_users), users_frame(n_users)
    sizes: list[tuple[int, int]] = []  # per checkpoint: (bytes it references, bytes it wrote)
    write = CheckpointStore.write

    def sized(self: CheckpointStore, *a: Any, **k: Any) -> int:
        out = write(self, *a, **k)
        sizes.append((self.last_bytes or 0, self.last_written_bytes or 0))
        return out

    CheckpointStore.write = sized  # type: ignore[method-assign]
    taken: list[tuple[str, float]] = []  # per checkpoint: (periodic or final, time the job stood still)
    for name, kind in (("take", "final"), ("take_in_background", "periodic")):
        original = getattr(Checkpointer, name)

        def timed(self: Checkpointer, metrics: Any, __original: Any = original, __kind: str = kind) -> Any:
            start = time.perf_counter()
            out = __original(self, metrics)
            taken.append((__kind, time.perf_counter() - start))
            return out

        setattr(Checkpointer, name, timed)
    store_s = _timed(MemoryOnlineStore, "snapshot")  # the in-memory store's part of each snapshot
    # the job's start: looking for a checkpoint, writing the starting point
    start_s = _timed(Checkpointer, "resume")
    with tempfile.TemporaryDirectory() as tmp:
        client = _client(Path(tmp))
        extra = {} if interval is None else {"checkpoint_dir": Path(tmp) / "ckpt", "checkpoint_interval": interval}
        start, thread_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
        client.materialize([_pipeline(orders, users)], mode="online", batch_size=10_000, **extra)
        seconds = time.perf_counter() - start
        # CPU of the job's own thread vs the whole process (the writer thread, polars' pool)
        thread_cpu, process_cpu = time.thread_time() - thread_cpu, time.process_time() - process_cpu
    return {"ev_per_s": n_orders / seconds, "seconds": seconds, "thread_cpu": thread_cpu, "process_cpu": process_cpu,
            "checkpoints": len(taken),
            "checkpoint_s": [s for _, s in taken], "periodic_s": [s for kind, s in taken if kind == "periodic"],
            "final_s": sum(s for kind, s in taken if kind == "final"), "start_s": sum(start_s), "store_s": store_s,
            "sizes": sizes}


def _timed(owner: Any, name: str) -> list[float]:
    """Time every call of ``owner.name`` from now on; the list the durations go to."""
    durations: list[float] = []
    original = getattr(owner, name)

    def timed(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        out = original(*a, **k)
        durations.append(time.perf_counter() - start)
        return out

    setattr(owner, name, timed)
    return durations


def state_of_keys(n_keys: int) -> dict[str, Any]:
    """Checkpoint duration/size for ``n_keys`` users' quickstart state, and recovery time."""
    from volga.runtime import checkpoint as checkpoint_module
    from volga.runtime.checkpoint import CheckpointStore
    from volga.runtime.local.checkpointing import Checkpointer
    from volga.storage.online.memory import MemoryOnlineStore

    orders = orders_frame(2 * n_keys, n_keys, seed=2)
    users = users_frame(n_keys)
    timings: dict[str, list[float]] = {"take": [], "resume": [], "store": [], "write": [], "snapshot": []}
    take, resume = Checkpointer.take, Checkpointer.resume
    for owner, name, label in ((MemoryOnlineStore, "snapshot", "store"), (checkpoint_module, "_encode", "write"),
                               (Checkpointer, "snapshot", "snapshot")):
        original = getattr(owner, name)

        def timed(*a: Any, __original: Any = original, __label: str = label, **k: Any) -> Any:
            start = time.perf_counter()
            out = __original(*a, **k)
            timings[__label].append(time.perf_counter() - start)
            return out

        setattr(owner, name, timed)

    def timed_take(self: Checkpointer, metrics: Any) -> int:
        start = time.perf_counter()
        out = take(self, metrics)
        timings["take"].append(time.perf_counter() - start)
        return out

    def timed_resume(self: Checkpointer, metrics: Any) -> Any:
        start = time.perf_counter()
        out = resume(self, metrics)
        timings["resume"].append(time.perf_counter() - start)
        return out

    Checkpointer.take, Checkpointer.resume = timed_take, timed_resume  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        pipe = _pipeline(orders, users)
        client = _client(Path(tmp))
        client.materialize([pipe], mode="online", batch_size=100_000, checkpoint_dir=ckpt, checkpoint_interval="1h")
        latest = CheckpointStore(ckpt).latest()
        assert latest is not None
        folder = ckpt / f"chk-{latest.id:06d}"
        manifest = json.loads((ckpt / f"chk-{latest.id:06d}.json").read_text())
        chunks = {name for entry in manifest["columns"] for name in entry.get("chunks", ())}
        size = (sum(p.stat().st_size for p in folder.iterdir()) + (ckpt / f"chk-{latest.id:06d}.json").stat().st_size
                + sum((ckpt / "chunks" / name).stat().st_size for name in chunks))
        # which part is how big: operators vs the in-memory online store's rows
        store_rows = latest.state["sink"]["online"]["user_spent"]["rows"]
        load_start = time.perf_counter()
        CheckpointStore(ckpt).latest()
        load_s = time.perf_counter() - load_start
        again = _client(Path(tmp))  # a restarted process: empty store, same checkpoint_dir
        again.materialize([pipe], mode="online", batch_size=100_000, checkpoint_dir=ckpt, checkpoint_interval="1h")
    return {
        "keys": n_keys,
        "orders": 2 * n_keys,
        "checkpoint_s": timings["take"][0],
        "store_snapshot_s": timings["store"][0],
        "snapshot_s": timings["snapshot"][0],
        "write_s": timings["write"][0],
        "checkpoint_bytes": size,
        "store_rows": store_rows.height,
        "store_bytes_in_memory": store_rows.estimated_size(),
        "load_s": load_s,
        "resume_s": timings["resume"][-1],
    }


def _in_subprocess(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=3_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--sustained-orders", type=int, default=20_000_000)
    parser.add_argument("--one", choices=["throughput", "state"])
    parser.add_argument("--interval", default="")
    parser.add_argument("--repeat", type=int, default=10, help="sustained pairs of runs (without, every 10 s), alternating")
    args = parser.parse_args()
    if args.one == "throughput":
        print(json.dumps(throughput(args.orders, args.users, args.interval or None)))
        return
    if args.one == "state":
        print(json.dumps(state_of_keys(args.keys)))
        return

    base = ["--orders", str(args.orders), "--users", str(args.users)]
    runs = {label: _in_subprocess([*base, "--one", "throughput", "--interval", interval]) for label, interval in
            (("none", ""), ("10s", "10s"), ("1s", "1s"))}
    print(f"online quickstart, {args.orders:,} orders, {args.users:,} users (embedded, batches of 10k):")
    _print_runs(runs)
    if args.sustained_orders:
        _sustained(args.sustained_orders, args.users, args.repeat)
    s = _in_subprocess(["--keys", str(args.keys), "--one", "state"])
    print(f"state of {s['keys']:,} keys ({s['orders']:,} orders; the store holds {s['store_rows']:,} rows, "
          f"{s['store_bytes_in_memory'] / 1e6:.0f} MB as a frame):")
    print(f"  checkpoint: {s['checkpoint_s']:.2f} s to take ({s['store_snapshot_s']:.2f} s of it the in-memory store's "
          f"snapshot, {s['write_s']:.2f} s writing Arrow files), {s['checkpoint_bytes'] / 1e6:.1f} MB on disk")
    print(f"  the job stands still {s['snapshot_s']:.2f} s for the snapshot (the rest is written in the background): "
          f"every 10 s, {s['snapshot_s'] / 10:.0%} of the job's time, {s['checkpoint_s'] / 10:.0%} counting the write")
    print(f"  recovery:   {s['load_s']:.2f} s to load the checkpoint, {s['resume_s']:.2f} s to load and restore it")


def _sustained(orders: int, users: int, repeat: int) -> None:
    """Runs without checkpoints and every 10 s in pairs, alternating in ABBA order; the
    overhead of the medians, and per pair (a pair's two runs are adjacent in time)."""
    base = ["--orders", str(orders), "--users", str(users), "--one", "throughput"]
    print(f"sustained: {orders:,} orders, {users:,} users, {repeat} pair(s) of runs, alternating (ABBA):")
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (without, every 10 s)
    for i in range(repeat):
        # ABBA order: this machine's speed drifts between runs by more than the overhead;
        # a fixed order would put that drift into every pair, alternating cancels it
        runs = {interval: _in_subprocess([*base, "--interval", interval])
                for interval in (("", "10s") if i % 2 == 0 else ("10s", ""))}
        none, r = runs[""], runs["10s"]
        pairs.append((none, r))
        print(f"  without: {none['seconds']:6.2f} s (job thread CPU {none['thread_cpu']:5.2f} s)   "
              f"every 10 s: {r['seconds']:6.2f} s (job thread CPU {r['thread_cpu']:5.2f} s, process CPU "
              f"+{r['process_cpu'] - none['process_cpu']:.2f} s), of which the start {r['start_s']:.2f} s, the final "
              f"checkpoint {r['final_s']:.2f} s; "
              f"{len(r['periodic_s'])} periodic, the job stood still {sum(r['periodic_s']):.2f} s for them; "
              f"overhead {1 - none['seconds'] / r['seconds']:.1%}; MB written: "
              + ", ".join(f"{written / 1e6:.0f}" for _, written in r["sizes"]))
    without = statistics.median(none["seconds"] for none, _ in pairs)
    total = statistics.median(r["seconds"] for _, r in pairs)
    steady = statistics.median(_steady(r) for _, r in pairs)
    print(f"  medians: without {without:.2f} s, every 10 s {total:.2f} s ({steady:.2f} s without the start and the "
          f"final checkpoint): overhead {1 - without / total:.1%} end to end, {1 - without / steady:.1%} steady "
          "(a job that runs for months pays its start and final checkpoint once)")
    for label, cost in (("end to end", lambda r: r["seconds"]), ("steady", _steady)):
        per_pair = [1 - none["seconds"] / cost(r) for none, r in pairs]
        print(f"  per pair, {label}: overhead median {statistics.median(per_pair):.1%}, mean "
              f"{statistics.mean(per_pair):.1%} (range {min(per_pair):.1%} to {max(per_pair):.1%})")
    thread = [1 - none["thread_cpu"] / r["thread_cpu"] for none, r in pairs]
    print(f"  per pair, the job thread's CPU time: median {statistics.median(thread):.1%}, mean {statistics.mean(thread):.1%}")


def _steady(run: dict[str, Any]) -> float:
    """A checkpointed run's seconds without its start (looking for a checkpoint, the
    starting point) and its final checkpoint: what every further hour of the job costs."""
    return float(run["seconds"] - run["start_s"] - run["final_s"])


def _print_runs(runs: dict[str, dict[str, Any]]) -> None:
    none = runs["none"]["ev_per_s"]
    for label, r in runs.items():
        took = ", ".join(f"{s * 1000:.0f} ms" for s in r["checkpoint_s"][:8]) or "-"
        start = f"; the job's start {r['start_s']:.2f} s" if r["start_s"] else ""
        store = ", ".join(f"{s * 1000:.0f}" for s in r["store_s"][:8])
        print(f"  checkpoints {label:>4}: {r['ev_per_s']:>12,.0f} ev/s  {r['ev_per_s'] / none:5.2f}x  "
              f"overhead {1 - r['ev_per_s'] / none:6.1%}  ({r['seconds']:.2f} s, {r['checkpoints']} checkpoint(s): {took}"
              f"{'; the last one final' if r['final_s'] else ''}{start})")
        if r["sizes"]:
            print(f"                   of which the in-memory store's snapshot, ms: {store}")
            shown = ", ".join(f"{total / 1e6:.1f}/{written / 1e6:.1f}" for total, written in r["sizes"][:8])
            print(f"                   MB per checkpoint, whole/written (incremental: shared chunks are not rewritten): {shown}")


if __name__ == "__main__":
    main()
