"""``StreamingContext``: where streams start (sources) and how they run (execute/submit)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import polars as pl

from volga.api import nodes as api
from volga.api.decorators import Params, PipelineDef, SourceDef
from volga.api.entity import entity_schema, is_entity
from volga.api.types import Duration, parse_duration_us
from volga.ops.protocol import code_digest
from volga.runtime.local.checkpointing import checkpoint_options
from volga.runtime.local.executors import StreamOptions
from volga.runtime.local.job import Job
from volga.sources.base import Source
from volga.stream import nodes as sn
from volga.stream.datastream import DataStream, KeyedStream
from volga.stream.plan import StreamPlan, compile_stream
from volga.stream.sinks import SinkSet
from volga.stream.sources import FrameSource, TextFileSource, collection_frame


def _definition_fingerprint(sinks: list[sn.SinkNode]) -> dict[str, str]:
    """One line per DataStream operator, with its functions' code: what a checkpoint's
    state belongs to, beyond the engine plan (which sees neither a lambda's body nor a
    window's size). Sources by name and kind, not by where they read (a restart may read
    the same stream from another address)."""

    def code(node: Any) -> list[str]:
        fns = [getattr(node, "fn", None), getattr(node, "reduce_fn", None), getattr(node, "timestamps", None) and node.timestamps.fn,
               getattr(node, "payload", None) if getattr(node, "op", None) == "map_batches" else None,
               getattr(node, "predicate", None)]  # an Entity API filter's
        return [f"code {code_digest(fn)}" for fn in fns if callable(fn)]

    lines: dict[str, str] = {}
    for i, node in enumerate(n for n in api.walk([s.input for s in sinks])):
        parts = [sn.stream_label(node)]
        if isinstance(node, sn.SourceNode):
            parts = [f"{node.name}: {dataclasses.replace(node, description='').label()}"]
            for step in node.prelude:
                parts += code(step)
        lines[f"operator {i}"] = "; ".join(parts + code(node))
    return lines


class StreamJob:
    """A running or finished DataStream job: ``wait()``, ``stop()``, metrics, late events.

    Sinks are closed (files flushed) when the job is waited for or stopped."""

    def __init__(self, job: Job, plan: StreamPlan, *, late_sinks: bool = False) -> None:
        self.job, self.plan = job, plan
        self._closed = False
        # On Ray the sources and windows run in actors: their late rows reach the late sinks
        # from here, at the end.
        self._late_sinks = late_sinks
        if not job.running:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._late_sinks and self.job.mode == "online" and self.job._error is None:  # batch mode has no late rows
                for step in self.plan.plan.source_steps():
                    node = getattr(step.source, "node", None)
                    if node is not None and (node.late_sink is not None or getattr(step.source, "late_routes", None)):
                        try:
                            late = self.job.late_events(node.name)
                        except KeyError:
                            continue
                        if late.height:  # the source's late sink, and the late sinks of the windows it feeds
                            step.source.on_late(late)
                windows: dict[int, pl.DataFrame] = getattr(self.job, "window_late_events", dict)()
                for step in self.plan.plan.steps:  # a window's rows that came after it was emitted
                    node = getattr(step.spec, "node", None)
                    rows = windows.get(step.id)
                    if isinstance(node, sn.WindowNode) and node.late_sink is not None and rows is not None and rows.height:
                        node.late_sink.write(rows, node.input.schema)
            for sink in {id(s): s for s in self.plan.sinks.values()}.values():
                sink.close()

    def wait(self, timeout: float | None = None) -> StreamJob:
        try:
            self.job.wait(timeout)
        finally:
            if not self.job.running:
                self._close()
        return self

    def stop(self, timeout: float | None = 30.0) -> StreamJob:
        try:
            self.job.stop(timeout)
        finally:
            self._close()
        return self

    @property
    def running(self) -> bool:
        return self.job.running

    @property
    def metrics(self) -> Any:
        return self.job.metrics

    @property
    def rejected(self) -> list[Any]:
        """Elements set aside: malformed input, callables that raised (with reasons)."""
        return self.job.rejected

    def late_events(self, source: str) -> pl.DataFrame:
        """Rows of ``source`` that arrived later than its lateness allowed (streaming mode)."""
        return self.job.late_events(source).drop(sn.OBJECTS, strict=False)

    def explain(self) -> str:
        return self.plan.explain()

    def __repr__(self) -> str:
        return f"<StreamJob {'running' if self.running else 'done'} rows_out={self.metrics.rows_out}>"


class StreamingContext:
    """Builds DataStream jobs and runs them on a runtime (embedded by default).

    >>> from volga.stream import StreamingContext, ListSink
    >>> ctx = StreamingContext()
    >>> out = ListSink()
    >>> words = ctx.from_collection(["a b", "b"]).flat_map(str.split)
    >>> _ = words.key_by(lambda w: w).reduce(lambda a, b: a + b).sink(out)
    >>> _ = ctx.execute()
    >>> out.items
    ['a', 'b', 'bb']
    """

    def __init__(
        self,
        runtime: Any = None,
        *,
        batch_size: int = 10_000,
        max_batch_delay: Duration = "0ms",
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"StreamingContext: batch_size must be a positive int, got {batch_size!r}")
        self.runtime = runtime
        self.options = StreamOptions(batch_size=batch_size, max_batch_delay_s=parse_duration_us(max_batch_delay, what="max_batch_delay") / 1e6)
        self._sinks: list[sn.SinkNode] = []
        self._names = itertools.count(1)
        self._used_names: set[str] = set()

    # -- sources ---------------------------------------------------------------------------
    def _name(self, kind: str, name: str | None) -> str:
        if name is None:
            name = f"{kind}_{next(self._names)}"
        if name in self._used_names:
            raise ValueError(f"StreamingContext: a source named {name!r} exists already; pass another name=")
        self._used_names.add(name)
        return name

    def _source(self, kind: str, name: str, source: Source, schema: Any, description: str, **kw: Any) -> DataStream:
        def make(params: Any) -> tuple[Source, Any]:
            return source, schema

        node = sn.SourceNode(schema=schema, name=name, kind=kind, make_source=make, base_schema=schema, description=description, **kw)
        return (KeyedStream if schema.keys else DataStream)(self, node)

    def from_collection(self, items: Iterable[Any] | pl.DataFrame, *, name: str | None = None) -> DataStream:
        """A bounded stream of these items: values (a value stream), dicts or a polars
        DataFrame (a record stream). Event time: ingestion time unless a
        ``timestamp_assigner`` is given."""
        frame, schema = collection_frame(items)
        name = self._name("collection", name)
        return self._source("from_collection", name, FrameSource(frame), schema, f"{frame.height} items")

    def from_periodic_collection(
        self, items: Iterable[Any] | pl.DataFrame, period: Duration, *, repeat: bool = False, name: str | None = None
    ) -> DataStream:
        """The items paced one every ``period`` (processing time), like a live feed;
        ``repeat=True`` cycles through them forever (unbounded: use ``submit()``)."""
        frame, schema = collection_frame(items)
        period_s = parse_duration_us(period, what="from_periodic_collection period") / 1e6
        if period_s <= 0:
            raise ValueError("from_periodic_collection: period must be positive")
        name = self._name("periodic", name)
        source = FrameSource(frame, period_s=period_s, repeat=repeat)
        return self._source("from_periodic_collection", name, source, schema, source.describe())

    def read_text_file(self, path: str | Path, *, follow: bool = False, name: str | None = None) -> DataStream:
        """Lines of a text file as a value stream of str; ``follow=True`` also reads lines
        appended later (unbounded)."""
        source = TextFileSource(path, follow=follow)
        name = self._name("text", name)
        return self._source("read_text_file", name, source, sn.value_schema("lines", pl.String()), source.describe())

    def from_source(
        self,
        source: Source | SourceDef,
        entity: type | None = None,
        *,
        name: str | None = None,
        params: Params | None = None,
        lateness: Duration | None = None,
        idle_timeout: Duration | None = None,
    ) -> KeyedStream:
        """Any ``volga.sources`` connector read as ``entity`` rows (a record stream keyed by
        the entity's keys, event time from its timestamp field), or a ``@source`` definition
        (its entity, lateness and idle timeout; ``params`` fill its parameters)."""
        if isinstance(source, SourceDef):
            definition = source
            entity, name = definition.entity, name or definition.name
            lateness_us = definition.lateness_us if lateness is None else parse_duration_us(lateness, what="lateness")
            idle_us = definition.idle_timeout_us if idle_timeout is None else parse_duration_us(idle_timeout, what="idle_timeout")
            def make(p: Any, d: Any = definition) -> tuple[Source, Any]:
                return d.call(params if params is not None else p), d.schema
        elif isinstance(source, Source):
            if not is_entity(entity):
                raise TypeError(f"from_source({source.describe()}): pass the @entity class its rows have: from_source(source, MyEntity)")
            lateness_us = 0 if lateness is None else parse_duration_us(lateness, what="lateness")
            idle_us = None if idle_timeout is None else parse_duration_us(idle_timeout, what="idle_timeout")
            def make(p: Any, d: Any = (source, entity)) -> tuple[Source, Any]:
                return d[0], entity_schema(d[1])
        else:
            raise TypeError(f"from_source: expected a volga.sources connector or a @source definition, got {type(source).__name__}")
        schema = entity_schema(entity)
        name = self._name("source", name)
        description = source.name if isinstance(source, SourceDef) else source.describe()
        node = sn.SourceNode(
            schema=schema, name=name, kind="from_source", make_source=make, base_schema=schema,
            description=f"{description} as {schema.name}", lateness_us=lateness_us, idle_timeout_us=idle_us,
        )
        return KeyedStream(self, node)

    def from_pipeline(self, pipeline: PipelineDef, params: Params | None = None) -> KeyedStream:
        """An Entity API ``@pipeline`` as a DataStream: the pipeline's own logical nodes
        (stateless steps, as-of joins, windowed aggregations) in this job's graph, compiled
        by the same compiler to the same engine operators (``StatelessChain``,
        ``AsOfJoinOp``, ``WindowAggregateOp``). Each ``@source`` it reads becomes a source
        of this context, as ``from_source(definition, params=params)`` would make it (its
        name, lateness and idle timeout)."""
        if not isinstance(pipeline, PipelineDef):
            raise TypeError(f"from_pipeline expects a @pipeline definition, got {pipeline!r}")
        sources: dict[int, sn.SourceNode] = {}

        def source(definition: SourceDef) -> sn.SourceNode:
            if id(definition) not in sources:
                node = self.from_source(definition, params=params).node
                assert isinstance(node, sn.SourceNode)
                sources[id(definition)] = node
            return sources[id(definition)]

        return KeyedStream(self, pipeline.build(params, sources=source))

    # -- running ---------------------------------------------------------------------------
    def _add_sink(self, node: sn.SinkNode) -> None:
        self._sinks.append(node)

    def compile(self) -> StreamPlan:
        """The physical plan (fresh operator state) for every stream with a sink."""
        return compile_stream(list(self._sinks), fuse_keyed=not self._on_ray)

    @property
    def _on_ray(self) -> bool:
        return self.runtime is not None and type(self.runtime).__module__.startswith("volga.runtime.ray")

    def explain(self) -> str:
        """The job as DataStream operators, one engine step per line (fused steps joined by ->)."""
        return self.compile().explain()

    def _start(
        self,
        mode: Literal["batch", "streaming"],
        block: bool,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: Duration = "10s",
        on_definition_change: Literal["refuse", "rebuild"] = "refuse",
        checkpoint_keep: int = 3,
    ) -> StreamJob:
        if mode not in ("batch", "streaming"):
            raise ValueError(f"mode must be 'batch' or 'streaming', not {mode!r}")
        plan = self.compile()
        schemas = {name: plan.plan.steps[step].schema for name, step in plan.plan.outputs.items()}
        sinks = SinkSet(plan.sinks, schemas)
        runtime = self.runtime
        extra: dict[str, Any] = {}
        on_ray = self._on_ray
        if on_ray:  # set_parallelism: the actors of the keyed stage a step starts
            extra["step_parallelism"] = dict(plan.explicit_parallelism)
        if checkpoint_dir is not None:
            where = "execute()" if block else "submit()"
            if mode != "streaming":
                raise ValueError(f"{where}: checkpoint_dir is for mode='streaming' (a batch run reruns from its sources)")
            sinks.check_checkpointable()
            # the runtime's checkpointer (embedded or Ray), as materialize(checkpoint_dir=...)
            # uses it; it opens the sinks (fresh or restored) before the job starts
            fingerprint = {**_definition_fingerprint(self._sinks), **sinks.fingerprint()}
            extra["checkpoint"] = checkpoint_options(
                where, checkpoint_dir, checkpoint_interval, sinks, on_definition_change, fingerprint=fingerprint,
                starting_point=True, keep=checkpoint_keep,
            )
        else:
            sinks.open()
        if runtime is None:
            from volga.runtime.local.runtime import LocalRuntime

            runtime = LocalRuntime()
        job_mode = "offline" if mode == "batch" else "online"
        try:
            job = runtime.start(plan.plan, job_mode, None, sinks, block=block, options=self.options, **extra)
        except BaseException:
            sinks.close()
            raise
        return StreamJob(job, plan, late_sinks=on_ray)

    def execute(
        self,
        *,
        mode: Literal["batch", "streaming"] = "streaming",
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: Duration = "10s",
        on_definition_change: Literal["refuse", "rebuild"] = "refuse",
        checkpoint_keep: int = 3,
    ) -> StreamJob:
        """Run every stream with a sink until its bounded sources are exhausted; returns
        the finished job. ``mode="batch"`` reads everything first and runs each operator
        once (no late events); the results are the same for events that are not late.

        ``checkpoint_dir`` (streaming mode; a path or an S3-compatible URL), as in
        ``Client.materialize``: every ``checkpoint_interval``, and when the job ends or is
        stopped, a checkpoint of every operator's state (reduce accumulators, windows, join
        buffers), each source's position and watermark and each sink's position is written
        there (the newest ``checkpoint_keep`` are kept). Running the same job with the same ``checkpoint_dir`` resumes from the
        latest one: ``ListSink``, ``FileSink`` and store sinks end as an uninterrupted
        run's (exactly-once effect); callables (``CallableSink``, ``BatchSink``) get the
        rows after the last checkpoint again (at-least-once; see ``volga.stream.sinks``).
        A checkpoint of a changed job (operators, their functions' code, sinks) is refused
        naming what changed, unless ``on_definition_change="rebuild"`` (sinks' outputs
        dropped, state rebuilt from the sources' history).

        >>> import tempfile
        >>> from volga.stream import ListSink
        >>> ckpt = tempfile.mkdtemp()
        >>> def job():
        ...     ctx, out = StreamingContext(), ListSink()
        ...     ctx.from_collection([1, 2, 3]).key_by(lambda x: x % 2).reduce(lambda a, b: a + b).sink(out)
        ...     return ctx, out
        >>> ctx, out = job()
        >>> _ = ctx.execute(checkpoint_dir=ckpt)
        >>> ctx, again = job()  # the same job resumed: it was finished, nothing is replayed
        >>> _ = ctx.execute(checkpoint_dir=ckpt)
        >>> again.items
        [1, 2, 4]
        """
        return self._start(mode, True, checkpoint_dir, checkpoint_interval, on_definition_change, checkpoint_keep)

    def submit(
        self,
        *,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: Duration = "10s",
        on_definition_change: Literal["refuse", "rebuild"] = "refuse",
        checkpoint_keep: int = 3,
    ) -> StreamJob:
        """Start the job in the background (for unbounded sources); ``job.stop()`` ends it
        (with ``checkpoint_dir``, after a final checkpoint; see :meth:`execute`)."""
        return self._start("streaming", False, checkpoint_dir, checkpoint_interval, on_definition_change, checkpoint_keep)
