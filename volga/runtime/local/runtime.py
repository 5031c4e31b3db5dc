"""The embedded runtime: open the plan's sources and drive it in this process.

``LocalRuntime.start`` is the one entry point a runtime offers the client: it takes a
compiled plan, the job's mode and params, and a ``sink(pipeline, rows)`` that writes the
stores, and returns a :class:`Job`.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Literal

from volga.plan.compile import PhysicalPlan
from volga.runtime.local.checkpointing import Checkpointer, CheckpointOptions
from volga.runtime.local.executors import Metrics, Sink, StreamOptions, collect_rejected, run_batch, run_streaming
from volga.runtime.local.job import Job
from volga.runtime.local.stage import LateRowReport, SourceStage

Mode = Literal["offline", "online"]


def make_sources(plan: PhysicalPlan, mode: Mode, params: Any) -> dict[int, Any]:
    """Call each source definition with the job's params; check what it returned."""
    from volga.sources.base import Source  # the runtime drives sources; it does not build them

    sources: dict[int, Any] = {}
    for step in plan.source_steps():
        assert step.source is not None
        source = step.source.call(params)
        if not isinstance(source, Source):
            raise TypeError(f"@source {step.source.name} must return a volga.Source, got {type(source).__name__}")
        if mode == "offline" and not source.bounded:
            raise ValueError(
                f"offline mode reads bounded history, but @source {step.source.name} returned an "
                f"unbounded {source.describe()}; use mode='online' or pass params that select a bounded source"
            )
        sources[step.id] = source
    return sources


def open_sources(plan: PhysicalPlan, mode: Mode, params: Any) -> dict[int, Any]:
    """A reader per source step; a failure closes what was opened and raises."""
    readers: dict[int, Any] = {}
    try:
        for step_id, source in make_sources(plan, mode, params).items():
            step = plan.steps[step_id]
            assert step.source is not None
            readers[step_id] = source.open(step.schema, name=step.source.name, mode=mode)
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise
    return readers


@dataclasses.dataclass(frozen=True)
class LocalRuntime:
    """Everything in this process: no servers, nothing to install."""

    def start(
        self,
        plan: PhysicalPlan,
        mode: Mode,
        params: Any,
        sink: Sink,
        *,
        block: bool,
        options: StreamOptions,
        checkpoint: CheckpointOptions | None = None,
    ) -> Job:
        readers = open_sources(plan, mode, params)
        ops = plan.build_operators()

        late_report = LateRowReport()

        def cleanup() -> None:
            for reader in readers.values():
                reader.close()
            late_report.flush()  # the late rows since the last summary line

        checkpointer: Checkpointer | None = None
        if mode == "offline":
            stages: dict[int, SourceStage] = {}

            def work(stop: threading.Event, metrics: Metrics) -> None:
                run_batch(plan, ops, readers, sink, metrics)
        else:
            stages = {s.id: SourceStage(s.source, readers[s.id], late_report) for s in plan.source_steps() if s.source}
            if checkpoint is not None:
                try:
                    checkpointer = Checkpointer(plan, ops, stages, checkpoint)
                except BaseException:
                    cleanup()
                    raise

            def work(stop: threading.Event, metrics: Metrics) -> None:
                if checkpointer is None:
                    run_streaming(plan, ops, stages, sink, metrics, stop, options)
                    return

                ckpt = checkpointer

                def at_boundary(metrics: Metrics, final: bool) -> bool:
                    if final:
                        ckpt.take(metrics)
                        return True
                    done = ckpt.written()
                    # Not in the call that saw a write finish: the sources commit the
                    # positions of their last snapshot, which must be the written one's.
                    if not done and not ckpt.writing and ckpt.due():
                        ckpt.take_in_background(metrics)
                    return done

                try:
                    run_streaming(plan, ops, stages, sink, metrics, stop, options, at_boundary)
                finally:
                    ckpt.close()

        by_name = {stage.source.name: stage for stage in stages.values()}
        job = Job(mode, list(plan.outputs), work, by_name, lambda: collect_rejected(ops, readers), cleanup)
        job.readers = list(readers.values())  # read-only, for progress reporting
        if mode == "online" and checkpointer is not None:
            try:  # before the job starts: a refused definition change is raised here
                checkpointer.resume(job.metrics)
            except BaseException:
                cleanup()
                raise
        return job.start(block)

