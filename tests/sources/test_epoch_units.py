"""Epoch timestamps: ``field(timestamp=True, unit="s"|"ms"|"us")`` lets every source read
epoch numbers (JSON/Kafka messages, memory rows and frames, JSON-lines and CSV files);
without a unit a number is a rejected row whose reason suggests ``unit=``."""

import datetime
import json
from pathlib import Path

import polars as pl
import pytest

import volga
from volga import Count, Entity, entity, field, pipeline, source
from volga.api.entity import entity_schema
from volga.sources import CsvSource, JsonLinesSource, MemorySource
from volga.sources.validation import conform

UTC = datetime.timezone.utc
MOMENT = datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)  # epoch 1700000000.123 s


@entity
class TapMs:
    device: str = field(key=True)
    at: datetime.datetime = field(timestamp=True, unit="ms")


@entity
class TapS:
    device: str = field(key=True)
    at: datetime.datetime = field(timestamp=True, unit="s")


@entity
class TapUs:
    device: str = field(key=True)
    at: datetime.datetime = field(timestamp=True, unit="us")


@entity
class TapPlain:
    device: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)


@pytest.mark.parametrize(("cls", "value"), [(TapMs, 1_700_000_000_123), (TapS, 1_700_000_000.123), (TapUs, 1_700_000_000_123_000)])
def test_each_unit_reads_records_and_frames(cls, value):
    schema = entity_schema(cls)
    rows, bad = conform([{"device": "d", "at": value}], schema, source="taps")
    assert bad == [] and rows["at"].to_list() == [MOMENT]
    frame, bad = conform(pl.DataFrame({"device": ["d"], "at": [value]}), schema, source="taps")
    assert bad == [] and frame["at"].to_list() == [MOMENT]


def test_iso_strings_still_work_and_bad_values_are_rejected_with_unit():
    rows, bad = conform(
        [{"device": "a", "at": "2024-01-01T00:00:00Z"}, {"device": "b", "at": 10**30}, {"device": "c", "at": True}],
        entity_schema(TapMs), source="taps",
    )
    assert rows["device"].to_list() == ["a"]
    assert [r.reason for r in bad] == [
        "field 'at': expected datetime, got 1000000000000000000000000000000 (out of range as epoch ms)",
        "field 'at': expected datetime, got True",
    ]


def test_without_a_unit_a_number_is_rejected_suggesting_unit():
    for data in ([{"device": "d", "at": 1_700_000_000_123}], pl.DataFrame({"device": ["d"], "at": [1_700_000_000_123]})):
        rows, (bad,) = conform(data, entity_schema(TapPlain), source="taps")
        assert rows.height == 0
        assert "field 'at': expected datetime, got 1700000000123" in bad.reason
        assert "declare its unit: field(timestamp=True, unit='ms')" in bad.reason


def test_unit_is_checked_at_declaration():
    with pytest.raises(ValueError, match=r"entity Bad: field 'at': unit='minutes' must be one of 's', 'ms', 'us'"):
        @entity
        class Bad:
            k: str = field(key=True)
            at: datetime.datetime = field(timestamp=True, unit="minutes")
    with pytest.raises(ValueError, match=r"entity Bad2: field 'n': unit='ms' applies to datetime fields only"):
        @entity
        class Bad2:
            k: str = field(key=True)
            at: datetime.datetime = field(timestamp=True)
            n: int = field(unit="ms")


def test_json_messages_fast_path_reads_epoch_ms():
    import msgspec  # noqa: F401 - installed with the test extra; the code under test needs it

    from volga.sources.messages import JsonDecoder

    messages = [json.dumps({"device": f"d{i}", "at": 1_700_000_000_123 + i}).encode() for i in range(3)]
    messages.append(json.dumps({"device": "iso", "at": "2024-01-01T00:00:00Z"}).encode())
    df, bad = JsonDecoder(entity_schema(TapMs)).decode(messages)
    assert bad == []
    assert df["at"].to_list()[:3] == [MOMENT + datetime.timedelta(milliseconds=i) for i in range(3)]
    assert df["at"][3] == datetime.datetime(2024, 1, 1, tzinfo=UTC)
    plain_df, plain_bad = JsonDecoder(entity_schema(TapPlain)).decode(messages[:1])
    assert plain_df.height == 0 and "unit='ms'" in plain_bad[0][1]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_files_read_epoch_ms(tmp_path: Path, fmt: str):
    path = tmp_path / f"taps.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"device": "d", "at": 1_700_000_000_123 + i}) + "\n" for i in range(2)))
        src = JsonLinesSource(path)
    else:
        path.write_text("device,at\nd,1700000000123\nd,1700000000124\n")
        src = CsvSource(path)

    @source(TapMs)
    def taps() -> volga.Source:
        return src

    @entity
    class TapCount:
        device: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        n: int

    @pipeline(dependencies=[taps], output=TapCount)
    def tap_count(t: Entity) -> Entity:
        return t.group_by("device").aggregate([Count(window="1h", into="n")])

    client = volga.Client()
    job = client.materialize([tap_count], mode="offline", write_offline=True)
    out = client.get_offline("tap_count")
    assert job.rejected == []
    assert out["at"].to_list() == [MOMENT, MOMENT + datetime.timedelta(milliseconds=1)] and out["n"].to_list() == [1, 2]


def test_memory_source_with_entity_instances():
    @source(TapMs)
    def taps() -> volga.Source:
        return MemorySource([TapMs(device="d", at=1_700_000_000_123)])  # type: ignore[arg-type]

    @entity
    class Latest:
        device: str = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        n: int

    @pipeline(dependencies=[taps], output=Latest)
    def latest_taps(t: Entity) -> Entity:
        return t.group_by("device").aggregate([Count(into="n")])

    client = volga.Client()
    client.materialize([latest_taps], mode="online", block=True)
    (row,) = client.get_latest("latest_taps", keys=[{"device": "d"}])
    assert row.at == MOMENT and row.n == 1
