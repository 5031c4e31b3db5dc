"""``volga.Client``: a thin facade that wires definitions, runtime and stores together.

>>> client = Client(offline_store=ParquetOfflineStore(__import__("tempfile").mkdtemp()))
>>> client.online_store.__class__.__name__
'MemoryOnlineStore'
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from volga.api.decorators import Params, PipelineDef, SourceDef, defined
from volga.api.entity import Schema, make_instance
from volga.api.on_demand import OnDemandDef, dependency_order
from volga.api.types import Duration, datetime_to_us, dtype_name, parse_duration_us
from volga.errors import KeyMismatch, UnknownFeature
from volga.plan.compile import PhysicalPlan, compile_plan
from volga.runtime.local.executors import StreamOptions
from volga.runtime.local.job import Job
from volga.runtime.local.runtime import LocalRuntime
from volga.serving.codec import Row
from volga.serving.executor import OnDemandExecutor
from volga.storage import MemoryOnlineStore, OfflineStore, OnlineStore, ParquetOfflineStore

Mode = Literal["offline", "online"]
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
    ) -> Job:
        """Run pipelines over their sources.

        ``mode="offline"``: read bounded sources fully, write every output row to the
        offline store (replacing that pipeline's previous rows) and, with
        ``write_online=True``, to the online store too.
        ``mode="online"``: stream micro-batches of up to ``batch_size`` rows (waiting at most
        ``max_batch_delay`` to fill one; default: take what is there) into the online
        store; with ``write_offline=True`` the job's output rows also replace the
        pipeline's offline rows (cleared at job start, appended as they come).
        ``block=False`` returns a running :class:`Job` (``wait()``/``stop()``).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if mode not in ("offline", "online"):
            raise ValueError(f"mode must be 'offline' or 'online', not {mode!r}")
        plan = self._plan(pipelines, params)
        schemas = {name: plan.pipelines[name].schema for name in plan.outputs}
        if mode == "offline":
            def sink(name: str, rows: pl.DataFrame) -> None:
                self.offline_store.replace(name, schemas[name], rows)
                if write_online:
                    self.online_store.write(name, schemas[name], rows)
        else:
            if write_offline:  # the job's output becomes the pipeline's offline rows
                for name, schema in schemas.items():
                    self.offline_store.replace(name, schema, pl.DataFrame(schema=schema.polars_schema()))

            def sink(name: str, rows: pl.DataFrame) -> None:
                self.online_store.write(name, schemas[name], rows)
                if write_offline:
                    self.offline_store.append(name, schemas[name], rows)

        delay_s = parse_duration_us(max_batch_delay, what="max_batch_delay") / 1e6
        options = StreamOptions(batch_size=batch_size, max_batch_delay_s=delay_s)
        runtime = self.runtime if self.runtime is not None else LocalRuntime()
        job = runtime.start(plan, mode, params, sink, block=block, options=options)
        self.jobs.append(job)
        return job

    # -- reads -------------------------------------------------------------------------
    def get_offline(
        self, name: str, start: datetime.datetime | None = None, end: datetime.datetime | None = None
    ) -> pl.DataFrame:
        """Every stored output row of pipeline ``name`` (``start <= ts <= end``), as polars."""
        rows = self.offline_store.read(name, start, end)
        if rows is None:
            raise UnknownFeature(
                f"no offline rows for '{name}': run client.materialize([{name}], mode='offline') first"
                + (f" (known: {sorted(self.definitions)})" if name not in self.definitions else "")
            )
        return rows

    def get_latest(self, name: str, keys: Sequence[Mapping[str, Any]], *, ttl: Duration | None = None) -> list[Any]:
        """The latest row per key (an instance of the output entity) or None, in key order.

        ``ttl`` (e.g. ``"1h"``): None also where the latest row is older than that now, as
        ``get_historical_features(..., ttl=...)`` nulls it at the spine time.
        """
        entity_cls, schema = self._feature(name)
        oldest_us = None if ttl is None else _now_us() - parse_duration_us(ttl, what=f"get_latest('{name}'): ttl")
        frame = self._keys_frame(name, schema, keys)
        if self.online_store.schema(name) is None:  # defined, but nothing materialized online yet
            return [None] * frame.height
        rows = self.online_store.get_latest(name, frame)
        ts = schema.timestamp
        return [
            None if row[ts] is None or (oldest_us is not None and datetime_to_us(row[ts]) < oldest_us) else _instance(entity_cls, row)
            for row in rows.iter_rows(named=True)
        ]

    def get_last_n(self, name: str, keys: Sequence[Mapping[str, Any]], n: int) -> list[list[Any]]:
        """Up to ``n`` latest rows per key, oldest first."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"get_last_n('{name}'): n must be a positive int, got {n!r}")
        entity_cls, schema = self._feature(name)
        keys_frame = self._keys_frame(name, schema, keys)
        if self.online_store.schema(name) is None:
            return [[] for _ in range(keys_frame.height)]
        frame = self.online_store.get_last_n(name, keys_frame, n)
        return _group_rows(entity_cls, frame, len(keys))

    def get_range(
        self, name: str, keys: Sequence[Mapping[str, Any]], start: datetime.datetime | None, end: datetime.datetime | None
    ) -> list[list[Any]]:
        """Rows per key with ``start <= ts <= end`` (None = open), oldest first."""
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
        return _group_rows(entity_cls, frame, len(keys))

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
    ) -> Any:
        """A point-in-time correct training set: one row per ``spine`` row, in order.

        ``spine`` (polars or pandas; the result is the same kind) holds the features' key
        columns and ``timestamp_column`` (naive datetimes are read as UTC). ``features``
        names pipelines and on-demand features (``"user_spent"``: its value fields) or
        fields (``"user_spent.avg_spent_7d"``); columns are named by field, or
        ``"<feature>.<field>"`` with ``full_names=True``. Each value is what the online path
        served at the row's time: a pipeline's latest row with ts <= t from the offline
        store (null before any, or older than ``ttl``: ``"1h"`` or ``{"user_spent": "1h"}``),
        an on-demand function over its dependencies as of t (``args`` as in
        :meth:`get_on_demand`). ``key_map={"user_id": "spine_column"}`` (or per feature:
        ``{"user_spent": {...}}``) reads keys from differently named spine columns.
        ``compute=True`` first backfills the pipelines involved from their sources.
        See :mod:`volga.training`.
        """
        from volga.training import get_historical_features

        return get_historical_features(
            self, spine, features, timestamp_column=timestamp_column, key_map=key_map, ttl=ttl, args=args,
            full_names=full_names, compute=compute,
        )

    # -- on-demand features and serving ------------------------------------------------
    def get_on_demand(self, name: str, keys: Sequence[Mapping[str, Any]], args: Mapping[str, Any] | None = None) -> list[Row | None]:
        """On-demand feature ``name`` computed now: one row or None per key, in key order.

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
        return self._on_demand.get(name, keys, args)

    def serve(
        self, port: int = 0, host: str = "127.0.0.1", *, auth_token: str | None = None, max_body_bytes: int = 1 << 20
    ) -> Any:
        """Serve the registered features over HTTP from a background thread.

        Returns the running :class:`volga.serving.http.Server` (``.url``, ``.stop()``).
        """
        from volga.serving.http import serve_in_thread

        return serve_in_thread(self._on_demand, host=host, port=port, auth_token=auth_token, max_body_bytes=max_body_bytes)

    def _feature(self, name: str) -> tuple[Any, Schema]:
        definition = self.definitions.get(name)
        if isinstance(definition, PipelineDef):
            return definition.output, definition.schema
        schema = self.online_store.schema(name)
        if schema is None:
            known = sorted(n for n, d in self.definitions.items() if isinstance(d, PipelineDef))
            raise UnknownFeature(f"unknown feature '{name}'; known pipelines: {known}")
        return None, schema

    @staticmethod
    def _keys_frame(name: str, schema: Schema, keys: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
        if isinstance(keys, Mapping) or not isinstance(keys, Sequence):
            raise KeyMismatch(f"'{name}': keys must be a list of dicts like [{{{', '.join(repr(k) + ': ...' for k in schema.keys)}}}]")
        expected = set(schema.keys)
        columns: dict[str, list[Any]] = {k: [] for k in schema.keys}
        for index, key in enumerate(keys):
            if not isinstance(key, Mapping):
                raise KeyMismatch(f"'{name}': key #{index} must be a dict of {sorted(expected)}, got {type(key).__name__}")
            if set(key) != expected:
                missing, extra = sorted(expected - set(key)), sorted(set(key) - expected)
                raise KeyMismatch(
                    f"'{name}': key #{index} must have exactly the key fields {sorted(expected)}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra}" if extra else "")
                )
            for field_name in schema.keys:
                value = key[field_name]
                dtype = schema.field(field_name).dtype
                if not _matches(value, dtype):
                    raise KeyMismatch(
                        f"'{name}': key #{index} field '{field_name}' must be {dtype_name(dtype)}, got {value!r}"
                    )
                columns[field_name].append(value)
        return pl.DataFrame(columns, schema={k: schema.field(k).dtype for k in schema.keys})


_PY_TYPES: dict[str, tuple[type, ...]] = {"String": (str,), "Int64": (int,), "Float64": (float, int), "Boolean": (bool,)}


def _matches(value: Any, dtype: pl.DataType) -> bool:
    allowed = _PY_TYPES.get(type(dtype).__name__)
    if allowed is None:
        return isinstance(value, datetime.datetime) if dtype.is_temporal() else True
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def _now_us() -> int:
    """Wall-clock now in microseconds since the epoch (the reference time of ``ttl``)."""
    return time.time_ns() // 1000


def _instance(entity_cls: Any, row: dict[str, Any]) -> Any:
    return make_instance(entity_cls, row) if entity_cls is not None else row


def _group_rows(entity_cls: Any, frame: pl.DataFrame, n_keys: int) -> list[list[Any]]:
    from volga.storage import KEY_INDEX

    out: list[list[Any]] = [[] for _ in range(n_keys)]
    for row in frame.iter_rows(named=True):
        index = row.pop(KEY_INDEX)
        out[index].append(_instance(entity_cls, row))
    return out
