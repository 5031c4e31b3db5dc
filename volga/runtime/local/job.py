"""A running (or finished) materialization: wait for it, stop it, read what it set aside."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from volga.errors import JobFailed, Rejected
from volga.runtime.local.executors import Metrics
from volga.runtime.local.stage import SourceStage


class Job:
    def __init__(
        self,
        mode: Literal["offline", "online"],
        pipelines: list[str],
        work: Callable[[threading.Event, Metrics], None],
        stages: dict[str, SourceStage],
        collect_rejected: Callable[[], list[Rejected]],
        cleanup: Callable[[], None],
    ) -> None:
        self.mode = mode
        self.pipelines = pipelines
        self.metrics = Metrics()
        self.readers: list[Any] = []  # the source readers, when the runtime exposes them (progress bars)
        self._stages = stages
        self._collect_rejected = collect_rejected
        self._rejected: list[Rejected] = []
        self._cleanup = cleanup
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, name=f"volga-{mode}-{'+'.join(pipelines)}", daemon=True)

    def start(self, block: bool) -> Job:
        if block:
            self._run()
            self._raise_if_failed()
        else:
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._work(self._stop, self.metrics)
        except BaseException as e:  # surfaced by wait()/stop(); the thread must not die silently
            self._error = e
        finally:
            self.metrics.finished_at = self.metrics.finished_at or time.perf_counter()
            try:
                self._rejected.extend(self._collect_rejected())
            finally:
                self._cleanup()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise JobFailed(f"{self.mode} job {self.pipelines} failed: {type(self._error).__name__}: {self._error}") from self._error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> Job:
        """Block until every bounded source is exhausted and its rows are in the stores."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"job {self.pipelines} still running after {timeout}s")
        self._raise_if_failed()
        return self

    def stop(self, timeout: float | None = 30.0) -> Job:
        """Stop polling sources; rows already polled are finished and written."""
        self._stop.set()
        return self.wait(timeout)

    @property
    def rejected(self) -> list[Rejected]:
        """Records set aside (malformed input, row functions that raised), with reasons."""
        if self.running:
            self._rejected.extend(self._collect_rejected())
        return list(self._rejected)

    def late_events(self, source: str) -> pl.DataFrame:
        """Rows of ``source`` that arrived later than its lateness allowed (streaming)."""
        if source not in self._stages:
            if self.mode == "offline":
                raise KeyError(f"offline jobs have no late events (every row is read before processing); sources: {sorted(self._stages)}")
            raise KeyError(f"job has no source '{source}'; sources: {sorted(self._stages)}")
        return self._stages[source].late_events()

    def __repr__(self) -> str:
        state = "running" if self.running else ("failed" if self._error else "done")
        return f"<Job {self.mode} {self.pipelines} {state} rows_out={self.metrics.rows_out}>"
