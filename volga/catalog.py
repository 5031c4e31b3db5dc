"""The feature catalog: what a client's definitions are, read from the definitions themselves.

One :class:`CatalogEntry` per ``@source``/``@pipeline``/``@on_demand``: its entity's
fields (types, keys, timestamp), the windows of its aggregates, its lineage (what it
reads, what reads it), the docstring as its description, and ``tags=``/``owner=``.
``volga list``/``volga describe`` and the web console print the same entries.

>>> import datetime, volga
>>> from volga import entity, field, source
>>> @entity
... class Click:
...     user: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
>>> @source(Click, tags=["web"], owner="growth")
... def clicks() -> volga.Source:
...     '''Clicks from the web site.'''
>>> entry = describe(clicks, {})
>>> (entry.kind, entry.entity, entry.keys, entry.tags, entry.owner, entry.description)
('source', 'Click', ['user'], ['web'], 'growth', 'Clicks from the web site.')
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from volga.api import nodes
from volga.api.decorators import PipelineDef, SourceDef
from volga.api.on_demand import OnDemandDef
from volga.api.types import dtype_name

KIND = {SourceDef: "source", PipelineDef: "pipeline", OnDemandDef: "on_demand"}


@dataclasses.dataclass
class Field:
    name: str
    type: str
    key: bool
    timestamp: bool


@dataclasses.dataclass
class CatalogEntry:
    name: str
    kind: str  # "source" | "pipeline" | "on_demand"
    entity: str
    fields: list[Field]
    keys: list[str]
    timestamp: str
    description: str
    tags: list[str]
    owner: str | None
    upstream: list[str]  # what it reads, in declaration order
    downstream: list[str] = dataclasses.field(default_factory=list)  # what reads it
    windows: list[str] = dataclasses.field(default_factory=list)  # "avg_spent_7d = Avg(product_price, 7d)"
    details: list[str] = dataclasses.field(default_factory=list)  # kind-specific: lateness, queries, arguments
    location: str = ""  # file:line of the definition

    def matches(self, query: str) -> bool:
        """Case-insensitive search over name, entity, fields, tags, owner and description."""
        text = " ".join([self.name, self.kind, self.entity, self.description, self.owner or "", *self.tags,
                         *(f.name for f in self.fields)]).lower()
        return all(word in text for word in query.lower().split())


def definitions_of(client: Any) -> dict[str, Any]:
    """The client's definitions by name, with everything they depend on (resolved)."""
    out: dict[str, Any] = {}

    def add(definition: Any) -> None:
        if definition.name in out:
            return
        out[definition.name] = definition
        for dep in _upstream_defs(definition, client.definitions):
            add(dep)

    for definition in list(dict.values(client.definitions)):
        if isinstance(definition, (SourceDef, PipelineDef, OnDemandDef)):
            add(definition)
    return dict(sorted(out.items(), key=lambda kv: (list(KIND.values()).index(_kind(kv[1])), kv[0])))


def catalog(client: Any) -> list[CatalogEntry]:
    """Every definition the client knows, sources first, then pipelines, then on-demand."""
    defs = definitions_of(client)
    entries = {name: describe(d, defs) for name, d in defs.items()}
    for entry in entries.values():
        for up in entry.upstream:
            if up in entries and entry.name not in entries[up].downstream:
                entries[up].downstream.append(entry.name)
    return list(entries.values())


def find(client: Any, name: str) -> CatalogEntry:
    """The entry for ``name``; a ``KeyError`` listing the known names otherwise."""
    for entry in catalog(client):
        if entry.name == name:
            return entry
    known = [e.name for e in catalog(client)]
    raise KeyError(f"no source, pipeline or on-demand feature named {name!r}; known: {', '.join(known) or 'none'}")


def describe(definition: Any, lookup: Mapping[str, Any]) -> CatalogEntry:
    """One definition as a catalog entry (``downstream`` is filled by :func:`catalog`)."""
    entity_cls = definition.entity if isinstance(definition, SourceDef) else definition.output
    schema = definition.schema
    fields = [Field(f.name, dtype_name(f.dtype), f.name in schema.keys, f.name == schema.timestamp) for f in schema.fields]
    entry = CatalogEntry(
        name=definition.name, kind=_kind(definition), entity=entity_cls.__name__, fields=fields, keys=list(schema.keys),
        timestamp=schema.timestamp, description=inspect.cleandoc(definition.fn.__doc__ or ""),
        tags=list(definition.tags), owner=definition.owner,
        upstream=[d.name for d in _upstream_defs(definition, lookup)], location=_location(definition.fn),
    )
    if isinstance(definition, SourceDef):
        entry.details.append(f"lateness {definition.lateness_us / 1e6:g}s")
        if definition.idle_timeout_us is not None:
            entry.details.append(f"idle timeout {definition.idle_timeout_us / 1e6:g}s")
    elif isinstance(definition, PipelineDef):
        entry.windows = _windows(definition, lookup)
    else:
        entry.details.extend(f"reads {d.name} ({d.query})" for d in definition.dependencies)
        entry.details.extend(f"argument {a.name} = {a.default!r}" for a in definition.args)
    return entry


def source_code(definition: Any) -> str:
    """The definition's source text (empty when Python cannot find it, e.g. in a REPL)."""
    try:
        return inspect.getsource(definition.fn)
    except (OSError, TypeError):
        return ""


def sources_of(name: str, defs: Mapping[str, Any]) -> list[str]:
    """The ``@source`` names a definition reads, directly or through other definitions."""
    out: list[str] = []

    def visit(definition: Any) -> None:
        if isinstance(definition, SourceDef):
            if definition.name not in out:
                out.append(definition.name)
            return
        for dep in _upstream_defs(definition, defs):
            visit(dep)

    if name in defs:
        visit(defs[name])
    return out


def _kind(definition: Any) -> str:
    return KIND[type(definition)]


def _upstream_defs(definition: Any, lookup: Mapping[str, Any]) -> list[Any]:
    if isinstance(definition, PipelineDef):
        return list(definition.resolved_dependencies(lookup))
    if isinstance(definition, OnDemandDef):
        return [target for _, target in definition.resolved(lookup)]
    return []


def _windows(pipe: PipelineDef, lookup: Mapping[str, Any]) -> list[str]:
    try:
        root = pipe.build(None, lookup)
    except Exception:  # a body that needs params to build: the catalog still lists the rest
        return []
    out = []
    for node in nodes.walk(root):
        if isinstance(node, nodes.AggregateNode):
            for agg in node.aggregates:
                on = f"{agg.on}, " if getattr(agg, "on", None) else ""
                window = agg.window if isinstance(agg.window, str) else str(agg.window)
                out.append(f"{agg.into} = {type(agg).__name__}({on}{window}) by {', '.join(node.keys)}")
    return out


def _location(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else ""
