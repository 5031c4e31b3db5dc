"""Embedded drivers for a physical plan: batch (everything at once) and streaming
(micro-batches with watermarks). Both run the same operators; only the driving differs.

Outputs leave through ``sink(pipeline_name, rows)``; the runtime never imports stores.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import polars as pl

from volga.errors import Rejected
from volga.ops.frames import epoch_us
from volga.ops.protocol import FINISHED_WM, Operator, Watermark
from volga.plan.compile import PhysicalPlan
from volga.runtime.heap import frozen_while_streaming
from volga.runtime.local.stage import SourceStage
from volga.runtime.steps import run_steps
from volga.sources.base import SourceReader

Sink = Callable[[str, pl.DataFrame], None]


@dataclasses.dataclass
class Metrics:
    """What a job did. Latency samples are (seconds from entering a source to being
    written, number of rows), one per written micro-batch, measured from the oldest
    row polled in the batch's iteration."""

    rows_in: dict[str, int] = dataclasses.field(default_factory=dict)
    rows_out: dict[str, int] = dataclasses.field(default_factory=dict)
    late: dict[str, int] = dataclasses.field(default_factory=dict)
    batches: int = 0
    started_at: float = dataclasses.field(default_factory=time.perf_counter)
    finished_at: float | None = None
    latency_samples: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    # checkpoints (with checkpoint_dir): how many were written, and the last one's
    # duration (snapshot and write), size and completion (Unix seconds)
    checkpoints: int = 0
    checkpoint_seconds: float | None = None
    checkpoint_bytes: int | None = None
    checkpoint_unix: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.perf_counter()) - self.started_at

    def latency_percentile(self, q: float) -> float | None:
        """Row-weighted latency percentile in seconds (q in 0..100)."""
        if not self.latency_samples:
            return None
        ordered = sorted(self.latency_samples)
        total = sum(n for _, n in ordered)
        target = total * q / 100.0
        seen = 0
        for seconds, n in ordered:
            seen += n
            if seen >= target:
                return seconds
        return ordered[-1][0]


def collect_rejected(ops: Mapping[int, Operator], readers: Mapping[int, SourceReader]) -> list[Rejected]:
    """Drain what readers and row functions set aside since the last call."""
    out: list[Rejected] = []
    for reader in readers.values():
        out.extend(reader.drain_rejected())
    for op in ops.values():
        out.extend(op.drain_rejected())
    return out


def sort_by_time(rows: pl.DataFrame, ts_col: str) -> pl.DataFrame:
    """Stable sort by event time (ties keep arrival order); free for rows already in order."""
    ts = rows[ts_col]
    if ts.is_sorted():
        return rows
    return rows[np.argsort(epoch_us(ts), kind="stable")]


def sort_by_position(rows: pl.DataFrame, ts_col: str, positions: list[tuple[np.ndarray, np.ndarray]]) -> pl.DataFrame:
    """A partitioned source's rows by event time, ties by (partition, offset): the order a
    streaming run releases them in, whatever order the partitions were fetched in."""
    parts = np.concatenate([p for p, _ in positions])
    offsets = np.concatenate([o for _, o in positions])
    return rows[np.lexsort((offsets, parts, epoch_us(rows[ts_col])))]


def run_batch(
    plan: PhysicalPlan, ops: Mapping[int, Operator], readers: Mapping[int, SourceReader], sink: Sink, metrics: Metrics,
    batch_size: int = 1_000_000,
) -> None:
    """Read every bounded source fully, then run each step once over all its input.

    >>> from volga.plan.compile import compile_plan
    >>> from volga.runtime.local.runtime import open_sources
    >>> from volga.sources import MemorySource
    >>> from volga.testing.quickstart import order_records, quickstart
    >>> plan = compile_plan([quickstart(lambda online: MemorySource(order_records(30)))])
    >>> written = {}
    >>> run_batch(plan, plan.build_operators(), open_sources(plan, "offline", None), written.__setitem__, Metrics())
    >>> written["user_spent"].columns
    ['user_id', 'timestamp', 'avg_spent_7d', 'num_purchases_1h', 'max_price_1d', '__volga_raw.product_price']
    """
    results: dict[int, pl.DataFrame | None] = {}
    remaining = {s.id: len(plan.consumers(s.id)) for s in plan.steps}
    inputs_of = {s.id: s.inputs for s in plan.steps}
    finished: dict[int, Watermark] = dict.fromkeys(inputs_of, (FINISHED_WM, True))  # every input, all read
    for step in plan.steps:
        if step.kind == "source":
            assert step.source is not None
            reader = readers[step.id]
            parts = []
            positions: list[tuple[np.ndarray, np.ndarray]] = []
            partitioned = reader.partition_ids is not None
            while not reader.finished:
                part = reader.poll(batch_size)
                if part is not None and part.height:
                    parts.append(part)
                    if partitioned:
                        assert reader.last_partitions is not None and reader.last_offsets is not None
                        positions.append((reader.last_partitions, reader.last_offsets))
                elif not reader.finished:
                    time.sleep(0.001)  # a paced source read in batch mode: wait for due rows
            rows = pl.concat(parts) if parts else pl.DataFrame(schema=step.schema.polars_schema())
            metrics.rows_in[step.source.name] = rows.height
            if partitioned and positions:
                out = sort_by_position(rows, step.schema.timestamp, positions)
            else:
                out = sort_by_time(rows, step.schema.timestamp)
            results[step.id] = out
        else:  # every input finished: each operator runs once over all its rows
            run_steps([step.id], inputs_of, ops, results, finished, timers=plan.timers, keep_empty=True)
        for src in step.inputs:
            remaining[src] -= 1
            if remaining[src] == 0 and src not in plan.outputs.values():
                del results[src]
    for name, step_id in plan.outputs.items():
        written = results[step_id]
        assert written is not None
        metrics.rows_out[name] = written.height
        sink(name, written)
    metrics.batches = 1


@dataclasses.dataclass
class StreamOptions:
    batch_size: int = 10_000
    max_batch_delay_s: float = 0.0
    idle_sleep_s: float = 0.0005


@frozen_while_streaming()
def run_streaming(
    plan: PhysicalPlan,
    ops: Mapping[int, Operator],
    stages: dict[int, SourceStage],
    sink: Sink,
    metrics: Metrics,
    stop: threading.Event,
    options: StreamOptions,
    checkpoint: Callable[[Metrics, bool], bool] | None = None,
) -> None:
    """Poll sources in micro-batches and push them through the plan until every source
    is exhausted (bounded) or ``stop`` is set.

    ``checkpoint(metrics, final)`` is called between micro-batches (and once at the end,
    ``final=True``); it returns True when it took a checkpoint, after which the sources
    commit their positions. Without it, sources commit after every written micro-batch.
    The objects alive when the job starts are left out of garbage collection while it runs
    (``volga.runtime.heap``): a full collection would stall a micro-batch.
    """
    step_ids = [s.id for s in plan.steps]
    inputs_of = {s.id: s.inputs for s in plan.steps}
    while not stop.is_set():
        outputs: dict[int, pl.DataFrame | None] = {}
        watermarks: dict[int, Watermark] = {}
        entered: list[float] = []
        for step_id, stage in stages.items():
            out = stage.poll(options.batch_size, options.max_batch_delay_s)
            if stage.entered_at is not None:
                entered.append(stage.entered_at)
            outputs[step_id] = out if out is not None and out.height else None
            watermarks[step_id] = (stage.watermark, stage.idle)
        run_steps(step_ids, inputs_of, ops, outputs, watermarks, timers=plan.timers)

        written = 0
        for name, step_id in plan.outputs.items():
            rows = outputs[step_id]
            if rows is not None:
                sink(name, rows)
                metrics.rows_out[name] = metrics.rows_out.get(name, 0) + rows.height
                written += rows.height
        if written and entered:
            metrics.latency_samples.append((time.perf_counter() - min(entered), written))
        metrics.batches += 1
        for stage in stages.values():
            metrics.rows_in[stage.source.name] = stage.rows_in
            metrics.late[stage.source.name] = stage.late_count
        if checkpoint is None:
            _commit_sources(ops, stages)
        elif checkpoint(metrics, False):
            _commit_checkpointed(stages)
        if all(stage.done for stage in stages.values()):
            break
        if not any(outputs[s.id] is not None for s in plan.source_steps()):
            time.sleep(options.idle_sleep_s)
    if checkpoint is not None and checkpoint(metrics, True):
        _commit_checkpointed(stages)


def _commit_checkpointed(stages: dict[int, SourceStage]) -> None:
    """After a checkpoint is written: its positions committed, for lag monitoring (held
    rows are in the checkpoint)."""
    for stage in stages.values():
        stage.commit_checkpointed()


def _commit_sources(ops: Mapping[int, Operator], stages: dict[int, SourceStage]) -> None:
    """Tell the readers that what they handed out is in the stores (at-least-once).

    Called after every micro-batch's sink writes (cheap when nothing changed).
    Only when no polled row is still held back (a source's lateness buffer, a join waiting
    for its other input's watermark): committing then could lose those rows if the job
    died before writing them. Window state is not covered: it is rebuilt by a restarted
    job only from what the source re-delivers (the checkpointing issue will snapshot it).
    """
    if any(stage.pending or (stage.buffer is not None and stage.buffer.height) for stage in stages.values()):
        return
    if any(op.buffered_rows for op in ops.values()):
        return
    for stage in stages.values():
        stage.reader.commit()
