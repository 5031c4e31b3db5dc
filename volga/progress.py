"""Progress of a running job: rows read, rows/s and, when the sources know their size, an ETA.

On a terminal (or in a notebook) one line is redrawn in place several times a second;
elsewhere (logs, CI, systemd) a plain line is printed every ``interval_s`` seconds. Used
by ``volga materialize`` and ``Client.materialize(..., progress=True)``.

>>> line(rows_read=250_000, total=1_000_000, rows_per_s=50_000.0, seconds=5.0, rows_out=0, bar=False)
'250,000/1,000,000 rows read (25%), 50,000 rows/s, ETA 15s'
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any, TextIO

BAR_WIDTH = 24


@dataclasses.dataclass
class Snapshot:
    rows_read: int
    total: int | None  # None: some source does not know its size
    rows_out: int
    seconds: float


def snapshot(job: Any) -> Snapshot:
    """What ``job`` has read and written so far (safe to call from another thread)."""
    readers = list(getattr(job, "readers", []))
    if readers:
        rows_read = sum(int(r.rows_read) for r in readers)
        totals = [getattr(r, "total_rows", None) for r in readers]
        total = sum(t for t in totals if t is not None) if all(t is not None for t in totals) else None
    else:  # a runtime that does not expose readers: what the job's metrics say
        rows_read, total = sum(job.metrics.rows_in.values()), None
    return Snapshot(rows_read, total, sum(job.metrics.rows_out.values()), job.metrics.seconds)


def line(*, rows_read: int, total: int | None, rows_per_s: float, seconds: float, rows_out: int, bar: bool) -> str:
    """One progress line (``bar=True``: with a drawn bar, for terminals)."""
    parts = []
    if total:
        share = min(rows_read / total, 1.0)
        if bar:
            filled = int(share * BAR_WIDTH)
            parts.append("[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]")
        parts.append(f"{rows_read:,}/{total:,} rows read ({share:.0%})")
    else:
        parts.append(f"{rows_read:,} rows read")
    parts[-1] += f", {rows_per_s:,.0f} rows/s"
    if total and rows_per_s > 0 and rows_read < total:
        parts[-1] += f", ETA {_duration((total - rows_read) / rows_per_s)}"
    elif total and rows_read >= total and rows_out == 0:
        parts[-1] += ", computing"
    if rows_out:
        parts[-1] += f", {rows_out:,} rows written"
    return " ".join(parts)


class ProgressReporter:
    """Report ``job``'s progress to ``stream`` until it ends.

    ``tty=None`` decides from the stream (a terminal, or a Jupyter kernel: redraw in place).
    """

    def __init__(self, job: Any, *, stream: TextIO | None = None, interval_s: float | None = None,
                 tty: bool | None = None, label: str = "") -> None:
        self.job = job
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _interactive(self.stream) if tty is None else tty
        self.interval_s = interval_s if interval_s is not None else (0.25 if self.tty else 10.0)
        self.label = label or f"{job.mode} {'+'.join(job.pipelines)}"
        self._last = (0.0, 0)  # (seconds, rows_read) at the previous report: rows/s over the last interval
        self._thread: threading.Thread | None = None

    def report(self, final: bool = False) -> None:
        snap = snapshot(self.job)
        then, rows_then = self._last
        elapsed = snap.seconds - then
        rate = (snap.rows_read - rows_then) / elapsed if elapsed > 0 and not final else (
            snap.rows_read / snap.seconds if snap.seconds > 0 else 0.0)
        self._last = (snap.seconds, snap.rows_read)
        if final:
            text = (f"volga: {self.label}: done, {snap.rows_read:,} rows read, {snap.rows_out:,} rows written "
                    f"in {_duration(snap.seconds)} ({rate:,.0f} rows/s)")
        else:
            text = f"volga: {self.label}: " + line(rows_read=snap.rows_read, total=snap.total, rows_per_s=rate,
                                                   seconds=snap.seconds, rows_out=snap.rows_out, bar=self.tty)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def follow(self) -> None:
        """Report every ``interval_s`` until the job ends, then a final line."""
        while True:
            try:
                self.job.wait(self.interval_s)
                break
            except TimeoutError:
                self.report()
            except Exception:  # the job failed: whoever waits on it gets the error
                break
        if self.job.error is None:
            self.report(final=True)
        elif self.tty:
            self.stream.write("\n")

    def start(self) -> ProgressReporter:
        """Follow from a background thread (for ``block=False`` jobs)."""
        self._thread = threading.Thread(target=self.follow, name="volga-progress", daemon=True)
        self._thread.start()
        return self


def _interactive(stream: TextIO) -> bool:
    if "ipykernel" in sys.modules:  # notebooks render a carriage return as a redraw
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    """``"4s"``, ``"2m05s"``, ``"1h02m"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
