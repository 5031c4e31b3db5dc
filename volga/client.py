"""``volga.Client``: a thin facade that wires definitions, runtime and stores together.

>>> client = Client(offline_store=ParquetOfflineStore(__import__("tempfile").mkdtemp()))
>>> client.online_store.__class__.__name__
'MemoryOnlineStore'
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from volga.api.decorators import Params, PipelineDef, SourceDef, defined
from volga.api.entity import Schema, make_instance
from volga.api.on_demand import OnDemandDef, dependency_order
from volga.api.types import Duration, datetime_to_us, moment_us, parse_duration_us
from volga.errors import UnknownFeature, naming_hint
from volga.ondemand.plan import check_keys
from volga.ondemand.request_time import read_at
from volga.ondemand.rows import Row
from volga.plan.compile import PhysicalPlan, compile_plan
from volga.plan.request_time import is_hidden, request_time_shape
from volga.runtime.local.executors import StreamOptions
from volga.runtime.local.job import Job
from volga.runtime.local.runtime import LocalRuntime
from volga.serving.executor import OnDemandExecutor
from volga.storage import MemoryOnlineStore, OfflineStore, OnlineStore, ParquetOfflineStore

Mode = Literal["offline", "online"]
AsOf = Literal["request_time", "last_event"]
Definition = PipelineDef | SourceDef | OnDemandDef
_ABSENT: Any = object()


class Definitions(dict):  # type: ignore[type-arg]
    """A client's definitions by name.

    Names registered with :meth:`Client.register` (and what they depend on) come first. A
    name the client does not know is looked up in the process-wide registry of
    ``@source``/``@pipeline``/``@on_demand`` definitions (the most recent definition of
    the name) and adopted with its dependencies; an adopted name follows later
    redefinitions, a registered one stays as registered. Every lookup (``get``, ``[]``,
    ``in``) resolves the same way, so materialize, reads, ``get_on_demand``, the server
    and ``get_historical_features`` see the same definitions.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adopted: set[str] = set()  # looked up in the process-wide registry: follow redefinitions
        self.pinned: set[str] = set()  # dependencies (by object) of adopted definitions

    def get(self, name: Any, default: Any = None) -> Any:
        if dict.__contains__(self, name) and name not in self.adopted:
            return dict.__getitem__(self, name)
        found = defined(name) if isinstance(name, str) else None
        if found is None:
            return dict.get(self, name, default)
        if dict.get(self, name) is not found:
            dict.__setitem__(self, name, found)
            self.adopted.add(name)
            self.pinned.discard(name)
            self._pin_dependencies(found)
        return found

    def __getitem__(self, name: Any) -> Any:
        found = self.get(name, _ABSENT)
        if found is _ABSENT:
            raise KeyError(name)
        return found

    def __contains__(self, name: object) -> bool:
        return self.get(name, _ABSENT) is not _ABSENT

    def __setitem__(self, name: str, definition: Any) -> None:  # an explicit registration
        self.adopted.discard(name)
        self.pinned.discard(name)
        dict.__setitem__(self, name, definition)

    def _pin_dependencies(self, definition: Any) -> None:
        """What an adopted definition references by object becomes known as that object,
        unless a registered definition has its name."""
        for dep in _direct_dependencies(definition):
            name = dep.name
            if dict.get(self, name) is dep or (dict.__contains__(self, name) and name not in self.adopted | self.pinned):
                continue
            dict.__setitem__(self, name, dep)
            self.adopted.discard(name)
            self.pinned.add(name)
            self._pin_dependencies(dep)


def _direct_dependencies(definition: Any) -> list[Any]:
    """The dependencies a definition references by object (names resolve lazily)."""
    if isinstance(definition, PipelineDef):
        return [d for d in definition.dependencies if not isinstance(d, str)]
    if isinstance(definition, OnDemandDef):
        return [d.target for d in definition.dependencies if not isinstance(d.target, str)]
    return []


class Client:
    """Materialize pipelines and read features.

    Embedded defaults: an in-memory online store and a Parquet offline store under
    ``data_dir`` (default ``$VOLGA_DATA_DIR`` or ``./volga_data``). ``runtime=``
    ``volga.RayRuntime(...)`` runs ``materialize`` on Ray actors (same output rows).
    """

    def __init__(
        self,
        online_store: OnlineStore | None = None,
        offline_store: OfflineStore | None = None,
        *,
        data_dir: str | Path | None = None,
        runtime: Any = None,
    ) -> None:
        root = Path(data_dir or os.environ.get("VOLGA_DATA_DIR", "volga_data"))
        self.online_store = online_store if online_store is not None else MemoryOnlineStore()
        self.offline_store = offline_store if offline_store is not None else ParquetOfflineStore(root / "offline")
        self.definitions: Definitions = Definitions()
        self.jobs: list[Job] = []
        self.runtime = runtime  # None: embedded; volga.RayRuntime(...): materialize runs on Ray
        self._on_demand = OnDemandExecutor(self.definitions, lambda: self.online_store)
        # Called with each compiled plan before it runs (volga.metrics times operators this way).
        self.plan_observers: list[Callable[[PhysicalPlan], None]] = []

    # -- definitions -------------------------------------------------------------------
    def register(self, *definitions: Definition) -> None:
        """Make definitions (and everything they depend on) known by name.

        A new definition with a known name replaces the old one (as when a notebook cell
        is run again). Registering is optional: a name the client does not know is looked
        up among every ``@source``/``@pipeline``/``@on_demand`` defined in the process (the
        most recent definition of that name); a registered definition wins over that.
        """
        for d in definitions:
            if not isinstance(d, (PipelineDef, SourceDef, OnDemandDef)):
                raise TypeError(f"register expects @source/@pipeline/@on_demand definitions, got {d!r}")
            self.definitions[d.name] = d
            if isinstance(d, PipelineDef):
                self.register(*[dep for dep in d.dependencies if not isinstance(dep, str)])
            if isinstance(d, OnDemandDef):
                self.register(*[dep.target for dep in d.dependencies if not isinstance(dep.target, str)])
        for d in definitions:
            if isinstance(d, OnDemandDef):
                dependency_order([d], self.definitions)  # resolves dependency names, rejects cycles

    def explain(self, pipelines: Sequence[PipelineDef], params: Params | None = None) -> str:
        """The physical plan the engine would run, one step per line."""
        return self._plan(pipelines, params).explain()

    def _plan(self, pipelines: Sequence[PipelineDef], params: Params | None) -> PhysicalPlan:
        if isinstance(pipelines, PipelineDef):
            pipelines = [pipelines]
        self.register(*pipelines)
        return compile_plan(list(pipelines), params, self.definitions)

    # -- jobs --------------------------------------------------------------------------
    def materialize(
        self,
        pipelines: Sequence[PipelineDef],
        mode: Mode = "offline",
        *,
        params: Params | None = None,
        block: bool = True,
        write_online: bool = False,
        write_offline: bool = False,
        batch_size: int = 10_000,
        max_batch_delay: Duration = "0ms",
        progress: bool = False,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: Duration = "10s",
        on_definition_change: Literal["refuse", "rebuild"] = "refuse",
        checkpoint_keep: int = 3,
    ) -> Job:
        """Run pipelines over their sources.

        ``mode="offline"``: read bounded sources fully, write every output row to the
        offline store (replacing that pipeline's previous rows) and, with
        ``write_online=True``, to the online store too (replacing its rows there as well).
        ``mode="online"``: stream micro-batches of up to ``batch_size`` rows (waiting at most
        ``max_batch_delay`` to fill one; default: take what is there) into the online
        store; with ``write_offline=True`` the job's output rows also replace the
        pipeline's offline rows (cleared at job start, appended as they come).
        ``block=False`` returns a running :class:`Job` (``wait()``/``stop()``).
        ``progress=True`` reports rows read, rows/s and an ETA (when the sources know
        their size) on stderr while the job runs (see :mod:`volga.progress`).

        ``checkpoint_dir`` (online mode, embedded or Ray runtime; a path or an S3-compatible URL):
        every ``checkpoint_interval``, and when the job ends or is stopped, a checkpoint of
        all operator state, source positions and the stores' write positions is written
        there (the newest ``checkpoint_keep`` are kept); running the same job with the same
        ``checkpoint_dir`` resumes from the latest one with exactly-once effect on the stores
        (README, "Durable state"). A checkpoint of a changed definition is refused, unless
        ``on_definition_change="rebuild"`` (outputs dropped, state rebuilt from the sources'
        history).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if mode not in ("offline", "online"):
            raise ValueError(f"mode must be 'offline' or 'online', not {mode!r}")
        plan = self._plan(pipelines, params)
        for observe in self.plan_observers:
            observe(plan)
        # request-time pipelines' rows carry hidden columns; their stores keep the longest window
        schemas = {name: plan.stored_schema(name) for name in plan.outputs}
        retain = {name: shape.longest_window_us for name, shape in plan.request_time.items()}
        delay_s = parse_duration_us(max_batch_delay, what="max_batch_delay") / 1e6
        options = StreamOptions(batch_size=batch_size, max_batch_delay_s=delay_s)
        if checkpoint_dir is not None:
            if progress:
                raise ValueError("materialize: progress=True is not available with checkpoint_dir")
            return self._materialize_checkpointed(
                plan, params, schemas, retain, options, block=block, write_offline=write_offline, mode=mode,
                checkpoint_dir=checkpoint_dir, interval=checkpoint_interval, on_change=on_definition_change,
                keep=checkpoint_keep,
            )
        if mode == "offline":
            def sink(name: str, rows: pl.DataFrame) -> None:
                self.offline_store.replace(name, schemas[name], rows)
                if write_online:  # replaced too: a re-run must not count its events twice
                    self.online_store.clear(name)
                    self.online_store.write(name, schemas[name], rows, retain_us=retain.get(name))
        else:
            if write_offline:  # the job's output becomes the pipeline's offline rows
                for name, schema in schemas.items():
                    self.offline_store.replace(name, schema, pl.DataFrame(schema=schema.polars_schema()))

            def sink(name: str, rows: pl.DataFrame) -> None:
                self.online_store.write(name, schemas[name], rows, retain_us=retain.get(name))
                if write_offline:
                    self.offline_store.append(name, schemas[name], rows)

        runtime = self.runtime if self.runtime is not None else LocalRuntime()
        job = runtime.start(plan, mode, params, sink, block=block and not progress, options=options)
        self.jobs.append(job)
        if progress:
            from volga.progress import ProgressReporter

            reporter = ProgressReporter(job)
            if not block:
                reporter.start()
                return job
            try:
                reporter.follow()
                job.wait()
            except KeyboardInterrupt:  # Ctrl-C / a notebook's interrupt: stop the job too, as block=True would
                job.stop()
                raise
        return job

    def _materialize_checkpointed(
        self,
        plan: PhysicalPlan,
        params: Params | None,
        schemas: dict[str, Schema],
        retain: dict[str, int],
        options: StreamOptions,
        *,
        block: bool,
        write_offline: bool,
        mode: Mode,
        checkpoint_dir: str | Path,
        interval: Duration,
        on_change: str,
        keep: int,
    ) -> Job:
        # Imported here: only checkpointed jobs need them.
        from volga.runtime.local.checkpointing import checkpoint_options
        from volga.storage.checkpointed import CheckpointedSink

        names = "+".join(plan.outputs)
        if mode != "online":
            raise ValueError(f"materialize({names}): checkpoint_dir is for mode='online' jobs (an offline job reruns from its sources)")
        sink = CheckpointedSink(self.online_store, self.offline_store if write_offline else None, schemas, retain)
        # starting_point: a crash before the first periodic checkpoint resumes from the start
        # with the rows Redis applied skipped, instead of numbering them from 0 again
        checkpoint = checkpoint_options(f"materialize({names})", checkpoint_dir, interval, sink, on_change,
                                        starting_point=True, keep=keep)
        runtime = self.runtime if self.runtime is not None else LocalRuntime()  # embedded or RayRuntime
        job = runtime.start(plan, mode, params, sink, block=block, options=options, checkpoint=checkpoint)
        self.jobs.append(job)
        return job

    # -- reads -------------------------------------------------------------------------
    def get_offline(
        self, name: str, start: datetime.datetime | None = None, end: datetime.datetime | None = None
    ) -> pl.DataFrame:
        """Every stored output row of pipeline ``name`` (``start <= ts <= end``), as polars
        (``.to_pandas()`` for pandas)."""
        name = self._named(name)
        rows = self.offline_store.read(name, start, end)
        if rows is not None:
            rows = rows.select([c for c in rows.columns if not is_hidden(c)])
        if rows is None:
            raise UnknownFeature(
                f"no offline rows for '{name}': run client.materialize([{name}], mode='offline') first"
                + (f" (known: {sorted(self.definitions)})" if name not in self.definitions else "")
            )
        return rows

    def get_latest(
        self,
        name: str,
        keys: Sequence[Mapping[str, Any]],
        *,
        at: datetime.datetime | str | None = None,
        as_of: AsOf = "request_time",
        ttl: Duration | None = None,
    ) -> list[Any]:
        """The pipeline's value per key (an instance of the output entity) or None, in key order.

        Evaluated at request time T: now (UTC), or ``at`` (a datetime, naive means UTC, or
        an ISO 8601 string). Windowed aggregates cover the key's events with
        ``T - window <= ts <= T`` and the row's timestamp is its latest event at or before
        T (None if it has none), as ``get_historical_features`` computes them at a spine
        time T. Any T at or after a key's last event is exact; an older ``at`` is answered
        exactly while the store still holds the events its windows need, else refused
        with :class:`volga.RequestTimeUnavailable`. ``as_of="last_event"`` returns the
        row written at the key's latest event at or before T (the per-event value).
        Pipelines with a row filter or a stateful step after their aggregate are always
        served as of their last event (``client.explain`` says which).

        ``ttl`` (e.g. ``"1h"``): None also where the key's latest event is older than
        that at T, as ``get_historical_features(..., ttl=...)`` nulls it at the spine time.
        """
        name = self._named(name)
        entity_cls, schema = self._feature(name)
        rows = self._rows_at(name, schema, keys, at, as_of, ttl, what="get_latest")
        return [None if row is None else _instance(entity_cls, row) for row in rows]

    def _rows_at(
        self, name: str, schema: Schema, keys: Any, at: Any, as_of: Any, ttl: Duration | None, what: str
    ) -> list[dict[str, Any] | None]:
        if as_of not in ("request_time", "last_event"):
            raise ValueError(f"{what}('{name}'): as_of must be 'request_time' or 'last_event', got {as_of!r}")
        at_us = moment_us(at, what=f"{what}('{name}'): at")
        frame = self._keys_frame(name, schema, keys)
        if self.online_store.schema(name) is None:  # defined, but nothing materialized online yet
            return [None] * frame.height
        definition = self.definitions.get(name)
        shape = request_time_shape(definition, self.definitions) if isinstance(definition, PipelineDef) else None
        rows = read_at(self.online_store, name, shape if as_of == "request_time" else None, frame, at_us, explicit=at is not None)
        oldest_us = None if ttl is None else at_us - parse_duration_us(ttl, what=f"{what}('{name}'): ttl")
        ts = schema.timestamp
        return [
            None if row[ts] is None or (oldest_us is not None and datetime_to_us(row[ts]) < oldest_us) else row
            for row in rows.iter_rows(named=True)
        ]

    def get_last_n(self, name: str, keys: Sequence[Mapping[str, Any]], n: int) -> list[list[Any]]:
        """Up to ``n`` latest rows per key, oldest first."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"get_last_n('{name}'): n must be a positive int, got {n!r}")
        name = self._named(name)
        entity_cls, schema = self._feature(name)
        keys_frame = self._keys_frame(name, schema, keys)
        if self.online_store.schema(name) is None:
            return [[] for _ in range(keys_frame.height)]
        frame = self.online_store.get_last_n(name, keys_frame, n)
        return _group_rows(entity_cls, frame, keys_frame.height)

    def get_range(
        self, name: str, keys: Sequence[Mapping[str, Any]], start: datetime.datetime | None, end: datetime.datetime | None
    ) -> list[list[Any]]:
        """Rows per key with ``start <= ts <= end`` (None = open), oldest first."""
        name = self._named(name)
        entity_cls, schema = self._feature(name)
        keys_frame = self._keys_frame(name, schema, keys)
        if self.online_store.schema(name) is None:
            return [[] for _ in range(keys_frame.height)]
        frame = self.online_store.get_range(
            name,
            keys_frame,
            None if start is None else datetime_to_us(start),
            None if end is None else datetime_to_us(end),
        )
        return _group_rows(entity_cls, frame, keys_frame.height)

    # -- training data -----------------------------------------------------------------
    def get_historical_features(
        self,
        spine: Any,
        features: Sequence[str],
        *,
        timestamp_column: str = "timestamp",
        key_map: Mapping[str, Any] | None = None,
        ttl: Duration | Mapping[str, Duration] | None = None,
        args: Mapping[str, Any] | None = None,
        full_names: bool = False,
        compute: bool = False,
        as_of: AsOf = "request_time",
        on_error: Literal["raise", "null"] = "raise",
    ) -> Any:
        """A point-in-time correct training set: one row per ``spine`` row, in order.

        ``spine`` (polars or pandas; the result is the same kind) holds the features' key
        columns and ``timestamp_column`` (naive datetimes are read as UTC). ``features``
        names pipelines and on-demand features (``"user_spent"``: its value fields) or
        fields (``"user_spent.avg_spent_7d"``); columns are named by field, or
        ``"<feature>.<field>"`` with ``full_names=True``. Each value is what the online path
        served at the row's time t: a pipeline's value at t (windowed aggregates over
        ``[t - window, t]``, as ``get_latest(at=t)``; ``as_of="last_event"``: the row written at
        the key's latest event at or before t) from the offline store (null before any
        event, or older than ``ttl``: ``"1h"`` or ``{"user_spent": "1h"}``),
        an on-demand function over its dependencies as of t (``args`` as in
        :meth:`get_on_demand`). ``key_map={"user_id": "spine_column"}`` (or per feature:
        ``{"user_spent": {...}}``) reads keys from differently named spine columns.
        ``compute=True`` first backfills the pipelines involved from their sources.
        An on-demand function that raises stops the call with a ``FeatureFunctionError``
        naming the feature, the key and the spine row (``on_error="raise"``), or
        (``on_error="null"``) gives nulls on those rows and a ``FeatureErrorsWarning``
        counting them. See :mod:`volga.training`.
        """
        from volga.training import get_historical_features

        if not isinstance(features, (str, PipelineDef, OnDemandDef)) and isinstance(features, Sequence):
            features = [self._named(f) if isinstance(f, (PipelineDef, OnDemandDef)) else f for f in features]
        return get_historical_features(
            self, spine, features, timestamp_column=timestamp_column, key_map=key_map, ttl=ttl, args=args,
            full_names=full_names, compute=compute, as_of=as_of, on_error=on_error,
        )

    # -- on-demand features and serving ------------------------------------------------
    def get_on_demand(
        self, name: str, keys: Sequence[Mapping[str, Any]], args: Mapping[str, Any] | None = None, *,
        at: datetime.datetime | str | None = None,
    ) -> list[Row | None]:
        """On-demand feature ``name`` computed at request time: one row or None per key, in key order.

        The request time T is now, or ``at``: pipelines are read as ``get_latest(..., at=T)``
        reads them, and a function parameter named ``now`` receives T (aware UTC).

        A row is a dict of the output entity's fields (a :class:`volga.serving.Row`, whose
        fields also read as attributes), equal to what ``OnDemandClient.request`` returns for
        the same request; datetimes are aware UTC. ``name`` need not be registered: an
        unknown name is looked up among the definitions made in this process.

        ``args`` holds query arguments (``n``, ``start``, ``end``) and per-request function
        arguments: ``{"n": 5}`` applies to everything taking it, ``{"user_spent": {"n": 5}}``
        to one pipeline read, ``{"spend_trend": {"threshold": 50.0, "n": 5}}`` to one on-demand
        feature (its function arguments and the query arguments of what it reads); the most
        specific wins. Without any, a read uses the query arguments declared with its
        dependency, and ``last_n`` reads 10 rows. A pipeline name gives its latest row.
        """
        return self._on_demand.get(self._named(name), keys, args, at=at)

    def serve(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        auth_token: str | None = None,
        max_body_bytes: int | None = None,
        limits: Any = None,
    ) -> Any:
        """Serve the registered features over HTTP from a background thread.

        ``limits`` is a :class:`volga.serving.http.ServerLimits` (sizes, timeouts, connection
        cap, drain time); ``max_body_bytes`` overrides its ``max_body_bytes`` (1 MiB by default).
        Returns the running :class:`volga.serving.http.Server` (``.url``, ``.stop()``, which drains).
        """
        from volga.serving.http import serve_in_thread

        return serve_in_thread(
            self._on_demand, host=host, port=port, auth_token=auth_token, max_body_bytes=max_body_bytes, limits=limits
        )

    def _named(self, feature: Any) -> Any:
        """A definition given where a name is expected: known under its name from now on."""
        if isinstance(feature, (PipelineDef, OnDemandDef)):
            if self.definitions.get(feature.name) is not feature:
                self.register(feature)
            return feature.name
        if not isinstance(feature, str):
            many = " (one feature per call: loop, or use get_historical_features/OnDemandClient.request for several)"
            raise TypeError(
                f"expected a feature name or definition, got {type(feature).__name__} {feature!r:.100}"
                + (many if isinstance(feature, (list, tuple)) else "")
            )
        return feature

    def _feature(self, name: str) -> tuple[Any, Schema]:
        definition = self.definitions.get(name)
        if isinstance(definition, PipelineDef):
            return definition.output, definition.schema
        schema = self.online_store.schema(name)
        if schema is None:
            known = sorted(n for n, d in self.definitions.items() if isinstance(d, PipelineDef))
            raise UnknownFeature(f"unknown feature '{name}'; known pipelines: {known}{naming_hint(name)}")
        return None, schema

    @staticmethod
    def _keys_frame(name: str, schema: Schema, keys: Any) -> pl.DataFrame:
        """The keys as a frame of the key fields, checked as every lookup path checks them."""
        rows = check_keys(name, schema, keys, "keys", numbered=True)
        return pl.DataFrame(rows, schema={k: schema.field(k).dtype for k in schema.keys}, orient="row")


def _instance(entity_cls: Any, row: dict[str, Any]) -> Any:
    return make_instance(entity_cls, row) if entity_cls is not None else row


def _group_rows(entity_cls: Any, frame: pl.DataFrame, n_keys: int) -> list[list[Any]]:
    from volga.storage import KEY_INDEX

    out: list[list[Any]] = [[] for _ in range(n_keys)]
    for row in frame.iter_rows(named=True):
        index = row.pop(KEY_INDEX)
        out[index].append(_instance(entity_cls, row))
    return out
