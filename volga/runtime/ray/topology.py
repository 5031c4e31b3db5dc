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

>>> from volga.plan.compile import compile_plan
>>> from volga.sources import MemorySource
>>> from volga.testing.quickstart import order_records, quickstart
>>> plan = compile_plan([quickstart(lambda online: MemorySource(order_records(30)))])
>>> print(split_plan(plan, parallelism=2).explain())
stage 0 (source, x1): source order_source (Order) | chain filter
stage 1 (source, x1): source user_source (User)
stage 2 (keyed by ['buyer_id'], x2): join | window | chain rename -> select
  edge 0: stage 0 [1] -> stage 2 [3].0 hash['buyer_id']
  edge 1: stage 1 [2] -> stage 2 [3].1 hash['user_id']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

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


def _without_late_sink(source: object) -> object:
    """A DataStream source's late rows are written by the driver at the end of the job
    (from the source actors' late events), not in the actor: to the source's late sink and
    to the late sinks of the windows it feeds (``late_routes``). So are a window's own
    late rows (see ``OperatorSpec.detached``). A sink in an actor would be a copy."""
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
    """A copy of ``topology`` for the actors: specs and sources without the side outputs
    the driver writes (the plan's timers, which are this process's, are left behind)."""
    steps = [dataclasses.replace(step, spec=step.spec.detached() if step.spec is not None else None,
                                 source=_without_late_sink(step.source))
             for step in topology.plan.steps]
    plan = PhysicalPlan(steps, dict(topology.plan.outputs), dict(topology.plan.pipelines), dict(topology.plan.request_time))
    return dataclasses.replace(topology, plan=plan)


def split_plan(
    plan: PhysicalPlan, parallelism: int, source_parallelism: Mapping[int, int] | None = None,
    step_parallelism: Mapping[int, int] | None = None,
) -> Topology:
    """Assign every step of ``plan`` to a stage and connect the stages with edges.

    ``source_parallelism``: source step id -> actors reading it (default 1), for sources
    read in partitions (each actor one part; see ``Source.open_partition``).
    ``step_parallelism``: step id -> actors of the keyed stage it starts (DataStream
    ``set_parallelism``), instead of ``parallelism``.

    Each step's spec says where it runs (``OperatorSpec.input_keys``): a row-local step
    stays in its input's stage (a DataStream ``RowChain`` forgets the partitioning, since
    callables may change any column); a keyed step stays in a stage already routed by a
    subset of its keys, or starts a stage fed by edges hashed by each input's keys; a
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
        if step.spec is None:  # a source
            stage = new_stage("source", None, source_parallelism.get(step.id, 1))
            routed_by[step.id] = None
        elif (keys_in := step.spec.input_keys()) is None:  # row-local: stays with its input
            stage = stages[stage_of[step.inputs[0]]]
            routed_by[step.id] = step.spec.routed_after(routed_by[step.inputs[0]])
        else:
            upstream = step.inputs[0]
            cols = routed_by[upstream]
            if len(keys_in) == 1 and keys_in[0] and stages[stage_of[upstream]].kind == "keyed" and cols is not None \
                    and set(cols) <= set(keys_in[0]) and step.id not in step_parallelism:
                stage = stages[stage_of[upstream]]  # equal keys are already on one actor
                routed_by[step.id] = cols
            else:
                merged = not any(keys_in)  # a union: one actor merges its inputs by event time
                actors = 1 if merged else step_parallelism.get(step.id, parallelism)
                stage = new_stage("keyed", None if merged else keys_in[0], actors)
                stage_of[step.id] = stage.id
                for i, (src, keys) in enumerate(zip(step.inputs, keys_in)):
                    connect(src, stage, step.id, i, keys)
                routed_by[step.id] = stage.partition
        stage_of[step.id] = stage.id
        stage.steps.append(step.id)
    for name, step_id in plan.outputs.items():
        stages[stage_of[step_id]].sinks.append((name, step_id))
    # A consumer in the same stage reads its input directly; any other reads through an edge.
    return Topology(plan, stages, edges, stage_of)
