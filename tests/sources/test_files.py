"""Parquet, CSV and JSON-lines sources: chunked reads in file order, rejects with positions."""

import datetime
import json
import time
from pathlib import Path
from typing import Optional

import polars as pl
import pytest

from volga.api.entity import entity, entity_schema, field
from volga.sources import CsvSource, JsonLinesSource, ParquetSource, Source, SourceReader

UTC = datetime.timezone.utc
T0 = datetime.datetime(2024, 1, 1)


@entity
class Purchase:
    buyer_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    product_price: float
    quantity: int
    coupon: Optional[str]


SCHEMA = entity_schema(Purchase)


def purchases(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "buyer_id": [f"b{i % 7}" for i in range(n)],
            "at": [T0 + datetime.timedelta(seconds=i) for i in range(n)],
            "product_price": [i * 0.5 for i in range(n)],
            "quantity": list(range(n)),
            "coupon": [None if i % 2 else "C" for i in range(n)],
        }
    )


def read_all(source: Source, max_rows: int = 1000) -> tuple[pl.DataFrame, SourceReader]:
    reader = source.open(SCHEMA, name="purchases")
    batches = []
    while not reader.finished:
        batch = reader.poll(max_rows)
        if batch is not None:
            assert batch.height <= max_rows
            batches.append(batch)
    reader.close()
    empty = pl.DataFrame(schema=SCHEMA.polars_schema())
    return pl.concat([empty, *batches]), reader


def expected(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col("at").dt.replace_time_zone("UTC"))


# --------------------------------------------------------------------------- Parquet


def test_parquet_is_read_in_chunks_in_file_order(tmp_path: Path) -> None:
    data = purchases(10_000)
    data.with_columns(pl.col("at").cast(pl.Datetime("ns"))).write_parquet(tmp_path / "p.parquet", row_group_size=3000)
    source = ParquetSource(tmp_path / "p.parquet", batch_rows=1000)
    reader = source.open(SCHEMA, name="purchases")
    first = reader.poll(777)
    assert first is not None and first.height == 777
    assert reader._rows_seen < data.height  # type: ignore[attr-defined]  # lazily, not all at once
    rest, _ = read_all(source, max_rows=2500)
    assert rest.schema == pl.Schema(SCHEMA.polars_schema())
    assert rest.equals(expected(data))
    assert pl.concat([first, reader.poll(10_000 - 777)]).equals(expected(data))  # type: ignore[list-item]
    assert reader.finished and reader.rows_read == 10_000


def test_parquet_bad_rows_are_rejected_with_their_row_number(tmp_path: Path) -> None:
    data = purchases(2500).with_columns(
        pl.when(pl.int_range(pl.len()).is_in([5, 2100])).then(None).otherwise(pl.col("buyer_id")).alias("buyer_id")
    )
    data.write_parquet(tmp_path / "p.parquet")
    out, reader = read_all(ParquetSource(str(tmp_path / "p.parquet"), batch_rows=1000))
    assert out.height == 2498
    assert [r.reason for r in reader.rejected] == [
        "row 6: field 'buyer_id': null in a non-Optional field",
        "row 2101: field 'buyer_id': null in a non-Optional field",
    ]
    assert reader.rejected[1].record["quantity"] == 2100


def test_parquet_missing_a_column_is_an_error_naming_file_and_field(tmp_path: Path) -> None:
    purchases(3).drop("quantity", "coupon").write_parquet(tmp_path / "p.parquet")
    message = r"source 'purchases': Parquet file .*p\.parquet' has no column\(s\) 'quantity', 'coupon'"
    with pytest.raises(ValueError, match=message):
        ParquetSource(tmp_path / "p.parquet").open(SCHEMA, name="purchases")


@pytest.mark.parametrize("make", [ParquetSource, CsvSource, JsonLinesSource])
def test_a_missing_file_names_the_source_and_path(tmp_path: Path, make: type[Source]) -> None:
    path = tmp_path / "nope.data"
    with pytest.raises(FileNotFoundError, match=r"source 'purchases': .*nope\.data' does not exist"):
        make(path).open(SCHEMA, name="purchases")  # type: ignore[call-arg]


# --------------------------------------------------------------------------- CSV


CSV = """buyer_id,extra,at,product_price,quantity,coupon
b1,x,2024-01-01T00:00:00,1.5,1,C
b2,x,2024-01-01T00:00:01Z,2,2,
b3,x,2024-01-01T00:00:02,abc,3,
b4,x,2024-01-01T00:00:03,4.0,4
b5,x,2024-01-01T02:00:04+02:00,5.0,5.5,
,x,2024-01-01T00:00:05,6.0,6,D
b7,x,2024-01-01T00:00:06, 7 , 7 ,"q,uoted"
"""


def test_csv_text_is_parsed_and_bad_rows_rejected_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text(CSV)
    out, reader = read_all(CsvSource(tmp_path / "p.csv", block_bytes=64))
    assert out.schema == pl.Schema(SCHEMA.polars_schema())
    at = [T0.replace(tzinfo=UTC) + datetime.timedelta(seconds=s) for s in (0, 1, 6)]
    assert out.rows() == [
        ("b1", at[0], 1.5, 1, "C"),
        ("b2", at[1], 2.0, 2, None),
        ("b7", at[2], 7.0, 7, "q,uoted"),
    ]
    assert [r.reason for r in reader.rejected] == [
        "line 4: field 'product_price': expected float, got 'abc'",
        "line 5: expected 6 cells, got 5",
        "line 6: field 'quantity': expected int, got '5.5'",
        "line 7: field 'buyer_id': null in a non-Optional field",
    ]
    assert reader.rejected[1].record == "b4,x,2024-01-01T00:00:03,4.0,4"


def test_csv_missing_a_column_is_an_error_naming_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("buyer_id,at,product_price,coupon\nb1,2024-01-01,1.0,\n")
    with pytest.raises(ValueError, match=r"CSV file .*p\.csv' has no column\(s\) 'quantity'"):
        CsvSource(tmp_path / "p.csv").open(SCHEMA, name="purchases")


def test_csv_round_trip_of_a_larger_file_keeps_order(tmp_path: Path) -> None:
    data = purchases(5000)
    data.write_csv(tmp_path / "p.csv")
    out, reader = read_all(CsvSource(str(tmp_path / "p.csv"), block_bytes=16_384), max_rows=333)
    assert reader.rejected == []
    assert out.equals(expected(data))


# --------------------------------------------------------------------------- JSON lines


def line(**overrides: object) -> str:
    row: dict[str, object] = {
        "buyer_id": "b1",
        "at": "2024-01-01T00:00:00",
        "product_price": 1.5,
        "quantity": 1,
        "coupon": None,
    }
    row.update(overrides)
    return json.dumps({k: v for k, v in row.items() if v is not ...}) + "\n"


def test_json_lines_rejects_bad_lines_with_the_raw_line(tmp_path: Path) -> None:
    text = (
        line(buyer_id="a")
        + "{not json\n"
        + "\n"
        + line(buyer_id=..., product_price=2)
        + line(buyer_id="d", quantity="12")
        + "[1, 2]\n"
        + line(buyer_id="f", coupon=...)
        + line(buyer_id="g", at="2024-01-01T02:00:00+02:00").rstrip("\n")  # no final newline: still read
    )
    (tmp_path / "p.jsonl").write_text(text)
    out, reader = read_all(JsonLinesSource(tmp_path / "p.jsonl"))
    assert out["buyer_id"].to_list() == ["a", "f", "g"]
    assert out["at"].to_list() == [T0.replace(tzinfo=UTC)] * 3
    assert [r.reason for r in reader.rejected] == [
        "line 2: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        "line 4: field 'buyer_id': missing",
        "line 5: field 'quantity': expected int, got '12'",
        "line 6: expected a JSON object, got list",
    ]
    assert [r.record for r in reader.rejected][:2] == ["{not json", line(buyer_id=..., product_price=2).rstrip("\n")]
    assert all(r.source == "purchases" for r in reader.rejected)


def test_json_lines_reads_in_blocks_in_order(tmp_path: Path) -> None:
    lines = [line(buyer_id=f"b{i}", quantity=i) for i in range(3000)]
    (tmp_path / "p.jsonl").write_text("".join(lines))
    out, reader = read_all(JsonLinesSource(tmp_path / "p.jsonl", block_bytes=1000), max_rows=128)
    assert out["quantity"].to_list() == list(range(3000))
    assert reader.rejected == []


def test_json_lines_follow_picks_up_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    path.write_text(line(buyer_id="a") + line(buyer_id="b"))
    source = JsonLinesSource(path, follow=True, poll_interval="10ms")
    assert not source.bounded
    reader = source.open(SCHEMA, name="purchases")

    def poll_until(rows: int, timeout_s: float = 2.0) -> list[str]:
        got: list[str] = []
        deadline = time.perf_counter() + timeout_s
        while len(got) < rows and time.perf_counter() < deadline:
            batch = reader.poll(100)
            if batch is None:
                time.sleep(0.005)
            else:
                got += batch["buyer_id"].to_list()
        return got

    assert poll_until(2) == ["a", "b"]
    assert reader.poll(100) is None and not reader.finished

    with path.open("a") as f:
        f.write(line(buyer_id="c") + "{broken\n" + line(buyer_id="d"))
        f.write(line(buyer_id="e")[:20])  # a line still being written
        f.flush()
        assert poll_until(2) == ["c", "d"]
        assert [r.reason for r in reader.drain_rejected()] == [
            "line 4: invalid JSON: Expecting property name enclosed in double quotes at column 2"
        ]
        assert poll_until(1, timeout_s=0.1) == []  # the half line waits for its newline
        f.write(line(buyer_id="e")[20:])
        f.flush()
        assert poll_until(1) == ["e"]
    assert not reader.finished
    assert reader.bytes_consumed == path.stat().st_size  # type: ignore[attr-defined]
    reader.close()


def test_json_lines_rejects_a_bad_poll_interval() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        JsonLinesSource("x.jsonl", follow=True, poll_interval="soon")
