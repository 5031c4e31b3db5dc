"""Which pipelines can be evaluated at request time, and what their stored rows carry for it.

DESIGN.md "Request-time values": a lookup at time T returns each windowed aggregate over
the key's events with ``T - window <= ts <= T``, then applies the stateless column steps
that follow the aggregate. That is possible when the pipeline ends in::

    group_by(...).aggregate([...])  [-> rename / select / drop / assign / transform ...]

A row filter (``filter``, ``dropnull``) or a stateful step (join, another aggregate) after
the aggregate decides which rows exist from the per-event values: such a pipeline is
served as of its last event only (``RequestTimeShape`` is None for it). A ``transform``
after the aggregate may rewrite values but must keep each row's keys and event time.

To evaluate windows later, every output row the job writes carries, in hidden columns
(``__volga_...``: a prefix no user column may have), the raw inputs of the windowed
aggregates (``__volga_raw.<column>``) and, when the steps after the aggregate do not
keep them under a known name, the aggregate's own output columns
(``__volga_pre.<column>``). Stores keep them beside the row; readers drop them.

>>> import datetime
>>> from volga import entity, field, source, pipeline, Entity, Count, Sum
>>> from volga.sources import MemorySource
>>> @entity
... class Swipe:
...     card: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     amount: float
>>> @entity
... class Velocity:
...     card: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     n_10m: int
...     sum_1h: float | None
>>> @source(Swipe)
... def swipes() -> MemorySource:
...     return MemorySource([])
>>> @pipeline(dependencies=[swipes], output=Velocity)
... def velocity(s: Entity) -> Entity:
...     return s.group_by(keys=["card"]).aggregate([
...         Count(window="10m", into="n_10m"), Sum(on="amount", window="1h", into="sum_1h")])
>>> shape = request_time_shape(velocity)
>>> shape.raw_columns, shape.longest_window_us // 60_000_000
({'__volga_raw.amount': 'amount'}, 60)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from volga.api import nodes
from volga.api.aggregates import Aggregate
from volga.api.entity import FieldSpec, Schema
from volga.ops.stateless import HIDDEN_PREFIX

RAW_PREFIX = "__volga_raw."
PRE_PREFIX = "__volga_pre."

# Steps after the aggregate that act on each row's columns alone.
_COLUMN_STEPS = (nodes.RenameNode, nodes.SelectNode, nodes.AssignNode, nodes.TransformNode)


def is_hidden(column: str) -> bool:
    return column.startswith(HIDDEN_PREFIX)


@dataclasses.dataclass(frozen=True, eq=False)
class RequestTimeShape:
    """A pipeline that ends in an aggregate followed only by column steps."""

    aggregate: nodes.AggregateNode
    post: tuple[nodes.UnaryNode, ...]  # the column steps after it, in order
    output: Schema  # the pipeline's output schema (visible columns)
    raw_columns: dict[str, str]  # hidden column -> aggregate input column (finite windows' `on`)
    pre_columns: dict[str, str]  # aggregate output column -> where a stored row holds it (its per-event value)

    @property
    def renames(self) -> dict[str, str] | None:
        """Output column -> the aggregate column it is, when the steps after the aggregate
        only rename and select; None when they compute anything."""
        holds = _columns_held(self.aggregate, self.post)
        return holds if all(isinstance(s, (nodes.RenameNode, nodes.SelectNode)) for s in self.post) else None

    @property
    def windowed(self) -> tuple[Aggregate, ...]:
        """The aggregates with a finite window (re-evaluated at request time)."""
        return tuple(a for a in self.aggregate.aggregates if a.window_us is not None)

    @property
    def longest_window_us(self) -> int:
        return max((a.window_us or 0 for a in self.windowed), default=0)

    @property
    def hidden_fields(self) -> tuple[FieldSpec, ...]:
        """The hidden columns every stored row carries, after the output's own."""
        into = self.aggregate.input.schema
        pre = self.aggregate.schema
        raw = [dataclasses.replace(into.field(col), name=h, optional=True, key=False, timestamp=False) for h, col in self.raw_columns.items()]
        kept = [
            dataclasses.replace(pre.field(col), name=where, optional=True, key=False, timestamp=False)
            for col, where in self.pre_columns.items() if is_hidden(where)
        ]
        return (*raw, *kept)

    def stored_schema(self) -> Schema:
        """The output schema plus the hidden columns: what stores hold for this pipeline."""
        return dataclasses.replace(self.output, fields=(*self.output.fields, *self.hidden_fields))


def request_time_shape(pipeline: Any, lookup: Mapping[str, Any] | None = None) -> RequestTimeShape | None:
    """The pipeline's request-time shape, or None if it is served as of its last event
    (no finite-window aggregate, or a row filter / stateful step after the aggregate).
    Cached per definition object."""
    cached = getattr(pipeline, "_request_time_shape", _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[return-value]
    shape = shape_of(pipeline.build(None, lookup), pipeline.schema)
    object.__setattr__(pipeline, "_request_time_shape", shape)
    return shape


_UNSET = object()


def shape_of(root: nodes.Node, output: Schema) -> RequestTimeShape | None:
    post: list[nodes.UnaryNode] = []
    node = root
    while isinstance(node, _COLUMN_STEPS):
        post.append(node)
        node = node.input
    if not isinstance(node, nodes.AggregateNode):
        return None
    post.reverse()
    aggregate = node
    if not any(a.window_us is not None for a in aggregate.aggregates):
        return None  # "forever" only: the value at the last event is the value at any later T
    raw = {f"{RAW_PREFIX}{a.on}": a.on for a in aggregate.aggregates if a.window_us is not None and a.on is not None}
    pre_columns = _where_pre_columns_live(aggregate, post)
    if any(is_hidden(pre_columns[c]) for c in (*aggregate.keys, aggregate.schema.timestamp)):
        return None  # a step rewrites the keys or the event time: values are only known per event
    return RequestTimeShape(aggregate, tuple(post), output, raw, pre_columns)


def _where_pre_columns_live(aggregate: nodes.AggregateNode, post: list[nodes.UnaryNode]) -> dict[str, str]:
    """For each column of the aggregate's output: the output column that still holds it
    unchanged, else a hidden one. (A windowed aggregate's per-event value is its value at
    any later time until an event leaves its window: training reads it where it can.)"""
    found = {pre: now for now, pre in _columns_held(aggregate, post).items()}
    return {col: found.get(col, f"{PRE_PREFIX}{col}") for col in aggregate.schema.names}


def _columns_held(aggregate: nodes.AggregateNode, post: Sequence[nodes.UnaryNode]) -> dict[str, str]:
    """Output column -> the aggregate column it still equals after ``post``."""
    holds = {c: c for c in aggregate.schema.names}
    for step in post:
        if isinstance(step, nodes.RenameNode):
            mapping = dict(step.mapping)
            holds = {mapping.get(now, now): pre for now, pre in holds.items()}
        elif isinstance(step, nodes.SelectNode):
            holds = {now: pre for now, pre in holds.items() if now in step.columns}
        elif isinstance(step, nodes.AssignNode):
            holds.pop(step.column, None)
        else:  # a transform may rewrite any value; it keeps each row's keys and event time
            kept = {*step.schema.keys, step.schema.timestamp}
            holds = {now: pre for now, pre in holds.items() if now in kept}
    return holds


def with_hidden_columns(
    shape: RequestTimeShape,
) -> tuple[nodes.AggregateNode, list[nodes.UnaryNode], dict[str, str], dict[str, str]]:
    """The aggregate and column steps rebuilt to carry the hidden columns to the output.

    Returns the new aggregate node (its schema has the hidden columns), the new steps, and
    what the window operator copies into the hidden columns: input columns (raw values)
    and aggregate output columns (kept ones), each as hidden -> source column.
    """
    kept = {where: col for col, where in shape.pre_columns.items() if is_hidden(where)}
    new_agg, steps = steps_carrying(shape, shape.hidden_fields)
    return new_agg, steps, dict(shape.raw_columns), kept


def steps_carrying(shape: RequestTimeShape, extra: tuple[FieldSpec, ...]) -> tuple[nodes.AggregateNode, list[nodes.UnaryNode]]:
    """The aggregate and the steps after it, rebuilt so that ``extra`` (hidden) columns ride
    along to the output (row functions never see hidden columns)."""
    agg = shape.aggregate
    new_agg = dataclasses.replace(agg, schema=_plus(agg.schema, extra))
    steps: list[nodes.UnaryNode] = []
    upstream: nodes.Node = new_agg
    names = tuple(f.name for f in extra)
    for step in shape.post:
        changes: dict[str, Any] = {"schema": _plus(step.schema, extra), "input": upstream}
        if isinstance(step, nodes.SelectNode):
            changes["columns"] = (*step.columns, *names)
        upstream = dataclasses.replace(step, **changes)
        steps.append(upstream)
    return new_agg, steps


def _plus(schema: Schema, extra: tuple[FieldSpec, ...]) -> Schema:
    return dataclasses.replace(schema, fields=(*schema.fields, *extra))
