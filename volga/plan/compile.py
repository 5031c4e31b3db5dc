"""Compile logical graphs into a physical plan: a small DAG of operators.

One compiler for both APIs (``compile_graph``): the Entity API's pipelines
(``compile_plan``) and DataStream jobs (``volga.stream.plan``) build nodes of one family
(``volga.api.nodes.Node``). The physical plan has four kinds of steps, shared by every
runtime: ``source``, ``chain`` (fused stateless operators), ``window`` (keyed state) and
``join`` (operators driven by watermarks). Each source is read once even when several
outputs use it.
A step holds an operator *spec* (``ops.protocol.OperatorSpec``), not an operator: each job
builds fresh operators from the plan (``build_operators``), in this process or in Ray actors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from volga.api import nodes
from volga.api.decorators import Params, PipelineDef, SourceDef
from volga.api.entity import Schema
from volga.api.frame import PipelineDefinitionError
from volga.ops.join import JoinSpec
from volga.ops.protocol import Operator, OperatorSpec
from volga.ops.stateless import ChainSpec
from volga.ops.window import WindowSpec
from volga.plan.request_time import RequestTimeShape, shape_of, with_hidden_columns

StepKind = Literal["source", "chain", "window", "join"]


@dataclasses.dataclass
class Step:
    id: int
    kind: StepKind
    inputs: list[int]
    schema: Schema
    spec: OperatorSpec | None = None  # None for a source
    source: Any = None  # a source step's reader: a SourceDef, or one duck-typed like it

    def describe(self) -> str:
        if self.kind == "source":
            assert self.source is not None
            return f"source {self.source.name} ({self.source.entity.__name__})"
        assert self.spec is not None
        return self.spec.label() or self.kind


@dataclasses.dataclass
class PhysicalPlan:
    steps: list[Step]  # inputs always come before the steps that read them
    outputs: dict[str, int]  # pipeline name -> step producing its rows
    pipelines: dict[str, PipelineDef]
    # pipelines evaluated at request time: their output rows carry hidden columns for it
    request_time: dict[str, RequestTimeShape] = dataclasses.field(default_factory=dict)
    # step id -> called with the seconds each of its advances took (metrics; embedded jobs)
    timers: dict[int, Callable[[float], None]] = dataclasses.field(default_factory=dict)

    def build_operators(self, *, sequenced: bool = False) -> dict[int, Operator]:
        """Fresh operators (empty state) for every step that has one."""
        return {s.id: s.spec.build(sequenced=sequenced) for s in self.steps if s.spec is not None}

    def stored_schema(self, name: str) -> Schema:
        """The schema of the rows written for pipeline ``name`` (hidden columns included)."""
        return self.steps[self.outputs[name]].schema

    def consumers(self, step_id: int) -> list[tuple[int, int]]:
        """(consumer step id, input index) pairs reading ``step_id``."""
        return [(s.id, i) for s in self.steps for i, src in enumerate(s.inputs) if src == step_id]

    def source_steps(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "source"]

    def explain(self) -> str:
        lines = []
        names = {v: k for k, v in self.outputs.items()}
        for s in self.steps:
            out = f"  => {names[s.id]}" if s.id in names else ""
            lines.append(f"[{s.id}] {s.describe()} <- {s.inputs}{out}")
        for name in self.outputs:
            if name in self.pipelines:
                lines.append(f"{name}: lookups evaluate {_lookup_rule(self.request_time.get(name))}")
        return "\n".join(lines)


def _lookup_rule(shape: RequestTimeShape | None) -> str:
    if shape is None:
        return "as of the key's last event (no windowed aggregate re-evaluated at request time)"
    windows = ", ".join(a.into for a in shape.windowed)
    return f"windows at request time ({windows}; the steps after the aggregate applied to them)"


@dataclasses.dataclass
class Lowering:
    """What a node outside the Entity API compiles to (its ``lower()``).

    ``kind`` "chain" with no ``spec``: a stateless node, fused into the chain before it when
    that chain has no other reader. ``absorb``: given the step it reads (a chain only it
    reads), one spec doing both, or None; used only when the compiler is asked to
    (``compile_graph(absorb=True)``, for a runtime that never moves rows between partitions).
    """

    kind: StepKind
    spec: OperatorSpec | None = None
    source: Any = None  # a source step's reader
    absorb: Callable[[Step], OperatorSpec | None] | None = None


@dataclasses.dataclass
class Graph:
    """A compiled graph: its steps (inputs first), the step producing each output, and the
    logical nodes each step runs (in order; what front ends name steps by)."""

    steps: list[Step]
    outputs: dict[str, int]
    members: dict[int, list[nodes.Node]]


def compile_graph(
    outputs: Mapping[str, nodes.Node],
    *,
    where: Callable[[str], str] = lambda name: f"pipeline {name}",
    chain: Callable[[list[Any], str], Any] = ChainSpec,
    hidden: Mapping[int, tuple[dict[str, str], dict[str, str]]] | None = None,
    absorb: bool = False,
) -> Graph:
    """The steps computing every output node (by name).

    Entity API nodes compile by their type; any other node by its ``lower()``. A source
    (``SourceNode``'s definition, or a lowered source node) is read once; a run of stateless
    nodes is fused into one ``chain`` (built by ``chain(nodes, where)``; ``where``: how an
    output's operators name themselves in errors) unless a node in it has several readers.
    ``hidden``: per aggregate node id, the hidden columns request-time lookups need.

    >>> from volga.sources import MemorySource
    >>> from volga.testing.quickstart import order_records, quickstart
    >>> root = quickstart(lambda online: MemorySource(order_records(3))).build()
    >>> graph = compile_graph({"user_spent": root})
    >>> [(s.kind, [n.label() for n in graph.members[s.id]]) for s in graph.steps][:2]
    [('source', ['source[order_source]']), ('chain', ['filter'])]
    """
    steps: list[Step] = []
    members: dict[int, list[nodes.Node]] = {}
    by_node: dict[int, int] = {}
    by_source: dict[int, int] = {}
    done: dict[str, int] = {}
    carries = hidden or {}
    consumers: dict[int, int] = {}
    for root in outputs.values():  # an output is read, like an input
        consumers[id(root)] = consumers.get(id(root), 0) + 1
    for node in nodes.walk(list(outputs.values())):
        for child in node.inputs:
            consumers[id(child)] = consumers.get(id(child), 0) + 1

    def add(node: nodes.Node, kind: StepKind, inputs: list[int], spec: OperatorSpec | None = None, source: Any = None) -> int:
        steps.append(Step(len(steps), kind, inputs, node.schema, spec, source))
        members[len(steps) - 1] = [node]
        return len(steps) - 1

    def alone(node: nodes.Node, upstream: int) -> bool:
        """``node`` is the only reader of its input's step."""
        return consumers.get(id(node.inputs[0]), 0) <= 1 and upstream not in done.values()

    def fuse(node: nodes.Node, upstream: int, where: str) -> int:
        prev = steps[upstream]
        if prev.kind == "chain" and alone(node, upstream):
            assert prev.spec is not None
            prev.spec.steps.append(node)  # type: ignore[attr-defined]
            prev.schema = node.schema
            members[upstream].append(node)
            return upstream
        return add(node, "chain", [upstream], chain([node], where))

    def visit(node: nodes.Node, where: str) -> int:
        if id(node) in by_node:
            return by_node[id(node)]
        if isinstance(node, nodes.SourceNode):
            src: SourceDef = node.source
            if id(src) not in by_source:
                by_source[id(src)] = add(node, "source", [], source=src)
            result = by_source[id(src)]
        elif isinstance(node, nodes.STATELESS):
            assert isinstance(node, nodes.UnaryNode)
            result = fuse(node, visit(node.input, where), where)
        elif isinstance(node, nodes.AggregateNode):
            upstream = visit(node.input, where)
            raw, kept = carries.get(id(node), ({}, {}))
            spec = WindowSpec(node.input.schema, node.schema, tuple(node.keys), node.aggregates, raw, kept)
            result = add(node, "window", [upstream], spec)
        elif isinstance(node, nodes.JoinNode):
            left = visit(node.left, where)
            right = visit(node.right, where)
            result = add(node, "join", [left, right], JoinSpec(node))
        else:
            lowered: Lowering | None = node.lower()
            if lowered is None:
                raise PipelineDefinitionError(f"{where}: cannot compile {node!r}")
            inputs = [visit(child, where) for child in node.inputs]
            if lowered.kind == "source":
                result = add(node, "source", [], source=lowered.source)
            elif lowered.kind == "chain" and lowered.spec is None:
                result = fuse(node, inputs[0], where)
            elif absorb and lowered.absorb is not None and alone(node, inputs[0]) and (both := lowered.absorb(steps[inputs[0]])):
                prev = steps[inputs[0]]
                steps[inputs[0]] = Step(prev.id, lowered.kind, prev.inputs, node.schema, both)
                members[prev.id].append(node)
                result = prev.id
            else:
                result = add(node, lowered.kind, inputs, lowered.spec)
        by_node[id(node)] = result
        return result

    for name, root in outputs.items():
        done[name] = visit(root, where(name))
    return Graph(steps, done, members)


def compile_plan(
    pipelines: Sequence[PipelineDef], params: Params | None = None, lookup: Mapping[str, Any] | None = None
) -> PhysicalPlan:
    """The physical plan of ``pipelines``.

    Each pipeline body runs on symbolic frames; the logical nodes it returns become steps
    (``compile_graph``), stateless runs fused into one ``chain``, and a source shared by
    pipelines is read once. A pipeline looked up at request time first gets the hidden
    columns that needs (``plan.request_time``).

    >>> from volga.sources import MemorySource
    >>> from volga.testing.quickstart import order_records, quickstart
    >>> user_spent = quickstart(lambda online: MemorySource(order_records(30)))
    >>> print(compile_plan([user_spent]).explain())
    [0] source order_source (Order) <- []
    [1] chain filter <- [0]
    [2] source user_source (User) <- []
    [3] join <- [1, 2]
    [4] window <- [3]
    [5] chain rename -> select <- [4]  => user_spent
    user_spent: lookups evaluate windows at request time (avg_spent_7d, num_purchases_1h, max_price_1d; the steps after the aggregate applied to them)
    """
    roots: dict[str, nodes.Node] = {}
    shapes: dict[str, RequestTimeShape] = {}
    carries: dict[int, tuple[dict[str, str], dict[str, str]]] = {}  # aggregate node id -> hidden columns' sources
    for pipe in pipelines:
        if not isinstance(pipe, PipelineDef):
            raise TypeError(f"materialize expects @pipeline definitions, got {pipe!r}")
        if sum(p.name == pipe.name for p in pipelines) > 1:
            raise PipelineDefinitionError(f"two pipelines in one job are named '{pipe.name}'")
        root = pipe.build(params, lookup)
        shape = shape_of(root, pipe.schema)
        if shape is not None:
            shapes[pipe.name] = shape
            new_agg, steps_after, raw, kept = with_hidden_columns(shape)
            carries[id(new_agg)] = (raw, kept)
            root = steps_after[-1] if steps_after else new_agg
        roots[pipe.name] = root
    graph = compile_graph(roots, hidden=carries)
    return PhysicalPlan(graph.steps, graph.outputs, {p.name: p for p in pipelines}, shapes)
