"""Compile a DataStream graph into the engine's ``PhysicalPlan`` (the same ``Step`` kinds
the Entity API compiles to), so the embedded executors run both.

- ``source``: a ``SourceSpec`` (watermarks, lateness and late rows by ``SourceStage``);
- ``chain``: consecutive stateless steps fused into one ``RowChain``;
- ``window``: keyed per-event state (``KeyedReduceOp``, ``AggregateOp`` = ``WindowAggregateOp``);
  with ``fuse_keyed`` (a runtime that never moves rows between key partitions: the
  embedded one) ``... -> key_by(fn) -> reduce(fn)`` becomes one ``FusedKeyedReduce``;
- ``join``: operators driven by watermarks (as-of and interval joins, union,
  tumbling/hopping windows). A window's late sink also gets the rows its source set
  aside as late (``SourceSpec.late_routes``).

Each sink is a plan output named ``sink<i>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from volga.ops.protocol import OperatorSpec
from volga.plan.compile import PhysicalPlan, Step
from volga.stream import nodes as sn
from volga.stream import ops
from volga.stream.rescaling import split_aggregate, split_reduce, split_windows
from volga.stream.sinks import Sink
from volga.stream.sources import SourceSpec


@dataclasses.dataclass
class StreamPlan:
    plan: PhysicalPlan
    sinks: dict[str, Sink]
    labels: dict[int, str]  # step id -> DataStream operator names
    parallelism: dict[int, int]
    explicit_parallelism: dict[int, int] = dataclasses.field(default_factory=dict)  # set_parallelism(n) calls

    def explain(self) -> str:
        lines = []
        outputs: dict[int, list[str]] = {}
        for name, step_id in self.plan.outputs.items():
            outputs.setdefault(step_id, []).append(f"sink({self.sinks[name]!r})")
        for step in self.plan.steps:
            inputs = f" <- {step.inputs}" if step.inputs else ""
            par = f" [x{self.parallelism[step.id]}]" if self.parallelism.get(step.id, 1) > 1 else ""
            sinks = f" => {', '.join(outputs[step.id])}" if step.id in outputs else ""
            lines.append(f"[{step.id}] {self.labels[step.id]}{par}{inputs}{sinks}")
        return "\n".join(lines)


def compile_stream(sinks: list[sn.SinkNode], *, fuse_keyed: bool = False) -> StreamPlan:
    """Fresh operators (empty state) for everything the sinks read."""
    if not sinks:
        raise ValueError("nothing to run: add a sink to a stream first (stream.sink(print), stream.sink(ListSink()), ...)")
    steps: list[Step] = []
    labels: dict[int, str] = {}
    parallelism: dict[int, int] = {}
    explicit: dict[int, int] = {}
    by_node: dict[int, int] = {}
    consumers: dict[int, int] = {}
    for node in sn.walk(list(sinks)):
        for child in node.inputs:
            consumers[id(child)] = consumers.get(id(child), 0) + 1

    def add(kind: Any, inputs: list[int], node: sn.StreamNode, spec: OperatorSpec | None = None, source: Any = None) -> int:
        steps.append(Step(len(steps), kind, inputs, node.schema, spec, source))
        labels[len(steps) - 1] = node.label()
        parallelism[len(steps) - 1] = node.parallelism or 1
        if node.parallelism is not None:
            explicit[len(steps) - 1] = node.parallelism
        return len(steps) - 1

    def visit(node: sn.StreamNode) -> int:
        if id(node) in by_node:
            return by_node[id(node)]
        where = f"stream step {node.label()}"
        if isinstance(node, sn.SourceNode):
            result = add("source", [], node, source=SourceSpec(node))
        elif isinstance(node, sn.STATELESS):
            assert isinstance(node, sn.Unary)
            upstream = visit(node.input)
            prev = steps[upstream]
            if prev.kind == "chain" and consumers.get(id(node.input), 0) <= 1:
                assert isinstance(prev.spec, ops.RowChainSpec)
                prev.spec.steps.append(node)
                prev.schema = node.schema
                labels[upstream] += " -> " + node.label()
                result = upstream
            else:
                result = add("chain", [upstream], node, ops.RowChainSpec([node], "stream"))
        elif isinstance(node, sn.ReduceNode):
            upstream = visit(node.input)
            fused = fuse_reduce(steps[upstream], node) if fuse_keyed and consumers.get(id(node.input), 0) <= 1 else None
            if fused is not None:
                prev = steps[upstream]
                steps[upstream] = Step(upstream, "window", prev.inputs, node.schema, fused, None)
                labels[upstream] += " -> " + node.label()
                parallelism[upstream] = node.parallelism or 1
                result = upstream
            else:
                result = add("window", [upstream], node, ops.StreamOpSpec(ops.KeyedReduceOp, node, keyed(node), "stream", split_reduce))
        elif isinstance(node, sn.AggregateNode):
            result = add("window", [visit(node.input)], node, ops.StreamOpSpec(ops.AggregateOp, node, keyed(node), where, split_aggregate))
        elif isinstance(node, sn.WindowNode):
            result = add("join", [visit(node.input)], node, ops.StreamOpSpec(ops.EventWindowOp, node, keyed(node), where, split_windows))
            if node.late_sink is not None:
                route_late_rows(node, steps)
        elif isinstance(node, sn.UnionNode):
            merged: list[tuple[str, ...]] = [() for _ in node.members]  # one partition merges them by event time
            result = add("join", [visit(m) for m in node.members], node, ops.StreamOpSpec(ops.UnionOp, node, merged))
        elif isinstance(node, sn.JoinNode):
            left, right = visit(node.left), visit(node.right)
            make = ops.AsOfJoin if node.kind == "asof" else ops.IntervalJoinOp
            sides = [tuple(node.left.schema.keys), tuple(node.right.schema.keys)]
            result = add("join", [left, right], node, ops.StreamOpSpec(make, node, sides))
        else:
            raise TypeError(f"cannot compile stream node {node!r}")
        by_node[id(node)] = result
        return result

    outputs: dict[str, int] = {}
    sink_objects: dict[str, Sink] = {}
    for i, sink in enumerate(sinks):
        outputs[f"sink{i}"] = visit(sink.input)
        sink_objects[f"sink{i}"] = sink.sink
    keep_objects_for_row_steps(steps, set(outputs.values()))
    return StreamPlan(PhysicalPlan(steps, outputs, {}), sink_objects, labels, parallelism, explicit)


def keyed(node: sn.Unary) -> list[tuple[str, ...]]:
    """A keyed operator's input is partitioned by its ``key_by`` key."""
    return [tuple(node.input.schema.keys)]


def fuse_reduce(prev: Step, node: sn.ReduceNode) -> ops.FusedReduceSpec | None:
    """``prev`` (a chain ending in row steps ``... -> key_by(fn) [-> filter(fn)...]``) and ``node`` as one operator."""
    if prev.kind != "chain":
        return None
    assert isinstance(prev.spec, ops.RowChainSpec)
    chain: list[Any] = prev.spec.steps
    start = len(chain)
    while start > 0 and isinstance(chain[start - 1], sn.RowNode) and chain[start - 1].op in ("map", "filter", "key_by"):
        start -= 1
    kinds = [s.op for s in chain[start:]]
    keyed_at = [i for i, kind in enumerate(kinds) if kind == "key_by"]
    if not keyed_at or any(kind != "filter" for kind in kinds[keyed_at[-1] + 1 :]):
        return None  # the key comes from an earlier step (a column, or before a map)
    return ops.FusedReduceSpec(chain[:start], chain[start:], node, prev.spec.where)


def route_late_rows(window: sn.WindowNode, steps: list[Step]) -> None:
    """Rows the window's source sets aside as late never reach the window: send them to
    the window's late sink as well (through the stateless steps in between), when the
    window reads one source through stateless steps only."""
    path: list[sn.StreamNode] = []
    node = window.input
    while isinstance(node, sn.STATELESS):
        path.insert(0, node)
        node = node.input
    if not isinstance(node, sn.SourceNode):
        return
    for step in steps:
        if step.kind == "source" and isinstance(step.source, SourceSpec) and step.source.node is node:
            chain = ops.RowChain(path, "late rows") if path else None
            step.source.late_routes.append((chain, window.late_sink, window.input.schema))


def keep_objects_for_row_steps(steps: list[Step], outputs: set[int]) -> None:
    """A collection source hands its own Python objects (``sn.OBJECTS``) to the row
    callables that read it, when row callables are all that read it: every consumer
    starts with a row step (whose output no longer carries them) and no sink reads it."""

    def starts_with_row_step(step: Step) -> bool:
        spec = step.spec
        if isinstance(spec, ops.FusedReduceSpec):
            first = spec.prefix[0] if spec.prefix else spec.tail[0]
        elif isinstance(spec, ops.RowChainSpec):
            first = spec.steps[0]
        else:
            return False
        return isinstance(first, sn.RowNode)

    for source in steps:
        if source.kind != "source" or source.id in outputs or not isinstance(source.source, SourceSpec):
            continue
        consumers = [s for s in steps if source.id in s.inputs]
        source.source.keep_objects = bool(consumers) and all(starts_with_row_step(s) for s in consumers)
