"""One partition of one stage: the work a Ray actor does, written without Ray.

A task receives ``(edge, sender, rows, watermark, idle)`` messages, runs its stage's
steps exactly as the embedded streaming loop runs them (same operators, same watermark
rules: a join releases rows older than the minimum of its non-idle inputs' watermarks)
and hands what it produces to ``emit(edge, partition, rows, watermark, idle)`` and
``output(pipeline, rows, watermark, idle)``. The actor wrapper turns those into Ray calls.

Offline mode uses the same code: sources report no watermark until they are exhausted,
so every multi-sender input holds its rows until the end and then releases them sorted
by (ts, seq): the embedded runtime's stable sort by event time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from volga.ops.protocol import FINISHED_WM, NO_WM, Input, Operator, Watermark
from volga.ops.routing import SEQ
from volga.runtime.local.executors import sort_by_time
from volga.runtime.local.stage import SourceStage
from volga.runtime.ray.exchange import InputMerger, split_by_key
from volga.runtime.ray.topology import Edge, Topology
from volga.runtime.steps import run_steps

Emit = Callable[[Edge, int, "pl.DataFrame | None", int, bool], None]
Output = Callable[[str, "pl.DataFrame | None", int, bool], None]


@dataclasses.dataclass
class TaskMetrics:
    rows_in: int = 0
    rows_out: int = 0
    batches: int = 0
    busy_s: float = 0.0
    watermark: int = NO_WM
    max_event_us: int = NO_WM  # sources: newest event time read
    late: int = 0


class SeqReader:
    """A source reader whose batches carry their arrival position (``SEQ``).

    Positions count from the reader's ``first_position``: 0 for a whole source, the
    part's start for one partition of it, so the parts' rows interleave by (ts, SEQ)
    exactly as one reader's would."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.next_seq = int(getattr(reader, "first_position", 0))

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        batch = self.reader.poll(max_rows)
        if batch is None or not batch.height:
            return batch
        start, self.next_seq = self.next_seq, self.next_seq + batch.height
        return batch.with_columns(pl.int_range(start, self.next_seq, dtype=pl.Int64).alias(SEQ))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


class StageTask:
    def __init__(
        self,
        topology: Topology,
        stage_id: int,
        partition: int,
        mode: Literal["offline", "online"],
        emit: Emit,
        output: Output,
        reader: Any = None,
    ) -> None:
        self.topology = topology
        self.plan = topology.plan
        self.spec = topology.stages[stage_id]
        self.partition = partition
        self.mode = mode
        self.emit = emit
        self.output = output
        self.ops: dict[int, Operator] = {
            s: spec.build(sequenced=True) for s in self.spec.steps if (spec := self.plan.steps[s].spec) is not None
        }
        self.inputs_of = {s: self.plan.steps[s].inputs for s in self.spec.steps}
        self.mergers = {
            e.id: InputMerger(topology.stages[e.src_stage].parallelism, e.ts_col) for e in self.spec.inputs
        }
        self.external = {(e.dst_step, e.dst_input): e.id for e in self.spec.inputs}
        self.sent: dict[tuple[int, int], tuple[int, bool]] = {}
        self.metrics = TaskMetrics()
        self.released = 0  # source rows handed on (their SEQ, for a source read by one actor)
        self.source: SourceStage | None = None
        if self.spec.kind == "source":
            step = self.plan.steps[self.spec.steps[0]]
            assert step.source is not None and reader is not None
            self.source = SourceStage(step.source, SeqReader(reader))

    # -- inputs ------------------------------------------------------------------------
    def receive(self, edge_id: int, sender: int, rows: pl.DataFrame | None, watermark: int, idle: bool) -> None:
        started = time.perf_counter()
        if rows is not None:
            self.metrics.rows_in += rows.height
        self.mergers[edge_id].push(sender, rows, watermark, idle)
        self._run({}, {})
        self.metrics.busy_s += time.perf_counter() - started

    def poll_source(self, batch_size: int, max_delay_s: float) -> bool:
        """Online: one micro-batch from the source through the stage. True once exhausted."""
        assert self.source is not None
        started = time.perf_counter()
        rows = self.source.poll(batch_size, max_delay_s)
        self._source_step(rows, self.source.watermark, self.source.idle)
        self.metrics.busy_s += time.perf_counter() - started
        if self.source.done:
            self.source.late_report.flush()  # the late rows since the last summary line
        return self.source.done

    def read_all(self, batch_size: int) -> None:
        """Offline: read the bounded source fully, then send it on in event-time order."""
        assert self.source is not None
        reader, parts = self.source.reader, []
        while not reader.finished:
            part = reader.poll(1_000_000)
            if part is not None and part.height:
                parts.append(part)
            elif not reader.finished:
                time.sleep(0.001)  # a paced source read in batch mode: wait for due rows
        step = self.plan.steps[self.spec.steps[0]]
        rows = sort_by_time(pl.concat(parts), step.schema.timestamp) if parts else None
        self.source.done = True
        total = 0 if rows is None else rows.height
        self.source.rows_in = total
        for start in range(0, total, batch_size):
            assert rows is not None
            self._source_step(rows.slice(start, batch_size), NO_WM, False)
        self._source_step(None, FINISHED_WM, False)

    def finish_source(self) -> None:
        """Stop reading: release what the source holds and tell everyone downstream."""
        assert self.source is not None
        if not self.source.done:
            self.source.done = True
            self._source_step(self.source._release(), FINISHED_WM, False)

    def _source_step(self, rows: pl.DataFrame | None, watermark: int, idle: bool) -> None:
        assert self.source is not None
        self.metrics.rows_in = self.source.rows_in
        self.metrics.late = self.source.late_count
        if rows is not None and rows.height:
            ts = rows[self.plan.steps[self.spec.steps[0]].schema.timestamp].dt.epoch("us")
            self.metrics.max_event_us = max(self.metrics.max_event_us, int(ts.max()))  # type: ignore[arg-type]
        if rows is not None and rows.height and self.spec.parallelism == 1:
            # Renumbered in release (processing) order: a window's first row by SEQ is then its
            # first in processing order, whichever partition it ran on. (ts, SEQ) order is unchanged.
            start, self.released = self.released, self.released + rows.height
            rows = rows.with_columns(pl.int_range(start, self.released, dtype=pl.Int64).alias(SEQ))
        source_step = self.spec.steps[0]
        self._run({source_step: rows if rows is not None and rows.height else None}, {source_step: (watermark, idle)})

    # -- the stage's steps -------------------------------------------------------------
    def _run(self, outputs: dict[int, pl.DataFrame | None], watermarks: dict[int, Watermark]) -> None:
        self.metrics.batches += 1

        def read_input(step_id: int, index: int, src: int) -> Input:
            edge_id = self.external.get((step_id, index))
            if edge_id is None:  # a step of this stage
                return outputs[src], watermarks[src]
            merger = self.mergers[edge_id]  # rows from other actors
            return merger.release(), merger.watermark

        run_steps(self.spec.steps, self.inputs_of, self.ops, outputs, watermarks, read_input)
        self._route(outputs, watermarks)

    def _route(self, outputs: dict[int, pl.DataFrame | None], watermarks: dict[int, tuple[int, bool]]) -> None:
        for edge in self.spec.outputs:
            rows, (wm, idle) = outputs[edge.src_step], watermarks[edge.src_step]
            n = self.topology.stages[edge.dst_stage].parallelism
            parts = split_by_key(rows, edge.keys, n) if rows is not None else [None] * n
            self.metrics.rows_out += 0 if rows is None else rows.height
            for dst, part in enumerate(parts):
                has_rows = part is not None and part.height > 0
                if has_rows or self.sent.get((edge.id, dst)) != (wm, idle):
                    self.sent[(edge.id, dst)] = (wm, idle)
                    self.emit(edge, dst, part if has_rows else None, wm, idle)
        for name, step_id in self.spec.sinks:
            rows, (wm, idle) = outputs[step_id], watermarks[step_id]
            key = (-1 - self.spec.sinks.index((name, step_id)), 0)
            if rows is not None or self.sent.get(key) != (wm, idle):
                self.sent[key] = (wm, idle)
                if rows is not None:
                    self.metrics.rows_out += rows.height
                self.output(name, rows, wm, idle)
        last = [wm for wm, _ in (watermarks[s] for s in self.spec.steps if s in watermarks)]
        if last:
            self.metrics.watermark = max(self.metrics.watermark, min(last))

    # -- checkpoints (volga.runtime.ray.durable) ----------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """This partition's whole state, taken when no batch is in flight (``ops.protocol``)."""
        state: dict[str, Any] = {
            "operators": {str(s): op.snapshot() for s, op in self.ops.items()},
            "inputs": {str(e): m.snapshot() for e, m in self.mergers.items()},
            "metrics": dataclasses.asdict(self.metrics),
            "released": self.released,
        }
        if self.source is not None:
            state["source"] = self.source.snapshot()
            state["next_seq"] = self.source.reader.next_seq
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue as the snapshotted partition would (on a freshly configured task)."""
        for step_id, op in self.ops.items():
            op.restore(state["operators"][str(step_id)])
        for edge_id, merger in self.mergers.items():
            merger.restore(state["inputs"][str(edge_id)])
        self.metrics = TaskMetrics(**state["metrics"])
        self.released = state["released"]
        if self.source is not None:
            self.source.restore(state["source"])
            # a reader without a position re-reads its first rows and skips them: they are numbered again
            skipped = state["source"]["polled"] if state["source"]["position"] is None else 0
            self.source.reader.next_seq = state["next_seq"] - skipped

    # -- what the job reads at the end -------------------------------------------------
    def late_events(self) -> pl.DataFrame:
        if self.source is None:
            return pl.DataFrame()
        return self.source.late_events().drop(SEQ, strict=False)

    def window_late_events(self) -> dict[int, pl.DataFrame]:
        """Step id -> the rows each tumbling/hopping window of this task set aside as late
        (they came after their window was emitted), in arrival order, ``SEQ`` included (the
        driver merges the partitions by it)."""
        return {step_id: rows for step_id, op in self.ops.items() if (rows := op.late_rows()) is not None}

    def drain_rejected(self) -> list[Any]:
        out: list[Any] = []
        if self.source is not None:
            out.extend(self.source.reader.drain_rejected())
        for op in self.ops.values():
            out.extend(op.drain_rejected())
        return out

    @property
    def finished(self) -> bool:
        return all(m.finished for m in self.mergers.values())
