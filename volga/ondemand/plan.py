"""On-demand features compiled into a plan, and the rules for calling them.

Used alike by serving (answers from the online store, now or at ``at``) and training
(answers from the offline store at each spine time): what a request needs (store reads,
one per pipeline and query, and the functions, dependencies first), how keys and
arguments are checked (errors name the request field at fault), and how store rows
become entity instances and response rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from volga.api.decorators import PipelineDef
from volga.api.entity import Schema, entity_schema
from volga.api.keys import key_records
from volga.api.on_demand import QUERY_ARGS, QUERY_DEFAULTS, OnDemandDef, OnDemandDefinitionError, dependency_order
from volga.api.types import datetime_to_us, dtype_name, moment_us, to_utc, unwrap_optional
from volga.errors import naming_hint
from volga.ondemand.errors import BadRequest, FeatureNotFound, InternalError, InvalidKeys, describe
from volga.ondemand.rows import Row
from volga.plan.request_time import RequestTimeShape, request_time_shape

Key = tuple[Any, ...]
UTC = datetime.timezone.utc
_MISSING = object()


# -- values from requests ------------------------------------------------------------------

def _at_us(value: Any, field: str) -> int:
    """The request time: now (None), or a datetime / ISO 8601 string."""
    try:
        return moment_us(value, what=field)
    except (TypeError, ValueError) as e:
        raise BadRequest(str(e), field=field) from None


def check_keys(label: str, schema: Schema, keys: Any, where: str, *, numbered: bool = False) -> list[Key]:
    """Request keys as tuples in key-field order, checked against ``schema``'s key fields
    (see :mod:`volga.api.keys` for the shapes accepted); errors name the key at fault, as
    ``keys[0].user_id`` (``numbered``: as ``key #0 field 'user_id'``)."""
    fields = schema.keys
    keys = key_records(keys)

    def spot(i: int, name: str | None = None) -> str:
        if numbered:
            return f"key #{i}" + (f" field '{name}'" if name else "")
        return f"{where}[{i}]" + (f".{name}" if name else "")

    if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Sequence):
        raise InvalidKeys(
            f"'{label}': {where} must be a list of objects like {{{', '.join(repr(k) + ': ...' for k in fields)}}}",
            field=where,
        )
    checks = [(k, _converter(schema.field(k).dtype)) for k in fields]
    out: list[Key] = []
    n = len(fields)
    for i, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise InvalidKeys(f"'{label}': {spot(i)} must be an object with {list(fields)}, got {describe(key)}", field=f"{where}[{i}]")
        if len(key) != n or any(k not in key for k in fields):
            missing = [k for k in fields if k not in key]
            extra = sorted(str(k) for k in key if k not in fields)
            raise InvalidKeys(
                f"'{label}': {spot(i)} must have exactly the key fields {list(fields)}"
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
                        f"'{label}': {spot(i, name)} must be {dtype_name(schema.field(name).dtype)}, got {describe(key[name])}",
                        field=e.field,
                    ) from None
            values.append(value)
        out.append(tuple(values))
    return out


def parse_datetime(value: Any, field: str) -> datetime.datetime:
    """A datetime, or an ISO 8601 string; naive means UTC. Result is aware UTC."""
    if isinstance(value, datetime.datetime):
        return to_utc(value)
    if isinstance(value, str):
        try:
            return to_utc(datetime.datetime.fromisoformat(value))
        except ValueError:
            pass
    raise BadRequest(f"{field} must be an ISO 8601 datetime, got {describe(value)}", field=field)


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
            raise BadRequest(f"{field} must be float, got {describe(value)}", field=field)
        return to_float
    if isinstance(dtype, pl.Datetime):
        return parse_datetime
    return None


def _exact(cls: type, name: str) -> Callable[[Any, str], Any]:
    def check(value: Any, field: str) -> Any:
        if type(value) is cls:
            return value
        raise BadRequest(f"{field} must be {name}, got {describe(value)}", field=field)
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
                raise BadRequest(f"{field} must be a list, got {describe(value)}", field=field)
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
    shape: RequestTimeShape | None = None  # evaluated at request time (None: as of its last event)

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
                values[name] = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
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
                row[name] = _utc(value)
        for name in moment_lists:
            value = row[name]
            if value:
                row[name] = [v if v is None or v.tzinfo is UTC else _utc(v) for v in value]
        return row

    return make


def _utc(value: datetime.datetime) -> datetime.datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_NO_KWARGS: list[dict[str, Any]] = []
_NO_READ_ARGS: list[tuple[Any, ...]] = []


def compile_on_demand(definitions: Mapping[str, Any], targets: Sequence[str], field: str = "target_features") -> Plan:
    """The plan for ``targets``: their store reads and functions, dependencies first.
    Errors name the request ``field`` at fault."""
    targets = tuple(targets)
    roots: list[OnDemandDef] = []
    for i, name in enumerate(targets):
        where = field if field == "name" else f"{field}[{i}]"
        defn = definitions.get(name) if isinstance(name, str) else None
        if not isinstance(defn, (OnDemandDef, PipelineDef)):
            known = sorted(n for n, d in definitions.items() if isinstance(d, (OnDemandDef, PipelineDef)))
            raise FeatureNotFound(
                f"unknown feature {name!r}; known features: {known} (client.register(...) makes one known){naming_hint(name)}",
                field=where,
            )
        if targets.index(name) != i:
            raise BadRequest(f"feature '{name}' is requested twice", field=where)
        if isinstance(defn, OnDemandDef):
            roots.append(defn)
    try:
        order = dependency_order(roots, definitions)
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
                len(reads), pipe, query, schema.keys, key_schema, schema.timestamp, [], defaults=defaults,
                shape=request_time_shape(pipe, definitions),
            )
        if user not in read.users:
            read.users.append(user)
        return read

    for defn in order:
        schema = defn.schema
        inputs = []
        for dep, target in defn.resolved(definitions):
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
        defn = definitions[name]
        if isinstance(defn, PipelineDef):
            read = read_of(defn, "latest", name)
            node_of[name] = len(nodes)
            nodes.append(Node(len(nodes), name, None, defn.schema, [Input(True, read.index, None, False, True)], {}))
        target_nodes.append(node_of[name])
    read_list = sorted(reads.values(), key=lambda r: r.index)
    needs_args = any(QUERY_ARGS[r.query] for r in read_list) or any(n.arg_checks for n in nodes)
    names = {*targets, *(d.name for d in order), *(r.name for r in read_list)}
    bindings = tuple((name, definitions.get(name)) for name in sorted(names))
    return Plan(targets, tuple(target_nodes), read_list, nodes, needs_args, bindings)


def check_args(
    plan: Plan, query_args: Any, udf_args: Any, q_label: str, u_label: str
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Per-node keyword arguments and per-read query arguments."""
    if not plan.needs_args and not query_args and not udf_args:
        return _NO_KWARGS, _NO_READ_ARGS
    merged = q_label == u_label
    for label, value in ((q_label, query_args), (u_label, udf_args)):
        if value is not None and not isinstance(value, Mapping):
            raise BadRequest(f"{label} must be an object, got {describe(value)}", field=label)
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
            raise BadRequest(f"n must be a positive int, got {describe(value)}", field=field)
        return value
    if value is None:
        return None
    return datetime_to_us(parse_datetime(value, field))
