"""The Ray actor that hosts one :class:`StageTask`, and the bounded edges between actors.

Actors are generic and pooled: ``configure`` gives one a stage partition of a job;
``reset`` returns it to the pool. Batches travel as Arrow tables (Ray passes them
through its object store without copying the buffers on read). Each edge to a receiver
allows ``max_in_flight`` unfinished ``receive`` calls; one more blocks the sender until
the oldest is done, so a slow stage slows everything upstream of it, back to the source
polls, instead of queueing batches. A failed call (a dead receiver, an error in it)
raises in the sender and from there reaches the driver.
"""

from __future__ import annotations

import collections
from typing import Any

import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]

from volga._optional import optional_import
from volga.runtime.ray.exchange import from_wire, to_wire
from volga.runtime.ray.task import StageTask, TaskMetrics
from volga.runtime.ray.topology import Edge, Topology


def _frame(table: pa.Table | None) -> pl.DataFrame | None:
    return from_wire(table)


class StageWorker:
    def __init__(self) -> None:
        self.ray = optional_import("ray", extra="ray", what="RayRuntime")
        self.task: StageTask | None = None
        self.in_flight: dict[tuple[int, int], collections.deque[Any]] = {}

    def configure(
        self,
        topology: Topology,
        stage_id: int,
        partition: int,
        mode: str,
        peers: dict[int, list[Any]],
        outbox: Any,
        max_in_flight: int,
        source: Any = None,
    ) -> None:
        self.peers, self.outbox, self.max_in_flight = peers, outbox, max_in_flight
        self.in_flight = {}
        reader = None
        if source is not None:
            step = topology.plan.steps[topology.stages[stage_id].steps[0]]
            assert step.source is not None
            parts = topology.stages[stage_id].parallelism
            if parts > 1:
                reader = source.open_partition(step.schema, partition, parts, name=step.source.name, mode=mode)
            else:
                reader = source.open(step.schema, name=step.source.name, mode=mode)
        self.task = StageTask(topology, stage_id, partition, mode, self._emit, self._output, reader)  # type: ignore[arg-type]

    def _emit(self, edge: Edge, dst: int, rows: pl.DataFrame | None, watermark: int, idle: bool) -> None:
        assert self.task is not None
        table = None if rows is None else to_wire(rows)
        ref = self.peers[edge.dst_stage][dst].receive.remote(edge.id, self.task.partition, table, watermark, idle)
        queue = self.in_flight.setdefault((edge.dst_stage, dst), collections.deque())
        queue.append(ref)
        while len(queue) > self.max_in_flight:
            self.ray.get(queue.popleft())

    def _output(self, name: str, rows: pl.DataFrame | None, watermark: int, idle: bool) -> None:
        assert self.task is not None
        table = None if rows is None else to_wire(rows)
        self.outbox.put((name, self.task.partition, table, watermark, idle), block=True)

    # -- called by other actors and the driver -------------------------------------------
    def receive(self, edge_id: int, sender: int, table: pa.Table | None, watermark: int, idle: bool) -> None:
        assert self.task is not None, "receive on an unconfigured worker"
        self.task.receive(edge_id, sender, _frame(table), watermark, idle)

    def poll_source(self, batch_size: int, max_delay_s: float) -> bool:
        assert self.task is not None
        return self.task.poll_source(batch_size, max_delay_s)

    def read_all(self, batch_size: int) -> bool:
        assert self.task is not None
        self.task.read_all(batch_size)
        return True

    def finish_source(self) -> None:
        assert self.task is not None
        self.task.finish_source()

    def health(self) -> int:
        """Raise the error of any finished outgoing call; return how many are in flight."""
        pending = 0
        for queue in self.in_flight.values():
            while queue:
                ready, _ = self.ray.wait([queue[0]], timeout=0)
                if not ready:
                    break
                self.ray.get(queue.popleft())
            pending += len(queue)
        return pending

    def flush(self) -> None:
        """Wait for every outgoing call (raising its error, if any)."""
        for queue in self.in_flight.values():
            while queue:
                self.ray.get(queue.popleft())

    def metrics(self) -> TaskMetrics | None:
        return None if self.task is None else self.task.metrics

    def results(self) -> tuple[TaskMetrics, pa.Table | None, list[Any], dict[int, pa.Table]]:
        """Metrics, late events (sources, as Arrow), rejected records and the late rows of
        each tumbling/hopping window (step id -> Arrow), read once at the end."""
        assert self.task is not None
        windows = {step: to_wire(rows) for step, rows in self.task.window_late_events().items()}
        return self.task.metrics, self.late_events(), self.task.drain_rejected(), windows

    def late_events(self) -> pa.Table | None:
        """A source's late rows as an Arrow table (``exchange.from_wire`` reads it)."""
        assert self.task is not None
        return to_wire(self.task.late_events()) if self.task.source is not None else None

    def reset(self) -> None:
        if self.task is not None and self.task.source is not None:
            self.task.source.reader.close()
        self.task, self.peers, self.outbox, self.in_flight = None, {}, None, {}

    def ping(self) -> bool:
        return True


_REMOTE: dict[str, Any] = {}


def remote_worker_class() -> Any:
    """``StageWorker`` as a Ray actor class (made once, when Ray is first needed).

    ``num_cpus=0``: actors mostly wait on each other; the OS shares the cores."""
    if "worker" not in _REMOTE:
        ray = optional_import("ray", extra="ray", what="RayRuntime")
        _REMOTE["worker"] = ray.remote(num_cpus=0, max_restarts=0)(StageWorker)
    return _REMOTE["worker"]
