"""Rescaling a Ray checkpoint: its keyed state redistributed to another number of actors.

A keyed stage's state is keyed by the columns its rows were routed by; a row goes to
``exchange.partition_ids(rows, keys, n)``. Restoring with another ``n``, every piece of
state is sent where that hash now puts its key, and the pieces that land on one partition
are merged:

* each operator's state, as its spec says (``OperatorSpec.rescale``; ``ops.rescaling``
  moves a sliding window's keys with their rows, an as-of join's kept and buffered rows);
* rows an input holds for its senders' watermarks (by the edge's keys);
* a sender's watermark, when the sender's stage was rescaled too: every new sender gets
  the lowest of the old ones (a lower watermark only holds rows longer; the new senders
  send their own with their first batch).

Stateless chains have no state. Anything else (DataStream operators; windows with
``CountDistinct`` or a ``Min``/``Max`` of strings, whose state holds per-partition
numbering of values) is refused with :class:`~volga.runtime.ray.durable.RescaleRefused`.
Source stages are one actor online, never rescaled.

>>> import numpy as np
>>> marks, idle = _senders([{"watermarks": np.array([5, 9]), "idle": np.array([False, False])}], 3)
>>> marks.tolist(), idle.tolist()
([5, 5, 5], [False, False, False])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from volga.ops.protocol import FINISHED_WM, NotRescalable
from volga.ops.routing import concat_rows, split_rows
from volga.runtime.ray.topology import StageSpec, Topology


class Unsupported(Exception):
    """Raised inside this module; the caller turns it into ``RescaleRefused``."""


# -- inputs and whole stages --------------------------------------------------------------

def _senders(states: list[dict[str, Any]], senders: int) -> tuple[np.ndarray, np.ndarray]:
    """Watermarks for ``senders`` senders from the old inputs' (the lowest, if they changed)."""
    marks = np.stack([s["watermarks"] for s in states])
    idle = np.stack([s["idle"] for s in states])
    if marks.shape[1] == senders:  # the same senders: each one's lowest over the old receivers
        return marks.min(axis=0), np.asarray(idle.all(axis=0), dtype=np.bool_)
    active = marks[~idle]
    low = int(active.min()) if active.size else int(marks.min(initial=FINISHED_WM))
    return np.full(senders, low, dtype=np.int64), np.full(senders, bool(idle.all()), dtype=np.bool_)


def split_input(states: list[dict[str, Any]], keys: tuple[str, ...], n: int, senders: int) -> list[dict[str, Any]]:
    marks, idle = _senders(states, senders)
    held = [split_rows(s["rows"], keys, n) for s in states]
    return [{"watermarks": marks.copy(), "idle": idle.copy(), "rows": concat_rows([h[q] for h in held])} for q in range(n)]


def routed_columns(topology: Topology, stage: StageSpec) -> dict[int, tuple[str, ...] | None]:
    """Step id -> the columns (in that step's output names) its rows were routed by."""
    plan = topology.plan
    routed: dict[int, tuple[str, ...] | None] = {}
    for step_id in stage.steps:
        step = plan.steps[step_id]
        fed = sorted((e for e in stage.inputs if e.dst_step == step_id), key=lambda e: e.dst_input)
        if fed:
            routed[step_id] = fed[0].keys
        elif step.spec is not None and step.spec.input_keys() is None:  # row-local
            routed[step_id] = step.spec.routed_after(routed[step.inputs[0]])
        else:  # a keyed step in its input's stage keeps its input's routing
            routed[step_id] = routed[step.inputs[0]]
    return routed


def rescale_stage(topology: Topology, stage: StageSpec, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage's partition states for ``stage.parallelism`` actors (``parts``: the old ones)."""
    n, plan = stage.parallelism, topology.plan
    if stage.kind != "keyed" or stage.partition is None:
        raise Unsupported(f"a {stage.kind} stage without keyed state")
    routed = routed_columns(topology, stage)
    new: list[dict[str, Any]] = [{"operators": {}, "inputs": {}, "released": 0} for _ in range(n)]
    for step_id in stage.steps:
        step, key = plan.steps[step_id], str(step_id)
        assert step.spec is not None  # a keyed stage has no source step
        olds = [p["operators"][key] for p in parts]
        try:
            pieces = step.spec.rescale(olds, routed[step_id], n)
        except NotRescalable as e:
            raise Unsupported(f"step [{step_id}] {step.describe()} ({e})") from None
        for q in range(n):
            new[q]["operators"][key] = pieces[q]
    for edge in stage.inputs:
        senders = topology.stages[edge.src_stage].parallelism
        pieces = split_input([p["inputs"][str(edge.id)] for p in parts], edge.keys, n, senders)
        for q in range(n):
            new[q]["inputs"][str(edge.id)] = pieces[q]
    for q in range(n):  # the counters, summed on partition 0
        metrics: dict[str, Any] = dict.fromkeys(parts[0]["metrics"], 0)
        metrics.update(busy_s=0.0, watermark=min(p["metrics"]["watermark"] for p in parts),
                       max_event_us=max(p["metrics"]["max_event_us"] for p in parts))
        if q == 0:
            for k in ("rows_in", "rows_out", "batches", "late"):
                metrics[k] = sum(p["metrics"][k] for p in parts)
        new[q]["metrics"] = metrics
    return new


def rescale(state: dict[str, Any], topology: Topology) -> dict[str, Any]:
    """``state`` (a Ray checkpoint) laid out for ``topology``'s actor counts. Raises
    ``Unsupported`` naming what cannot be redistributed."""
    saved = state["stages"]
    changed = {s.id for s in topology.stages if saved[str(s.id)]["parallelism"] != s.parallelism}
    stages = dict(saved)
    for stage in topology.stages:
        entry = saved[str(stage.id)]
        parts = [entry["partitions"][str(p)] for p in range(entry["parallelism"])]
        if stage.id in changed:
            new_parts = rescale_stage(topology, stage, parts)
        elif any(e.src_stage in changed for e in stage.inputs):  # same actors, other senders
            new_parts = [dict(p, inputs=dict(p["inputs"])) for p in parts]
            for edge in stage.inputs:
                if edge.src_stage in changed:
                    senders = topology.stages[edge.src_stage].parallelism
                    for p in new_parts:
                        marks, idle = _senders([p["inputs"][str(edge.id)]], senders)
                        p["inputs"][str(edge.id)] = dict(p["inputs"][str(edge.id)], watermarks=marks, idle=idle)
        else:
            continue
        stages[str(stage.id)] = {"parallelism": stage.parallelism, "partitions": {str(q): p for q, p in enumerate(new_parts)}}
    outputs = dict(state["outputs"])
    for name, step in topology.plan.outputs.items():
        stage_id = topology.stage_of[step]
        if stage_id in changed:
            marks, idle = _senders([outputs[name]], topology.stages[stage_id].parallelism)
            outputs[name] = dict(outputs[name], watermarks=marks, idle=idle)
    return {**state, "stages": stages, "outputs": outputs}
