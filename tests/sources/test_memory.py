"""MemorySource: in-order slices, validation at open, and processing-time pacing."""

import datetime
import time

import polars as pl
import pytest

from volga.api.entity import entity, entity_schema, field
from volga.sources import MemorySource, SourceReader

UTC = datetime.timezone.utc
T0 = datetime.datetime(2024, 1, 1)


@entity
class Tick:
    sym: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    px: float


SCHEMA = entity_schema(Tick)


def ticks(n: int) -> list[Tick]:
    return [Tick(sym=f"s{i % 3}", at=T0 + datetime.timedelta(seconds=i), px=float(i)) for i in range(n)]


def drain(reader: SourceReader, max_rows: int) -> list[pl.DataFrame]:
    batches = []
    while (batch := reader.poll(max_rows)) is not None:
        batches.append(batch)
    return batches


def test_unpaced_rows_come_out_in_order_in_slices_of_at_most_max_rows() -> None:
    source = MemorySource(ticks(10))
    assert source.bounded
    reader = source.open(SCHEMA, name="ticks")
    batches = drain(reader, 4)
    assert [b.height for b in batches] == [4, 4, 2]
    assert pl.concat(batches)["px"].to_list() == [float(i) for i in range(10)]
    assert reader.finished and reader.rows_read == 10
    assert reader.poll(4) is None
    assert batches[0].schema == pl.Schema(SCHEMA.polars_schema())


def test_dicts_and_dataframes_are_accepted() -> None:
    rows = [{"sym": "a", "at": T0, "px": 1}]
    from_dicts = MemorySource(rows).open(SCHEMA, name="ticks").poll(10)
    from_frame = MemorySource(pl.DataFrame(rows)).open(SCHEMA, name="ticks").poll(10)
    assert from_dicts is not None and from_frame is not None
    assert from_dicts.rows() == from_frame.rows() == [("a", T0.replace(tzinfo=UTC), 1.0)]


def test_pandas_dataframes_are_accepted_like_polars_ones() -> None:
    import pandas as pd  # the `pandas` extra (installed with `test`)
    naive = pd.DataFrame({"sym": ["a", "b"], "at": pd.to_datetime([T0, T0 + datetime.timedelta(seconds=1)]), "px": [1.0, 2.5]})
    aware = naive.assign(at=naive["at"].dt.tz_localize("Europe/Paris"))
    from_pandas = MemorySource(naive).open(SCHEMA, name="ticks").poll(10)
    from_aware = MemorySource(aware).open(SCHEMA, name="ticks").poll(10)
    assert from_pandas is not None and from_aware is not None
    assert from_pandas.rows() == [("a", T0.replace(tzinfo=UTC), 1.0), ("b", T0.replace(tzinfo=UTC, second=1), 2.5)]
    assert from_aware["at"].to_list()[0] == T0.replace(tzinfo=UTC) - datetime.timedelta(hours=1)  # the instant is kept


def test_bad_rows_are_rejected_at_open_and_the_rest_flow() -> None:
    rows = [{"sym": "a", "at": T0, "px": 1.0}, {"sym": "b", "at": T0, "px": "abc"}, {"at": T0, "px": 2.0}]
    reader = MemorySource(rows).open(SCHEMA, name="ticks")
    assert [(r.source, r.reason) for r in reader.rejected] == [
        ("ticks", "field 'px': expected float, got 'abc'"),
        ("ticks", "field 'sym': missing"),
    ]
    assert reader.rejected[0].record is rows[1]
    batch = reader.poll(10)
    assert batch is not None and batch["sym"].to_list() == ["a"]


def test_a_dataframe_missing_a_column_is_an_error_at_open() -> None:
    with pytest.raises(ValueError, match=r"source 'ticks'.*no column\(s\) 'px'"):
        MemorySource(pl.DataFrame({"sym": ["a"], "at": [T0]})).open(SCHEMA, name="ticks")


@pytest.mark.parametrize("rate", [0, -1.0, float("inf"), float("nan")])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        MemorySource([], rate_per_s=rate)


def test_rows_must_be_a_list_or_dataframe() -> None:
    with pytest.raises(TypeError, match="MemorySource: rows must be"):
        MemorySource(iter(ticks(1)))  # type: ignore[arg-type]


def test_describe() -> None:
    assert MemorySource(ticks(3), rate_per_s=2000).describe() == "MemorySource(3 rows, 2000 rows/s)"


def test_paced_rows_arrive_at_the_rate_in_processing_time() -> None:
    rate, n = 2000.0, 1000  # the whole list takes 0.5 s
    reader = MemorySource(ticks(n), rate_per_s=rate).open(SCHEMA, name="ticks")
    started = time.perf_counter()
    first = reader.poll(10_000)
    assert first is not None and first.height == 1  # row 0 is due at the first poll, row 1 at +0.5 ms
    assert reader.entered_at is not None and reader.entered_at >= started
    start = reader.entered_at

    seen = first.height
    arrivals: list[tuple[float, int]] = []  # (seconds since start, rows seen by then)
    entered: list[float] = [start]
    deadline = started + 2.0
    while not reader.finished and time.perf_counter() < deadline:
        batch = reader.poll(10_000)
        if batch is None:
            time.sleep(0.002)
            continue
        assert reader.entered_at is not None
        # entered_at is when the oldest row of the batch was due: start + index / rate
        assert reader.entered_at == pytest.approx(start + seen / rate)
        entered.append(reader.entered_at)
        seen += batch.height
        now = time.perf_counter()
        arrivals.append((now - start, seen))
        assert seen <= (now - start) * rate + 1  # never ahead of the schedule
    assert reader.finished and seen == n
    assert entered == sorted(entered)
    early = [count for elapsed, count in arrivals if elapsed < 0.05]
    assert not early or max(early) < n / 2  # not everything up front
    assert arrivals[-1][0] < 1.5  # and all of it by about 0.5 s (loosely, for a busy machine)
    assert arrivals[-1][0] >= (n - 1) / rate


def test_paced_poll_respects_max_rows_and_returns_none_when_nothing_is_due() -> None:
    reader = MemorySource(ticks(100), rate_per_s=10.0).open(SCHEMA, name="ticks")
    assert reader.poll(5) is not None  # row 0
    assert reader.poll(5) is None  # row 1 is due 100 ms later
    assert not reader.finished

    fast = MemorySource(ticks(100), rate_per_s=1e6).open(SCHEMA, name="ticks")
    fast.poll(1)
    time.sleep(0.01)  # by now all 100 are due
    batch = fast.poll(30)
    assert batch is not None and batch.height == 30
