"""Rescaling a Ray checkpoint: its keyed state redistributed to another number of actors.

A keyed stage's state is keyed by the columns its rows were routed by; a row goes to
``exchange.partition_ids(rows, keys, n)``. Restoring with another ``n``, every piece of
state is sent where that hash now puts its key, and the pieces that land on one partition
are merged:

* a sliding window (``WindowAggregateOp``): each key's rows of the log, per-key arrays and
  values move together; row pointers (the per-key chain, window starts, min/max indexes,
  first/last rows) and key ids are renumbered;
* an as-of join: the right rows it keeps (by the right keys), the left and right rows it
  buffers (by each side's keys);
* rows an input holds for its senders' watermarks (by the edge's keys);
* a sender's watermark, when the sender's stage was rescaled too: every new sender gets
  the lowest of the old ones (a lower watermark only holds rows longer; the new senders
  send their own with their first batch).

Stateless chains have no state. Anything else (DataStream operators; windows with
``CountDistinct`` or a ``Min``/``Max`` of strings, whose state holds per-partition
numbering of values) is refused with :class:`~volga.runtime.ray.durable.RescaleRefused`.
Source stages are one actor online, never rescaled.

>>> import numpy as np
>>> _remap(np.array([2, -1, 0]), np.array([5, 6, 7]))
array([ 7, -1,  5])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from volga.ops.join import _RTS, AsOfJoinOp
from volga.ops.keys import _ID
from volga.ops.stateless import StatelessChain
from volga.ops.window import WindowAggregateOp
from volga.runtime.local.stage import FINISHED_WM
from volga.runtime.ray.exchange import SEQ, partition_ids
from volga.runtime.ray.topology import StageSpec, Topology, track_partition

_ROW_POINTERS = ("prev", "nxt", "f_idx:")
_KEY_POINTERS = ("last_row", "lo:", "f_end:", "b_idx:", "fv:", "lv:")


class Unsupported(Exception):
    """Raised inside this module; the caller turns it into ``RescaleRefused``."""


def _remap(pointers: np.ndarray, new_row: np.ndarray) -> np.ndarray:
    """Row pointers through ``new_row`` (old row -> new row); -1 stays -1."""
    return np.where(pointers >= 0, new_row[np.maximum(pointers, 0)], -1)


def _split(rows: pl.DataFrame | None, keys: tuple[str, ...], n: int) -> list[pl.DataFrame | None]:
    if rows is None or not rows.height:
        return [None] * n
    part = partition_ids(rows, keys, n)
    return [rows.filter(pl.Series(part == q)) for q in range(n)]


def _concat(frames: list[pl.DataFrame | None], order: list[str] | None = None) -> pl.DataFrame | None:
    present = [f for f in frames if f is not None and f.height]
    if not present:
        return None
    rows = pl.concat(present, how="vertical_relaxed")
    return rows.sort(order, maintain_order=True) if order else rows


# -- operators ----------------------------------------------------------------------------

def split_window(states: list[dict[str, Any]], routed: tuple[str, ...], n: int) -> list[dict[str, Any]]:
    """Window states of the old partitions -> window states of ``n`` new partitions."""
    for state in states:
        if state["values_index"] or state["order_labels"] or state["counts"]:
            raise Unsupported("a window with CountDistinct or a Min/Max of strings")
    out = []
    for q in range(n):
        keys, rows, per_key, values = [], [], [], []
        row_base = key_base = 0
        for state in states:
            table: pl.DataFrame = state["keys"]
            if not table.height:
                continue
            keep_key = partition_ids(table, routed, n) == q
            keep_row = keep_key[state["rows"]["kid"]]
            new_kid = np.cumsum(keep_key) - 1 + key_base
            new_row = np.cumsum(keep_row) - 1 + row_base
            keys.append(table.filter(pl.Series(keep_key)).with_columns(
                pl.Series(_ID, new_kid[keep_key], dtype=pl.Int64)))
            part_rows = {}
            for name, array in state["rows"].items():
                kept = array[keep_row]
                if name == "kid":
                    kept = new_kid[kept]
                elif name.startswith(_ROW_POINTERS):
                    kept = _remap(kept, new_row)
                part_rows[name] = kept
            rows.append(part_rows)
            part_keys = {}
            for name, array in state["per_key"].items():
                kept = array[keep_key]
                part_keys[name] = _remap(kept, new_row) if name.startswith(_KEY_POINTERS) else kept
            per_key.append(part_keys)
            values.append({c: s.filter(pl.Series(keep_row)) for c, s in state["values"].items()})
            row_base += int(keep_row.sum())
            key_base += int(keep_key.sum())
        first = states[0]
        out.append({
            "keys": pl.concat(keys) if keys else first["keys"].clear(),
            "values_index": {}, "order_labels": {}, "counts": {},
            "rows": {name: np.concatenate([r[name] for r in rows]) if rows else a[:0] for name, a in first["rows"].items()},
            "per_key": {name: np.concatenate([k[name] for k in per_key]) if per_key else a[:0]
                        for name, a in first["per_key"].items()},
            "values": {c: pl.concat([v[c] for v in values]) if values else s.clear() for c, s in first["values"].items()},
            "size": row_base,
        })
    return out


def split_join(states: list[dict[str, Any]], op: AsOfJoinOp, n: int) -> list[dict[str, Any]]:
    """As-of join states: the right rows kept and both sides' buffers, by each side's keys."""
    left_keys, right_keys = tuple(op.left_keys), tuple(op.right_keys)
    latest = [_split(s["latest"], right_keys, n) for s in states]
    left = [_split(s["left"], left_keys, n) for s in states]
    right = [_split(s["right"], right_keys, n) for s in states]
    left_order = [op.left_ts, *([SEQ] if any(s["left"] is not None and SEQ in s["left"].columns for s in states) else [])]
    out = []
    for q in range(n):
        kept = _concat([parts[q] for parts in latest], [_RTS])
        out.append({
            "latest": kept if kept is not None else states[0]["latest"].clear(),
            "uncollapsed": any(s["uncollapsed"] for s in states),
            "left": _concat([parts[q] for parts in left], left_order),
            "right": _concat([parts[q] for parts in right], [op.right_ts]),
        })
    return out


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
    held = [_split(s["rows"], keys, n) for s in states]
    return [{"watermarks": marks.copy(), "idle": idle.copy(), "rows": _concat([h[q] for h in held])} for q in range(n)]


def routed_columns(topology: Topology, stage: StageSpec) -> dict[int, tuple[str, ...] | None]:
    """Step id -> the columns (in that step's output names) its rows were routed by."""
    plan = topology.plan
    routed: dict[int, tuple[str, ...] | None] = {}
    for step_id in stage.steps:
        step = plan.steps[step_id]
        fed = sorted((e for e in stage.inputs if e.dst_step == step_id), key=lambda e: e.dst_input)
        if fed:
            routed[step_id] = fed[0].keys
        elif isinstance(step.op, StatelessChain):
            routed[step_id] = track_partition(routed[step.inputs[0]], step.op.steps)
        else:
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
        op, key = plan.steps[step_id].op, str(step_id)
        olds = [p["operators"][key] for p in parts]
        pieces: list[dict[str, Any]]
        if isinstance(op, StatelessChain):
            pieces = [{} for _ in range(n)]
        elif isinstance(op, WindowAggregateOp):
            cols = routed[step_id]  # a window keeps its input's routing (or is fed by the edge)
            if cols is None:
                raise Unsupported(f"step [{step_id}]: a window whose routing columns are unknown")
            pieces = split_window(olds, cols, n)
        elif isinstance(op, AsOfJoinOp):
            pieces = split_join(olds, op, n)
        else:
            raise Unsupported(f"step [{step_id}] {plan.steps[step_id].describe()} ({type(op).__name__})")
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
