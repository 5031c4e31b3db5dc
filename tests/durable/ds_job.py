"""The DataStream job the checkpoint tests run (in-process, and in a subprocess killed with
SIGKILL): a keyed reduce, a tumbling window and an interval join over two sources, into
every kind of sink.

Run as a script it executes the job with ``--checkpoint_dir`` until its (paced) sources
are exhausted, printing ``rows <n>`` whenever its count of delivered rows changes and
``checkpointing`` just before each checkpoint's manifest is written (pausing ``--pause``
seconds there so that the test can kill it mid-checkpoint); at the end it dumps what the
in-memory sinks hold into ``--out`` (``lists.json``, ``store.parquet``).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tests.durable.job_output import pause_before_manifests, say
from volga import Count, Sum
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.stream import CallableSink, FileSink, ListSink, StreamingContext, StreamJob, TumblingWindow

CLICKS = [{"user": f"u{i % 7}", "t": i * 2, "v": i} for i in range(400)]
VIEWS = [{"user": f"u{i % 5}", "t": i * 3 + 1, "w": i} for i in range(270)]
USERS = pl.DataFrame({"user": [f"u{i}" for i in range(7)]})


class ConsumerFailed(RuntimeError):
    pass


@dataclass
class Sinks:
    """Every sink of one run; the files and stores live under ``root``."""

    root: Path
    online: Any = None
    reduced: ListSink = field(default_factory=ListSink)
    windows: ListSink = field(default_factory=ListSink)
    joined: ListSink = field(default_factory=ListSink)
    seen: list[tuple[int, Any]] = field(default_factory=list)  # what the numbered callable got
    fail_at: int | None = None  # the callable raises once, at this row number

    def consume(self, row: Any, n: int) -> None:
        """The numbered callable sink of the joined rows."""
        if n == self.fail_at:
            self.fail_at = None
            raise ConsumerFailed(f"the consumer failed at row {n}")
        self.seen.append((n, row))

    def __post_init__(self) -> None:
        if self.online is None:
            self.online = MemoryOnlineStore()
        self.offline = ParquetOfflineStore(self.root / "offline")

    @property
    def jsonl(self) -> Path:
        return self.root / "joined.jsonl"

    @property
    def parquet(self) -> Path:
        return self.root / "windows.parquet"

    def lists(self) -> dict[str, list[Any]]:
        return {"reduced": list(self.reduced), "windows": list(self.windows), "joined": list(self.joined)}

    def store_rows(self) -> pl.DataFrame:
        """Every history row of the windows in the online store, per user, oldest first."""
        return self.online.get_range("windows", USERS, None, None)

    def offline_rows(self) -> pl.DataFrame:
        scan = self.offline.scan("totals")
        assert scan is not None
        return scan.collect()


def build(sinks: Sinks, *, period: str | None = None, window: str = "20s", batch_size: int = 16,
          callable_sink: bool = False, combine: Any = None, join: bool = True) -> StreamingContext:
    """The job; ``period``: pace the sources (one row per period) so it runs for a while;
    ``join=False``: without the interval join (whose state does not rescale)."""
    ctx = StreamingContext(batch_size=batch_size)

    def source(rows: list[dict[str, Any]], name: str) -> Any:
        stream = ctx.from_collection(rows, name=name) if period is None else ctx.from_periodic_collection(rows, period, name=name)
        return stream.timestamp_assigner("t").key_by("user")

    clicks, views = source(CLICKS, "clicks"), source(VIEWS, "views")
    reduced = clicks.reduce(combine or (lambda a, b: {"user": a["user"], "t": b["t"], "v": a["v"] + b["v"]}))
    reduced.sink(sinks.reduced)
    reduced.sink(sinks.offline, name="totals")
    windows = clicks.window(TumblingWindow(window)).aggregate([Count(into="n"), Sum(on="v", into="s")])
    windows.sink(sinks.windows)
    windows.sink(sinks.online, name="windows")
    windows.sink(FileSink(sinks.parquet))
    if not join:
        return ctx
    joined = clicks.join(views, kind="interval", how="inner", between=("-4s", "4s"))
    joined.sink(sinks.joined)
    joined.sink(FileSink(sinks.jsonl))
    if callable_sink:
        joined.sink(CallableSink(sinks.consume, numbered=True))
    return ctx


def delivered(job: StreamJob) -> int:
    return sum(job.metrics.rows_out.values())






def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--checkpoint_dir", default=None)
    parser.add_argument("--interval", default="50ms")
    parser.add_argument("--period", default="3ms")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()
    if args.pause:
        pause_before_manifests(args.pause)
    root = Path(args.root)
    sinks = Sinks(root)
    ctx = build(sinks, period=args.period)
    job = ctx.submit(checkpoint_dir=args.checkpoint_dir, checkpoint_interval=args.interval) if args.checkpoint_dir else ctx.submit()
    done = threading.Event()

    def report() -> None:
        shown = -1
        while not done.is_set():
            if (n := delivered(job)) != shown:
                say(f"rows {n}")
                shown = n
            time.sleep(0.002)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    job.wait()
    done.set()
    reporter.join()
    (root / "lists.json").write_text(json.dumps(sinks.lists(), default=str))
    sinks.store_rows().write_parquet(root / "store.parquet")
    say("done")


if __name__ == "__main__":
    main()
