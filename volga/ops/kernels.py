"""JIT-compiled incremental window kernels.

State lives in an append-only row log (arrays indexed by row id, rows in processing
order) plus per-key arrays. Rows of one key are linked (``prev``/``nxt``), so each
kernel walks only the rows it needs: a new row is pushed, rows that left the window are
popped, and the result is read, in amortised O(1) per row. Processing is strictly
sequential in row order, so the result does not depend on how rows were split into
micro-batches: batch and streaming runs are bitwise identical.

Sliding sums, moments and min/max use the two-stack queue: the window is a front part
``[lo, f_end]`` whose rows hold precomputed suffix aggregates, and a back part
``(f_end, r]`` with one running aggregate per key. Values are only merged, never
subtracted, so a large value leaving the window leaves no rounding residue.

Row ids are comparable within a key (the log only appends; compaction keeps order).
``lo[k] < 0`` means the key has no rows yet; ``window_us < 0`` means forever.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_jit = njit(cache=True, nogil=True)  # compiled once per machine (cache next to this file)


@_jit
def link_rows(r0, n, kid, prev, nxt, last_row):  # type: ignore[no-untyped-def]
    """Chain the new rows ``[r0, r0 + n)`` to their key's previous row."""
    for r in range(r0, r0 + n):
        k = kid[r]
        p = last_row[k]
        prev[r] = p
        nxt[r] = -1
        if p >= 0:
            nxt[p] = r
        last_row[k] = r


@_jit
def _window_start(r, k, ts, nxt, lo, window_us):  # type: ignore[no-untyped-def]
    start = lo[k]
    if start < 0:
        start = r
    if window_us >= 0:
        limit = ts[r] - window_us
        while ts[start] < limit:
            start = nxt[start]
    lo[k] = start
    return start


@_jit
def _sum_front(end, start, prev, val, valid, f_sum, f_cnt):  # type: ignore[no-untyped-def]
    """A front part: at each row from ``end`` back to ``start``, the sum and count of the
    values from that row to ``end``."""
    acc = 0.0
    c = 0
    j = end
    while True:
        if valid[j]:
            acc = val[j] + acc
            c += 1
        f_sum[j] = acc
        f_cnt[j] = c
        if j == start:
            break
        j = prev[j]


@_jit
def sliding_sum(r0, n, kid, ts, prev, nxt, val, valid, window_us, lo, f_end, b_sum, b_cnt, f_sum, f_cnt, out_sum, out_cnt):  # type: ignore[no-untyped-def]
    for r in range(r0, r0 + n):
        k = kid[r]
        start = _window_start(r, k, ts, nxt, lo, window_us)
        if valid[r]:
            b_sum[k] += val[r]
            b_cnt[k] += 1
        if start > f_end[k]:  # front exhausted: rebuild it over the whole window
            _sum_front(r, start, prev, val, valid, f_sum, f_cnt)
            f_end[k] = r
            b_sum[k] = 0.0
            b_cnt[k] = 0
        out_sum[r - r0] = f_sum[start] + b_sum[k]
        out_cnt[r - r0] = f_cnt[start] + b_cnt[k]


@_jit
def _merge_moments(n1, mean1, m2_1, n2, mean2, m2_2):  # type: ignore[no-untyped-def]
    if n1 == 0:
        return n2, mean2, m2_2
    if n2 == 0:
        return n1, mean1, m2_1
    total = n1 + n2
    delta = mean2 - mean1
    return total, mean1 + delta * n2 / total, m2_1 + m2_2 + delta * delta * n1 * n2 / total


@_jit
def _moments_front(end, start, prev, val, valid, f_n, f_mean, f_m2):  # type: ignore[no-untyped-def]
    cn, cmean, cm2 = 0, 0.0, 0.0
    j = end
    while True:
        if valid[j]:
            cn, cmean, cm2 = _merge_moments(1, val[j], 0.0, cn, cmean, cm2)
        f_n[j] = cn
        f_mean[j] = cmean
        f_m2[j] = cm2
        if j == start:
            break
        j = prev[j]


@_jit
def sliding_moments(r0, n, kid, ts, prev, nxt, val, valid, window_us, lo, f_end, b_n, b_mean, b_m2, f_n, f_mean, f_m2, out_n, out_m2):  # type: ignore[no-untyped-def]
    """Count and M2 (sum of squared deviations, Chan's merge) per window."""
    for r in range(r0, r0 + n):
        k = kid[r]
        start = _window_start(r, k, ts, nxt, lo, window_us)
        if valid[r]:
            b_n[k], b_mean[k], b_m2[k] = _merge_moments(b_n[k], b_mean[k], b_m2[k], 1, val[r], 0.0)
        if start > f_end[k]:
            _moments_front(r, start, prev, val, valid, f_n, f_mean, f_m2)
            f_end[k] = r
            b_n[k], b_mean[k], b_m2[k] = 0, 0.0, 0.0
        tn, _, tm2 = _merge_moments(f_n[start], f_mean[start], f_m2[start], b_n[k], b_mean[k], b_m2[k])
        out_n[r - r0] = tn
        out_m2[r - r0] = tm2


@_jit
def _better(a, b, order, want_max):  # type: ignore[no-untyped-def]
    """Is row ``a`` a strictly better extreme than row ``b`` (-1 = none)?"""
    if a < 0:
        return False
    if b < 0:
        return True
    return order[a] > order[b] if want_max else order[a] < order[b]


@_jit
def _extreme_front(end, start, prev, order, valid, want_max, f_idx):  # type: ignore[no-untyped-def]
    best = -1
    j = end
    while True:
        if valid[j] and (best < 0 or not _better(best, j, order, want_max)):
            best = j  # ties: the earliest row, whose value is the same
        f_idx[j] = best
        if j == start:
            break
        j = prev[j]


@_jit
def sliding_extreme(r0, n, kid, ts, prev, nxt, order, valid, want_max, window_us, lo, f_end, b_idx, f_idx, out_idx):  # type: ignore[no-untyped-def]
    """Row id of the min (max) non-null value per window; -1 if none."""
    for r in range(r0, r0 + n):
        k = kid[r]
        start = _window_start(r, k, ts, nxt, lo, window_us)
        if valid[r] and _better(r, b_idx[k], order, want_max):
            b_idx[k] = r
        if start > f_end[k]:
            _extreme_front(r, start, prev, order, valid, want_max, f_idx)
            f_end[k] = r
            b_idx[k] = -1
        front = f_idx[start]
        out_idx[r - r0] = b_idx[k] if _better(b_idx[k], front, order, want_max) else front


@_jit
def sliding_count(r0, n, kid, ts, nxt, valid, window_us, lo, cnt, out):  # type: ignore[no-untyped-def]
    """Number of rows (``valid`` all true) or non-null values per window."""
    for r in range(r0, r0 + n):
        k = kid[r]
        start = lo[k]
        if start < 0:
            start = r
        if valid[r]:
            cnt[k] += 1
        if window_us >= 0:
            limit = ts[r] - window_us
            while ts[start] < limit:
                if valid[start]:
                    cnt[k] -= 1
                start = nxt[start]
        lo[k] = start
        out[r - r0] = cnt[k]


@_jit
def first_last(r0, n, kid, ts, nxt, valid, window_us, lo, fv, lv, out_first, out_last):  # type: ignore[no-untyped-def]
    """Row ids of the earliest and latest non-null rows per window; -1 if none.

    ``fv[k]`` is a valid row in the window, or -1 once every row so far was scanned."""
    for r in range(r0, r0 + n):
        k = kid[r]
        start = _window_start(r, k, ts, nxt, lo, window_us)
        if valid[r]:
            lv[k] = r
        f = fv[k]
        if f < 0:
            f = r
        elif f < start:
            f = start
        while 0 <= f <= r and not valid[f]:
            f = nxt[f]  # rows of later batches may already be linked: never look past r
        if f > r:
            f = -1
        fv[k] = f
        out_first[r - r0] = f
        out_last[r - r0] = lv[k] if lv[k] >= start else -1


@_jit
def last_n(r0, n, kid, ts, prev, nxt, valid, window_us, lo, count, out_offsets, out_idx):  # type: ignore[no-untyped-def]
    """Row ids of the last ``count`` non-null rows per window, most recent first."""
    total = 0
    for r in range(r0, r0 + n):
        k = kid[r]
        start = _window_start(r, k, ts, nxt, lo, window_us)
        out_offsets[r - r0] = total
        j = r
        taken = 0
        while j >= start and taken < count:
            if valid[j]:
                out_idx[total] = j
                total += 1
                taken += 1
            j = prev[j]
    out_offsets[n] = total
    return total


@_jit
def count_distinct(r0, n, kid, ts, nxt, vid, window_us, lo, counts, distinct, out):  # type: ignore[no-untyped-def]
    """Distinct non-null value ids (``-1`` = null) per window; ``counts`` maps
    ``key_id << 32 | value_id`` to occurrences in the window."""
    for r in range(r0, r0 + n):
        k = kid[r]
        start = lo[k]
        if start < 0:
            start = r
        v = vid[r]
        if v >= 0:
            slot = (k << 32) | v
            c = counts.get(slot, 0)
            if c == 0:
                distinct[k] += 1
            counts[slot] = c + 1
        if window_us >= 0:
            limit = ts[r] - window_us
            while ts[start] < limit:
                w = vid[start]
                if w >= 0:
                    slot = (k << 32) | w
                    c = counts[slot] - 1
                    if c == 0:
                        del counts[slot]
                        distinct[k] -= 1
                    else:
                        counts[slot] = c
                start = nxt[start]
        lo[k] = start
        out[r - r0] = distinct[k]


# Front parts are derived state: snapshots leave them out, and a restore recomputes each
# key's over ``[lo, f_end]`` with the loop that wrote them (so bitwise the same values).
@_jit
def sum_fronts(lo, f_end, prev, val, valid, f_sum, f_cnt):  # type: ignore[no-untyped-def]
    for k in range(lo.shape[0]):
        if 0 <= lo[k] <= f_end[k]:
            _sum_front(f_end[k], lo[k], prev, val, valid, f_sum, f_cnt)


@_jit
def moments_fronts(lo, f_end, prev, val, valid, f_n, f_mean, f_m2):  # type: ignore[no-untyped-def]
    for k in range(lo.shape[0]):
        if 0 <= lo[k] <= f_end[k]:
            _moments_front(f_end[k], lo[k], prev, val, valid, f_n, f_mean, f_m2)


@_jit
def extreme_fronts(lo, f_end, prev, order, valid, want_max, f_idx):  # type: ignore[no-untyped-def]
    for k in range(lo.shape[0]):
        if 0 <= lo[k] <= f_end[k]:
            _extreme_front(f_end[k], lo[k], prev, order, valid, want_max, f_idx)


@_jit
def relink(kid, last_row, prev, nxt):  # type: ignore[no-untyped-def]
    """Rebuild the per-key links of a compacted log."""
    last_row[:] = -1
    for r in range(kid.shape[0]):
        k = kid[r]
        p = last_row[k]
        prev[r] = p
        nxt[r] = -1
        if p >= 0:
            nxt[p] = r
        last_row[k] = r


@_jit
def mark_last_valid(last_row, prev, valid, count, live):  # type: ignore[no-untyped-def]
    """Mark each key's last ``count`` non-null rows live (what LastN forever needs)."""
    for k in range(last_row.shape[0]):
        j = last_row[k]
        taken = 0
        while j >= 0 and taken < count:
            if valid[j]:
                live[j] = True
                taken += 1
            j = prev[j]


def empty_counts():  # type: ignore[no-untyped-def]
    """A typed dict for ``count_distinct`` (created outside JIT code)."""
    from numba import types
    from numba.typed import Dict

    return Dict.empty(key_type=types.int64, value_type=types.int64)


__all__ = [
    "count_distinct", "empty_counts", "extreme_fronts", "first_last", "last_n", "link_rows", "mark_last_valid",
    "moments_fronts", "relink", "sliding_count", "sliding_extreme", "sliding_moments", "sliding_sum", "sum_fronts", "np",
]
