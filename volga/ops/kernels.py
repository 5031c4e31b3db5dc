"""JIT-compiled window kernels over columnar buffers.

Input rows are grouped by key into contiguous segments ``[seg_start[s], seg_end[s])``,
each in processing order. For row ``i`` the window is the index range ``[lo[i], i]``
(rows of the same key with ``ts >= ts[i] - window``, all of which precede ``i``).

Sliding aggregates use the two-stack queue: the window is a front part ``[lo, m)``
with precomputed suffix aggregates and a back part ``[m, i]`` with one running
aggregate. Values are only ever merged, never subtracted, so a large value that leaves
the window leaves no rounding residue behind (unlike add/subtract running sums).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# numba's cache lives next to this file; compiled once per machine.
_JIT = {"cache": True, "nogil": True}


@njit(**_JIT)
def window_starts(seg_start, seg_end, ts, window_us, lo_out):  # type: ignore[no-untyped-def]
    """First index of each row's window; ``window_us < 0`` means forever."""
    for s in range(seg_start.shape[0]):
        a = seg_start[s]
        lo = a
        for i in range(a, seg_end[s]):
            if window_us >= 0:
                limit = ts[i] - window_us
                while ts[lo] < limit:
                    lo += 1
            lo_out[i] = lo


@njit(**_JIT)
def sliding_sum(seg_start, seg_end, lo_arr, vals, valid, out_sum, out_cnt):  # type: ignore[no-untyped-def]
    """Sum and non-null count over each window (two-stack queue, merges only)."""
    n = vals.shape[0]
    f_sum = np.empty(n)
    f_cnt = np.empty(n, dtype=np.int64)
    for s in range(seg_start.shape[0]):
        a, b = seg_start[s], seg_end[s]
        m = a
        b_sum = 0.0
        b_cnt = 0
        for i in range(a, b):
            if valid[i]:
                b_sum += vals[i]
                b_cnt += 1
            lo = lo_arr[i]
            if lo >= m:  # front exhausted: rebuild it over the whole window
                acc = 0.0
                c = 0
                for k in range(i, lo - 1, -1):
                    if valid[k]:
                        acc = vals[k] + acc
                        c += 1
                    f_sum[k] = acc
                    f_cnt[k] = c
                m = i + 1
                b_sum = 0.0
                b_cnt = 0
            out_sum[i] = f_sum[lo] + b_sum
            out_cnt[i] = f_cnt[lo] + b_cnt


@njit(**_JIT)
def _merge_moments(n1, mean1, m2_1, n2, mean2, m2_2):  # type: ignore[no-untyped-def]
    if n1 == 0:
        return n2, mean2, m2_2
    if n2 == 0:
        return n1, mean1, m2_1
    n = n1 + n2
    delta = mean2 - mean1
    mean = mean1 + delta * n2 / n
    m2 = m2_1 + m2_2 + delta * delta * n1 * n2 / n
    return n, mean, m2


@njit(**_JIT)
def sliding_moments(seg_start, seg_end, lo_arr, vals, valid, out_n, out_m2):  # type: ignore[no-untyped-def]
    """Count and sum of squared deviations (Chan's parallel merge) over each window."""
    size = vals.shape[0]
    f_n = np.empty(size, dtype=np.int64)
    f_mean = np.empty(size)
    f_m2 = np.empty(size)
    for s in range(seg_start.shape[0]):
        a, b = seg_start[s], seg_end[s]
        m = a
        bn, bmean, bm2 = 0, 0.0, 0.0
        for i in range(a, b):
            if valid[i]:
                bn, bmean, bm2 = _merge_moments(bn, bmean, bm2, 1, vals[i], 0.0)
            lo = lo_arr[i]
            if lo >= m:
                cn, cmean, cm2 = 0, 0.0, 0.0
                for k in range(i, lo - 1, -1):
                    if valid[k]:
                        cn, cmean, cm2 = _merge_moments(1, vals[k], 0.0, cn, cmean, cm2)
                    f_n[k] = cn
                    f_mean[k] = cmean
                    f_m2[k] = cm2
                m = i + 1
                bn, bmean, bm2 = 0, 0.0, 0.0
            tn, tmean, tm2 = _merge_moments(f_n[lo], f_mean[lo], f_m2[lo], bn, bmean, bm2)
            out_n[i] = tn
            out_m2[i] = tm2


@njit(**_JIT)
def sliding_arg_extreme(seg_start, seg_end, lo_arr, order, valid, want_max, out_idx):  # type: ignore[no-untyped-def]
    """Index of the min (or max) non-null ``order`` value in each window; -1 if none."""
    size = order.shape[0]
    f_idx = np.empty(size, dtype=np.int64)
    for s in range(seg_start.shape[0]):
        a, b = seg_start[s], seg_end[s]
        m = a
        b_idx = -1
        for i in range(a, b):
            if valid[i]:
                if b_idx < 0 or (order[i] > order[b_idx] if want_max else order[i] < order[b_idx]):
                    b_idx = i
            lo = lo_arr[i]
            if lo >= m:
                best = -1
                for k in range(i, lo - 1, -1):
                    if valid[k]:
                        if best < 0 or (order[k] >= order[best] if want_max else order[k] <= order[best]):
                            best = k
                    f_idx[k] = best
                m = i + 1
                b_idx = -1
            f = f_idx[lo]
            if f < 0:
                out_idx[i] = b_idx
            elif b_idx < 0:
                out_idx[i] = f
            elif want_max:
                out_idx[i] = b_idx if order[b_idx] > order[f] else f
            else:
                out_idx[i] = b_idx if order[b_idx] < order[f] else f


@njit(**_JIT)
def first_last(seg_start, seg_end, lo_arr, valid, out_first, out_last):  # type: ignore[no-untyped-def]
    """Indices of the earliest and latest non-null rows in each window; -1 if none."""
    for s in range(seg_start.shape[0]):
        a, b = seg_start[s], seg_end[s]
        fv = a
        last = -1
        for i in range(a, b):
            if valid[i]:
                last = i
            lo = lo_arr[i]
            if fv < lo:
                fv = lo
            while fv <= i and not valid[fv]:
                fv += 1
            out_first[i] = fv if fv <= i else -1
            out_last[i] = last if last >= lo else -1


@njit(**_JIT)
def sliding_count_distinct(seg_start, seg_end, lo_arr, ids, n_ids, out):  # type: ignore[no-untyped-def]
    """Number of distinct non-null ids (dense, ``-1`` = null) in each window."""
    counts = np.zeros(n_ids, dtype=np.int64)
    for s in range(seg_start.shape[0]):
        a, b = seg_start[s], seg_end[s]
        lo_prev = a
        distinct = 0
        for i in range(a, b):
            v = ids[i]
            if v >= 0:
                if counts[v] == 0:
                    distinct += 1
                counts[v] += 1
            lo = lo_arr[i]
            for k in range(lo_prev, lo):
                w = ids[k]
                if w >= 0:
                    counts[w] -= 1
                    if counts[w] == 0:
                        distinct -= 1
            lo_prev = lo
            out[i] = distinct
        for k in range(lo_prev, b):  # leave the table empty for the next key
            if ids[k] >= 0:
                counts[ids[k]] = 0


@njit(**_JIT)
def last_n_indices(lo_arr, valid, rows, n, out_offsets, out_idx):  # type: ignore[no-untyped-def]
    """For each row in ``rows``: indices of the last ``n`` non-null rows of its window,
    most recent first, written to ``out_idx`` with list offsets. Returns the total."""
    total = 0
    for r in range(rows.shape[0]):
        i = rows[r]
        out_offsets[r] = total
        k = i
        taken = 0
        while k >= lo_arr[i] and taken < n:
            if valid[k]:
                out_idx[total] = k
                total += 1
                taken += 1
            k -= 1
    out_offsets[rows.shape[0]] = total
    return total


@njit(**_JIT)
def carry_sums(seg_start, seg_end, seg_key, first_new, vals, valid, c_sum, c_cnt, out_sum, out_cnt):  # type: ignore[no-untyped-def]
    """Forever sum/count continued from per-key carried totals, over new rows only."""
    for s in range(seg_start.shape[0]):
        key = seg_key[s]
        acc = c_sum[key]
        cnt = c_cnt[key]
        for i in range(first_new[s], seg_end[s]):
            if valid[i]:
                acc += vals[i]
                cnt += 1
            out_sum[i] = acc
            out_cnt[i] = cnt
        c_sum[key] = acc
        c_cnt[key] = cnt


@njit(**_JIT)
def carry_moments(seg_start, seg_end, seg_key, first_new, vals, valid, c_n, c_mean, c_m2, out_n, out_m2):  # type: ignore[no-untyped-def]
    """Forever count/M2 (Welford) continued from per-key carried state, over new rows."""
    for s in range(seg_start.shape[0]):
        key = seg_key[s]
        n, mean, m2 = c_n[key], c_mean[key], c_m2[key]
        for i in range(first_new[s], seg_end[s]):
            if valid[i]:
                n, mean, m2 = _merge_moments(n, mean, m2, 1, vals[i], 0.0)
            out_n[i] = n
            out_m2[i] = m2
        c_n[key], c_mean[key], c_m2[key] = n, mean, m2
