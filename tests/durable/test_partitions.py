"""Per-partition watermarks with a scripted partitioned reader (no broker): lateness per
partition, the minimum over partitions, ties by (partition, offset), offline == online."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import volga
from volga import Count, Entity, Sum, entity, field, pipeline, source
from volga.sources import Source, SourceReader
from volga.storage import MemoryOnlineStore, ParquetOfflineStore

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


@entity
class Click:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int


@entity
class Clicks:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    count: int
    last_n: int


class Scripted(Source):
    """Partitions as lists of (user, second, n), handed out in the order ``fetches`` says:
    (partition, how many of its next rows)."""

    def __init__(self, partitions: dict[int, list[tuple[str, int, int]]], fetches: list[tuple[int, int]]) -> None:
        self.partitions, self.fetches = partitions, fetches

    def open(self, schema: Any, *, name: str, mode: Any = None) -> SourceReader:
        return _ScriptedReader(self)


class _ScriptedReader(SourceReader):
    def __init__(self, source: Scripted) -> None:
        super().__init__()
        self.source, self.step, self.next = source, 0, dict.fromkeys(source.partitions, 0)

    @property
    def partition_ids(self) -> tuple[int, ...]:
        return tuple(self.source.partitions)

    def caught_up(self, partition: int) -> bool:
        return self.next[partition] >= len(self.source.partitions[partition])

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        if self.finished:
            return None
        p, count = self.source.fetches[self.step]
        self.step += 1
        start = self.next[p]
        rows = self.source.partitions[p][start : start + count]
        self.next[p] = start + len(rows)
        self.last_partitions = np.full(len(rows), p, dtype=np.int32)
        self.last_offsets = np.arange(start, start + len(rows), dtype=np.int64)
        return pl.DataFrame(
            {"user": [u for u, _, _ in rows], "at": [T0 + datetime.timedelta(seconds=s) for _, s, _ in rows], "n": [n for _, _, n in rows]},
            schema={"user": pl.String, "at": pl.Datetime("us", "UTC"), "n": pl.Int64},
        )

    @property
    def finished(self) -> bool:
        return self.step >= len(self.source.fetches)


def job(tmp_path: Path, scripted: Scripted, mode: str, lateness: str = "0s") -> tuple[pl.DataFrame, volga.Job]:
    @source(Click, lateness=lateness)
    def clicks() -> volga.Source:
        return scripted

    @pipeline(dependencies=[clicks], output=Clicks)
    def per_user(c: Entity) -> Entity:
        return c.group_by(keys=["user"]).aggregate([Count(window="1h", into="count"), Sum(on="n", into="last_n", window="0s")])

    client = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / mode))
    ran = client.materialize([per_user], mode=mode, write_offline=mode == "online", batch_size=1000)  # type: ignore[arg-type]
    return client.get_offline("per_user"), ran


# partition 0: user a; partition 1: user b and, at equal times, a too
PARTS = {
    0: [("a", s, s) for s in range(0, 100, 2)],
    1: [("b", s, 100 + s) for s in range(0, 100, 3)] + [("a", 200, 7), ("a", 200, 8)],
}
P0_TIES = [("a", 200, 1), ("a", 200, 2)]


@pytest.mark.parametrize("fetches", [[(0, 52), (1, 36)], [(1, 36), (0, 52)], [(0, 5), (1, 30), (0, 47), (1, 6)]], ids=["p0-first", "p1-first", "interleaved"])
def test_partitions_fetched_in_any_order_give_the_offline_rows_and_no_late_rows(tmp_path: Path, fetches: list[tuple[int, int]]) -> None:
    scripted = Scripted({0: PARTS[0] + P0_TIES, 1: PARTS[1]}, fetches)
    offline, _ = job(tmp_path / "off", scripted, "offline")
    online, ran = job(tmp_path / "on", scripted, "online")
    assert ran.late_events("clicks").height == 0
    assert online.equals(offline)
    # equal event times: partition 0's rows, then partition 1's, each in offset order
    at_200 = offline.filter(pl.col("at") == T0 + datetime.timedelta(seconds=200))["last_n"].to_list()
    assert at_200 == [1, 3, 10, 18]  # Sum over 0s: the running sum at t=200 (1, +2, +7, +8)


def test_lateness_is_judged_per_partition(tmp_path: Path) -> None:
    # partition 1 runs far ahead; partition 0's rows are older than partition 1's max but in
    # order within partition 0 (not late); its last row goes back 10 s (late with 5 s lateness)
    parts = {0: [("a", 10, 1), ("a", 20, 2), ("a", 30, 3), ("a", 19, 4)], 1: [("b", 500, 1), ("b", 600, 2)]}
    _, ran = job(tmp_path, Scripted(parts, [(1, 2), (0, 4)]), "online", lateness="5s")
    late = ran.late_events("clicks")
    assert late["n"].to_list() == [4] and late["user"].to_list() == ["a"]
