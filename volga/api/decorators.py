"""``@source`` and ``@pipeline``: definitions as data.

A decorated function becomes a frozen definition object. Every ``@source``,
``@pipeline`` and ``@on_demand`` definition is also recorded by name in a process-wide
registry (:func:`defined`; the most recent definition of a name wins, as when a notebook
cell runs again): a :class:`volga.Client` that does not know a name looks it up there.
``params`` given at materialize time fill function parameters that have
defaults: ``{"online": True}`` applies to every function with that parameter,
``{"order_source": {"online": False}}`` to one function, and ``{"global": {...}}`` is the
same as top-level values.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from volga.api import nodes
from volga.api.entity import Schema, entity_schema, is_entity
from volga.api.frame import Entity, PipelineDefinitionError
from volga.api.types import Duration, dtype_name, parse_duration_us

Params = Mapping[str, Any]

# name -> the most recent @source/@pipeline/@on_demand definition of that name
_DEFINED: dict[str, Any] = {}
_SEQUENCE = itertools.count()


def record(definition: Any) -> Any:
    """Record ``definition`` in the process-wide registry under its name (replacing an
    earlier definition of that name) and return it."""
    _DEFINED[definition.name] = definition
    return definition


def defined(name: str) -> Any:
    """The most recent ``@source``/``@pipeline``/``@on_demand`` definition named ``name``
    in this process, or None."""
    return _DEFINED.get(name)


def _param_names(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def resolve_params(fn_name: str, fn: Callable[..., Any], params: Params | None, skip: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``fn``'s parameters after the first ``skip`` ones."""
    params = dict(params or {})
    own = params.get(fn_name)
    own = own if isinstance(own, Mapping) else {}
    shared = params.get("global")
    shared = shared if isinstance(shared, Mapping) else {}
    kwargs: dict[str, Any] = {}
    for name in _param_names(fn)[skip:]:
        for scope in (own, shared, params):
            if name in scope:
                kwargs[name] = scope[name]
                break
    return kwargs


@dataclasses.dataclass(frozen=True, eq=False)
class SourceDef:
    """A ``@source`` function: where an entity's events come from."""

    fn: Callable[..., Any]
    entity: type
    lateness_us: int = 0
    idle_timeout_us: int | None = None
    tags: tuple[str, ...] = ()  # catalog metadata (volga list/describe, the console)
    owner: str | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def schema(self) -> Schema:
        return entity_schema(self.entity)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def call(self, params: Params | None = None) -> Any:
        """Call the function with its parameters filled from ``params``."""
        return self.fn(**resolve_params(self.name, self.fn, params))

    def __repr__(self) -> str:
        return f"<source {self.name} -> {self.entity.__name__}>"


def source(
    entity_cls: type,
    *,
    lateness: Duration = "0s",
    idle_timeout: Duration | None = None,
    tags: Sequence[str] = (),
    owner: str | None = None,
) -> Callable[[Callable[..., Any]], SourceDef]:
    """Declare the function that returns this entity's ``volga.Source``.

    ``lateness`` bounds how far out of event-time order events may arrive (streaming
    watermarks); ``idle_timeout`` lets a silent source stop holding other inputs back.
    ``tags`` and ``owner`` are catalog metadata shown by ``volga list`` and the console.

    Parameters need defaults: ``materialize(params=...)`` fills them.

    >>> from volga.sources import MemorySource
    >>> from volga.testing.quickstart import Order
    >>> @source(Order, lateness="5s")
    ... def example_order_feed(limit: int = 100) -> MemorySource:
    ...     return MemorySource([])
    >>> example_order_feed, example_order_feed.lateness_us
    (<source example_order_feed -> Order>, 5000000)
    """
    if not is_entity(entity_cls):
        raise TypeError(f"@source expects an @entity class, got {entity_cls!r}")
    lateness_us = parse_duration_us(lateness, what="@source lateness")
    idle_us = None if idle_timeout is None else parse_duration_us(idle_timeout, what="@source idle_timeout")
    meta = catalog_meta("@source", tags, owner)

    def wrap(fn: Callable[..., Any]) -> SourceDef:
        for p in inspect.signature(fn).parameters.values():
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                raise TypeError(f"@source {fn.__name__}: parameter '{p.name}' needs a default (params fill it at materialize time)")
        return record(SourceDef(fn, entity_cls, lateness_us, idle_us, *meta))

    return wrap


Dependency = Union[SourceDef, "PipelineDef", str]


@dataclasses.dataclass(frozen=True, eq=False)
class PipelineDef:
    """A ``@pipeline`` function: a feature computed from its dependencies."""

    fn: Callable[..., Any]
    dependencies: tuple[Dependency, ...]
    output: type
    seq: int = dataclasses.field(default_factory=lambda: next(_SEQUENCE), repr=False)  # definition order
    tags: tuple[str, ...] = ()  # catalog metadata (volga list/describe, the console)
    owner: str | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def schema(self) -> Schema:
        return entity_schema(self.output)

    def __repr__(self) -> str:
        return f"<pipeline {self.name} -> {self.output.__name__}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def resolved_dependencies(
        self, lookup: Mapping[str, Any] | None = None, _building: Sequence[PipelineDef] = ()
    ) -> list[SourceDef | PipelineDef]:
        """Dependencies as definitions. A name is looked up among the pipelines being built
        (so a name still being defined is recognised as a cycle), then in ``lookup``, the
        function's module, and the process-wide registry (:func:`defined`)."""
        out: list[SourceDef | PipelineDef] = []
        for dep in self.dependencies:
            if isinstance(dep, str):
                found: SourceDef | PipelineDef | None = next((p for p in reversed(_building) if p.name == dep), None)
                if found is None:
                    found = (lookup or {}).get(dep)
                if not isinstance(found, (SourceDef, PipelineDef)):
                    candidate = self.fn.__globals__.get(dep)
                    found = candidate if isinstance(candidate, (SourceDef, PipelineDef)) else None
                if found is None:
                    candidate = defined(dep)
                    found = candidate if isinstance(candidate, (SourceDef, PipelineDef)) else None
                if found is None:
                    raise PipelineDefinitionError(
                        f"pipeline {self.name}: unknown dependency '{dep}' (no @source or @pipeline of that name is known)"
                    )
                out.append(found)
            else:
                out.append(dep)
        return out

    def build(
        self,
        params: Params | None = None,
        lookup: Mapping[str, Any] | None = None,
        _stack: tuple[PipelineDef, ...] = (),
        *,
        sources: Callable[[SourceDef], nodes.Node] | None = None,
    ) -> nodes.Node:
        """Run the body on symbolic frames and return the validated logical output node.

        ``sources``: the node each source definition is read as (default: a
        ``SourceNode``; a DataStream job passes its own source nodes)."""
        if any(p is self for p in _stack):
            members = list(_stack[[id(p) for p in _stack].index(id(self)):])
            raise PipelineDefinitionError(f"pipeline {self.name}: dependency {_cycle_text(members)}")
        stack = (*_stack, self)
        frames = []
        param_names = _param_names(self.fn)
        for index, dep in enumerate(self.resolved_dependencies(lookup, stack)):
            arg = param_names[index] if index < len(param_names) else f"#{index}"
            where = f"pipeline {self.name} (argument '{arg}' from {dep.name})"
            if isinstance(dep, SourceDef):
                node: nodes.Node = nodes.SourceNode(dep.schema, dep) if sources is None else sources(dep)
            else:
                node = dep.build(params, lookup, stack, sources=sources)
            frames.append(Entity(node, where))
        result = self.fn(*frames, **resolve_params(self.name, self.fn, params, skip=len(frames)))
        if not isinstance(result, Entity):
            raise PipelineDefinitionError(f"pipeline {self.name}: the body must return an Entity frame, got {type(result).__name__}")
        return _conform_output(self, result)


def _cycle_text(members: Sequence[PipelineDef]) -> str:
    """``cycle a -> b -> a``, starting at the member defined first."""
    start = min(range(len(members)), key=lambda i: members[i].seq)
    ring = [*members[start:], *members[:start]]
    return "cycle " + " -> ".join(p.name for p in [*ring, ring[0]])


def _conform_output(pipe: PipelineDef, result: Entity) -> nodes.Node:
    """Check the body's result against the declared output entity; reorder columns to it."""
    got, want = result.schema, pipe.schema
    problems: list[str] = []
    for f in want.fields:
        if not got.has(f.name):
            problems.append(f"'{f.name}': declared {f.type_name} but the pipeline does not produce it")
        elif got.field(f.name).dtype != f.dtype:
            problems.append(f"'{f.name}': declared {f.type_name} but the pipeline produces {dtype_name(got.field(f.name).dtype)}")
        elif got.field(f.name).optional and not f.optional:
            why = got.field(f.name).nullable_by or "it is Optional"
            problems.append(
                f"'{f.name}': declared {f.type_name} but can be null ({why}); declare "
                f"Optional[{f.type_name}] or dropnull(['{f.name}']) before the output"
            )
    for f in got.fields:
        if not want.has(f.name):
            problems.append(f"'{f.name}': produced ({f.type_name}) but not declared in {want.name}")
    if not problems:
        if sorted(got.keys) != sorted(want.keys):
            problems.append(f"keys: {want.name} declares {list(want.keys)} but the pipeline is keyed by {list(got.keys)}")
        if got.timestamp != want.timestamp:
            problems.append(f"timestamp: {want.name} declares '{want.timestamp}' but the pipeline's is '{got.timestamp}'")
    if problems:
        raise PipelineDefinitionError(
            f"pipeline {pipe.name}: output does not match {want.name}:\n  " + "\n  ".join(problems)
        )
    return nodes.SelectNode(dataclasses.replace(want, name=pipe.name), result.node, tuple(want.names))


def pipeline(
    *, dependencies: Sequence[Dependency], output: type, tags: Sequence[str] = (), owner: str | None = None
) -> Callable[[Callable[..., Any]], PipelineDef]:
    """Declare a feature pipeline over sources and other pipelines.

    The body runs once now, on symbolic frames, to validate it; at materialize time it
    runs again with the job's ``params``. Its result must carry the ``output`` entity's
    columns, keys and timestamp. ``tags`` and ``owner`` are catalog metadata.

    >>> import datetime
    >>> from volga import Count, Entity, entity, field
    >>> from volga.testing.quickstart import Order
    >>> @entity
    ... class OrderCount:
    ...     buyer_id: str = field(key=True)
    ...     purchased_at: datetime.datetime = field(timestamp=True)
    ...     orders_1h: int
    >>> @source(Order)
    ... def example_orders() -> Any: ...
    >>> @pipeline(dependencies=[example_orders], output=OrderCount)
    ... def example_order_count(orders: Entity) -> Entity:
    ...     return orders.group_by("buyer_id").aggregate([Count(window="1h", into="orders_1h")])
    >>> example_order_count, example_order_count.schema.keys
    (<pipeline example_order_count -> OrderCount>, ('buyer_id',))
    """
    if not is_entity(output):
        raise TypeError(f"@pipeline output must be an @entity class, got {output!r}")
    tag_tuple, owner_name = catalog_meta("@pipeline", tags, owner)
    if not entity_schema(output).keys:
        # a feature is looked up by key; a keyless output would store rows nothing can read
        raise TypeError(
            f"@pipeline output {output.__name__} has no key field; mark the field(s) features are "
            "looked up by with field(key=True) (keyless entities are fine for sources)"
        )

    def wrap(fn: Callable[..., Any]) -> PipelineDef:
        deps = tuple(dependencies)
        for dep in deps:
            if not isinstance(dep, (SourceDef, PipelineDef, str)):
                raise TypeError(f"pipeline {fn.__name__}: dependency {dep!r} is not a @source, @pipeline or name")
        n_params = len([p for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty])
        if n_params != len(deps):
            raise TypeError(
                f"pipeline {fn.__name__}: takes {n_params} input frame(s) without defaults but declares "
                f"{len(deps)} dependencies"
            )
        pipe = PipelineDef(fn, deps, output, tags=tag_tuple, owner=owner_name)
        if not any(isinstance(d, str) for d in deps) or _names_resolvable(pipe):
            pipe.build()
        return record(pipe)

    return wrap


def catalog_meta(where: str, tags: Sequence[str], owner: str | None) -> tuple[tuple[str, ...], str | None]:
    """Checked ``tags=``/``owner=`` of a decorator.

    >>> catalog_meta("@source", ["pii", "orders"], "data-team")
    (('pii', 'orders'), 'data-team')
    """
    if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):
        raise TypeError(f"{where}: tags must be a list of non-empty strings, got {tags!r}")
    if owner is not None and not isinstance(owner, str):
        raise TypeError(f"{where}: owner must be a string, got {owner!r}")
    return tuple(tags), owner


def _names_resolvable(pipe: PipelineDef) -> bool:
    """True when every dependency name is known now (the pipeline's own name included:
    depending on itself is a cycle, reported by ``build``)."""
    try:
        pipe.resolved_dependencies(None, (pipe,))
        return True
    except PipelineDefinitionError:
        return False
