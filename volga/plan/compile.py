"""Compile pipeline definitions into a physical plan: a small DAG of operators.

The physical plan has four kinds of steps, shared by every runtime: ``source``,
``chain`` (fused stateless operators), ``window`` (keyed aggregation) and ``join``
(as-of join). Each source definition is read once even when several pipelines use it.
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
from volga.ops.stateless import ChainSpec, StatelessNode
from volga.ops.window import WindowSpec
from volga.plan.request_time import RequestTimeShape, shape_of, with_hidden_columns


@dataclasses.dataclass
class Step:
    id: int
    kind: Literal["source", "chain", "window", "join"]
    inputs: list[int]
    schema: Schema
    spec: OperatorSpec | None = None  # None for a source
    source: SourceDef | None = None

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


def compile_plan(
    pipelines: Sequence[PipelineDef], params: Params | None = None, lookup: Mapping[str, Any] | None = None
) -> PhysicalPlan:
    """The physical plan of ``pipelines``.

    Each pipeline body runs on symbolic frames; the logical nodes it returns become steps,
    stateless runs fused into one ``chain``, and a source shared by pipelines is read once.

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
    steps: list[Step] = []
    by_node: dict[int, int] = {}
    by_source: dict[int, int] = {}
    outputs: dict[str, int] = {}
    consumers: dict[int, int] = {}
    roots = []
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
        roots.append((pipe, root))
        for node in nodes.walk(root):
            for child in node.inputs:
                consumers[id(child)] = consumers.get(id(child), 0) + 1

    def add(kind: Any, inputs: list[int], schema: Schema, spec: OperatorSpec | None = None, source: SourceDef | None = None) -> int:
        steps.append(Step(len(steps), kind, inputs, schema, spec, source))
        return len(steps) - 1

    def visit(node: nodes.Node, where: str) -> int:
        if id(node) in by_node:
            return by_node[id(node)]
        if isinstance(node, nodes.SourceNode):
            src: SourceDef = node.source
            if id(src) not in by_source:
                by_source[id(src)] = add("source", [], node.schema, source=src)
            result = by_source[id(src)]
        elif isinstance(node, StatelessNode):
            assert isinstance(node, nodes.UnaryNode)
            upstream = visit(node.input, where)
            prev = steps[upstream]
            if prev.kind == "chain" and consumers.get(id(node.input), 0) <= 1 and upstream not in outputs.values():
                assert isinstance(prev.spec, ChainSpec)
                prev.spec.steps.append(node)
                prev.schema = node.schema
                result = upstream
            else:
                result = add("chain", [upstream], node.schema, ChainSpec([node], where))
        elif isinstance(node, nodes.AggregateNode):
            upstream = visit(node.input, where)
            raw, kept = carries.get(id(node), ({}, {}))
            spec = WindowSpec(node.input.schema, node.schema, tuple(node.keys), node.aggregates, raw, kept)
            result = add("window", [upstream], node.schema, spec)
        elif isinstance(node, nodes.JoinNode):
            left = visit(node.left, where)
            right = visit(node.right, where)
            result = add("join", [left, right], node.schema, JoinSpec(node))
        else:
            raise PipelineDefinitionError(f"{where}: cannot compile {node!r}")
        by_node[id(node)] = result
        return result

    for pipe, root in roots:
        outputs[pipe.name] = visit(root, f"pipeline {pipe.name}")
    return PhysicalPlan(steps, outputs, {p.name: p for p in pipelines}, shapes)
