"""The late-row warning is a summary: at most one line every few seconds (not one per
micro-batch), with the total so far and the count per source; the rest is logged when
the job ends. A fake clock drives it: no sleeps."""

import datetime
import logging

import polars as pl

import volga
from volga import Count, Entity, entity, field, pipeline, source
from volga.runtime.local.stage import LateRowReport, SourceStage
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@entity
class Ev:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)


@source(Ev)
def clicks() -> volga.Source:
    return MemorySource([])


@source(Ev)
def views() -> volga.Source:
    return MemorySource([])


class ListReader:
    """Hands out one prepared batch per poll."""

    def __init__(self, batches: list[pl.DataFrame]) -> None:
        self.batches = batches
        self.finished = False

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        batch = self.batches.pop(0) if self.batches else None
        self.finished = not self.batches
        return batch


def batch(*minutes: int) -> pl.DataFrame:
    return pl.DataFrame({"k": ["a"] * len(minutes), "ts": [T0 + datetime.timedelta(minutes=m) for m in minutes]})


def test_one_line_per_interval_with_totals_and_per_source_counts(caplog):
    clock = FakeClock()
    report = LateRowReport(every_s=5.0, clock=clock)
    # every batch after the first has one late row (minute 0 after minute 10)
    stage_c = SourceStage(clicks, ListReader([batch(10)] + [batch(0, 20 + i) for i in range(50)]), report)
    stage_v = SourceStage(views, ListReader([batch(10)] + [batch(0, 0, 20 + i) for i in range(50)]), report)
    with caplog.at_level(logging.WARNING, logger="volga.stream"):
        for _ in range(51):
            stage_c.poll(100)
            stage_v.poll(100)
            clock.now += 0.25  # 50 micro-batches over 12.5 s
        assert stage_c.late_count == 50 and stage_v.late_count == 100
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3  # at 100.25 s, 105.25 s, 110.25 s: not 100 lines
        assert lines[0].startswith("1 late row(s) set aside since the last report, 1 in total")
        assert "clicks: 1 (lateness 0 us)" in lines[0]
        assert "60 late row(s) set aside since the last report, 61 in total" in lines[1]
        assert "clicks: 21 (lateness 0 us), views: 40 (lateness 0 us)" in lines[1]
        assert report.flush() is True
        last = caplog.records[-1].getMessage()
        assert "150 in total" in last and "clicks: 50 (lateness 0 us), views: 100 (lateness 0 us)" in last
        assert report.flush() is False  # nothing new


def test_a_streaming_job_logs_a_summary_not_a_line_per_batch(caplog):
    rows = [{"k": "a", "ts": T0 + datetime.timedelta(minutes=10)}]
    for i in range(40):  # after the first row, every other row is late (lateness 0)
        rows += [{"k": "a", "ts": T0}, {"k": "a", "ts": T0 + datetime.timedelta(minutes=11 + i)}]

    @source(Ev)
    def noisy() -> volga.Source:
        return MemorySource(rows)

    @entity
    class N:
        k: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        n: int

    @pipeline(dependencies=[noisy], output=N)
    def counted(e: Entity) -> Entity:
        return e.group_by("k").aggregate([Count(into="n")])

    with caplog.at_level(logging.WARNING, logger="volga.stream"):
        job = volga.Client().materialize([counted], mode="online", batch_size=2)
    assert job.late_events("noisy").height == 40
    lines = [r.getMessage() for r in caplog.records if "late row" in r.getMessage()]
    # 40 micro-batches with a late row; the run takes well under 5 s: the first line, then the end summary
    assert 1 <= len(lines) <= 3, lines
    assert "40 in total" in lines[-1] and "noisy: 40" in lines[-1]
