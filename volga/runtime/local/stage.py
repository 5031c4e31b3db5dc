"""A source as the streaming engine sees it: micro-batches in event-time order, a
watermark, late events set aside, idleness.

Watermark = max event time seen - lateness. A row older than the watermark at its
arrival is late: it goes to the late sink and nowhere else. The rest wait in a buffer
until the watermark reaches them, then leave in (ts, arrival) order. Lateness is
decided row by row in arrival order, so it does not depend on micro-batch sizes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl

from volga.api.decorators import SourceDef

FINISHED_WM = 2**62  # watermark of an input that will never send another row
NO_WM = -(2**62)


class SourceStage:
    def __init__(self, source: SourceDef, reader: Any) -> None:
        self.source = source
        self.reader = reader
        self.ts_col = source.schema.timestamp
        self.lateness_us = source.lateness_us
        self.idle_timeout_s = None if source.idle_timeout_us is None else source.idle_timeout_us / 1e6
        self.max_seen = NO_WM
        self.buffer: pl.DataFrame | None = None
        self.late: list[pl.DataFrame] = []
        self.late_count = 0
        self.rows_in = 0
        self.last_row_at = time.perf_counter()
        self.entered_at: float | None = None
        self.done = False

    @property
    def watermark(self) -> int:
        if self.done:
            return FINISHED_WM
        return self.max_seen - self.lateness_us if self.max_seen != NO_WM else NO_WM

    @property
    def idle(self) -> bool:
        if self.done or self.idle_timeout_s is None:
            return False
        return time.perf_counter() - self.last_row_at >= self.idle_timeout_s

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        """Rows released by this poll, in event-time order (None if none)."""
        batch = None if self.done else self.reader.poll(max_rows)
        self.entered_at = getattr(self.reader, "entered_at", None) if batch is not None else None
        if batch is not None and batch.height:
            self.rows_in += batch.height
            self.last_row_at = time.perf_counter()
            batch = self._drop_late(batch)
            self.buffer = batch if self.buffer is None else pl.concat([self.buffer, batch])
            if self.lateness_us:
                self.buffer = self.buffer.sort(self.ts_col, maintain_order=True)
        if not self.done and self.reader.finished:
            self.done = True
        return self._release()

    def _drop_late(self, batch: pl.DataFrame) -> pl.DataFrame:
        ts = batch[self.ts_col].dt.epoch("us").to_numpy()
        running_max = np.maximum.accumulate(ts)
        seen_before = np.empty_like(ts)
        seen_before[0] = self.max_seen
        seen_before[1:] = np.maximum(running_max[:-1], self.max_seen)
        self.max_seen = max(self.max_seen, int(running_max[-1]))
        late = ts < seen_before - self.lateness_us
        if not late.any():
            return batch
        mask = pl.Series(late)
        self.late.append(batch.filter(mask))
        self.late_count += int(late.sum())
        return batch.filter(~mask)

    def _release(self) -> pl.DataFrame | None:
        if self.buffer is None or self.buffer.height == 0:
            return None
        if self.done or self.lateness_us == 0:
            out, self.buffer = self.buffer, None
            return out
        cut = int(self.buffer[self.ts_col].dt.epoch("us").search_sorted(self.watermark, side="right"))
        out = self.buffer.slice(0, cut)
        self.buffer = self.buffer.slice(cut)
        return out if out.height else None

    def late_events(self) -> pl.DataFrame:
        if not self.late:
            return pl.DataFrame(schema=self.source.schema.polars_schema())
        return pl.concat(self.late)
