"""A source as the streaming engine sees it: micro-batches in event-time order, a
watermark, late events set aside, idleness.

Watermark = max event time seen - lateness. A row older than the watermark at its
arrival is late: it goes to the late sink and nowhere else. The rest wait in a buffer
until the watermark reaches them, then leave in (ts, arrival) order. Lateness is
decided row by row in arrival order, so it does not depend on micro-batch sizes.

A partitioned reader (``reader.partition_ids``, e.g. Kafka) gets a watermark per
partition: each partition's is its own max event time - lateness, a row is late when it
is older than its partition's watermark (or older than rows already released), and the
source's watermark is the minimum over the partitions that are not idle. Rows leave in
(event time, partition, offset) order once that minimum has passed them, so a topic read
online gives the rows, in the order, that the same topic read offline gives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from volga.api.decorators import SourceDef
from volga.ops.frames import epoch_us
from volga.ops.protocol import FINISHED_WM, NO_WM

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


PARTITION = "__volga_partition"  # hidden columns of a partitioned source's buffered rows
OFFSET = "__volga_offset"


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
        self.skip_rows = 0  # rows a restored job re-reads from a source without positions
        self.snapshot_position: dict[str, int] | None = None  # the reader's, at the last snapshot
        self.polled = 0  # rows the reader handed out (restoring a source without positions skips them)
        parts = getattr(reader, "partition_ids", None)  # readers outside SourceReader: unpartitioned
        self.partitions: tuple[int, ...] | None = tuple(parts) if parts is not None else None
        if self.partitions is not None:
            now = time.perf_counter()
            self.part_max: dict[int, int] = dict.fromkeys(self.partitions, NO_WM)
            self.part_last_row_at: dict[int, float] = dict.fromkeys(self.partitions, now)
            self.released_to = NO_WM  # every row with ts < this has left the stage

    def _pending_rows(self) -> int:
        return sum(b.height for b in self.pending)

    @property
    def watermark(self) -> int:
        if self.done:
            return FINISHED_WM
        if self.partitions is not None:
            active = self._active_partitions()
            if not active:
                return self.released_to
            low = min(self.part_max[p] for p in active)
            return max(low - self.lateness_us if low != NO_WM else NO_WM, self.released_to)
        return self.max_seen - self.lateness_us if self.max_seen != NO_WM else NO_WM

    @property
    def idle(self) -> bool:
        if self.done or self.idle_timeout_s is None:
            return False
        if self.partitions is not None:
            return not self._active_partitions()
        return time.perf_counter() - self.last_row_at >= self.idle_timeout_s

    def _active_partitions(self) -> list[int]:
        """Partitions whose watermark counts: not finished, and not idle (an idle partition
        is caught up with its broker and sent no row for ``idle_timeout``)."""
        assert self.partitions is not None
        reader, timeout, now = self.reader, self.idle_timeout_s, time.perf_counter()
        return [
            p for p in self.partitions
            if not reader.partition_finished(p)
            and (timeout is None or now - self.part_last_row_at[p] < timeout or not reader.caught_up(p))
        ]

    def poll(self, max_rows: int, max_delay_s: float = 0.0) -> pl.DataFrame | None:
        """Rows released by this poll, in event-time order (None if none).

        With ``max_delay_s`` > 0, polled rows are held until ``max_rows`` are collected or
        the oldest has waited that long (fewer, larger micro-batches)."""
        batch = None if self.done else self.reader.poll(max_rows - self._pending_rows())
        if batch is not None:
            self.polled += batch.height
        if batch is not None and batch.height and self.partitions is not None:
            batch = self._with_positions(batch)
        if batch is not None and batch.height and self.skip_rows:
            skip = min(self.skip_rows, batch.height)
            self.skip_rows -= skip
            batch = batch.slice(skip)
            self.last_row_at = time.perf_counter()  # re-read rows arrived: a restored source is not idle meanwhile
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
            if self.partitions is not None:
                batch = self._drop_late_partitioned(batch)
                self.buffer = batch if self.buffer is None else pl.concat([self.buffer, batch])
                self.buffer = self.buffer.sort([self.ts_col, PARTITION, OFFSET])
            else:
                batch = self._drop_late(batch)
                self.buffer = batch if self.buffer is None else pl.concat([self.buffer, batch])
                if self.lateness_us:
                    self.buffer = self.buffer.sort(self.ts_col, maintain_order=True)
        if not self.done and self.reader.finished:
            self.done = True
        if self.partitions is not None:
            return self._release_partitioned()
        return self._release()

    def _with_positions(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch with its rows' partition and offset as two hidden columns."""
        parts, offsets = self.reader.last_partitions, self.reader.last_offsets
        if parts is None or offsets is None or len(parts) != batch.height:
            raise RuntimeError(
                f"source {self.source.name}: a partitioned reader must give each polled row's partition "
                f"and offset (got {None if parts is None else len(parts)} for {batch.height} rows)"
            )
        return batch.with_columns(pl.Series(PARTITION, parts, dtype=pl.Int32), pl.Series(OFFSET, offsets, dtype=pl.Int64))

    def _drop_late_partitioned(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Lateness per partition: a row is late when older than its own partition's max
        event time so far minus lateness, or older than rows already released."""
        ts = epoch_us(batch[self.ts_col])
        parts = batch[PARTITION].to_numpy()
        late = ts < self.released_to
        now = time.perf_counter()
        for p in np.unique(parts):
            idx = np.flatnonzero(parts == p)
            pts = ts[idx]
            running = np.maximum.accumulate(pts)
            before = np.empty_like(pts)
            before[0] = self.part_max.get(int(p), NO_WM)
            before[1:] = np.maximum(running[:-1], before[0])
            late[idx] |= pts < before - self.lateness_us
            self.part_max[int(p)] = max(int(before[0]), int(running[-1]))
            self.part_last_row_at[int(p)] = now
        if not late.any():
            return batch
        return self._set_aside(batch, late)

    def _release_partitioned(self) -> pl.DataFrame | None:
        if self.buffer is None or self.buffer.height == 0:
            return None
        active = self._active_partitions()
        ts = epoch_us(self.buffer[self.ts_col])
        if self.done or not active:
            cut = self.buffer.height  # nothing can come before these any more (or idle: let them out)
        else:
            bound = self.watermark
            # With one partition, rows at the watermark can go: later ties come after them.
            cut = int(np.searchsorted(ts, bound, side="right" if len(self.partitions or ()) == 1 else "left"))
        if cut == 0:
            return None
        self.released_to = max(self.released_to, int(ts[cut - 1]))
        out = self.buffer.slice(0, cut).drop(PARTITION, OFFSET)
        self.buffer = self.buffer.slice(cut)
        return out

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
        return self._set_aside(batch, late)

    def _set_aside(self, batch: pl.DataFrame, late: np.ndarray) -> pl.DataFrame:
        mask = pl.Series(late)
        self.late.append(batch.filter(mask).drop(PARTITION, OFFSET, strict=False))
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

    # -- checkpoints (ops.protocol State) ------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Rows polled but not yet released, the watermark's inputs, counters and the
        reader's position (None for a reader without one: ``polled`` rows are skipped)."""
        state: dict[str, Any] = {
            "buffer": self.buffer,
            "pending": pl.concat(self.pending) if self.pending else None,
            "late": pl.concat(self.late) if self.late else None,
            "max_seen": self.max_seen,
            "late_count": self.late_count,
            "rows_in": self.rows_in,
            "polled": self.polled + self.skip_rows,  # rows still to skip were handed out before
            "done": self.done,
            "position": self.reader.position(),
        }
        self.snapshot_position = state["position"]
        if self.partitions is not None:
            state["part_max"] = {str(p): m for p, m in self.part_max.items()}
            state["released_to"] = self.released_to
        return state

    def commit_checkpointed(self) -> None:
        """Once the checkpoint of the last snapshot is written: the reader commits that
        snapshot's position (Kafka group offsets, for lag monitoring), not the rows it has
        read since, which only the next checkpoint will hold. The runtimes call it before
        they take the next snapshot."""
        self.reader.commit(self.snapshot_position)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue as the snapshotted stage would: the reader seeks to the saved position
        (or skips the rows handed out before), held rows are held again."""
        self.buffer = state["buffer"]
        self.pending = [state["pending"]] if state["pending"] is not None else []
        self.pending_since = self.last_row_at = time.perf_counter()
        self.late = [state["late"]] if state["late"] is not None else []
        self.max_seen, self.late_count, self.rows_in = state["max_seen"], state["late_count"], state["rows_in"]
        position = state["position"]
        if position is not None:
            self.reader.seek(position)
            self.polled = state["polled"]
        else:  # re-read from the start: the skipped rows are counted again as they pass
            self.skip_rows, self.polled = state["polled"], 0
        if self.partitions is not None and "part_max" in state:
            self.part_max.update({int(p): m for p, m in state["part_max"].items()})
            self.released_to = state["released_to"]

    def late_events(self) -> pl.DataFrame:
        if not self.late:
            return pl.DataFrame(schema=self.source.schema.polars_schema())
        return pl.concat(self.late)
