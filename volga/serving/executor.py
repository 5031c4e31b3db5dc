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

import dataclasses
import datetime
import typing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from volga.api.decorators import PipelineDef
from volga.api.entity import Schema, entity_schema
from volga.api.on_demand import QUERY_ARGS, QUERY_DEFAULTS, OnDemandDef, OnDemandDefinitionError, dependency_order
from volga.api.types import datetime_to_us, dtype_name, to_utc, unwrap_optional
from volga.serving.codec import Row
from volga.serving.errors import BadRequest, FeatureFunctionError, FeatureNotFound, InternalError, InvalidKeys
from volga.storage import KEY_INDEX, MemoryOnlineStore, OnlineStore

Key = tuple[Any, ...]
UTC = datetime.timezone.utc
_MISSING = object()


# -- values from requests ------------------------------------------------------------------

def parse_datetime(value: Any, field: str) -> datetime.datetime:
    """A datetime, or an ISO 8601 string; naive means UTC. Result is aware UTC."""
    if isinstance(value, datetime.datetime):
        return to_utc(value)
    if isinstance(value, str):
        try:
            return to_utc(datetime.datetime.fromisoformat(value))
        except ValueError:
            pass
    raise BadRequest(f"{field} must be an ISO 8601 datetime, got {value!r}", field=field)


def _converter(dtype: pl.DataType) -> Callable[[Any, str], Any] | None:
    """Check (and normalise) one value of ``dtype``; None when any value is accepted."""
    kind = type(dtype).__name__
    if kind == "String":
        return _exact(str, "str")
    if kind == "Int64":
        return _exact(int, "int")
    if kind == "Boolean":
        return _exact(bool, "bool")
    if kind == "Float64":
        def to_float(value: Any, field: str) -> Any:
            if type(value) is float or (type(value) is int):
                return float(value)
            raise BadRequest(f"{field} must be float, got {value!r}", field=field)
        return to_float
    if isinstance(dtype, pl.Datetime):
        return parse_datetime
    return None


def _exact(cls: type, name: str) -> Callable[[Any, str], Any]:
    def check(value: Any, field: str) -> Any:
        if type(value) is cls:
            return value
        raise BadRequest(f"{field} must be {name}, got {value!r}", field=field)
    return check


def _arg_converter(annotation: Any) -> Callable[[Any, str], Any] | None:
    """A checker for a per-request argument annotated with an entity-style type."""
    if annotation is Any or annotation is typing.Any:
        return None
    inner, optional = unwrap_optional(annotation)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (Any,)
        check_item = _arg_converter(item)

        def check_list(value: Any, field: str) -> Any:
            if not isinstance(value, list):
                raise BadRequest(f"{field} must be a list, got {value!r}", field=field)
            return value if check_item is None else [check_item(v, f"{field}[{i}]") for i, v in enumerate(value)]
        base: Callable[[Any, str], Any] | None = check_list
    else:
        simple = {str: pl.String(), int: pl.Int64(), float: pl.Float64(), bool: pl.Boolean(), datetime.datetime: pl.Datetime()}
        base = _converter(simple[inner]) if inner in simple else None
    if base is None or not optional:
        return base
    checked = base

    def check_optional(value: Any, field: str) -> Any:
        return None if value is None else checked(value, field)
    return check_optional


# -- the compiled plan -----------------------------------------------------------------------

@dataclasses.dataclass
class Read:
    """One batched store read per request: a pipeline and a query."""

    index: int
    pipeline: PipelineDef
    query: str
    keys: tuple[str, ...]
    key_schema: dict[str, pl.DataType]
    ts_name: str
    users: list[str]  # on-demand features that read it (for error messages)
    inferable: tuple[bool, ...] = ()  # per key column: polars infers its dtype from validated values
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # query args when the request gives none

    def __post_init__(self) -> None:
        simple = (pl.String(), pl.Int64(), pl.Float64(), pl.Boolean())
        self.inferable = tuple(self.key_schema[k] in simple for k in self.keys)

    @property
    def name(self) -> str:
        return self.pipeline.name


@dataclasses.dataclass
class Input:
    """Where one parameter of a node comes from."""

    read: bool  # a store read, else another node
    index: int
    projection: tuple[int, ...] | None  # positions of the source's keys in the node's key; None = same key
    many: bool
    optional: bool


@dataclasses.dataclass
class Node:
    """An on-demand function (or a pipeline target, answered by its latest row)."""

    index: int
    name: str
    definition: OnDemandDef | None
    schema: Schema
    inputs: list[Input]
    arg_checks: dict[str, Callable[[Any, str], Any] | None]
    key_params: tuple[tuple[str, int], ...] = ()  # parameters named like a key field get the key's value


@dataclasses.dataclass
class Plan:
    """What answering a set of target features takes, compiled once."""

    targets: tuple[str, ...]
    target_nodes: tuple[int, ...]
    reads: list[Read]
    nodes: list[Node]  # dependencies first
    needs_args: bool
    bindings: tuple[tuple[str, Any], ...]  # every definition used, by name
    row_makers: tuple[Callable[[Any], Row], ...] = ()  # per target: its results as rows (in-process answers)

    def __post_init__(self) -> None:
        if not self.row_makers:
            self.row_makers = tuple(_row_maker(self.nodes[t].schema) for t in self.target_nodes)

    def current(self, definitions: Mapping[str, Any]) -> bool:
        """False once a definition it uses was replaced under the same name."""
        return all(definitions.get(name) is defn for name, defn in self.bindings)

    def key_fields(self, target: int) -> tuple[str, ...]:
        return self.nodes[self.target_nodes[target]].schema.keys


class _RowBuilder:
    """Entity instances from store rows (tuples in the store's column order)."""

    def __init__(self, cls: type, columns: Sequence[str]) -> None:
        schema = entity_schema(cls)
        self.cls = cls
        positions = {name: i for i, name in enumerate(columns)}
        self.fields = [(f.name, positions[f.name]) for f in schema.fields]
        self.datetimes = [f.name for f in schema.fields if isinstance(f.dtype, pl.Datetime)]

    def __call__(self, row: tuple[Any, ...]) -> Any:
        values = {name: row[i] for name, i in self.fields}
        for name in self.datetimes:
            value = values[name]
            if value is not None and value.tzinfo is not UTC:
                values[name] = to_utc(value)
        return self.cls(**values)


def _row_maker(schema: Schema) -> Callable[[Any], Row]:
    """Entity instance -> :class:`Row`, with datetime fields as aware UTC datetimes (what the
    HTTP client parses the server's ISO 8601 strings back into)."""
    names = tuple(schema.names)
    moments = tuple(f.name for f in schema.fields if isinstance(f.dtype, pl.Datetime))
    moment_lists = tuple(
        f.name for f in schema.fields if isinstance(f.dtype, pl.List) and isinstance(f.dtype.inner, pl.Datetime)
    )

    def make(obj: Any) -> Row:
        row = Row({name: getattr(obj, name) for name in names})
        for name in moments:
            value = row[name]
            if value is not None and value.tzinfo is not UTC:
                row[name] = to_utc(value)
        for name in moment_lists:
            value = row[name]
            if value:
                row[name] = [v if v is None or v.tzinfo is UTC else to_utc(v) for v in value]
        return row

    return make


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
    def get(self, name: str, keys: Sequence[Mapping[str, Any]], args: Mapping[str, Any] | None = None) -> list[Row | None]:
        """In-process: one row (a dict of the output entity's fields) or None per key, in order,
        equal to what ``OnDemandClient.request`` returns for the same request.

        ``args`` holds query arguments and function arguments alike (see module doc).
        """
        plan = self._plans.get((name,))
        if plan is None or not plan.current(self.definitions):
            plan = self.plan([name], field="name")
        key_tuples = [self._keys(plan, 0, keys, "keys")]
        node_kwargs, read_args = self._args(plan, args, args, "args", "args")
        results = self._execute(plan, key_tuples, node_kwargs, read_args)[0]
        to_row = plan.row_makers[0]
        return [None if r is None else to_row(r) for r in results]

    def request(
        self,
        target_features: Sequence[str],
        feature_keys: Mapping[str, Any] | None = None,
        keys: Sequence[Mapping[str, Any]] | None = None,
        query_args: Mapping[str, Any] | None = None,
        udf_args: Mapping[str, Any] | None = None,
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
        results = self._execute(plan, key_tuples, node_kwargs, read_args)
        return dict(zip(targets, results))

    # -- compiling -------------------------------------------------------------------------
    def plan(self, targets: Sequence[str], field: str = "target_features") -> Plan:
        """Compile (and cache) the plan for ``targets``."""
        targets = tuple(targets)
        cached = self._plans.get(targets)
        if cached is not None and cached.current(self.definitions):
            return cached
        roots: list[OnDemandDef] = []
        for i, name in enumerate(targets):
            where = field if field == "name" else f"{field}[{i}]"
            defn = self.definitions.get(name) if isinstance(name, str) else None
            if not isinstance(defn, (OnDemandDef, PipelineDef)):
                known = sorted(n for n, d in self.definitions.items() if isinstance(d, (OnDemandDef, PipelineDef)))
                raise FeatureNotFound(
                    f"unknown feature {name!r}; known features: {known} (client.register(...) makes one known)", field=where
                )
            if targets.index(name) != i:
                raise BadRequest(f"feature '{name}' is requested twice", field=where)
            if isinstance(defn, OnDemandDef):
                roots.append(defn)
        try:
            order = dependency_order(roots, self.definitions)
        except OnDemandDefinitionError as e:  # the definitions are broken, not the request
            raise InternalError(f"cannot serve {list(targets)}: {e}") from e
        reads: dict[tuple[str, ...], Read] = {}
        nodes: list[Node] = []
        node_of: dict[str, int] = {}

        def read_of(pipe: PipelineDef, query: str, user: str, dep: Any = None) -> Read:
            # A read with query arguments belongs to one dependency of one feature (each may
            # take its own arguments); reads that end up with equal arguments are fetched once.
            memo: tuple[str, ...] = (pipe.name, query) if not QUERY_ARGS[query] else (pipe.name, query, user, dep.param)
            read = reads.get(memo)
            if read is None:
                schema = pipe.schema
                key_schema = {k: schema.field(k).dtype for k in schema.keys}
                defaults = dep.defaults if dep is not None else dict(QUERY_DEFAULTS[query])
                read = reads[memo] = Read(
                    len(reads), pipe, query, schema.keys, key_schema, schema.timestamp, [], defaults=defaults
                )
            if user not in read.users:
                read.users.append(user)
            return read

        for defn in order:
            schema = defn.schema
            inputs = []
            for dep, target in defn.resolved(self.definitions):
                source_keys = target.schema.keys
                projection = None if source_keys == schema.keys else tuple(schema.keys.index(k) for k in source_keys)
                if isinstance(target, OnDemandDef):
                    inputs.append(Input(False, node_of[target.name], projection, False, dep.optional))
                else:
                    read = read_of(target, dep.query, defn.name, dep)
                    inputs.append(Input(True, read.index, projection, dep.many, dep.optional))
            checks = {a.name: _arg_converter(a.annotation) for a in defn.args if a.name not in schema.keys}
            key_params = tuple((a.name, schema.keys.index(a.name)) for a in defn.args if a.name in schema.keys)
            node_of[defn.name] = len(nodes)
            nodes.append(Node(len(nodes), defn.name, defn, schema, inputs, checks, key_params))
        target_nodes = []
        for name in targets:
            defn = self.definitions[name]
            if isinstance(defn, PipelineDef):
                read = read_of(defn, "latest", name)
                node_of[name] = len(nodes)
                nodes.append(Node(len(nodes), name, None, defn.schema, [Input(True, read.index, None, False, True)], {}))
            target_nodes.append(node_of[name])
        read_list = sorted(reads.values(), key=lambda r: r.index)
        needs_args = any(QUERY_ARGS[r.query] for r in read_list) or any(n.arg_checks for n in nodes)
        names = {*targets, *(d.name for d in order), *(r.name for r in read_list)}
        bindings = tuple((name, self.definitions.get(name)) for name in sorted(names))
        plan = Plan(targets, tuple(target_nodes), read_list, nodes, needs_args, bindings)
        self._plans[targets] = plan
        return plan

    # -- validating ------------------------------------------------------------------------
    def _keys(self, plan: Plan, target: int, keys: Any, where: str) -> list[Key]:
        node = plan.nodes[plan.target_nodes[target]]
        schema = node.schema
        fields = schema.keys
        if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Sequence):
            raise InvalidKeys(
                f"'{node.name}': {where} must be a list of objects like {{{', '.join(repr(k) + ': ...' for k in fields)}}}",
                field=where,
            )
        checks = [(k, _converter(schema.field(k).dtype)) for k in fields]
        out: list[Key] = []
        n = len(fields)
        for i, key in enumerate(keys):
            if not isinstance(key, Mapping):
                raise InvalidKeys(f"'{node.name}': {where}[{i}] must be an object with {list(fields)}, got {key!r}", field=f"{where}[{i}]")
            if len(key) != n or any(k not in key for k in fields):
                missing = [k for k in fields if k not in key]
                extra = sorted(str(k) for k in key if k not in fields)
                raise InvalidKeys(
                    f"'{node.name}': {where}[{i}] must have exactly the key fields {list(fields)}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra}" if extra else ""),
                    field=f"{where}[{i}]" + (f".{missing[0]}" if missing else f".{extra[0]}"),
                )
            values = []
            for name, check in checks:
                value = key[name]
                if check is not None:
                    try:
                        value = check(value, f"{where}[{i}].{name}")
                    except BadRequest as e:
                        raise InvalidKeys(
                            f"'{node.name}': {where}[{i}].{name} must be {dtype_name(schema.field(name).dtype)}, got {key[name]!r}",
                            field=e.field,
                        ) from None
                values.append(value)
            out.append(tuple(values))
        return out

    def _args(
        self, plan: Plan, query_args: Any, udf_args: Any, q_label: str, u_label: str
    ) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        """Per-node keyword arguments and per-read query arguments."""
        if not plan.needs_args and not query_args and not udf_args:
            return _NO_KWARGS, _NO_READ_ARGS
        merged = q_label == u_label
        for label, value in ((q_label, query_args), (u_label, udf_args)):
            if value is not None and not isinstance(value, Mapping):
                raise BadRequest(f"{label} must be an object, got {value!r}", field=label)
        query_args = query_args or {}
        udf_args = udf_args or {}
        udf_scopes = {n.name: set(n.arg_checks) for n in plan.nodes if n.definition is not None}
        query_scopes: dict[str, set[str]] = {}
        for read in plan.reads:
            if QUERY_ARGS[read.query]:
                for scope in (read.name, *read.users):  # the pipeline read, or the feature reading it
                    query_scopes.setdefault(scope, set()).update(QUERY_ARGS[read.query])
        udf_names = set().union(*udf_scopes.values()) if udf_scopes else set()
        query_names = set().union(*query_scopes.values()) if query_scopes else set()
        if merged:
            scopes = {name: udf_scopes.get(name, set()) | query_scopes.get(name, set()) for name in {*udf_scopes, *query_scopes}}
            _check_names(u_label, udf_args, scopes, udf_names | query_names)
        else:
            _check_names(u_label, udf_args, udf_scopes, udf_names)
            _check_names(q_label, query_args, query_scopes, query_names)

        def lookup(given: Mapping[str, Any], scope: str, name: str) -> Any:
            own = given.get(scope)
            if isinstance(own, Mapping) and name in own:
                return own[name]
            return given.get(name, _MISSING)

        node_kwargs: list[dict[str, Any]] = []
        for node in plan.nodes:
            kwargs = {}
            for name, check in node.arg_checks.items():
                value = lookup(udf_args, node.name, name)
                if value is not _MISSING:
                    kwargs[name] = value if check is None else check(value, f"{u_label}.{node.name}.{name}")
            node_kwargs.append(kwargs)
        read_args: list[tuple[Any, ...]] = []
        for read in plan.reads:
            values = []
            for name in QUERY_ARGS[read.query]:
                value, field = _MISSING, f"{q_label}.{read.name}.{name}"
                for user in read.users:  # scoped to the on-demand feature that reads: most specific
                    own = query_args.get(user)
                    if isinstance(own, Mapping) and name in own:
                        value, field = own[name], f"{q_label}.{user}.{name}"
                        break
                if value is _MISSING:
                    value = lookup(query_args, read.name, name)
                if value is _MISSING:
                    value = read.defaults.get(name, _MISSING)
                    field = f"{read.users[0]}: dependency {read.name} ({read.query}) argument {name}"
                if value is _MISSING:
                    raise BadRequest(
                        f"'{read.users[0]}' reads {read.name} with {read.query}, which needs '{name}': pass "
                        f"{q_label}={{'{name}': ...}}, {{'{read.name}': {{'{name}': ...}}}} or "
                        f"{{'{read.users[0]}': {{'{name}': ...}}}}, or declare it with the dependency: "
                        f"({read.name}, '{read.query}', {{'{name}': ...}})",
                        field=f"{q_label}.{read.name}.{name}",
                    )
                values.append(_query_value(name, value, field))
            if read.query == "range" and None not in values and values[0] > values[1]:
                raise BadRequest(f"range for {read.name}: start {values[0]} is after end {values[1]}", field=f"{q_label}.{read.name}.start")
            read_args.append(tuple(values))
        return node_kwargs, read_args

    # -- running ---------------------------------------------------------------------------
    def _execute(
        self, plan: Plan, key_tuples: list[list[Key]], node_kwargs: list[dict[str, Any]], read_args: list[tuple[Any, ...]]
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
        fetched = self._read_all(plan, read_needed, read_args)
        results: list[dict[Key, Any]] = [{} for _ in nodes]
        for node in nodes:
            keys_needed = needed[node.index]
            if keys_needed:
                results[node.index] = self._run_node(node, keys_needed, fetched, results, node_kwargs[node.index] if node_kwargs else {})
        return [[results[t][key] for key in keys] for t, keys in zip(plan.target_nodes, key_tuples)]

    def _run_node(
        self, node: Node, keys: dict[Key, None], fetched: list[dict[Key, Any]], results: list[dict[Key, Any]], kwargs: dict[str, Any]
    ) -> dict[Key, Any]:
        out: dict[Key, Any] = {}
        defn = node.definition
        if defn is None:  # a pipeline target: its latest row
            source = fetched[node.inputs[0].index]
            return {key: source[key] for key in keys}
        fn, output, name, key_params = defn.fn, defn.output, defn.name, node.key_params
        sources = [(fetched[i.index] if i.read else results[i.index], i.projection, i.many or i.optional) for i in node.inputs]
        for key in keys:
            values = []
            for source, proj, may_be_empty in sources:
                value = source[key if proj is None else tuple(key[i] for i in proj)]
                if value is None and not may_be_empty:
                    break
                values.append(value)
            else:
                try:
                    if key_params:
                        result = fn(*values, **kwargs, **{param: key[pos] for param, pos in key_params})
                    else:
                        result = fn(*values, **kwargs)
                except Exception as e:  # the user's function: report it, keep serving
                    raise FeatureFunctionError.wrap(name, e) from e
                if result is not None and not isinstance(result, output):
                    raise FeatureFunctionError.wrap(
                        name, TypeError(f"returned {type(result).__name__}, expected {output.__name__} or None")
                    )
                out[key] = result
                continue
            out[key] = None
        return out

    def _read_all(self, plan: Plan, needed: list[dict[Key, None]], read_args: list[tuple[Any, ...]]) -> list[dict[Key, Any]]:
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
            answers = list(self._pool.map(lambda job: self._read(store, job[0][0], job[1], job[2]), jobs))
        else:
            answers = [self._read(store, members[0], keys, args) for members, keys, args in jobs]
        for (members, _, _), values in zip(jobs, answers):
            for read in members:
                out[read.index] = values
        return out

    def _read(self, store: OnlineStore, read: Read, keys: list[Key], args: tuple[Any, ...]) -> dict[Key, Any]:
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
            rows = store.get_latest(read.name, frame)
        elif read.query == "last_n":
            rows = store.get_last_n(read.name, frame, args[0])
        else:
            start, end = args
            rows = store.get_range(read.name, frame, start, end)
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


_NO_KWARGS: list[dict[str, Any]] = []
_NO_READ_ARGS: list[tuple[Any, ...]] = []


def _check_names(label: str, given: Mapping[str, Any], scopes: dict[str, set[str]], names: set[str]) -> None:
    """Every key must name an argument, or scope one feature's arguments (``{feature: {...}}``)."""
    for key, value in given.items():
        if key in scopes and isinstance(value, Mapping):
            for inner in value:
                if inner not in scopes[key]:
                    raise BadRequest(
                        f"unknown argument '{inner}' for '{key}' (it takes {sorted(scopes[key]) or 'no arguments'})",
                        field=f"{label}.{key}.{inner}",
                    )
        elif key not in names:
            raise BadRequest(
                f"unknown argument '{key}': the requested features take {sorted(names) or 'no arguments'}"
                + (f" (or scoped per feature: {sorted(scopes)})" if scopes else ""),
                field=f"{label}.{key}",
            )


def _query_value(name: str, value: Any, field: str) -> Any:
    if name == "n":
        if type(value) is not int or value < 1:
            raise BadRequest(f"n must be a positive int, got {value!r}", field=field)
        return value
    if value is None:
        return None
    return datetime_to_us(parse_datetime(value, field))
