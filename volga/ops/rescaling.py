"""Redistributing operator state over another number of partitions (rescaling a
checkpoint): each piece of state goes where ``routing.partition_ids`` now puts its key,
and the pieces that land on one partition are merged.

* a sliding window: each key's rows of the log, per-key arrays and values move together;
  row pointers (the per-key chain, window starts, min/max indexes, first/last rows) and
  key ids are renumbered. What numbers values per partition is rebuilt from the merged
  value log: ``CountDistinct``'s value ids and in-window counts, and the order labels a
  ``Min``/``Max`` of strings compares;
* an as-of join: the right rows it keeps (by the right keys), the left and right rows it
  buffers (by each side's keys).

>>> _remap(np.array([2, -1, 0]), np.array([5, 6, 7]))
array([ 7, -1,  5])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from volga.api import nodes
from volga.api.aggregates import Aggregate
from volga.ops.keys import _ID, KeyIndex, OrderLabels
from volga.ops.routing import SEQ, concat_rows, partition_ids, split_rows

_ROW_POINTERS = ("prev", "nxt", "f_idx:")
_KEY_POINTERS = ("last_row", "lo:", "f_end:", "b_idx:", "fv:", "lv:")


def _remap(pointers: np.ndarray, new_row: np.ndarray) -> np.ndarray:
    """Row pointers through ``new_row`` (old row -> new row); -1 stays -1."""
    return np.where(pointers >= 0, new_row[np.maximum(pointers, 0)], -1)


def split_window(
    states: list[dict[str, Any]], routed: tuple[str, ...], n: int, aggregates: tuple[Aggregate, ...],
) -> list[dict[str, Any]]:
    """Window states of the old partitions -> window states of ``n`` new partitions."""
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
        merged = {
            "keys": pl.concat(keys) if keys else first["keys"].clear(),
            "rows": {name: np.concatenate([r[name] for r in rows]) if rows else a[:0] for name, a in first["rows"].items()},
            "per_key": {name: np.concatenate([k[name] for k in per_key]) if per_key else a[:0]
                        for name, a in first["per_key"].items()},
            "values": {c: pl.concat([v[c] for v in values]) if values else s.clear() for c, s in first["values"].items()},
            "size": row_base,
        }
        out.append(_renumber_values(merged, first, aggregates))
    return out


def _renumber_values(state: dict[str, Any], like: dict[str, Any], aggregates: tuple[Aggregate, ...]) -> dict[str, Any]:
    """Value ids, in-window distinct counts and string order labels for a merged state
    (each old partition numbered its values its own way)."""
    rows, values = state["rows"], state["values"]
    state["values_index"], state["order_labels"], state["counts"] = {}, {}, {}
    for col in like["values_index"]:
        index = KeyIndex((col,), {col: values[col].dtype})
        ids = index.ids(values[col].to_frame()) if values[col].len() else np.zeros(0, dtype=np.int64)
        rows[f"vid:{col}"] = np.where(rows[f"valid:{col}"], ids, -1)
        state["values_index"][col] = index.snapshot()
    for col in like["order_labels"]:
        labels = OrderLabels()
        rows[f"val:{col}"] = labels.label(values[col]) if values[col].len() else np.zeros(0, dtype=np.float64)
        state["order_labels"][col] = {"values": pl.Series(labels.values, dtype=pl.String),
                                      "labels": np.asarray(labels.labels, dtype=np.float64)}
    kid, size = rows["kid"], state["size"]
    for i in like["counts"]:
        agg = aggregates[int(i)]
        vid = rows[f"vid:{agg.on}"]
        lo = state["per_key"][f"lo:{i}"]
        start = lo[kid] if size else np.zeros(0, dtype=np.int64)
        # a key's rows from its window start on are in the window (row ids grow along its chain)
        inside = (np.arange(size) >= start) & (start >= 0) & (vid >= 0)
        slots, counts = np.unique((kid[inside] << 32) | vid[inside], return_counts=True)
        state["counts"][i] = {"slots": slots.astype(np.int64), "counts": counts.astype(np.int64)}
    return state


def split_join(states: list[dict[str, Any]], node: nodes.JoinNode, right_ts_col: str, n: int) -> list[dict[str, Any]]:
    """As-of join states: the right rows kept (``right_ts_col`` orders them) and both
    sides' buffers, by each side's keys."""
    left_keys, right_keys = tuple(node.left_on), tuple(node.right_on)
    left_ts, right_ts = node.left.schema.timestamp, node.right.schema.timestamp
    latest = [split_rows(s["latest"], right_keys, n) for s in states]
    left = [split_rows(s["left"], left_keys, n) for s in states]
    right = [split_rows(s["right"], right_keys, n) for s in states]
    left_order = [left_ts, *([SEQ] if any(s["left"] is not None and SEQ in s["left"].columns for s in states) else [])]
    out = []
    for q in range(n):
        kept = concat_rows([parts[q] for parts in latest], [right_ts_col])
        out.append({
            "latest": kept if kept is not None else states[0]["latest"].clear(),
            "uncollapsed": any(s["uncollapsed"] for s in states),
            "left": concat_rows([parts[q] for parts in left], left_order),
            "right": concat_rows([parts[q] for parts in right], [right_ts]),
        })
    return out
