"""Point-in-time lookups of a pipeline's offline rows (DESIGN.md "Point-in-time lookups").

For a spine row (keys, t) a pipeline's value is its latest output row for those keys with
timestamp <= t. The offline store keeps rows in processing order (event time, ties in
arrival order), so after a stable sort by timestamp (a no-op when, as usual, the rows are
already in time order) "latest" is the last row at or before t: exactly the row the online
store held last for that key once every event up to t was processed. One vectorised
``join_asof`` (backward, by key) finds it for every spine row at once; on equal timestamps
it takes the last of the tied rows, i.e. the later-written one.

On-demand features also read ``last_n`` and ``range``: for those the rows are grouped by
key (a stable sort, so time order holds inside each group) and a spine row's answer is a
slice of its key's group ending at its as-of row.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Sequence

import numpy as np
import polars as pl
from numba import njit

from volga.api.decorators import PipelineDef
from volga.plan.request_time import RequestTimeShape
from volga.storage import OfflineStore
from volga.training.request_time import values_at

ROW = "__volga_row"
_START = "__volga_start"
_END = "__volga_end"
_TIME = "__volga_t"
_POS = "__volga_pos"


class OfflineDataMissing(LookupError):
    """A pipeline the request needs has no rows in the offline store (or stale ones)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "offline data missing"


@dataclasses.dataclass
class Grouped:
    """A pipeline's rows grouped by key, time-ordered inside each group.

    The rows stay where they were loaded: grouped position ``i`` is row ``order[i]`` of
    ``source``. Gathering every column into grouped order (``frame``) is done only when a
    caller needs it; request-time lookups gather just the rows they read.
    """

    source: pl.DataFrame
    order: np.ndarray  # grouped position -> row of source
    starts: np.ndarray  # per row: the position of its key group's first row
    ends: np.ndarray  # per row: one past its key group's last row
    times_us: np.ndarray  # per row: its timestamp in microseconds
    heads: pl.DataFrame  # one row per key group: its key values, _START and _END

    @functools.cached_property
    def frame(self) -> pl.DataFrame:
        return self.source[self.order]

    def source_rows(self, positions: pl.Series) -> pl.Series:
        """Rows of ``source`` at grouped ``positions`` (nulls stay null)."""
        return pl.Series(self.order).gather(positions)


class PipelineRows:
    """A pipeline's offline rows, loaded once per call, ready for as-of lookups."""

    def __init__(self, pipeline: PipelineDef, frame: pl.DataFrame, shape: RequestTimeShape | None = None) -> None:
        self.pipeline = pipeline
        self.shape = shape  # evaluated at request time (its hidden columns loaded), else None
        schema = pipeline.schema
        self.keys = list(schema.keys)
        self.ts = schema.timestamp
        if not frame.get_column(self.ts).is_sorted():
            frame = frame.sort(self.ts, maintain_order=True)  # stable: ties keep write order
        self.frame = frame
        self._grouped: Grouped | None = None

    @classmethod
    def load(
        cls, store: OfflineStore, pipeline: PipelineDef, columns: Sequence[str], needed_by: str, *,
        until: datetime.datetime | None = None, keys: pl.DataFrame | None = None, shape: RequestTimeShape | None = None,
    ) -> PipelineRows:
        """Read ``columns`` (plus keys and timestamp) of ``pipeline``'s offline rows.

        Only rows a lookup can see are read: none after ``until`` (the latest spine time)
        and, given ``keys`` (the key values asked for, named like the key fields), none of
        other keys. Both filters keep the rows' order.
        """
        name = pipeline.name
        lazy = store.scan(name)
        stored = store.schema(name)
        if lazy is None or stored is None:
            raise OfflineDataMissing(
                f"the offline store has no rows for pipeline '{name}' (needed by {needed_by}): backfill it with "
                f"client.materialize([{name}], mode='offline'), or pass compute=True to do that first"
            )
        schema = pipeline.schema
        wanted = list(dict.fromkeys([*schema.keys, schema.timestamp, *columns]))
        if shape is not None:  # every column: the steps after the aggregate may read any of them
            expected = shape.stored_schema()
            wanted = expected.names
        else:
            expected = schema
        stale = [
            c for c in wanted
            if not stored.has(c) or stored.field(c).dtype != expected.field(c).dtype
        ]
        if stale or stored.keys != schema.keys or stored.timestamp != schema.timestamp:
            raise OfflineDataMissing(
                f"the offline rows of pipeline '{name}' were written by a different definition (stored: "
                f"{stored.describe()['fields']}; now: {schema.describe()['fields']}): re-run "
                f"client.materialize([{name}], mode='offline'), or pass compute=True"
            )
        lazy = lazy.select(wanted)
        if until is not None:
            lazy = lazy.filter(pl.col(schema.timestamp) <= until)
        if keys is not None:
            if keys.width == 1:
                (key,) = keys.columns
                lazy = lazy.filter(pl.col(key).is_in(keys.get_column(key).unique().implode()))
            else:
                lazy = lazy.join(keys.unique().lazy(), on=keys.columns, how="semi", maintain_order="left")
        return cls(pipeline, lazy.collect(), shape)

    # -- as-of ------------------------------------------------------------------------------
    def asof(self, keys: Sequence[pl.Series], times: pl.Series, *, grouped: bool = False) -> pl.Series:
        """Per spine row (``keys`` in key-field order, ``times``): the position of its as-of
        row in ``self.frame`` (or in the grouped frame), null when there is none."""
        rows = self.group().frame if grouped else self.frame
        left = pl.DataFrame([*(s.alias(k) for k, s in zip(self.keys, keys)), times.alias(_TIME)]).with_row_index(ROW)
        right = rows.select([*self.keys, self.ts]).with_row_index(_POS)
        joined = left.sort(_TIME).join_asof(
            right, left_on=_TIME, right_on=self.ts, by=self.keys, strategy="backward", check_sortedness=False
        )
        return joined.sort(ROW).get_column(_POS)

    def at_times(self, keys: Sequence[pl.Series], times: pl.Series) -> pl.DataFrame:
        """The pipeline's rows evaluated at each spine time (request-time pipelines; see
        :mod:`volga.training.request_time`), one per spine row."""
        assert self.shape is not None
        return values_at(self.shape, self.group(), keys, times, self.asof_grouped(keys, times))

    def asof_grouped(self, keys: Sequence[pl.Series], times: pl.Series) -> pl.Series:
        """``asof(keys, times, grouped=True)`` by a hash join on the key groups and a binary
        search of each group's times: no as-of join over every loaded row. On equal times
        the later-written row, as ``asof``."""
        grouped = self.group()
        asked = pl.DataFrame([s.alias(k) for k, s in zip(self.keys, keys)])
        spans = asked.join(grouped.heads, on=self.keys, how="left", maintain_order="left")
        at_us = times.cast(pl.Datetime("us", "UTC")).cast(pl.Int64).to_numpy()
        found = _latest_at(
            grouped.times_us, spans.get_column(_START).fill_null(0).to_numpy(),
            spans.get_column(_END).fill_null(0).to_numpy(), at_us,
        )
        return pl.Series(_POS, found, dtype=pl.Int64).replace(-1, None)

    def values(
        self, fields: Sequence[str], positions: pl.Series | None, times: pl.Series, ttl_us: int | None,
        rows: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """``fields`` of the as-of rows (or of ``rows``, one per spine row); all null where
        there is none, or it is older than ``ttl_us``."""
        if rows is not None:
            picked = rows.select(*dict.fromkeys([*fields, self.ts]))
        else:
            assert positions is not None
            picked = self.frame.select(pl.col(*fields, self.ts).gather(positions))
        if ttl_us is None:
            return picked.select(fields)
        age_us = (times.cast(pl.Int64) - picked.get_column(self.ts).cast(pl.Int64)).alias("age")
        fresh = age_us <= ttl_us
        return picked.select(pl.when(fresh).then(pl.col(f)).otherwise(None).alias(f) for f in fields)

    # -- grouped by key (for last_n and range) ----------------------------------------------
    def group(self) -> Grouped:
        if self._grouped is None:
            order, codes = _key_order(self.frame, self.keys)  # stable: time order within a key
            n = self.frame.height
            if n:
                new_group = np.zeros(n, dtype=bool)
                new_group[0] = True
                for code in codes:  # a key group starts where any key's code changes
                    sorted_code = code[order]
                    new_group[1:] |= sorted_code[1:] != sorted_code[:-1]
                first = np.flatnonzero(new_group)
                sizes = np.diff(np.append(first, n))
                starts = np.repeat(first, sizes)
                ends = np.repeat(first + sizes, sizes)
            else:
                first = sizes = starts = ends = np.zeros(0, dtype=np.int64)
            heads = self.frame.select(self.keys)[order[first]].with_columns(
                pl.Series(_START, first, dtype=pl.Int64), pl.Series(_END, first + sizes, dtype=pl.Int64)
            )
            times_us = self.frame.get_column(self.ts).cast(pl.Int64).to_numpy()[order]
            self._grouped = Grouped(self.frame, order, starts, ends, times_us, heads)
        return self._grouped


def _key_order(frame: pl.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A stable order that makes each key's rows contiguous (groups in no particular order),
    and each key column as integer codes (equal values, equal codes).

    Sorting by integer codes (strings: their categorical codes) is several times faster than
    sorting strings, and only contiguity matters here.
    """
    codes = []
    for key in keys:
        column = frame.get_column(key)
        if column.dtype == pl.String:
            column = column.cast(pl.Categorical).to_physical()
        elif not (column.dtype.is_integer() and column.dtype != pl.UInt64 or column.dtype == pl.Boolean):
            column = column.rank("dense")
        codes.append(column.cast(pl.Int64).fill_null(-1).to_numpy())
    if len(codes) > 1:
        return np.lexsort(codes[::-1]), codes
    code = codes[0]
    low = int(code.min()) if len(code) else 0
    if len(code) and int(code.max()) - low <= 4 * len(code):  # small code range: a counting sort, O(n)
        return _counting_order(code - low, int(code.max()) - low + 1), codes
    return np.argsort(code, kind="stable"), codes


@njit(cache=True, nogil=True)
def _counting_order(code, size):  # type: ignore[no-untyped-def]
    """The stable order that sorts ``code`` (ints in [0, size)): a counting sort."""
    next_slot = np.zeros(size + 1, dtype=np.int64)
    for c in code:
        next_slot[c + 1] += 1
    for i in range(size):
        next_slot[i + 1] += next_slot[i]
    out = np.empty(len(code), dtype=np.int64)
    for i in range(len(code)):
        c = code[i]
        out[next_slot[c]] = i
        next_slot[c] += 1
    return out


@njit(cache=True, nogil=True)
def _latest_at(times_us, lo, hi, at_us):  # type: ignore[no-untyped-def]
    """Per query: the last position in times_us[lo:hi] (sorted) with time <= at, else -1."""
    out = np.empty(len(at_us), dtype=np.int64)
    for i in range(len(at_us)):
        a, b = lo[i], hi[i]
        while a < b:
            m = (a + b) // 2
            if times_us[m] <= at_us[i]:
                a = m + 1
            else:
                b = m
        out[i] = a - 1 if a > lo[i] else -1
    return out
