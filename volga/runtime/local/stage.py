"""A source as the streaming engine sees it: micro-batches in event-time order, a
watermark, late events set aside, idleness.

Watermark = max event time seen - lateness. A row older than the watermark at its
arrival is late: it goes to the late sink and nowhere else. The rest wait in a buffer
until the watermark reaches them, then leave in (ts, arrival) order. Lateness is
decided row by row in arrival order, so it does not depend on micro-batch sizes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np
import polars as pl

from volga.api.decorators import SourceDef
from volga.ops.frames import epoch_us

log = logging.getLogger("volga.stream")

LATE_LOG_EVERY_S = 5.0


class LateRowReport:
    """The late-row warning, summarised: at most one log line every ``every_s`` seconds
    (a stream with a steady trickle of late rows would otherwise log once per
    micro-batch), each with the total so far and the count per source; ``flush`` logs
    what arrived since the last line (at the end of a job).

    >>> ticks = iter([0.0, 1.0, 2.0, 6.0])
    >>> report = LateRowReport(every_s=5.0, clock=lambda: next(ticks))
    >>> [report.add("orders", 3), report.add("orders", 1), report.add("users", 2), report.add("orders", 1)]
    [True, False, False, True]
    >>> report.total, report.counts
    (7, {'orders': 5, 'users': 2})
    """

    def __init__(self, every_s: float = LATE_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.lateness_us: dict[str, int] = {}
        self.total = 0
        self.logged_total = 0
        self.logged_at: float | None = None
        self._lock = threading.Lock()

    def add(self, source: str, rows: int, lateness_us: int = 0) -> bool:
        """Count ``rows`` late rows of ``source``; True when this call logged a line."""
        with self._lock:
            self.counts[source] = self.counts.get(source, 0) + rows
            self.lateness_us[source] = lateness_us
            self.total += rows
            now = self.clock()
            if self.logged_at is not None and now - self.logged_at < self.every_s:
                return False
            self._log(now)
            return True

    def flush(self) -> bool:
        """Log the late rows not reported yet, if any; True when it logged."""
        with self._lock:
            if self.total == self.logged_total:
                return False
            self._log(self.clock())
            return True

    def _log(self, now: float) -> None:
        new = self.total - self.logged_total
        per_source = ", ".join(
            f"{name}: {n} (lateness {self.lateness_us[name]} us)" for name, n in sorted(self.counts.items())
        )
        names = sorted(self.counts)
        log.warning(
            "%d late row(s) set aside since the last report, %d in total (older than their source's watermark) "
            "by source: %s; read them with job.late_events(%r)",
            new, self.total, per_source, names[0] if len(names) == 1 else "<source name>",
        )
        self.logged_total, self.logged_at = self.total, now


FINISHED_WM = 2**62  # watermark of an input that will never send another row
NO_WM = -(2**62)


class SourceStage:
    def __init__(self, source: SourceDef, reader: Any, late_report: LateRowReport | None = None) -> None:
        self.source = source
        # shared by a job's sources, so one line summarises them all
        self.late_report = late_report if late_report is not None else LateRowReport()
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
        self.pending: list[pl.DataFrame] = []
        self.pending_since = 0.0
        self.pending_entered: float | None = None
        self.done = False

    def _pending_rows(self) -> int:
        return sum(b.height for b in self.pending)

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

    def poll(self, max_rows: int, max_delay_s: float = 0.0) -> pl.DataFrame | None:
        """Rows released by this poll, in event-time order (None if none).

        With ``max_delay_s`` > 0, polled rows are held until ``max_rows`` are collected or
        the oldest has waited that long (fewer, larger micro-batches)."""
        batch = None if self.done else self.reader.poll(max_rows - self._pending_rows())
        if batch is not None and batch.height:
            if not self.pending:
                self.pending_since = time.perf_counter()
                self.pending_entered = getattr(self.reader, "entered_at", None)
            self.pending.append(batch)
        if self.reader.finished or self._pending_rows() >= max_rows or time.perf_counter() - self.pending_since >= max_delay_s:
            batch = pl.concat(self.pending) if len(self.pending) > 1 else (self.pending[0] if self.pending else None)
            self.entered_at = self.pending_entered if batch is not None else None
            self.pending = []
        else:
            batch = None
            self.entered_at = None
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
        ts = epoch_us(batch[self.ts_col])
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
        on_late = getattr(self.source, "on_late", None)  # a DataStream source's late sink
        if on_late is not None:
            on_late(self.late[-1])
        self.late_count += int(late.sum())
        self.late_report.add(self.source.name, int(late.sum()), self.lateness_us)
        return batch.filter(~mask)

    def _release(self) -> pl.DataFrame | None:
        if self.buffer is None or self.buffer.height == 0:
            return None
        if self.done or self.lateness_us == 0:
            out, self.buffer = self.buffer, None
            return out
        cut = int(np.searchsorted(epoch_us(self.buffer[self.ts_col]), self.watermark, side="right"))
        out = self.buffer.slice(0, cut)
        self.buffer = self.buffer.slice(cut)
        return out if out.height else None

    def late_events(self) -> pl.DataFrame:
        if not self.late:
            return pl.DataFrame(schema=self.source.schema.polars_schema())
        return pl.concat(self.late)
