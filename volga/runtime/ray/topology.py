"""Split a physical plan into stages at key boundaries (no Ray needed to build or test it).

A **source stage** is one source step and the stateless chains that follow it: one actor
reads, filters and routes (or, for a source read in partitions offline, one actor per
part; receivers merge the parts back into the source's arrival order). A **keyed stage** starts at a join (left rows hashed by
``left_on``, right rows by ``right_on``) or at a window whose input is not already
partitioned by a subset of its group keys; it runs as ``parallelism`` actors. Later steps
stay in the stage while the partitioning still holds: stateless chains always (they are
row-local), a window when the columns the rows were routed by (tracked through renames)
are among its group keys, so equal group keys are already on one actor. The quickstart
(filter -> join on the user id -> group by the same id -> rename) is therefore two source
actors and one keyed stage: one hop per row.

DataStream plans split the same way (see ``split_plan``): row chains are stateless,
reduce/aggregate/tumbling/hopping windows are keyed by their ``key_by`` key, joins by each
side's key, and a union is a one-actor stage merging its inputs in event-time order.

>>> import volga.runtime.ray.topology as t
>>> t.track_partition(("buyer_id",), [])
('buyer_id',)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

from volga.api import nodes
from volga.ops.join import AsOfJoinOp
from volga.ops.stateless import StatelessChain
from volga.ops.window import WindowAggregateOp
from volga.plan.compile import PhysicalPlan


@dataclasses.dataclass(frozen=True)
class Edge:
    """Rows of step ``src_step`` (stage ``src_stage``) feeding input ``dst_input`` of
    ``dst_step`` (stage ``dst_stage``), routed by a hash of ``keys``."""

    id: int
    src_stage: int
    src_step: int
    dst_stage: int
    dst_step: int
    dst_input: int
    keys: tuple[str, ...]
    ts_col: str


@dataclasses.dataclass
class StageSpec:
    id: int
    kind: Literal["source", "keyed"]
    steps: list[int]  # plan step ids, inputs before consumers
    parallelism: int
    partition: tuple[str, ...] | None  # columns rows are routed by (keyed stages)
    inputs: list[Edge] = dataclasses.field(default_factory=list)
    outputs: list[Edge] = dataclasses.field(default_factory=list)
    sinks: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (pipeline, step id)

    def label(self, plan: PhysicalPlan) -> str:
        what = " | ".join(plan.steps[s].describe() for s in self.steps)
        by = f" by {list(self.partition)}" if self.partition else ""
        parts = f" in {self.parallelism} partitions" if self.kind == "source" and self.parallelism > 1 else ""
        return f"stage {self.id} ({self.kind}{by}{parts}, x{self.parallelism}): {what}"


@dataclasses.dataclass
class Topology:
    plan: PhysicalPlan
    stages: list[StageSpec]
    edges: list[Edge]
    stage_of: dict[int, int]  # step id -> stage id

    def explain(self) -> str:
        lines = [s.label(self.plan) for s in self.stages]
        lines += [
            f"  edge {e.id}: stage {e.src_stage} [{e.src_step}] -> stage {e.dst_stage} [{e.dst_step}].{e.dst_input} hash{list(e.keys)}"
            for e in self.edges
        ]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class OpRecipe:
    """How to build a step's operator afresh. Compiled operators hold native state
    (numba structures) that does not pickle; actors rebuild theirs from this."""

    kind: str
    args: tuple[object, ...]

    @staticmethod
    def of(op: object) -> OpRecipe | None:
        if op is None:
            return None
        if isinstance(op, StatelessChain):
            return OpRecipe("chain", (op.steps, op.where))
        if isinstance(op, WindowAggregateOp):
            return OpRecipe("window", (op.input_schema, op.output_schema, op.keys, op.aggregates, op.carry, op.carry_outputs))
        if isinstance(op, AsOfJoinOp):
            return OpRecipe("join", (op.node,))
        from volga.stream import ops as so

        if isinstance(op, so.RowChain):
            return OpRecipe("stream", (so.RowChain, list(op.steps), op.where))
        if isinstance(op, so.EventWindowOp):
            # its late rows go back to the driver, which writes the window's late sink (a sink
            # in an actor would be a copy)
            node = op.node if op.node.late_sink is None else dataclasses.replace(op.node, late_sink=None)
            return OpRecipe("stream", (so.EventWindowOp, node, op.where))
        if isinstance(op, so.KeyedReduceOp):
            return OpRecipe("stream", (so.KeyedReduceOp, op.node, op.where))
        if isinstance(op, so.AggregateOp):
            return OpRecipe("stream", (so.AggregateOp, op.node, op.where))
        if isinstance(op, (so.UnionOp, so.AsOfJoin, so.IntervalJoinOp)):
            return OpRecipe("stream", (type(op), op.node))
        raise NotImplementedError(f"the Ray runtime cannot run the operator {type(op).__name__} yet; use the embedded runtime")

    def build(self) -> object:
        if self.kind == "chain":
            return StatelessChain(*self.args)  # type: ignore[arg-type]
        if self.kind == "window":
            return WindowAggregateOp(*self.args)  # type: ignore[arg-type]
        if self.kind == "stream":
            cls, *args = self.args
            return cls(*args)  # type: ignore[operator]
        return AsOfJoinOp(*self.args)  # type: ignore[arg-type]


def _without_late_sink(source: object) -> object:
    """A DataStream source's late rows are written by the driver at the end of the job
    (from the source actors' late events), not in the actor: to the source's late sink and
    to the late sinks of the windows it feeds (``late_routes``). So are a window's own
    late rows (see ``OpRecipe.of``). A sink in an actor would be a copy."""
    node = getattr(source, "node", None)
    if node is None or not dataclasses.is_dataclass(source):
        return source
    changes: dict[str, object] = {}
    if getattr(node, "late_sink", None) is not None:
        changes["node"] = dataclasses.replace(node, late_sink=None)
    if getattr(source, "late_routes", None):
        changes["late_routes"] = []
    return dataclasses.replace(source, **changes) if changes else source  # type: ignore[type-var]


def portable(topology: Topology) -> Topology:
    """A copy of ``topology`` that pickles: operators replaced by their recipes."""
    steps = [dataclasses.replace(step, op=OpRecipe.of(step.op), source=_without_late_sink(step.source))  # type: ignore[arg-type]
             for step in topology.plan.steps]
    plan = PhysicalPlan(steps, dict(topology.plan.outputs), dict(topology.plan.pipelines), dict(topology.plan.request_time))
    return dataclasses.replace(topology, plan=plan)


def track_partition(cols: tuple[str, ...] | None, chain_steps: Sequence[nodes.Node]) -> tuple[str, ...] | None:
    """The routing columns after a stateless chain, or None if the chain may change them."""
    if cols is None:
        return None
    current = list(cols)
    for node in chain_steps:
        if isinstance(node, nodes.RenameNode):
            mapping = dict(node.mapping)
            current = [mapping.get(c, c) for c in current]
        elif isinstance(node, nodes.SelectNode):
            if not set(current) <= set(node.columns):
                return None
        elif isinstance(node, nodes.AssignNode):
            if node.column in current:
                return None
        elif isinstance(node, nodes.TransformNode):
            return None
    return tuple(current)


def stream_keys(op: object) -> list[tuple[str, ...]] | None:
    """The routing keys of each input of a DataStream operator (``()``: all rows to one
    actor), or None for a stateless one (``RowChain``) or an Entity API operator."""
    from volga.stream import ops as so

    if isinstance(op, (so.KeyedReduceOp, so.AggregateOp, so.EventWindowOp)):
        return [tuple(op.node.input.schema.keys)]
    if isinstance(op, (so.AsOfJoin, so.IntervalJoinOp)):
        return [tuple(op.node.left.schema.keys), tuple(op.node.right.schema.keys)]
    if isinstance(op, so.UnionOp):
        return [() for _ in op.node.members]
    return None


def split_plan(
    plan: PhysicalPlan, parallelism: int, source_parallelism: Mapping[int, int] | None = None,
    step_parallelism: Mapping[int, int] | None = None,
) -> Topology:
    """Assign every step of ``plan`` to a stage and connect the stages with edges.

    ``source_parallelism``: source step id -> actors reading it (default 1), for sources
    read in partitions (each actor one part; see ``Source.open_partition``).
    ``step_parallelism``: step id -> actors of the keyed stage it starts (DataStream
    ``set_parallelism``), instead of ``parallelism``.

    DataStream operators: a ``RowChain`` is stateless (it stays in its input's stage and
    forgets the partitioning, since callables may change any column); a keyed reduce,
    per-event aggregate or tumbling/hopping window is keyed by its ``key_by`` key (and
    stays in a stage already routed by a subset of it); a join by each side's key; a
    union is one actor merging its inputs by event time."""
    source_parallelism = dict(source_parallelism or {})
    step_parallelism = dict(step_parallelism or {})
    stages: list[StageSpec] = []
    edges: list[Edge] = []
    stage_of: dict[int, int] = {}
    routed_by: dict[int, tuple[str, ...] | None] = {}

    def new_stage(kind: Literal["source", "keyed"], partition: tuple[str, ...] | None, actors: int = parallelism) -> StageSpec:
        stages.append(StageSpec(len(stages), kind, [], max(1, actors), partition))
        return stages[-1]

    def connect(src_step: int, stage: StageSpec, dst_step: int, dst_input: int, keys: Sequence[str]) -> None:
        edge = Edge(len(edges), stage_of[src_step], src_step, stage.id, dst_step, dst_input, tuple(keys),
                    plan.steps[src_step].schema.timestamp)
        edges.append(edge)
        stage.inputs.append(edge)
        stages[edge.src_stage].outputs.append(edge)

    for step in plan.steps:
        OpRecipe.of(step.op)  # an operator the Ray runtime does not know fails here, before any actor starts
        if step.kind == "source":
            stage = new_stage("source", None, source_parallelism.get(step.id, 1))
            routed_by[step.id] = None
        elif (keys_in := stream_keys(step.op)) is not None:
            upstream = step.inputs[0]
            cols = routed_by[upstream]
            actors = step_parallelism.get(step.id, parallelism)
            if len(keys_in) == 1 and keys_in[0] and stages[stage_of[upstream]].kind == "keyed" and cols is not None \
                    and set(cols) <= set(keys_in[0]) and step.id not in step_parallelism:
                stage = stages[stage_of[upstream]]
            else:
                union = not any(keys_in)
                stage = new_stage("keyed", None if union else keys_in[0], 1 if union else actors)
                stage_of[step.id] = stage.id
                for i, (src, keys) in enumerate(zip(step.inputs, keys_in)):
                    connect(src, stage, step.id, i, keys)
            routed_by[step.id] = stage.partition
        elif step.kind == "chain":
            stage = stages[stage_of[step.inputs[0]]]
            if isinstance(step.op, StatelessChain):
                routed_by[step.id] = track_partition(routed_by[step.inputs[0]], step.op.steps)
            else:  # a DataStream RowChain
                routed_by[step.id] = None
        elif step.kind == "window":
            assert isinstance(step.op, WindowAggregateOp)
            upstream = step.inputs[0]
            cols = routed_by[upstream]
            keys = tuple(step.op.keys)
            if stages[stage_of[upstream]].kind == "keyed" and cols is not None and set(cols) <= set(keys):
                stage = stages[stage_of[upstream]]
                routed_by[step.id] = cols
            else:
                stage = new_stage("keyed", keys)
                stage_of[step.id] = stage.id
                connect(upstream, stage, step.id, 0, keys)
                routed_by[step.id] = keys
        else:
            assert isinstance(step.op, AsOfJoinOp)
            left_keys, right_keys = tuple(step.op.left_keys), tuple(step.op.right_keys)
            stage = new_stage("keyed", left_keys)
            stage_of[step.id] = stage.id
            connect(step.inputs[0], stage, step.id, 0, left_keys)
            connect(step.inputs[1], stage, step.id, 1, right_keys)
            routed_by[step.id] = left_keys
        stage_of[step.id] = stage.id
        stage.steps.append(step.id)
    for name, step_id in plan.outputs.items():
        stages[stage_of[step_id]].sinks.append((name, step_id))
    # A consumer in the same stage reads its input directly; any other reads through an edge.
    return Topology(plan, stages, edges, stage_of)
