"""A DataStream job's plan: the engine's ``PhysicalPlan`` (compiled by the one compiler,
``volga.plan.compile.compile_graph``, like an Entity pipeline's) plus what only DataStream
jobs have: their sinks, the operator names ``explain()`` prints, ``set_parallelism`` and
three passes over the compiled steps:

- keyed fusion (``compile_graph(absorb=True)``, for a runtime that never moves rows between
  key partitions: the embedded one): ``... -> key_by(fn) -> reduce(fn)`` becomes one
  ``FusedKeyedReduce`` (``ReduceNode.lower``);
- late rows: a window's late sink also gets the rows its source set aside as late
  (``SourceSpec.late_routes``);
- a collection source keeps its Python objects for the row callables reading it.

Each sink is a plan output named ``sink<i>``.
"""

from __future__ import annotations

import dataclasses

from volga.api import nodes as api
from volga.plan.compile import PhysicalPlan, Step, compile_graph
from volga.stream import nodes as sn
from volga.stream import ops
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
    graph = compile_graph(
        {f"sink{i}": sink.input for i, sink in enumerate(sinks)},
        where=lambda name: "stream", chain=ops.RowChainSpec, absorb=fuse_keyed,
    )
    labels: dict[int, str] = {}
    parallelism: dict[int, int] = {}
    explicit: dict[int, int] = {}
    for step in graph.steps:
        members = graph.members[step.id]
        labels[step.id] = " -> ".join(sn.stream_label(m) for m in members)
        # a chain runs where its first operator does; a fused keyed reduce where its reduce does
        owner = next((m for m in members if not isinstance(m, sn.STATELESS)), members[0])
        chosen = owner.parallelism
        parallelism[step.id] = chosen or 1
        if chosen is not None:
            explicit[step.id] = chosen
        for node in members:
            if isinstance(node, sn.WindowNode) and node.late_sink is not None:
                route_late_rows(node, graph.steps)
    keep_objects_for_row_steps(graph.steps, set(graph.outputs.values()))
    plan = PhysicalPlan(graph.steps, graph.outputs, {})
    return StreamPlan(plan, {f"sink{i}": sink.sink for i, sink in enumerate(sinks)}, labels, parallelism, explicit)


def route_late_rows(window: sn.WindowNode, steps: list[Step]) -> None:
    """Rows the window's source sets aside as late never reach the window: send them to
    the window's late sink as well (through the stateless steps in between), when the
    window reads one source through stateless steps only."""
    path: list[api.Node] = []
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
