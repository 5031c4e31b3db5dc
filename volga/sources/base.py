"""The contract every connector implements.

A ``Source`` is a small frozen description returned by a ``@source`` function; the
engine calls ``open`` to get a ``SourceReader`` that it polls for micro-batches.
Readers hand out polars DataFrames whose columns are exactly the entity's fields with
the entity's dtypes (timestamps ``Datetime("us", "UTC")``), in arrival order. Rows that do
not fit the entity are never fatal: they are kept in ``reader.rejected`` with a reason.
"""

from __future__ import annotations

import abc
from typing import Literal

import numpy as np
import polars as pl

from volga.api.entity import Schema
from volga.errors import Rejected

__all__ = ["Rejected", "Source", "SourceMode", "SourceReader"]

# How a job reads a source: "offline" reads what exists now and ends (a topic up to its
# high-water marks, a query's current result); "online" follows it until the job stops.
SourceMode = Literal["offline", "online"]


class SourceReader(abc.ABC):
    """A live, stateful reader. Not thread-safe: one engine thread polls it."""

    def __init__(self) -> None:
        self.rejected: list[Rejected] = []
        self.rows_read = 0
        # perf_counter() time at which the oldest row of the last poll entered the
        # source (for paced/external sources: when it was due or arrived). Used for
        # event -> store latency figures; None when unknown.
        self.entered_at: float | None = None
        # Arrival position of this reader's first row within its whole source (non-zero
        # only for a reader of one partition, see ``Source.open_partition``).
        self.first_position = 0
        # For a partitioned reader (``partition_ids`` not None): the partition and offset
        # of each row of the last ``poll``, aligned with its rows. The engine keeps a
        # watermark per partition and breaks event-time ties by (partition, offset).
        self.last_partitions: np.ndarray | None = None
        self.last_offsets: np.ndarray | None = None

        # Rows this reader will hand out in all, when the source knows (a file's row count,
        # an in-memory frame): progress bars show a percentage and an ETA from it.
        self.total_rows: int | None = None

    @property
    def partition_ids(self) -> tuple[int, ...] | None:
        """The partitions this reader reads (Kafka partitions), or None if it is not partitioned."""
        return None

    def caught_up(self, partition: int) -> bool:
        """True when ``partition`` has handed out everything available right now.

        Only a caught-up partition can be idle (``idle_timeout``): one with rows waiting
        to be fetched keeps holding the source's watermark back. Default: always.
        """
        return True

    def partition_finished(self, partition: int) -> bool:
        """True once a bounded read of ``partition`` has handed out its last row."""
        return False

    def position(self) -> dict[str, int] | None:
        """Where the next row comes from, per partition (``{"0": offset}``), for checkpoints.

        None: the reader has no position of its own; a restored job then re-reads the
        source from its start and skips the rows it had already handed out (so only
        deterministic sources can be restored that way).
        """
        return None

    def seek(self, position: dict[str, int]) -> None:
        """Continue from ``position`` (as returned by :meth:`position`), before any poll."""
        raise NotImplementedError(f"{type(self).__name__} cannot seek")

    def rewind(self) -> None:  # noqa: B027 - optional hook
        """Read from the source's first row, wherever a consumer group left off (a job
        rebuilding its state from the source's history). Default: nothing to do, for
        readers that always start at the beginning."""

    @abc.abstractmethod
    def poll(self, max_rows: int) -> pl.DataFrame | None:
        """Up to ``max_rows`` new valid rows, or None when nothing is ready right now."""

    @property
    @abc.abstractmethod
    def finished(self) -> bool:
        """True once a bounded source has handed out every row."""

    def commit(self, position: dict[str, int] | None = None) -> None:  # noqa: B027 - optional hook
        """Acknowledge every row handed out by ``poll`` so far: it is in the stores.

        Called by the runtime after the sink has written what those rows produced. Sources
        with server-side positions (Kafka consumer-group offsets, Redis Streams group acks)
        persist them here, so a restarted job resumes after the last written row
        (at-least-once). The default does nothing.

        ``position``: a checkpoint's (as :meth:`position` returned it when the checkpoint
        was taken), once that checkpoint is written. A reader with positions commits those
        offsets, not the rows it handed out since, which no checkpoint holds yet: a job
        restarted from the checkpoint starts a partition it had not read yet from the
        committed offset.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections/files."""

    def backlog(self) -> int | None:
        """Records the source holds that this reader has not handed out yet (Kafka: offsets
        behind the high-water marks), or None when the source cannot say. Called from the
        metrics thread: implementations only read what the client already knows."""
        return None

    def drain_rejected(self) -> list[Rejected]:
        out, self.rejected = self.rejected, []
        return out


class Source(abc.ABC):
    """Where an entity's events come from. Returned by ``@source`` functions."""

    @property
    def bounded(self) -> bool:
        """A bounded source ends; an unbounded one is followed until the job stops."""
        return True

    @abc.abstractmethod
    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        """Start reading rows of ``schema``; ``name`` (the source function) is used in messages.

        ``mode`` is the job's mode when the engine passes it: sources that can be read both
        ways (Kafka, Redis Streams, PostgreSQL) read bounded in ``"offline"`` mode and follow
        in ``"online"`` mode, unless they were built with an explicit ``follow=``. Sources
        with one way of reading ignore it.
        """

    def partitions(self) -> int:
        """How many disjoint parts a bounded read of this source can be split into (1: none).

        A source that returns more implements :meth:`open_partition`. The parallel runtime
        (Ray) uses it for offline jobs only; online jobs read through one ``open``.
        """
        return 1

    def open_partition(
        self, schema: Schema, index: int, count: int, *, name: str, mode: SourceMode | None = None
    ) -> SourceReader:
        """A reader of part ``index`` of ``count`` (``count <= partitions()``).

        The parts are disjoint, together hold every row ``open`` reads, and are contiguous
        in the source's arrival order: part ``i`` covers an arrival-position range that
        starts at the reader's ``first_position`` and ends before part ``i + 1``'s. Within
        a part, rows come in the source's own order. So numbering each part's rows from its
        ``first_position`` orders them all exactly as one reader would.
        """
        if count == 1:
            return self.open(schema, name=name, mode=mode)
        raise NotImplementedError(f"{self.describe()} cannot be read in {count} partitions")

    def describe(self) -> str:
        return type(self).__name__
