"""The Ray actor that hosts one :class:`StageTask`, and the bounded edges between actors.

Actors are generic and pooled: ``configure`` gives one a stage partition of a job;
``reset`` returns it to the pool. Batches travel as Arrow IPC streams (``bytes``, see
``exchange.to_wire``). Each edge to a receiver
allows ``max_in_flight`` unfinished ``receive`` calls; one more blocks the sender until
the oldest is done, so a slow stage slows everything upstream of it, back to the source
polls, instead of queueing batches. A failed call (a dead receiver, an error in it)
raises in the sender and from there reaches the driver.

Output batches go to the job's :class:`Outbox` the same way: up to ``max_in_flight``
unfinished ``put`` calls per last-stage actor, numbered so the outbox keeps each
sender's order; the driver takes everything queued in one call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import polars as pl

from volga._optional import optional_import
from volga.runtime.heap import frozen_while_streaming
from volga.runtime.ray.durable import pack, unpack
from volga.runtime.ray.exchange import from_wire, to_wire
from volga.runtime.ray.task import StageTask, TaskMetrics
from volga.runtime.ray.topology import Edge, Topology


def _frame(table: bytes | None) -> pl.DataFrame | None:
    return from_wire(table)


class StageWorker:
    def __init__(self) -> None:
        self.ray = optional_import("ray", extra="ray", what="RayRuntime")
        self.task: StageTask | None = None
        self.in_flight: dict[tuple[int, int], collections.deque[Any]] = {}
        self._frozen = contextlib.ExitStack()

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
        self.outbox_sender, self.outbox_seq = (stage_id, partition), 0
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
        # As in the embedded runtime: full collections skip what is alive now (the imports,
        # the plan, this task) while the actor runs a job (``volga.runtime.heap``).
        self._frozen.close()
        self._frozen.enter_context(frozen_while_streaming())

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
        seq, self.outbox_seq = self.outbox_seq, self.outbox_seq + 1
        ref = self.outbox.put.remote(self.outbox_sender, seq, (name, self.task.partition, table, watermark, idle))
        queue = self.in_flight.setdefault(_OUTBOX, collections.deque())
        queue.append(ref)
        while len(queue) > self.max_in_flight:
            self.ray.get(queue.popleft())

    # -- called by other actors and the driver -------------------------------------------
    def receive(self, edge_id: int, sender: int, table: bytes | None, watermark: int, idle: bool) -> None:
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

    # -- checkpoints (the driver calls these only while no batch is in flight) -----------
    def snapshot(self) -> Any:
        """The task's State, packed for Ray (``durable.pack``)."""
        assert self.task is not None
        return pack(self.task.snapshot())

    def restore(self, state: Any) -> None:
        assert self.task is not None
        self.task.restore(unpack(state))

    def commit_source(self) -> None:
        """After a checkpoint is written: the source's positions committed (Kafka group
        offsets), for lag monitoring; the checkpoint is what a restarted job resumes from."""
        if self.task is not None and self.task.source is not None:
            self.task.source.commit_checkpointed()

    def rewind_source(self) -> None:
        """Read the source from its first row (a job rebuilding its state)."""
        assert self.task is not None and self.task.source is not None
        self.task.source.reader.rewind()

    def metrics(self) -> TaskMetrics | None:
        return None if self.task is None else self.task.metrics

    def results(self) -> tuple[TaskMetrics, bytes | None, list[Any], dict[int, bytes]]:
        """Metrics, late events (sources), rejected records and the late rows of each
        tumbling/hopping window (step id -> rows), read once at the end (``to_wire``)."""
        assert self.task is not None
        windows = {step: to_wire(rows) for step, rows in self.task.window_late_events().items()}
        return self.task.metrics, self.late_events(), self.task.drain_rejected(), windows

    def late_events(self) -> bytes | None:
        """A source's late rows (``exchange.from_wire`` reads them)."""
        assert self.task is not None
        return to_wire(self.task.late_events()) if self.task.source is not None else None

    def reset(self) -> None:
        if self.task is not None and self.task.source is not None:
            self.task.source.reader.close()
        self.task, self.peers, self.outbox, self.in_flight = None, {}, None, {}
        self._frozen.close()

    def ping(self) -> bool:
        return True


_OUTBOX = (-1, 0)  # the in-flight key of a last-stage actor's calls to the outbox


class Outbox:
    """A job's output batches on their way to the driver: at most ``maxsize`` queued.

    Senders number their ``put`` calls (0, 1, ...; Ray may start an async actor's calls
    out of order); an item is queued only after its sender's previous one, so each
    sender's batches keep their order. A ``put`` returns once its item is queued (it
    waits for room: the sender's bounded in-flight calls then hold it back). ``take``
    returns everything queued, waiting up to ``wait_s`` for a first item."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: collections.deque[Any] = collections.deque()
        self.next_seq: dict[Any, int] = {}
        self.wakes = 0
        self.changed = asyncio.Condition()

    async def put(self, sender: Any, seq: int, item: Any) -> None:
        async with self.changed:
            await self.changed.wait_for(
                lambda: self.next_seq.get(sender, 0) == seq and len(self.items) < self.maxsize)
            self.items.append(item)
            self.next_seq[sender] = seq + 1
            self.changed.notify_all()

    async def take(self, wait_s: float) -> list[Any]:
        async with self.changed:
            if not self.items and wait_s > 0:
                wakes = self.wakes
                try:
                    await asyncio.wait_for(self.changed.wait_for(lambda: bool(self.items) or self.wakes != wakes), wait_s)
                except asyncio.TimeoutError:
                    pass
            out = list(self.items)
            self.items.clear()
            self.changed.notify_all()
            return out

    async def wake(self) -> None:
        """Make a waiting ``take`` return now (the driver's last one, at the end of a job)."""
        async with self.changed:
            self.wakes += 1
            self.changed.notify_all()

    async def reset(self) -> int:
        """Forget senders' numbering and drop queued items (a new job); how many were dropped."""
        async with self.changed:
            dropped = len(self.items)
            self.items.clear()
            self.next_seq = {}
            self.changed.notify_all()
            return dropped


_REMOTE: dict[str, Any] = {}


def remote_worker_class() -> Any:
    """``StageWorker`` as a Ray actor class (made once, when Ray is first needed).

    ``num_cpus=0``: actors mostly wait on each other; the OS shares the cores."""
    if "worker" not in _REMOTE:
        ray = optional_import("ray", extra="ray", what="RayRuntime")
        _REMOTE["worker"] = ray.remote(num_cpus=0, max_restarts=0)(StageWorker)
    return _REMOTE["worker"]


def remote_outbox_class() -> Any:
    """``Outbox`` as a Ray actor class (an async actor: waiting puts and takes share it)."""
    if "outbox" not in _REMOTE:
        ray = optional_import("ray", extra="ray", what="RayRuntime")
        _REMOTE["outbox"] = ray.remote(num_cpus=0, max_restarts=0)(Outbox)
    return _REMOTE["outbox"]
