"""Checkpoints of an embedded streaming job: when to take them, what goes in, how a job
resumes from one.

A checkpoint is taken between two micro-batches (every operator is then between calls,
the sink has written everything produced so far), once ``interval_s`` has passed since
the last one, and when the job ends or is stopped; with ``starting_point`` (every job
the client or a DataStream context starts), a job that starts without a checkpoint
writes its starting point first. The
snapshot is taken there; its files are written by a background thread while the job goes
on (the final one is waited for). It holds every operator's
``snapshot()``, each source stage's held rows, watermark inputs and reader position,
the job's counters, and what the sink reports (``SinkState``: rows written per pipeline,
the in-memory store's contents). Consumer-group offsets are committed only after a
checkpoint's manifest is written: with checkpoints, they are for lag monitoring, not for
resuming.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

from volga.api.types import Duration, parse_duration_us
from volga.errors import JobFailed
from volga.ops.protocol import Operator, State
from volga.plan.compile import PhysicalPlan, Step
from volga.runtime.checkpoint import Checkpoint, CheckpointStore, DefinitionChanged, describe_changes
from volga.runtime.local.executors import Metrics
from volga.runtime.local.stage import SourceStage

log = logging.getLogger("volga.checkpoint")

OnDefinitionChange = Literal["refuse", "rebuild"]


class SinkState(Protocol):
    """The stores' side of a checkpoint (implemented by the client's sink)."""

    def snapshot(self) -> State: ...

    def restore(self, state: State) -> None: ...

    def reset(self) -> None:
        """Drop the job's outputs (before rebuilding them from the sources' history)."""

    def start_fresh(self) -> None:
        """Prepare the outputs of a job that starts without a checkpoint."""


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    store: CheckpointStore
    interval_s: float
    sink: SinkState
    on_definition_change: OnDefinitionChange = "refuse"
    # what the state belongs to besides the plan (a DataStream job's sinks), one line each
    fingerprint: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # a job starting without a checkpoint writes its starting point first (as Ray jobs do)
    starting_point: bool = False


def checkpoint_options(
    where: str, checkpoint_dir: str | Path, interval: Duration, sink: SinkState, on_definition_change: str,
    fingerprint: Mapping[str, str] | None = None, *, starting_point: bool = False, keep: int = 3,
) -> CheckpointOptions:
    """The options of a checkpointed online job from ``checkpoint_dir``,
    ``checkpoint_interval``, ``on_definition_change`` and ``checkpoint_keep`` (``keep``) as
    a user passes them; errors name ``where`` (the call they were passed to).

    >>> import tempfile
    >>> checkpoint_options("execute()", tempfile.mkdtemp(), "2s", None, "rebuild").interval_s
    2.0
    """
    if on_definition_change not in ("refuse", "rebuild"):
        raise ValueError(f"{where}: on_definition_change must be 'refuse' or 'rebuild', not {on_definition_change!r}")
    interval_s = parse_duration_us(interval, what=f"{where}: checkpoint_interval") / 1e6
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"{where}: checkpoint_keep must be an int >= 1 (how many checkpoints to keep), got {keep!r}")
    store = CheckpointStore(checkpoint_dir, keep=keep)
    return CheckpointOptions(store, interval_s, sink, on_definition_change, dict(fingerprint or {}), starting_point)  # type: ignore[arg-type]


def _step_detail(step: Step) -> str:
    parts = [step.describe(), f"inputs {step.inputs}", f"schema {step.schema.describe()}"]
    if step.source is not None:
        parts.append(f"lateness {step.source.lateness_us}us")
    if step.spec is not None:
        parts.extend(step.spec.fingerprint())
    return "; ".join(parts)


def plan_fingerprint(plan: PhysicalPlan) -> dict[str, str]:
    """One line per pipeline output and per step: what a checkpoint's state belongs to."""
    fp = {f"pipeline {name}": f"output of step {sid}" for name, sid in plan.outputs.items()}
    fp.update({f"step {s.id}": _step_detail(s) for s in plan.steps})
    return fp


def latest_of_this_definition(options: CheckpointOptions, fingerprint: dict[str, str]) -> tuple[Checkpoint | None, bool]:
    """The latest checkpoint, if it was taken of the definition with ``fingerprint``, and
    whether the job starts over from its sources' history.

    No checkpoint: ``(None, False)``, the stores start fresh. A changed definition raises
    :class:`DefinitionChanged` naming what changed, unless ``on_definition_change="rebuild"``:
    then ``(None, True)``, the stores' outputs dropped (the caller rewinds its sources).
    """
    latest = options.store.latest()
    if latest is None:
        options.sink.start_fresh()
        return None, False
    if latest.fingerprint == fingerprint:
        return latest, False
    changes = "; ".join(describe_changes(latest.fingerprint, fingerprint))
    if options.on_definition_change != "rebuild":
        raise DefinitionChanged(
            f"checkpoint {latest.id} in {options.store.url} was taken of a different definition: {changes}. "
            "Pass on_definition_change='rebuild' to rebuild the state from the sources' history, or use a new checkpoint_dir"
        )
    log.warning("definition changed since checkpoint %d (%s): rebuilding from the sources' history", latest.id, changes)
    options.sink.reset()
    options.sink.start_fresh()
    return None, True


class Checkpointer:
    def __init__(
        self, plan: PhysicalPlan, ops: Mapping[int, Operator], stages: dict[int, SourceStage], options: CheckpointOptions,
    ) -> None:
        self.plan, self.ops, self.stages, self.options = plan, ops, stages, options
        self.fingerprint = {**plan_fingerprint(plan), **options.fingerprint}
        self.last_at = time.monotonic()
        self.taken = 0
        self._started: tuple[Metrics, float] | None = None  # the background write in flight: its job and start
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[int] | None = None

    def resume(self, metrics: Metrics) -> int | None:
        """Restore the latest checkpoint into the plan, stages, counters and stores.

        Returns its id (None: there was none, or the definition changed and
        ``on_definition_change="rebuild"`` made the job start over from the sources' history).
        """
        latest, rebuild = latest_of_this_definition(self.options, self.fingerprint)
        if latest is None:
            if rebuild:
                for stage in self.stages.values():
                    stage.reader.rewind()
            if self.options.starting_point:
                # A crash before the first periodic checkpoint resumes from here; without it
                # the rerun would start fresh, numbering the sinks' rows from 0 again over
                # the rows the crashed run wrote (Redis, appended files and tables).
                try:
                    self.options.store.write(self.snapshot(metrics), self.fingerprint)
                except Exception as e:
                    raise JobFailed(f"writing the starting checkpoint to {self.options.store.url} failed: {type(e).__name__}: {e}") from e
            return None
        state = latest.state
        if state.get("runtime") == "ray":  # laid out per stage partition (volga.runtime.ray.durable)
            raise ValueError(
                f"checkpoint {latest.id} in {self.options.store.url} was taken by a Ray job; the embedded runtime "
                "cannot restore it. Resume it with the RayRuntime of the same parallelism, or use a new checkpoint_dir"
            )
        for step_id, op in self.ops.items():
            op.restore(state["operators"].get(str(step_id), {}))
        for step_id, stage in self.stages.items():
            stage.restore(state["sources"][str(step_id)])
        counters = state["counters"]
        metrics.rows_out.update(counters.get("rows_out", {}))
        metrics.late.update(counters.get("late", {}))
        metrics.batches = counters.get("batches", 0)
        self.options.sink.restore(state["sink"])
        log.info("resumed from checkpoint %d of %s", latest.id, self.options.store.url)
        return latest.id

    def due(self) -> bool:
        return time.monotonic() - self.last_at >= self.options.interval_s

    def snapshot(self, metrics: Metrics) -> State:
        """Everything, now (between micro-batches). Snapshots are copies or immutable frames,
        so the job may go on while they are written."""
        return {
            "operators": {str(step_id): op.snapshot() for step_id, op in self.ops.items()},
            "sources": {str(sid): stage.snapshot() for sid, stage in self.stages.items()},
            "counters": {"rows_out": dict(metrics.rows_out), "late": dict(metrics.late), "batches": metrics.batches},
            "sink": self.options.sink.snapshot(),
        }

    def take(self, metrics: Metrics) -> int:
        """Snapshot and write now, waiting for the write (the final checkpoint)."""
        self.wait_written()
        started = time.perf_counter()
        ckpt = self.options.store.write(self.snapshot(metrics), self.fingerprint)
        self.last_at = time.monotonic()
        self.taken += 1
        self._record(metrics, time.perf_counter() - started)
        return ckpt

    def _record(self, metrics: Metrics, seconds: float) -> None:
        """The last checkpoint's figures, for ``volga_checkpoint_*`` metrics."""
        metrics.checkpoints += 1
        metrics.checkpoint_seconds = seconds
        metrics.checkpoint_bytes = getattr(self.options.store, "last_bytes", None)
        metrics.checkpoint_unix = time.time()

    def take_in_background(self, metrics: Metrics) -> None:
        """Snapshot now; write the files in a background thread while the job goes on (Arrow
        writes release the GIL). One write at a time: a previous one is waited for first."""
        self.wait_written()
        self._started = (metrics, time.perf_counter())
        state = self.snapshot(metrics)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="volga-checkpoint")
        self._pending = self._pool.submit(self.options.store.write, state, self.fingerprint)
        self.last_at = time.monotonic()

    @property
    def writing(self) -> bool:
        return self._pending is not None

    def written(self) -> bool:
        """True if a background write finished since the last call (its error is raised)."""
        if self._pending is None or not self._pending.done():
            return False
        self.wait_written()
        return True

    def wait_written(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
            self.taken += 1
            if self._started is not None:
                metrics, started = self._started
                self._record(metrics, time.perf_counter() - started)
                self._started = None

    def close(self) -> None:
        """Wait for a write in flight (a failed job's last checkpoint is still consistent)."""
        try:
            self.wait_written()
        except Exception:  # the job's own error is what gets reported
            log.exception("checkpoint write failed")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
