"""The on-demand executor: answer a request for features from the online store.

A request names target features (``@on_demand`` functions, or pipelines for their latest
row), keys per target, query arguments (``n`` for ``last_n``, ``start``/``end`` for
``range``) and per-request function arguments. The executor compiles the targets once
into a :class:`Plan`: the store reads it needs (one per pipeline and query) and the
on-demand functions, dependencies first. Per request it then

1. validates keys and arguments (errors name the request field at fault),
2. propagates the requested keys down the DAG (each node learns the distinct keys it
   must compute: a dependency sees the request key restricted to its own key fields),
3. reads every pipeline once for all its keys (one batched store call per read; reads run
   concurrently on stores that do I/O, sequentially on the in-memory store, where
   threads would only contend for the GIL),
4. calls the functions in dependency order, once per distinct key.

Arguments follow the ``params`` convention of ``materialize``: ``{"n": 5}`` applies to
every read or function with that argument, ``{"user_spent": {"n": 5}}`` to one.
Query arguments may also be scoped to the on-demand feature that reads
(``{"spend_trend": {"n": 5}}``, most specific first); when the request gives none, a read
uses its dependency's declared arguments (``(user_spent, "last_n", {"n": 5})``), and
``last_n`` falls back to ``n`` = 10.

In-process answers (:meth:`OnDemandExecutor.get`) are :class:`~volga.serving.codec.Row`
dicts of the output entity's fields, equal to what ``OnDemandClient.request`` returns
for the same request.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from volga.api.types import us_to_datetime
from volga.ondemand.calls import Call, call_all, call_kwargs
from volga.ondemand.plan import (
    _MISSING,
    Key,
    Node,
    Plan,
    Read,
    _at_us,
    _RowBuilder,
    check_args,
    check_keys,
    compile_on_demand,
)
from volga.ondemand.request_time import read_at
from volga.ondemand.rows import Row
from volga.serving.errors import BadRequest, InvalidKeys
from volga.storage import KEY_INDEX, MemoryOnlineStore, OnlineStore


class OnDemandExecutor:
    """Answers feature requests from ``definitions`` and the store ``store()`` returns.

    Thread-safe: plans are immutable once compiled; the store does its own locking.
    """

    def __init__(self, definitions: Mapping[str, Any], store: Callable[[], OnlineStore]) -> None:
        self.definitions = definitions
        self.store = store
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._builders: dict[tuple[str, tuple[str, ...]], _RowBuilder] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- public entry points ---------------------------------------------------------------
    def get(
        self, name: str, keys: Sequence[Mapping[str, Any]], args: Mapping[str, Any] | None = None, *, at: Any = None
    ) -> list[Row | None]:
        """In-process: one row (a dict of the output entity's fields) or None per key, in order,
        equal to what ``OnDemandClient.request`` returns for the same request.

        ``args`` holds query arguments and function arguments alike (see module doc).
        """
        plan = self._plans.get((name,))
        if plan is None or not plan.current(self.definitions):
            plan = self.plan([name], field="name")
        key_tuples = [self._keys(plan, 0, keys, "keys")]
        node_kwargs, read_args = self._args(plan, args, args, "args", "args")
        results = self._execute(plan, key_tuples, node_kwargs, read_args, _at_us(at, "at"), at is not None)[0]
        to_row = plan.row_makers[0]
        return [None if r is None else to_row(r) for r in results]

    def request(
        self,
        target_features: Sequence[str],
        feature_keys: Mapping[str, Any] | None = None,
        keys: Sequence[Mapping[str, Any]] | None = None,
        query_args: Mapping[str, Any] | None = None,
        udf_args: Mapping[str, Any] | None = None,
        at: Any = None,
    ) -> dict[str, list[Any]]:
        """The ``POST /features`` request: ``{feature: [instance | None, ...]}``.

        Keys come per feature (``feature_keys``) or shared by all targets (``keys``).
        """
        if isinstance(target_features, str) or not isinstance(target_features, Sequence) or not target_features:
            raise BadRequest("target_features must be a non-empty list of feature names", field="target_features")
        targets = tuple(target_features)
        plan = self._plans.get(targets)
        if plan is None or not plan.current(self.definitions):
            plan = self.plan(targets, field="target_features")
        if feature_keys is not None:
            if not isinstance(feature_keys, Mapping):
                raise BadRequest("feature_keys must be an object {feature: [key, ...]}", field="feature_keys")
            for name in feature_keys:
                if name not in targets:
                    raise BadRequest(
                        f"feature_keys has keys for '{name}', which is not in target_features {list(targets)}",
                        field=f"feature_keys.{name}",
                    )
        key_tuples = []
        for i, name in enumerate(targets):
            given = feature_keys.get(name, _MISSING) if feature_keys is not None else _MISSING
            where = f"feature_keys.{name}"
            if given is _MISSING:
                if keys is None:
                    fields = list(plan.key_fields(i))
                    raise InvalidKeys(
                        f"no keys for '{name}': give feature_keys.{name} (a list of {{{', '.join(repr(f) + ': ...' for f in fields)}}}) "
                        "or keys shared by all targets",
                        field=where,
                    )
                given, where = keys, "keys"
            if isinstance(given, Mapping):  # one key given as an object
                given = [given]
            key_tuples.append(self._keys(plan, i, given, where))
        node_kwargs, read_args = self._args(plan, query_args, udf_args, "query_args", "udf_args")
        results = self._execute(plan, key_tuples, node_kwargs, read_args, _at_us(at, "at"), at is not None)
        return dict(zip(targets, results))

    # -- compiling and checking ---------------------------------------------------------------
    def plan(self, targets: Sequence[str], field: str = "target_features") -> Plan:
        """Compile (and cache) the plan for ``targets``."""
        targets = tuple(targets)
        cached = self._plans.get(targets)
        if cached is None or not cached.current(self.definitions):
            cached = self._plans[targets] = compile_on_demand(self.definitions, targets, field)
        return cached

    def _keys(self, plan: Plan, target: int, keys: Any, where: str) -> list[Key]:
        node = plan.nodes[plan.target_nodes[target]]
        return check_keys(node.name, node.schema, keys, where)

    def _args(
        self, plan: Plan, query_args: Any, udf_args: Any, q_label: str, u_label: str
    ) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        return check_args(plan, query_args, udf_args, q_label, u_label)

    # -- running ---------------------------------------------------------------------------
    def _execute(
        self, plan: Plan, key_tuples: list[list[Key]], node_kwargs: list[dict[str, Any]], read_args: list[tuple[Any, ...]],
        at_us: int, explicit_at: bool,
    ) -> list[list[Any]]:
        nodes = plan.nodes
        needed: list[dict[Key, None]] = [{} for _ in nodes]
        read_needed: list[dict[Key, None]] = [{} for _ in plan.reads]
        for target, keys in zip(plan.target_nodes, key_tuples):
            needed[target].update(dict.fromkeys(keys))
        for node in reversed(nodes):  # dependents before their dependencies
            keys_needed = needed[node.index]
            if not keys_needed:
                continue
            for inp in node.inputs:
                into = read_needed[inp.index] if inp.read else needed[inp.index]
                if inp.projection is None:
                    into.update(keys_needed)
                else:
                    proj = inp.projection
                    for key in keys_needed:
                        into[tuple(key[i] for i in proj)] = None
        fetched = self._read_all(plan, read_needed, read_args, at_us, explicit_at)
        results: list[dict[Key, Any]] = [{} for _ in nodes]
        now = us_to_datetime(at_us)
        for node in nodes:
            keys_needed = needed[node.index]
            if keys_needed:
                kwargs = node_kwargs[node.index] if node_kwargs else {}
                results[node.index] = self._run_node(node, keys_needed, fetched, results, kwargs, now)
        return [[results[t][key] for key in keys] for t, keys in zip(plan.target_nodes, key_tuples)]

    def _run_node(
        self, node: Node, keys: dict[Key, None], fetched: list[dict[Key, Any]], results: list[dict[Key, Any]],
        kwargs: dict[str, Any], now: datetime.datetime,
    ) -> dict[Key, Any]:
        defn = node.definition
        if defn is None:  # a pipeline target: its latest row
            source = fetched[node.inputs[0].index]
            return {key: source[key] for key in keys}
        sources = [(fetched[i.index] if i.read else results[i.index], i.projection, i.many or i.optional) for i in node.inputs]
        out: dict[Key, Any] = {}
        calls: list[Call] = []
        for key in keys:
            values = []
            for source, proj, may_be_empty in sources:
                value = source[key if proj is None else tuple(key[i] for i in proj)]
                if value is None and not may_be_empty:
                    break
                values.append(value)
            else:
                calls.append((key, values, call_kwargs(node, key, kwargs, now)))
                continue
            out[key] = None  # a required input is missing: no call
        for (key, _, _), result in zip(calls, call_all(defn, calls)):
            out[key] = result
        return out

    def _read_all(
        self, plan: Plan, needed: list[dict[Key, None]], read_args: list[tuple[Any, ...]], at_us: int, explicit_at: bool
    ) -> list[dict[Key, Any]]:
        store = self.store()
        out: list[dict[Key, Any]] = [{} for _ in plan.reads]
        # One store call per pipeline, query and arguments, whichever features share it.
        groups: dict[tuple[Any, ...], list[Read]] = {}
        for read, keys in zip(plan.reads, needed):
            if keys:
                groups.setdefault((read.name, read.query, read_args[read.index] if read_args else ()), []).append(read)
        jobs = []
        for (_, _, args), members in groups.items():
            keys = needed[members[0].index] if len(members) == 1 else dict.fromkeys(k for m in members for k in needed[m.index])
            jobs.append((members, list(keys), args))
        if len(jobs) > 1 and not isinstance(store, MemoryOnlineStore):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="volga-read")
            answers = list(self._pool.map(lambda job: self._read(store, job[0][0], job[1], job[2], at_us, explicit_at), jobs))
        else:
            answers = [self._read(store, members[0], keys, args, at_us, explicit_at) for members, keys, args in jobs]
        for (members, _, _), values in zip(jobs, answers):
            for read in members:
                out[read.index] = values
        return out

    def _read(
        self, store: OnlineStore, read: Read, keys: list[Key], args: tuple[Any, ...], at_us: int, explicit_at: bool
    ) -> dict[Key, Any]:
        many = read.query != "latest"
        if store.schema(read.name) is None:  # defined, but nothing materialized yet
            return {key: ([] if many else None) for key in keys}
        # Keys were validated, so str/int/float/bool columns infer their dtype (cheaper than
        # naming it); a Series per column is ~3x cheaper than a frame from a dict.
        series = [
            pl.Series(name, [key[i] for key in keys], dtype=None if infer and keys else read.key_schema[name])
            for i, (name, infer) in enumerate(zip(read.keys, read.inferable))
        ]
        frame = series[0].to_frame() if len(series) == 1 else pl.DataFrame(series)
        if read.query == "latest":
            rows = read_at(store, read.name, read.shape, frame, at_us, explicit=explicit_at)
        elif read.query == "last_n" and not explicit_at:
            rows = store.get_last_n(read.name, frame, args[0])
        elif read.query == "last_n":  # the last n rows at or before T
            rows = store.get_range(read.name, frame, None, at_us)
            rows = rows.filter(pl.int_range(pl.len()).reverse().over(KEY_INDEX) < args[0])
        else:
            start, end = args
            rows = store.get_range(read.name, frame, start, end if not explicit_at else min(at_us, end if end is not None else at_us))
        columns = rows.columns
        build = self._builder(read, columns)
        if not many:
            ts = columns.index(read.ts_name)
            return {key: (None if row[ts] is None else build(row)) for key, row in zip(keys, rows.rows())}
        index = columns.index(KEY_INDEX)
        grouped: list[list[Any]] = [[] for _ in keys]
        for row in rows.rows():
            grouped[row[index]].append(build(row))
        return dict(zip(keys, grouped))

    def _builder(self, read: Read, columns: list[str]) -> _RowBuilder:
        cache_key = (read.name, tuple(columns))
        builder = self._builders.get(cache_key)
        if builder is None:
            builder = self._builders[cache_key] = _RowBuilder(read.pipeline.output, columns)
        return builder

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
