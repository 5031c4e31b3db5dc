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
from collections.abc import Sequence

import numpy as np
import polars as pl

from volga.api.decorators import PipelineDef
from volga.plan.request_time import RequestTimeShape
from volga.storage import OfflineStore
from volga.training.request_time import values_at

ROW = "__volga_row"
_TIME = "__volga_t"
_POS = "__volga_pos"


class OfflineDataMissing(LookupError):
    """A pipeline the request needs has no rows in the offline store (or stale ones)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "offline data missing"


@dataclasses.dataclass
class Grouped:
    """A pipeline's rows grouped by key, time-ordered inside each group."""

    frame: pl.DataFrame
    starts: np.ndarray  # per row: the position of its key group's first row
    ends: np.ndarray  # per row: one past its key group's last row
    times_us: np.ndarray  # per row: its timestamp in microseconds


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
        return values_at(self.shape, self.group(), keys, times, self.asof(keys, times, grouped=True))

    def values(
        self, fields: Sequence[str], positions: pl.Series, times: pl.Series, ttl_us: int | None,
        rows: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """``fields`` of the as-of rows (or of ``rows``, one per spine row); all null where
        there is none, or it is older than ``ttl_us``."""
        if rows is not None:
            picked = rows.select(*dict.fromkeys([*fields, self.ts]))
        else:
            picked = self.frame.select(pl.col(*fields, self.ts).gather(positions))
        if ttl_us is None:
            return picked.select(fields)
        age_us = (times.cast(pl.Int64) - picked.get_column(self.ts).cast(pl.Int64)).alias("age")
        fresh = age_us <= ttl_us
        return picked.select(pl.when(fresh).then(pl.col(f)).otherwise(None).alias(f) for f in fields)

    # -- grouped by key (for last_n and range) ----------------------------------------------
    def group(self) -> Grouped:
        if self._grouped is None:
            frame = self.frame.sort(self.keys, maintain_order=True)  # stable: time order within a key
            n = frame.height
            if n:
                keys = frame.select(self.keys)
                new_group = np.ones(n, dtype=bool)
                new_group[1:] = ~_equal_rows(keys.slice(1), keys.slice(0, n - 1))
                first = np.flatnonzero(new_group)
                sizes = np.diff(np.append(first, n))
                starts = np.repeat(first, sizes)
                ends = np.repeat(first + sizes, sizes)
            else:
                starts = ends = np.zeros(0, dtype=np.int64)
            times_us = frame.get_column(self.ts).cast(pl.Int64).to_numpy()
            self._grouped = Grouped(frame, starts, ends, times_us)
        return self._grouped


def _equal_rows(a: pl.DataFrame, b: pl.DataFrame) -> np.ndarray:
    """Row-wise equality of two frames with the same columns and no nulls."""
    out = np.ones(a.height, dtype=bool)
    for column in a.columns:
        out &= (a.get_column(column) == b.get_column(column)).to_numpy()
    return out
