"""``RayRuntime``: run a materialization as Ray actors, with the embedded runtime's results.

Usage (needs a Ray session; tested in ``tests/ray``)::

    client = volga.Client(runtime=volga.RayRuntime(parallelism=2))
    client.materialize([user_spent], mode="offline")

How a job runs: the plan is split into stages (:mod:`.topology`); each source stage is
one actor (offline, a partitioned source such as a multi-row-group Parquet file: up to
``parallelism`` actors, one per part), each keyed stage ``parallelism`` actors, all taken from a pool kept by the
runtime (an actor costs about a second to start; jobs reuse them). The driver (the job's
thread in the calling process) asks each source actor for one micro-batch at a time
(online) or the whole bounded history (offline); the actor pushes rows downstream over
bounded edges (:mod:`.actor`). Rows leave the last stage through one bounded outbox
actor to the driver, which waits on its source calls and on one outbox ``take`` at a
time together, so it reacts as soon as either finishes (no polling timeouts).

**Sinks: the driver writes the stores.** Output batches return to the driver, which
merges the partitions by watermark into the embedded runtime's exact row order and
writes them with the client's own stores. Chosen over actors writing shared stores
because (1) results are then identical to the embedded runtime row for row, including
the offline store's row order and the order of writes per key in the online store;
(2) every store works, the in-memory online store included, so nothing has to be
refused; (3) a re-run's ``replace`` of the offline rows stays one atomic call. The cost
is that one process writes every output row: the benchmark (``benchmarks/ray_scaling.py``)
measures it; pipelines whose outputs are far fewer than their inputs (filters, joins
feeding windows are 1:1, but sources usually dwarf the online writes of a cluster) are
limited by their keyed stages first.

**Output row order**: each pipeline's rows are written in processing order, i.e. by
output timestamp, ties in arrival order at the source the row descends from (the left
input of a join): the order the embedded runtime writes them in, for every parallelism.

**Checkpoints** (online, ``checkpoint=`` from ``materialize(checkpoint_dir=...)``): every
interval the driver stops polling sources, waits until no batch is in flight (every
edge flushed in topological order, every output written), snapshots every actor and its
own held output rows, and writes them in the background in the embedded runtime's
checkpoint format, one state per stage partition (:mod:`.durable`). A job starting
without a checkpoint writes its starting point first; ``stop()`` and the end of a bounded
job write a final one. Consumer-group offsets are committed after each checkpoint.

**Failures**: without checkpoints, any actor dying or raising ends the job with
:class:`volga.JobFailed` naming the stage; nothing is retried, so nothing is silently
lost. With checkpoints, the job's actors are killed and replaced, the last complete
checkpoint is restored (stores included: exactly-once effect) and the job goes on, up to
``max_restarts`` times. A checkpoint resumed with another ``parallelism`` has its keyed
state redistributed (:mod:`.rescale`; what cannot be is refused naming both values).
Without checkpoints, reader commits (Kafka offsets) are not made on Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Literal

import polars as pl

from volga._optional import optional_import
from volga.api.decorators import Params
from volga.errors import JobFailed, Rejected
from volga.plan.compile import PhysicalPlan
from volga.runtime.checkpoint import Checkpoint, DefinitionChanged
from volga.runtime.local.checkpointing import CheckpointOptions
from volga.runtime.local.executors import Metrics, Sink, StreamOptions
from volga.runtime.local.job import Job
from volga.runtime.local.runtime import make_sources
from volga.runtime.local.stage import FINISHED_WM, NO_WM
from volga.runtime.ray.actor import remote_outbox_class, remote_worker_class
from volga.runtime.ray.durable import RUNTIME, RayCheckpointer, RescaleRefused, pack
from volga.runtime.ray.exchange import SEQ, InputMerger, from_wire
from volga.runtime.ray.task import TaskMetrics
from volga.runtime.ray.topology import Topology, portable, split_plan
from volga.sources.base import Source

Mode = Literal["offline", "online"]

log = logging.getLogger("volga.ray")


@dataclasses.dataclass(frozen=True)
class StageStats:
    """What one stage did, summed over its actors. ``lag_s``: how far the stage's output
    watermark trails the newest event read by any source (0 when caught up or finished)."""

    stage: str
    actors: int
    rows_in: int
    rows_out: int
    batches: int
    busy_s: float
    rows_per_s: float
    lag_s: float


class RayRuntime:
    """Run materializations on Ray (``address=None``: start or join a local Ray).

    ``parallelism``: actors per keyed stage. ``max_in_flight``: unfinished batches allowed
    per edge (sender, receiver) before the sender waits. ``ray_init``: extra
    ``ray.init`` arguments, used only if Ray is not initialised yet. ``max_restarts``: how
    many times a checkpointed online job (``checkpoint_dir=``) whose actor died or failed
    is restarted from its last checkpoint before it fails (a job without checkpoints fails
    at once).
    """

    def __init__(
        self,
        address: str | None = None,
        parallelism: int = 2,
        *,
        max_in_flight: int = 4,
        ray_init: dict[str, Any] | None = None,
        max_restarts: int = 3,
    ) -> None:
        if not isinstance(parallelism, int) or parallelism < 1:
            raise ValueError(f"RayRuntime: parallelism must be a positive int, got {parallelism!r}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"RayRuntime: max_in_flight must be a positive int, got {max_in_flight!r}")
        if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
            raise ValueError(f"RayRuntime: max_restarts must be an int >= 0, got {max_restarts!r}")
        self.ray = optional_import("ray", extra="ray", what="RayRuntime")
        self.address = address
        self.parallelism = parallelism
        self.max_in_flight = max_in_flight
        self.ray_init = dict(ray_init or {})
        self.max_restarts = max_restarts

    def __repr__(self) -> str:
        return f"RayRuntime(address={self.address!r}, parallelism={self.parallelism})"

    # -- actors ------------------------------------------------------------------------
    def _connect(self) -> None:
        if not self.ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": True, **self.ray_init}
            self.ray.init(address=self.address, **options)

    def _acquire(self, n: int) -> tuple[list[Any], Any]:
        self._connect()
        actors, outbox = _POOL.take(self.ray, n)
        worker = remote_worker_class()
        actors += [worker.remote() for _ in range(n - len(actors))]
        if outbox is None:
            outbox = remote_outbox_class().remote(_OUTBOX_ITEMS)
        return actors, outbox

    def _release(self, actors: list[Any], outbox: Any, healthy: bool) -> None:
        if healthy:
            try:
                self.ray.get([a.reset.remote() for a in actors], timeout=30)
            except Exception:  # a worker that cannot reset is not reused
                healthy = False
        if not healthy:
            for actor in [*actors, outbox]:
                self.ray.kill(actor)
            return
        _POOL.give(self.ray, actors, outbox)

    def source_readers(self, source: Source, mode: Mode) -> int:
        """Actors reading ``source``: up to ``parallelism`` parts of a partitioned source
        (Parquet row groups) offline; one otherwise (online reads keep one arrival order)."""
        if mode != "offline" or not source.bounded:
            return 1
        return max(1, min(self.parallelism, source.partitions()))

    @staticmethod
    def shutdown() -> None:
        """Kill the pooled idle actors (Ray itself keeps running)."""
        _POOL.clear()

    # -- jobs --------------------------------------------------------------------------
    def start(self, plan: PhysicalPlan, mode: Mode, params: Params | None, sink: Sink, *, block: bool,
              options: StreamOptions, step_parallelism: dict[int, int] | None = None,
              checkpoint: CheckpointOptions | None = None) -> RayJob:
        """Run ``plan`` on Ray; ``sink(pipeline, rows)`` writes the stores (in this process).

        The same entry point as the embedded ``LocalRuntime.start``: the client calls it.
        ``step_parallelism``: actors for the keyed stage a step starts (DataStream
        ``set_parallelism``); other keyed stages get ``parallelism``. ``checkpoint``: an
        online job's checkpoints (``volga.runtime.ray.durable``); the latest one is checked
        here, before the job starts (a changed definition or parallelism raises)."""
        if checkpoint is not None and mode != "online":
            raise ValueError("RayRuntime: checkpoints are for online jobs (an offline job reruns from its sources)")
        sources: dict[int, Source] = make_sources(plan, mode, params)
        readers = {step: self.source_readers(source, mode) for step, source in sources.items()}
        topology = split_plan(plan, self.parallelism, readers, step_parallelism)
        checkpointer, restored = None, None
        if checkpoint is not None:
            checkpointer = RayCheckpointer(topology, checkpoint)
            restored = checkpointer.load()
        driver = _Driver(self, topology, sources, mode, sink, options, checkpointer, restored)
        job = RayJob(mode, list(plan.outputs), driver)
        return job.start(block)  # type: ignore[return-value]


_OUTBOX_ITEMS = 16  # output batches waiting for the driver, over all of a job's last-stage actors
_TAKE_WAIT_S = 0.05  # an outbox take returns (maybe empty) after this long without outputs
_LOOP_WAIT_S = 0.05  # the driver loop looks at ``stop`` at least this often


class _Pool:
    """Idle worker actors and output queues, shared by every RayRuntime of this process
    (an actor takes about a second to start; a job reuses them). Tied to one Ray session."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.session: Any = None
        self.actors: list[Any] = []
        self.outboxes: list[Any] = []

    def _check(self, ray: Any) -> None:
        context = ray.get_runtime_context()
        session = (context.get_node_id(), context.get_job_id())
        if session != self.session:
            self.session, self.actors, self.outboxes = session, [], []

    def take(self, ray: Any, n: int) -> tuple[list[Any], Any]:
        with self.lock:
            self._check(ray)
            actors, self.actors = self.actors[:n], self.actors[n:]
            outbox = self.outboxes.pop() if self.outboxes else None
        return actors, outbox

    def give(self, ray: Any, actors: list[Any], outbox: Any) -> None:
        with self.lock:
            self._check(ray)
            self.actors.extend(actors)
            self.outboxes.append(outbox)

    def clear(self) -> None:
        import ray

        with self.lock:
            actors, outboxes, self.actors, self.outboxes = self.actors, self.outboxes, [], []
        if ray.is_initialized():
            for actor in [*actors, *outboxes]:
                ray.kill(actor)


_POOL = _Pool()


class _Late:
    def __init__(self, driver: _Driver, name: str) -> None:
        self.driver, self.name = driver, name

    def late_events(self) -> pl.DataFrame:
        if self.name in self.driver.late:
            return self.driver.late[self.name]
        for stage in self.driver.topology.stages:  # still running: ask the source's actor
            source = self.driver.source_defs[stage.steps[0]] if stage.kind == "source" else None
            if source is not None and source.name == self.name and stage.id in self.driver.actors:
                late = from_wire(self.driver.ray.get(self.driver.actors[stage.id][0].late_events.remote(), timeout=30))
                if late is not None and late.width:
                    return late
                return pl.DataFrame(schema=source.schema.polars_schema())
        raise KeyError(f"job has no source '{self.name}' yet")


class RayJob(Job):
    """A job on Ray: :class:`volga.Job` plus per-stage figures and the actors."""

    def __init__(self, mode: Mode, pipelines: list[str], driver: _Driver) -> None:
        self.driver = driver
        names = [s.name for s in driver.source_defs.values() if s is not None] if mode == "online" else []
        super().__init__(mode, pipelines, driver.run, {n: _Late(driver, n) for n in names},  # type: ignore[misc]
                         driver.collect_rejected, driver.cleanup)

    def explain(self) -> str:
        """The stages, their actors and the edges between them."""
        return self.driver.topology.explain()

    def stage_stats(self) -> list[StageStats]:
        """Per-stage throughput and lag (live while running, final afterwards)."""
        return self.driver.stage_stats()

    def window_late_events(self) -> dict[int, pl.DataFrame]:
        """Step id -> the rows a tumbling/hopping window set aside as late (they came after
        their window was emitted), over all its actors, in arrival order; read at the end
        of the job (the DataStream layer writes them to the window's late sink)."""
        return dict(self.driver.window_late)

    def actors(self) -> dict[int, list[Any]]:
        """Stage id -> the Ray actor handles running it (for inspection and tests)."""
        return dict(self.driver.actors)

    @property
    def restarts(self) -> int:
        """How many times the job was restarted from a checkpoint after a failure."""
        return self.driver.restarts

    @property
    def checkpoint_pause_s(self) -> float:
        """Seconds the sources stood still for periodic checkpoints (pause, drain, snapshot)."""
        return self.driver.paused_s

    def _raise_if_failed(self) -> None:
        if self._error is not None and not isinstance(self._error, JobFailed):
            super()._raise_if_failed()
        elif self._error is not None:
            raise self._error


class _Driver:
    """The job's loop in the calling process: step sources, drain outputs, write stores."""

    health_every_s = 0.5

    def __init__(
        self, runtime: RayRuntime, topology: Topology, sources: dict[int, Source], mode: Mode,
        write: Sink, options: StreamOptions, checkpointer: RayCheckpointer | None = None,
        restored: Checkpoint | None = None,
    ) -> None:
        self.runtime, self.ray = runtime, runtime.ray
        self.topology, self.plan = topology, topology.plan
        self.sources, self.mode, self.write = sources, mode, write
        self.batch_size, self.max_batch_delay_s = options.batch_size, options.max_batch_delay_s
        self.source_defs = {s.id: s.source for s in self.plan.source_steps()}
        self.actors: dict[int, list[Any]] = {}
        self.outbox: Any = None
        self.final_metrics: dict[tuple[int, int], TaskMetrics] = {}
        self.late: dict[str, pl.DataFrame] = {}
        self.window_late: dict[int, pl.DataFrame] = {}  # window step id -> its late rows
        self.rejected: list[Rejected] = []
        self.metrics: Metrics | None = None
        self.healthy = True
        self.take: Any = None  # the outstanding ``outbox.take`` call, if any
        self.outputs: dict[str, InputMerger] = {}  # per pipeline: the last stage's partitions merged
        self.checkpointer, self.restored = checkpointer, restored
        self.restarts = 0
        self.initial = False  # the snapshot being taken is the job's starting point
        self.paused_s = 0.0  # time the sources stood still for periodic checkpoints (drain and snapshot)
        if checkpointer is not None:
            checkpointer.collect = self._collect

    # -- setup and teardown ------------------------------------------------------------
    def _start(self) -> None:
        self.outputs = {
            name: InputMerger(self.topology.stages[self.topology.stage_of[step]].parallelism,
                              self.plan.steps[step].schema.timestamp)
            for name, step in self.plan.outputs.items()
        }
        stages = self.topology.stages
        actors, self.outbox = self.runtime._acquire(sum(s.parallelism for s in stages))
        for stage in stages:
            self.actors[stage.id], actors = actors[: stage.parallelism], actors[stage.parallelism :]
        topology_ref = self.ray.put(portable(self.topology))
        calls = [self.outbox.reset.remote()]
        for stage in stages:
            source = self.sources[stage.steps[0]] if stage.kind == "source" else None
            for partition, actor in enumerate(self.actors[stage.id]):
                calls.append(actor.configure.remote(
                    topology_ref, stage.id, partition, self.mode, self.actors, self.outbox,
                    self.runtime.max_in_flight, source,
                ))
        self._get(calls, "configuring the job's actors")

    def cleanup(self) -> None:
        if self.actors:
            every = [a for group in self.actors.values() for a in group]
            self.runtime._release(every, self.outbox, self.healthy)

    def collect_rejected(self) -> list[Rejected]:
        out, self.rejected = self.rejected, []
        return out

    def _stage_of(self, actor: Any) -> str:
        for stage_id, group in self.actors.items():
            if actor in group:
                return self.topology.stages[stage_id].label(self.plan) + f", actor {group.index(actor)}"
        return "the output queue"

    def _get(self, refs: Any, what: str, timeout: float | None = None) -> Any:
        try:
            return self.ray.get(refs, timeout=timeout)
        except Exception as e:
            self.healthy = False
            raise JobFailed(f"Ray job failed while {what}: {type(e).__name__}: {e}") from e

    # -- the loop ----------------------------------------------------------------------
    def run(self, stop: threading.Event, metrics: Metrics) -> None:
        self.metrics = metrics
        restored = self.restored
        try:
            while True:
                try:
                    self._start()
                    if self.checkpointer is not None:
                        self._resume(self.checkpointer, restored, metrics)
                    self._loop(stop, metrics)
                    self._finish(metrics)
                    return
                except Exception as e:
                    self.healthy = False
                    if self.checkpointer is None or isinstance(e, (DefinitionChanged, RescaleRefused)):
                        raise
                    if self.restarts >= self.runtime.max_restarts:
                        raise JobFailed(f"Ray job failed after {self.restarts} restart(s) (max_restarts="
                                        f"{self.runtime.max_restarts}): {e}") from e
                    self.restarts += 1
                    log.warning("Ray job failed (%s); restart %d of at most %d, from the last checkpoint",
                                str(e).splitlines()[0] if str(e) else type(e).__name__, self.restarts, self.runtime.max_restarts)
                    self._teardown()
                    restored = self.checkpointer.latest_for_restart()
        except BaseException:
            self.healthy = False
            raise
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()

    def _teardown(self) -> None:
        """Kill a failed attempt's actors (the next attempt gets new ones)."""
        every = [a for group in self.actors.values() for a in group]
        if every:
            self.runtime._release(every, self.outbox, healthy=False)
        self.actors, self.outbox, self.take, self.healthy = {}, None, None, True

    # -- checkpoints -------------------------------------------------------------------
    def _source_actors(self) -> list[Any]:
        return [a for s in self.topology.stages if s.kind == "source" for a in self.actors[s.id]]

    def _resume(self, checkpointer: RayCheckpointer, restored: Checkpoint | None, metrics: Metrics) -> None:
        """Restore ``restored`` into the new actors, the driver and the stores; without one,
        write the job's starting point first (a failure before the first periodic
        checkpoint, or a rerun after the driver died then, restarts from it)."""
        if restored is None:
            if checkpointer.rebuild:
                self._get([a.rewind_source.remote() for a in self._source_actors()], "rewinding the sources")
            self.initial = True
            try:
                checkpointer.take(metrics)
            finally:
                self.initial = False
            return
        state = restored.state
        checkpointer.options.sink.restore(state["sink"])
        counters = state["counters"]
        metrics.rows_out.clear()
        metrics.rows_out.update(counters.get("rows_out", {}))
        metrics.late.clear()
        metrics.late.update(counters.get("late", {}))
        metrics.batches = counters.get("batches", 0)
        if state.get("initial"):  # nothing read yet: fresh actors are that state
            if state.get("rewound"):
                self._get([a.rewind_source.remote() for a in self._source_actors()], "rewinding the sources")
        else:
            calls = [
                actor.restore.remote(pack(state["stages"][str(stage.id)]["partitions"][str(p)]))
                for stage in self.topology.stages for p, actor in enumerate(self.actors[stage.id])
            ]
            self._get(calls, f"restoring checkpoint {restored.id}")
            for name, merger in self.outputs.items():
                merger.restore(state["outputs"][name])
        log.info("resumed from checkpoint %d of %s", restored.id, checkpointer.options.store.url)

    def _collect(self, metrics: Metrics) -> dict[str, Any]:
        """Every actor's state, the driver's and the stores': called only with no batch in flight."""
        from volga.runtime.ray.durable import unpack

        assert self.checkpointer is not None
        every = [(s, p, a) for s, group in self.actors.items() for p, a in enumerate(group)]
        states = self._get([a.snapshot.remote() for _, _, a in every], "taking a checkpoint")
        stages: dict[str, Any] = {
            str(s.id): {"parallelism": s.parallelism, "partitions": {}} for s in self.topology.stages
        }
        for (stage_id, partition, _), state in zip(every, states):
            stages[str(stage_id)]["partitions"][str(partition)] = unpack(state)
        return {
            "runtime": RUNTIME,
            "initial": self.initial,
            "rewound": self.initial and self.checkpointer.rebuild,
            "stages": stages,
            "outputs": {name: m.snapshot() for name, m in self.outputs.items()},
            "counters": {"rows_out": dict(metrics.rows_out), "late": dict(metrics.late), "batches": metrics.batches},
            "sink": self.checkpointer.options.sink.snapshot(),
        }

    def _commit_sources(self) -> None:
        """After a checkpoint is written: group offsets committed (lag monitoring only)."""
        for actor in self._source_actors():
            actor.commit_source.remote()

    def _loop(self, stop: threading.Event, metrics: Metrics) -> None:
        outputs = self.outputs
        ckpt = self.checkpointer
        pausing = False  # a checkpoint is due: no new source polls until it is taken
        paused_at = 0.0
        collected: dict[str, list[pl.DataFrame]] = {name: [] for name in outputs}
        source_actors = {a: s for s in self.topology.stages if s.kind == "source" for a in self.actors[s.id]}
        pending: dict[Any, Any] = {}  # call ref -> source actor
        done: set[Any] = set()
        health: dict[Any, Any] = {}
        stopping = False
        next_health = time.perf_counter() + self.health_every_s
        while True:
            # Outputs can finish before the sources do: an idle input lets a union or join
            # release everything. The job still reads its sources to the end, as the embedded
            # runtime does (their later rows may be late for windows already emitted).
            if all(m.finished for m in outputs.values()) and not pending and done >= set(source_actors):
                break
            if stopping and ckpt is not None and not pending:
                break  # stopped: the final checkpoint keeps what the sources hold, as the embedded runtime does
            if stop.is_set() and not stopping:
                stopping = True
                for actor in source_actors:
                    if actor not in done and ckpt is None:
                        pending[actor.finish_source.remote()] = actor
                        done.add(actor)
            if ckpt is not None and not pausing and not stopping and not ckpt.writing and ckpt.due():
                pausing, paused_at = True, time.perf_counter()
            if not stopping and not pausing:
                for actor in source_actors:
                    if actor not in done and actor not in pending.values():
                        call = (actor.read_all.remote(self.batch_size) if self.mode == "offline"
                                else actor.poll_source.remote(self.batch_size, self.max_batch_delay_s))
                        pending[call] = actor
            wait_s = min(_LOOP_WAIT_S, max(0.0, next_health - time.perf_counter()))
            for ref in self._wait(list(pending), wait_s, outputs, collected, metrics):
                actor = pending.pop(ref)
                if self._get_from(ref, actor, "reading its source"):
                    done.add(actor)
                metrics.batches += 1
            if pausing and not pending:  # every source is between two micro-batches
                self._settle(outputs, collected, metrics)
                assert ckpt is not None
                ckpt.take_in_background(metrics)
                pausing = False
                self.paused_s += time.perf_counter() - paused_at
            if ckpt is not None and ckpt.written():
                self._commit_sources()
            if time.perf_counter() >= next_health:
                self._check_health(health)
                next_health = time.perf_counter() + self.health_every_s
        self._settle(outputs, collected, metrics)
        if ckpt is not None:  # the final checkpoint (job finished or stopped)
            ckpt.take(metrics)
            self._commit_sources()
        for name, parts in collected.items():
            if self.mode == "offline":
                rows = pl.concat(parts) if parts else pl.DataFrame(schema=self.plan.stored_schema(name).polars_schema())
                self.write(name, rows)
                metrics.rows_out[name] = rows.height

    def _settle(self, outputs: dict[str, InputMerger], collected: dict[str, list[pl.DataFrame]], metrics: Metrics) -> None:
        """Wait until every row sent between actors has been processed, stage by stage in
        topological order (edges only lead to later stages), draining outputs meanwhile (an
        actor may wait for room in the outbox). Rows that change no output (late rows
        of a window whose output already finished) are then counted before ``_finish``."""
        for stage in self.topology.stages:
            refs = {actor.flush.remote(): actor for actor in self.actors[stage.id]}
            while refs:
                for ref in self._wait(list(refs), _LOOP_WAIT_S, outputs, collected, metrics):
                    self._get_from(ref, refs.pop(ref), "passing rows on")
        # Every put has returned: what is left is queued. Take it, leaving no call behind.
        if self.take is not None:
            self.outbox.wake.remote()
            self._drain(self._take_result(), outputs, collected, metrics)
        self.take = self.outbox.take.remote(0.0)
        self._drain(self._take_result(), outputs, collected, metrics)

    def _wait(self, refs: list[Any], wait_s: float, outputs: dict[str, InputMerger],
              collected: dict[str, list[pl.DataFrame]], metrics: Metrics) -> list[Any]:
        """Wait up to ``wait_s`` for any of ``refs`` or for outputs (one outbox ``take`` is
        always outstanding), drain the outputs that came, and return the ``refs`` done."""
        if self.take is None:
            self.take = self.outbox.take.remote(_TAKE_WAIT_S)
        every = [*refs, self.take]
        ready, _ = self.ray.wait(every, num_returns=1, timeout=wait_s)
        if ready and len(every) > 1:  # and whatever else is done already
            ready, _ = self.ray.wait(every, num_returns=len(every), timeout=0)
        done = set(ready)
        if self.take in done:
            self._drain(self._take_result(), outputs, collected, metrics)
        return [ref for ref in refs if ref in done]

    def _take_result(self) -> list[Any]:
        ref, self.take = self.take, None
        try:
            return self.ray.get(ref)
        except Exception as e:
            self.healthy = False
            raise JobFailed(f"Ray job failed reading outputs: {type(e).__name__}: {e}") from e

    def _get_from(self, ref: Any, actor: Any, what: str) -> Any:
        try:
            return self.ray.get(ref)
        except Exception as e:
            self.healthy = False
            raise JobFailed(f"Ray job failed: {self._stage_of(actor)} failed {what}: {type(e).__name__}: {e}") from e

    def _check_health(self, health: dict[Any, Any]) -> None:
        """Surface a dead actor or an error in any edge, even while no rows flow."""
        for group in self.actors.values():
            for actor in group:
                if actor not in health.values():
                    health[actor.health.remote()] = actor
        ready, _ = self.ray.wait(list(health), num_returns=len(health), timeout=0)
        for ref in ready:
            self._get_from(ref, health.pop(ref), "passing rows on")

    def _drain(self, items: list[Any], outputs: dict[str, InputMerger], collected: dict[str, list[pl.DataFrame]], metrics: Metrics) -> None:
        """Merge output batches taken from the outbox and write what they release."""
        if not items:
            return
        touched = set()
        for name, partition, table, watermark, idle in items:
            outputs[name].push(partition, from_wire(table), watermark, idle)
            touched.add(name)
        for name in touched:
            rows = outputs[name].release()
            if rows is None or not rows.height:
                continue
            rows = rows.drop(SEQ)
            if self.mode == "offline":
                collected[name].append(rows)
            else:
                self.write(name, rows)
                metrics.rows_out[name] = metrics.rows_out.get(name, 0) + rows.height

    def _finish(self, metrics: Metrics) -> None:
        every = [(s, p, a) for s, group in self.actors.items() for p, a in enumerate(group)]
        results = self._get([a.results.remote() for _, _, a in every], "collecting results")
        window_late: dict[int, list[pl.DataFrame]] = {}
        for (stage_id, partition, _), (task_metrics, late_table, rejected, windows) in zip(every, results):
            for step_id, rows in windows.items():
                frame = from_wire(rows)
                if frame is not None and frame.height:
                    window_late.setdefault(step_id, []).append(frame)
            late = from_wire(late_table)
            self.final_metrics[(stage_id, partition)] = task_metrics
            self.rejected.extend(rejected)
            stage = self.topology.stages[stage_id]
            if stage.kind == "source":
                source = self.source_defs[stage.steps[0]]
                assert source is not None
                metrics.rows_in[source.name] = metrics.rows_in.get(source.name, 0) if partition else 0
                metrics.rows_in[source.name] += task_metrics.rows_in
                if self.mode == "online":
                    metrics.late[source.name] = task_metrics.late
                    self.late[source.name] = late if late is not None and late.width else pl.DataFrame(
                        schema=source.schema.polars_schema())
        for step_id, frames in window_late.items():  # the partitions' rows, in arrival order
            rows = pl.concat(frames, how="vertical_relaxed")
            if SEQ in rows.columns:
                rows = rows.sort(SEQ, maintain_order=True).drop(SEQ)
            self.window_late[step_id] = rows

    # -- figures -----------------------------------------------------------------------
    def stage_stats(self) -> list[StageStats]:
        if self.final_metrics:
            per_actor = self.final_metrics
        else:
            every = [(s, p, a) for s, group in self.actors.items() for p, a in enumerate(group)]
            values = self.ray.get([a.metrics.remote() for _, _, a in every], timeout=10)
            if self.final_metrics:  # the job ended meanwhile (its actors were reset)
                return self.stage_stats()
            per_actor = {(s, p): m or TaskMetrics() for (s, p, _), m in zip(every, values)}
        seconds = self.metrics.seconds if self.metrics is not None else 0.0
        newest = max((m.max_event_us for m in per_actor.values()), default=NO_WM)
        out = []
        for stage in self.topology.stages:
            group = [m for (s, _), m in per_actor.items() if s == stage.id]
            watermark = min((m.watermark for m in group), default=NO_WM)
            lag = 0.0 if watermark >= FINISHED_WM or newest == NO_WM or watermark == NO_WM else max(0, newest - watermark) / 1e6
            rows_in = sum(m.rows_in for m in group)
            out.append(StageStats(
                stage.label(self.plan), len(group), rows_in, sum(m.rows_out for m in group),
                sum(m.batches for m in group), sum(m.busy_s for m in group),
                rows_in / seconds if seconds else 0.0, lag,
            ))
        return out
