"""``@on_demand``: request-time features computed from pipeline outputs and request data.

A decorated function becomes a frozen :class:`OnDemandDef`, also recorded by name in the
process-wide registry of definitions (:func:`volga.api.decorators.defined`). Each dependency is a ``@pipeline`` (read from the online store at request
time) or another ``@on_demand`` feature, with a query:

- ``"latest"`` (the default): the parameter is typed ``X`` or ``Optional[X]`` (``X`` the
  dependency's output entity) and receives one row or ``None``;
- ``"last_n"`` (query argument ``n``) and ``"range"`` (``start``, ``end``): the
  parameter is typed ``list[X]`` and receives the key's rows, oldest first.

A dependency may carry its query arguments: ``(user_spent, "last_n", {"n": 5})``,
``(user_spent, "range", {"start": None, "end": None})`` (``None`` = open-ended). Request
arguments override them: ``{"spend_trend": {"n": 3}}`` (scoped to the on-demand feature
that reads), ``{"user_spent": {"n": 3}}`` (scoped to the pipeline read) or ``{"n": 3}``
(everything taking ``n``), the most specific first. When ``n`` is given nowhere, ``last_n``
reads the last ``DEFAULT_LAST_N`` = 10 rows; ``range`` has no default bounds.

Parameters after the dependencies are per-request arguments and must have defaults,
except that one named like a key field of the output receives the request key's value
(it needs no default).
The return annotation is the output ``@entity``; its key fields are the request keys, and
must include the key fields of every dependency (a dependency is looked up with the
request key restricted to its own key fields).

Missing data: when a ``latest`` dependency has no row for the key (or a chained
on-demand feature returned ``None``), a parameter typed ``X`` makes the result ``None``
without calling the function; a parameter typed ``Optional[X]`` receives ``None``. A
``list[X]`` parameter receives ``[]``. The function may itself return ``None``.

>>> import datetime
>>> from volga.api.entity import entity, field
>>> @entity
... class Greeting:
...     user_id: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     text: str
>>> @on_demand(dependencies=[])
... def welcome(shout: bool = False) -> Greeting:
...     text = "HELLO" if shout else "hello"
...     return Greeting(user_id="", at=datetime.datetime(2025, 1, 1), text=text)
>>> welcome.name, [a.name for a in welcome.args]
('welcome', ['shout'])
>>> @on_demand(dependencies=[])  # doctest: +ELLIPSIS
... def broken(factor: float) -> Greeting: ...
Traceback (most recent call last):
volga.api.on_demand.OnDemandDefinitionError: on_demand broken: parameter 'factor' comes after the 0 dependencies, ... needs a default ... key field ...
>>> @on_demand(dependencies=[])
... def hello(user_id: str) -> Greeting:  # named like a key: receives it, no default
...     return Greeting(user_id=user_id, at=datetime.datetime(2025, 1, 1), text="hi " + user_id)
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from volga.api.decorators import PipelineDef, catalog_meta, defined, record
from volga.api.entity import Schema, entity_schema, is_entity
from volga.api.times import parse_utc
from volga.api.types import Duration, dtype_name, parse_duration_us, unwrap_optional

Query = Literal["latest", "last_n", "range"]
QUERIES: tuple[Query, ...] = ("latest", "last_n", "range")
# Request arguments each query needs (``range`` bounds may be null: open-ended).
QUERY_ARGS: dict[str, tuple[str, ...]] = {"latest": (), "last_n": ("n",), "range": ("start", "end")}
DEFAULT_LAST_N = 10
# What a query argument is when neither the request nor the dependency gives it.
QUERY_DEFAULTS: dict[str, dict[str, Any]] = {"latest": {}, "last_n": {"n": DEFAULT_LAST_N}, "range": {}}


class OnDemandDefinitionError(TypeError, ValueError):
    """An ``@on_demand`` declaration that cannot work (signature, types, keys, cycles)."""


DependencyRef = Union[PipelineDef, "OnDemandDef", str]
DependencySpec = Union[DependencyRef, tuple[DependencyRef, str], tuple[DependencyRef, str, Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class OnDemandDependency:
    """One dependency of an on-demand function: what, how it is queried, which parameter."""

    target: DependencyRef
    query: Query
    param: str
    annotation: Any  # the parameter's resolved annotation
    query_args: tuple[tuple[str, Any], ...] = ()  # declared with the dependency: (target, query, {...})

    @property
    def defaults(self) -> dict[str, Any]:
        """The query arguments used when the request gives none: the dependency's own, then
        :data:`QUERY_DEFAULTS` (``n`` = 10 for ``last_n``)."""
        return {**QUERY_DEFAULTS[self.query], **dict(self.query_args)}

    @property
    def name(self) -> str:
        return self.target if isinstance(self.target, str) else self.target.name

    @property
    def many(self) -> bool:
        """True when the parameter receives a list of rows (``last_n``/``range``)."""
        return self.query != "latest"

    @property
    def optional(self) -> bool:
        """True when a missing ``latest`` row is passed as ``None`` instead of skipping the call."""
        return unwrap_optional(self.annotation)[1]


@dataclasses.dataclass(frozen=True)
class RequestArg:
    """A per-request argument: a function parameter after the dependencies."""

    name: str
    default: Any
    annotation: Any  # ``inspect.Parameter.empty`` when not annotated
    keyword_only: bool


@dataclasses.dataclass(frozen=True, eq=False)
class OnDemandDef:
    """An ``@on_demand`` function: a feature computed per request from its dependencies."""

    fn: Callable[..., Any]
    dependencies: tuple[OnDemandDependency, ...]
    output: type
    args: tuple[RequestArg, ...]
    takes_now: bool = False  # a parameter named `now` receives the request time T
    timeout_s: float | None = None  # async functions: per-request deadline
    tags: tuple[str, ...] = ()  # catalog metadata (volga list/describe, the console)
    owner: str | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def schema(self) -> Schema:
        return entity_schema(self.output)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<on_demand {self.name} -> {self.output.__name__}>"

    def resolved(self, lookup: Mapping[str, Any] | None = None) -> list[tuple[OnDemandDependency, PipelineDef | OnDemandDef]]:
        """Each dependency with its definition; names are looked up in ``lookup``, the
        function's module, then the process-wide registry, and checked against the parameter's type like direct references."""
        out: list[tuple[OnDemandDependency, PipelineDef | OnDemandDef]] = []
        for dep in self.dependencies:
            target = dep.target
            if isinstance(target, str):
                found = (lookup or {}).get(target)
                if not isinstance(found, (PipelineDef, OnDemandDef)):
                    found = self.fn.__globals__.get(target)
                if not isinstance(found, (PipelineDef, OnDemandDef)):
                    found = defined(target)
                if not isinstance(found, (PipelineDef, OnDemandDef)):
                    raise OnDemandDefinitionError(
                        f"on_demand {self.name}: unknown dependency '{target}' for parameter '{dep.param}' "
                        "(no @pipeline or @on_demand of that name is known)"
                    )
                _check_dependency(self.name, self.schema, dep.param, dep.annotation, found, dep.query)
                target = found
            out.append((dep, target))
        return out


def dependency_order(targets: Sequence[OnDemandDef], lookup: Mapping[str, Any] | None = None) -> list[OnDemandDef]:
    """The on-demand definitions ``targets`` need, dependencies first (each once).

    Raises :class:`OnDemandDefinitionError` on a dependency cycle, naming it.
    """
    order: list[OnDemandDef] = []
    done: set[int] = set()

    def visit(defn: OnDemandDef, stack: tuple[OnDemandDef, ...]) -> None:
        if id(defn) in done:
            return
        if any(d is defn for d in stack):
            names = [d.name for d in stack[[id(d) for d in stack].index(id(defn)):]] + [defn.name]
            raise OnDemandDefinitionError(f"on_demand {defn.name}: dependency cycle {' -> '.join(names)}")
        for _, target in defn.resolved(lookup):
            if isinstance(target, OnDemandDef):
                visit(target, (*stack, defn))
        done.add(id(defn))
        order.append(defn)

    for target in targets:
        visit(target, ())
    return order


def on_demand(
    *, dependencies: Sequence[DependencySpec], timeout: Duration | None = None, tags: Sequence[str] = (),
    owner: str | None = None,
) -> Callable[[Callable[..., Any]], OnDemandDef]:
    """Declare a request-time feature over pipelines and other on-demand features.

    ``dependencies`` lists ``@pipeline``/``@on_demand`` definitions (or their names),
    each optionally paired with a query: ``(user_spent, "last_n")``, and optionally the
    query's arguments: ``(user_spent, "last_n", {"n": 5})``, ``(user_spent, "range",
    {"start": ..., "end": ...})``. Request arguments override those; ``last_n`` with ``n``
    given nowhere reads the last 10 rows (:data:`DEFAULT_LAST_N`). The function's
    parameters take the dependencies in order; parameters after them must have defaults
    and are filled per request, except a parameter named ``now`` (``datetime``), which
    receives the request time T: now (UTC) online or the ``at=`` of the request, the spine
    row's time in training. An ``async def`` function is awaited (the keys of one request
    concurrently); ``timeout=`` (e.g. ``"2s"``) bounds each call. Signatures are checked
    now, naming the function and parameter at fault.
    ``tags`` and ``owner`` are catalog metadata (``volga list``, the console).
    """
    meta = catalog_meta("@on_demand", tags, owner)
    if isinstance(dependencies, (str, PipelineDef, OnDemandDef)) or not isinstance(dependencies, Sequence):
        raise OnDemandDefinitionError(
            f"@on_demand(dependencies=...) takes a list of @pipeline/@on_demand definitions, got {dependencies!r}"
        )
    caller = sys._getframe(1)
    localns = {**caller.f_globals, **caller.f_locals}

    def wrap(fn: Callable[..., Any]) -> OnDemandDef:
        if isinstance(fn, (OnDemandDef, PipelineDef)) or not callable(fn):
            raise OnDemandDefinitionError(f"@on_demand decorates a function, got {fn!r}")
        name = getattr(fn, "__name__", repr(fn))
        specs = [_dependency_spec(name, i, spec) for i, spec in enumerate(dependencies)]
        hints = _hints(fn, name, localns)
        output = _output(fn, name, hints)
        params = list(inspect.signature(fn).parameters.values())
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise OnDemandDefinitionError(
                    f"on_demand {name}: *{p.name}/**{p.name} parameters are not supported; "
                    "declare each per-request argument as a parameter with a default"
                )
        if len(params) < len(specs):
            raise OnDemandDefinitionError(
                f"on_demand {name}: declares {len(specs)} dependencies but takes {len(params)} parameter(s); "
                "add one parameter per dependency, in order"
            )
        deps: list[OnDemandDependency] = []
        for (target, query, query_args), p in zip(specs, params):
            if p.kind is p.KEYWORD_ONLY:
                raise OnDemandDefinitionError(
                    f"on_demand {name}: parameter '{p.name}' receives dependency {_ref_name(target)} "
                    "and must be positional (place it before any '*')"
                )
            if p.name not in hints:
                raise OnDemandDefinitionError(
                    f"on_demand {name}: parameter '{p.name}' receives dependency {_ref_name(target)}: "
                    f"annotate it with {_expected(target, query)}"
                )
            if not isinstance(target, str):
                _check_dependency(name, entity_schema(output), p.name, hints[p.name], target, query)
            deps.append(OnDemandDependency(target, query, p.name, hints[p.name], query_args))
        args: list[RequestArg] = []
        takes_now = False
        out_keys = entity_schema(output).keys
        for p in params[len(specs):]:
            if p.name == NOW:
                _check_now(name, hints.get(p.name, inspect.Parameter.empty))
                takes_now = True
                continue
            # a parameter named like an output key field receives the request key's value
            # (never a request argument), so it needs no default
            if p.default is inspect.Parameter.empty and p.name not in out_keys:
                raise OnDemandDefinitionError(
                    f"on_demand {name}: parameter '{p.name}' comes after the {len(specs)} dependencies, so it is a "
                    "per-request argument and needs a default (or is named like a key field of "
                    f"{output.__name__} {list(out_keys)} to receive the request key's value)"
                )
            args.append(RequestArg(p.name, p.default, hints.get(p.name, inspect.Parameter.empty), p.kind is p.KEYWORD_ONLY))
        clashes = {a.name for a in args} & set(QUERY_ARGS["last_n"] + QUERY_ARGS["range"])
        if clashes and any(d.many for d in deps):
            raise OnDemandDefinitionError(
                f"on_demand {name}: per-request argument(s) {sorted(clashes)} share a name with query arguments "
                "of its last_n/range dependencies; rename them"
            )
        timeout_s = None if timeout is None else parse_duration_us(timeout, what=f"on_demand {name}: timeout") / 1e6
        if timeout is not None and not inspect.iscoroutinefunction(fn):
            raise OnDemandDefinitionError(f"on_demand {name}: timeout= applies to `async def` functions only")
        return record(OnDemandDef(fn, tuple(deps), output, tuple(args), takes_now, timeout_s, *meta))

    return wrap


def _ref_name(target: DependencyRef) -> str:
    return target if isinstance(target, str) else target.name


def _dependency_spec(fn_name: str, index: int, spec: Any) -> tuple[DependencyRef, Query, tuple[tuple[str, Any], ...]]:
    query: Any = "latest"
    query_args: Any = {}
    target = spec
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3):
            raise OnDemandDefinitionError(
                f"on_demand {fn_name}: dependency #{index} {spec!r} must be a definition, (definition, query) or "
                "(definition, query, {query arguments})"
            )
        target, query, *rest = spec
        if rest:
            query_args = rest[0]
    if not isinstance(target, (PipelineDef, OnDemandDef, str)):
        raise OnDemandDefinitionError(
            f"on_demand {fn_name}: dependency #{index} {target!r} is not a @pipeline or @on_demand definition "
            "(sources are read through pipelines)"
        )
    if query not in QUERIES:
        raise OnDemandDefinitionError(
            f"on_demand {fn_name}: dependency {_ref_name(target)} has query {query!r}; use one of {list(QUERIES)}"
        )
    if isinstance(target, OnDemandDef) and query != "latest":
        raise OnDemandDefinitionError(
            f"on_demand {fn_name}: dependency {target.name} is an on-demand feature (one row per request key), "
            f"so its query must be 'latest', not {query!r}"
        )
    return target, query, _query_args(fn_name, _ref_name(target), query, query_args)


def _query_args(fn_name: str, target: str, query: str, given: Any) -> tuple[tuple[str, Any], ...]:
    """Check the query arguments declared with a dependency; values stay as given."""
    where = f"on_demand {fn_name}: dependency {target} ({query})"
    if not isinstance(given, Mapping):
        raise OnDemandDefinitionError(f"{where}: query arguments must be a dict like {{'n': 10}}, got {given!r}")
    allowed = QUERY_ARGS[query]
    out = []
    for name, value in given.items():
        if name not in allowed:
            raise OnDemandDefinitionError(
                f"{where}: unknown query argument {name!r} (it takes {list(allowed) or 'no arguments'})"
            )
        if name == "n":
            if type(value) is not int or value < 1:
                raise OnDemandDefinitionError(f"{where}: n must be a positive int, got {value!r}")
        elif value is not None and not isinstance(value, datetime.datetime):
            try:
                datetime.datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise OnDemandDefinitionError(
                    f"{where}: {name} must be a datetime, an ISO 8601 string or None, got {value!r}"
                ) from None
        out.append((name, value))
    if query == "range" and len(out) == 2 and None not in (v for _, v in out):
        start, end = (parse_utc(v) for _, v in sorted(out, key=lambda item: item[0] != "start"))
        if start > end:
            raise OnDemandDefinitionError(f"{where}: start {start} is after end {end}")
    return tuple(out)


NOW = "now"


def _check_now(name: str, annotation: Any) -> None:
    """``now`` receives the request time: an aware UTC datetime."""
    if annotation is not inspect.Parameter.empty and annotation is not datetime.datetime:
        raise OnDemandDefinitionError(
            f"on_demand {name}: parameter 'now' receives the request time; annotate it datetime.datetime, not {annotation!r}"
        )


def _hints(fn: Callable[..., Any], name: str, localns: dict[str, Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, localns=localns)
    except NameError as e:
        raise OnDemandDefinitionError(f"on_demand {name}: cannot resolve an annotation: {e}") from None


def _output(fn: Callable[..., Any], name: str, hints: dict[str, Any]) -> type:
    if "return" not in hints:
        raise OnDemandDefinitionError(f"on_demand {name}: annotate the return type with the output @entity (-> MyEntity)")
    inner, _ = unwrap_optional(hints["return"])
    if not is_entity(inner):
        raise OnDemandDefinitionError(
            f"on_demand {name}: the return annotation {hints['return']!r} must be an @entity class (or Optional of one)"
        )
    if not entity_schema(inner).keys:
        raise OnDemandDefinitionError(
            f"on_demand {name}: the output {inner.__name__} has no key field; its key fields are the request "
            "keys, so mark them with field(key=True)"
        )
    return typing.cast(type, inner)


def _expected(target: DependencyRef, query: str) -> str:
    cls = "X" if isinstance(target, str) else target.output.__name__
    return f"list[{cls}]" if query != "latest" else f"{cls} or Optional[{cls}]"


def _check_dependency(
    fn_name: str, out: Schema, param: str, annotation: Any, target: PipelineDef | OnDemandDef, query: str
) -> None:
    """The parameter's type must match the dependency's output; its keys must be request keys."""
    cls = target.output
    inner, optional = unwrap_optional(annotation)
    if query == "latest":
        ok = inner is cls
    else:
        ok = not optional and typing.get_origin(annotation) is list and typing.get_args(annotation) == (cls,)
    if not ok:
        shown = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
        raise OnDemandDefinitionError(
            f"on_demand {fn_name}: parameter '{param}' receives {target.name} ({query}) and must be typed "
            f"{_expected(target, query)}, not {shown or annotation!r}"
        )
    dep = target.schema
    for key in dep.keys:
        if key not in out.keys:
            raise OnDemandDefinitionError(
                f"on_demand {fn_name}: dependency {target.name} is keyed by {list(dep.keys)}, but the output "
                f"{out.name} has keys {list(out.keys)}; every dependency key must be a key field of the output "
                "(the request keys) with the same name"
            )
        if out.field(key).dtype != dep.field(key).dtype:
            raise OnDemandDefinitionError(
                f"on_demand {fn_name}: key '{key}' is {dtype_name(dep.field(key).dtype)} in {target.name} "
                f"but {dtype_name(out.field(key).dtype)} in the output {out.name}"
            )
