"""Progress reporting, catalog entries and tags/owner on the decorators (in process)."""

from __future__ import annotations

import datetime
import io

import polars as pl
import pytest

import volga
from volga import Count, Entity, entity, field, on_demand, pipeline, source
from volga.catalog import catalog, find
from volga.progress import ProgressReporter
from volga.sources import MemorySource


@entity
class Tick:
    key: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    value: float


@entity
class TickCount:
    key: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int


def ticks(rows: int) -> pl.DataFrame:
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    return pl.DataFrame({"key": [f"k{i % 3}" for i in range(rows)],
                         "at": [start + datetime.timedelta(seconds=i) for i in range(rows)],
                         "value": [float(i) for i in range(rows)]})


def test_progress_lines_count_rows_with_percent_and_eta(tmp_path):
    @source(Tick)
    def paced_ticks() -> volga.Source:
        return MemorySource(ticks(3000), rate_per_s=6000)  # half a second of rows

    @pipeline(dependencies=[paced_ticks], output=TickCount)
    def tick_count(t: Entity) -> Entity:
        return t.group_by(keys=["key"]).aggregate([Count(window="1h", into="n")])

    client = volga.Client(data_dir=tmp_path)
    job = client.materialize([tick_count], mode="offline", block=False)
    out = io.StringIO()
    ProgressReporter(job, stream=out, interval_s=0.05, tty=False).follow()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("volga: offline tick_count: done, 3,000 rows read, 3,000 rows written in ")
    partial = [line for line in lines[:-1] if "/3,000 rows read (" in line]
    assert partial, lines  # the size is known (an in-memory frame): shares of it, then done
    read = [int(line.rsplit(": ", 1)[1].split("/")[0].replace(",", "")) for line in partial]
    assert read == sorted(read) and all(0 <= r <= 3000 for r in read)
    assert any("ETA" in line for line in partial if "(100%)" not in line)


def test_progress_on_a_terminal_redraws_one_line_with_a_bar(tmp_path):
    @source(Tick)
    def some_ticks() -> volga.Source:
        return MemorySource(ticks(100))

    @pipeline(dependencies=[some_ticks], output=TickCount)
    def tick_count2(t: Entity) -> Entity:
        return t.group_by(keys=["key"]).aggregate([Count(window="1h", into="n")])

    client = volga.Client(data_dir=tmp_path)
    job = client.materialize([tick_count2], mode="offline", block=False)
    out = io.StringIO()
    reporter = ProgressReporter(job, stream=out, interval_s=0.01, tty=True)
    reporter.report()  # whatever the job has done yet
    reporter.follow()
    text = out.getvalue()
    assert text.startswith("\r\x1b[2Kvolga: offline tick_count2: [")  # a bar, redrawn in place
    assert text.endswith("done, 100 rows read, 100 rows written in " + text.rsplit("written in ", 1)[1])
    assert text.count("\n") == 1  # only the final line ends the line


def test_materialize_progress_true_reports_on_stderr(tmp_path, capsys):
    @source(Tick)
    def more_ticks() -> volga.Source:
        return MemorySource(ticks(500))

    @pipeline(dependencies=[more_ticks], output=TickCount)
    def tick_count3(t: Entity) -> Entity:
        return t.group_by(keys=["key"]).aggregate([Count(window="1h", into="n")])

    client = volga.Client(data_dir=tmp_path)
    job = client.materialize([tick_count3], mode="offline", progress=True)
    assert not job.running and job.metrics.rows_out["tick_count3"] == 500
    assert "volga: offline tick_count3: done, 500 rows read, 500 rows written" in capsys.readouterr().err
    assert client.get_offline("tick_count3").height == 500


def test_tags_owner_and_docstrings_reach_the_catalog(tmp_path):
    @source(Tick, tags=["iot"], owner="sensors")
    def tagged_ticks() -> volga.Source:
        """Sensor ticks.

        One row per reading."""
        return MemorySource(ticks(10))

    @pipeline(dependencies=[tagged_ticks], output=TickCount, tags=["counts", "hourly"], owner="analytics")
    def tick_count4(t: Entity) -> Entity:
        return t.group_by(keys=["key"]).aggregate([Count(window="1h", into="n")])

    @on_demand(dependencies=[tick_count4], owner="serving")
    def tick_count_now(c: TickCount) -> TickCount:
        return c

    client = volga.Client(data_dir=tmp_path)
    client.register(tick_count_now)
    by_name = {e.name: e for e in catalog(client)}
    assert [e.kind for e in by_name.values()] == ["source", "pipeline", "on_demand"]
    src, pipe, od = by_name["tagged_ticks"], by_name["tick_count4"], by_name["tick_count_now"]
    assert (src.tags, src.owner, src.description) == (["iot"], "sensors", "Sensor ticks.\n\nOne row per reading.")
    assert (pipe.tags, pipe.owner, pipe.upstream, pipe.downstream) == (["counts", "hourly"], "analytics", ["tagged_ticks"], ["tick_count_now"])
    assert pipe.windows == ["n = Count(1h) by key"]
    assert (od.tags, od.owner, od.upstream, od.details) == ([], "serving", ["tick_count4"], ["reads tick_count4 (latest)"])
    assert [(f.name, f.type, f.key, f.timestamp) for f in pipe.fields] == [
        ("key", "str", True, False), ("at", "datetime", False, True), ("n", "int", False, False)]
    assert find(client, "tick_count4").matches("ANALYTICS hourly")
    assert not find(client, "tick_count4").matches("sensors")
    with pytest.raises(KeyError, match="no source, pipeline or on-demand feature named 'nope'"):
        find(client, "nope")


@pytest.mark.parametrize("kwargs, message", [
    ({"tags": "pii"}, "@source: tags must be a list of non-empty strings, got 'pii'"),
    ({"tags": ["ok", ""]}, "@source: tags must be a list of non-empty strings"),
    ({"owner": 7}, "@source: owner must be a string, got 7"),
])
def test_bad_tags_or_owner_are_refused_at_decoration(kwargs, message):
    with pytest.raises(TypeError, match=message):
        source(Tick, **kwargs)
