"""Redistributing DataStream operator state over another number of partitions (a Ray
checkpoint resumed with another ``parallelism``). Each piece of keyed state goes to the
partition ``ops.routing.partition_ids`` now routes its ``key_by`` key to; ``key_by(fn)``
keys (Python objects) hash by their ``repr``, as rows do.

* ``reduce``: each key's accumulator;
* ``aggregate``: the engine's sliding-window state (``ops.rescaling.split_window``);
* tumbling/hopping windows: the rows of open windows, renumbered in arrival order; rows
  set aside as late stay with partition 0 (the driver collects them at the end).

Joins keep keys as per-partition ids and are not redistributed (``NotRescalable``).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import polars as pl

from volga.ops.protocol import NotRescalable, State
from volga.ops.rescaling import split_window
from volga.ops.routing import SEQ, concat_rows, partition_ids, split_rows
from volga.stream import nodes as sn

__all__ = ["split_aggregate", "split_reduce", "split_windows"]


def split_reduce(node: sn.StreamNode, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
    """``reduce`` states: one accumulator per key (the pickled dict ``KeyedReduceOp`` keeps)."""
    keys = _keys_of(node)
    merged: dict[Any, Any] = {}
    for state in states:
        merged.update(pickle.loads(state["state"]))
    items = list(merged.items())
    schema = node.inputs[0].schema
    if len(keys) == 1:
        columns = {keys[0]: [k for k, _ in items]}
    else:
        columns = {name: [k[i] for k, _ in items] for i, name in enumerate(keys)}
    frame = pl.DataFrame([pl.Series(c, v, dtype=schema.field(c).dtype) for c, v in columns.items()])
    owner = partition_ids(frame, keys, n) if items else np.zeros(0, dtype=np.int64)
    return [{"state": pickle.dumps({k: v for (k, v), p in zip(items, owner) if p == q})} for q in range(n)]


def split_aggregate(node: sn.StreamNode, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
    """Per-event ``aggregate`` states: the engine's sliding window, keyed by the ``key_by`` key."""
    assert isinstance(node, sn.AggregateNode)
    return split_window(states, _keys_of(node), n, tuple(node.aggregates))


def split_windows(node: sn.StreamNode, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
    """Tumbling/hopping window states: the rows of open windows, by key. Their arrival
    numbers are per partition; merged rows are renumbered in their global arrival order
    (``SEQ``, which a distributed run carries), and later rows numbered after them."""
    keys = _keys_of(node)
    if any(s["buffer"] is not None and SEQ not in s["buffer"].columns for s in states):
        raise NotRescalable("a window whose rows carry no arrival numbers")
    held = [split_rows(s["buffer"], keys, n) for s in states]
    late = concat_rows([s["late"] for s in states])  # the driver orders late rows by SEQ
    next_seq = sum(int(s["seq"]) for s in states)  # above every renumbered row
    emitted = min(int(s["emitted_until"]) for s in states)
    out: list[State] = []
    for q in range(n):
        rows = concat_rows([h[q] for h in held], [SEQ])
        if rows is not None:  # "__seq": the window's own arrival numbering, below next_seq
            rows = rows.with_columns(pl.col(SEQ).rank("dense").cast(pl.Int64).sub(1).alias("__seq"))
        out.append({
            "buffer": rows, "late": late if q == 0 else None, "emitted_until": emitted, "seq": next_seq,
            "late_count": sum(int(s["late_count"]) for s in states) if q == 0 else 0,
        })
    return out


def _keys_of(node: sn.StreamNode) -> tuple[str, ...]:
    return tuple(node.inputs[0].schema.keys)
