"""conform(): good rows keep exact dtypes, bad rows are rejected with a reason naming the field."""

import datetime
import time
from typing import Optional

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volga.api.entity import entity, entity_schema, field
from volga.api.types import TIMESTAMP_DTYPE
from volga.sources.validation import conform, conform_indexed, missing_columns, require_columns

UTC = datetime.timezone.utc


@entity
class Order:
    buyer_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    product_price: float
    quantity: int
    paid: bool
    note: Optional[str]
    tags: list[float]


SCHEMA = entity_schema(Order)
T0 = datetime.datetime(2024, 1, 1, 12, 0)
T0_UTC = T0.replace(tzinfo=UTC)


def good(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = dict(
        buyer_id="b1", at=T0, product_price=9.5, quantity=2, paid=True, note=None, tags=[1.0, 2.0]
    )
    row.update(overrides)
    return row


def reasons(rows: list[object] | pl.DataFrame, **kw: bool) -> list[str]:
    _, rejected = conform(rows, SCHEMA, source="orders", **kw)
    return [r.reason for r in rejected]


# --------------------------------------------------------------------------- good rows


def test_good_records_have_the_schema_exactly() -> None:
    rows = [good(), Order(buyer_id="b2", at=T0, product_price=1, quantity=3, paid=False, note="x", tags=[])]
    df, rejected = conform(rows, SCHEMA, source="orders")
    assert rejected == []
    assert df.schema == pl.Schema(SCHEMA.polars_schema())
    assert df.columns == ["buyer_id", "at", "product_price", "quantity", "paid", "note", "tags"]
    assert df.rows() == [
        ("b1", T0_UTC, 9.5, 2, True, None, [1.0, 2.0]),
        ("b2", T0_UTC, 1.0, 3, False, "x", []),
    ]


def test_ints_are_fine_for_float_fields_and_items() -> None:
    df, rejected = conform([good(product_price=3, tags=[1, 2])], SCHEMA, source="orders")
    assert rejected == []
    assert df["product_price"].to_list() == [3.0]
    assert df["tags"].to_list() == [[1.0, 2.0]]


def test_numpy_scalars_are_accepted() -> None:
    row = good(product_price=np.float32(1.5), quantity=np.int64(4), paid=np.bool_(True))
    df, rejected = conform([row], SCHEMA, source="orders")
    assert rejected == []
    assert df.row(0)[2:5] == (1.5, 4, True)


def test_optional_field_may_be_absent_or_null() -> None:
    absent = good()
    del absent["note"]
    df, rejected = conform([absent, good(note=None)], SCHEMA, source="orders")
    assert rejected == []
    assert df["note"].to_list() == [None, None]


def test_extra_fields_and_columns_are_ignored() -> None:
    df, _ = conform([good(extra=1)], SCHEMA, source="orders")
    assert df.columns == SCHEMA.names
    frame = pl.DataFrame([good()]).with_columns(pl.lit(1).alias("extra")).select(["extra", *reversed(SCHEMA.names)])
    df, _ = conform(frame, SCHEMA, source="orders")
    assert df.columns == SCHEMA.names


def test_empty_input_gives_an_empty_typed_frame() -> None:
    df, rejected = conform([], SCHEMA, source="orders")
    assert (df.height, rejected) == (0, [])
    assert df.schema == pl.Schema(SCHEMA.polars_schema())


# --------------------------------------------------------------------------- time


def test_naive_datetimes_are_utc_even_when_local_time_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        df, _ = conform([good(at=T0)], SCHEMA, source="orders")
        frame_df, _ = conform(pl.DataFrame([good()]), SCHEMA, source="orders")
        text_df, _ = conform([good(at="2024-01-01T12:00:00")], SCHEMA, source="orders")
    finally:
        monkeypatch.undo()
        time.tzset()
    for out in (df, frame_df, text_df):
        assert out["at"].dtype == TIMESTAMP_DTYPE
        assert out["at"].to_list() == [T0_UTC]


def test_aware_datetimes_are_converted_to_utc() -> None:
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    df, _ = conform([good(at=datetime.datetime(2024, 1, 1, 14, 0, tzinfo=plus2))], SCHEMA, source="orders")
    assert df["at"].to_list() == [T0_UTC]


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T12:00:00",
        "2024-01-01 12:00:00",
        "2024-01-01T12:00:00Z",
        "2024-01-01T12:00:00.000000+00:00",
        "2024-01-01T14:00:00+02:00",
        "2024-01-01T07:00:00-05:00",
    ],
)
def test_iso_strings_are_parsed_to_utc(text: str) -> None:
    df, rejected = conform([good(at=text)], SCHEMA, source="orders")
    assert rejected == []
    assert df["at"].to_list() == [T0_UTC]


def test_a_column_mixing_iso_forms_is_parsed_row_by_row() -> None:
    texts = ["2024-01-01T12:00:00", "2024-01-01T14:00:00+02:00", "2024-01-01 12:00:00Z", "2024-01-01T12:00:00.5"]
    frame = pl.DataFrame([good() for _ in texts]).with_columns(pl.Series("at", texts))
    df, rejected = conform(frame, SCHEMA, source="orders")
    assert rejected == []
    assert df["at"].to_list() == [T0_UTC, T0_UTC, T0_UTC, T0_UTC + datetime.timedelta(milliseconds=500)]


def test_datetime_columns_of_any_unit_and_zone_become_us_utc() -> None:
    base = pl.DataFrame([good()])
    for dtype in (pl.Datetime("ns"), pl.Datetime("ms", "Europe/Paris"), pl.Datetime("us", "UTC")):
        at = pl.Series("at", [T0_UTC]).dt.convert_time_zone(dtype.time_zone or "UTC")
        at = at.dt.replace_time_zone(None) if dtype.time_zone is None else at
        df, _ = conform(base.with_columns(at.cast(dtype)), SCHEMA, source="orders")
        assert df["at"].dtype == TIMESTAMP_DTYPE
        assert df["at"].to_list() == [T0_UTC], dtype


# --------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"product_price": "abc"}, "field 'product_price': expected float, got 'abc'"),
        ({"buyer_id": None}, "field 'buyer_id': null in a non-Optional field"),
        ({"quantity": "12"}, "field 'quantity': expected int, got '12'"),
        ({"quantity": 1.0}, "field 'quantity': expected int, got 1.0"),
        ({"quantity": True}, "field 'quantity': expected int, got True"),
        ({"quantity": 2**70}, f"field 'quantity': expected int, got {2**70}"),
        ({"paid": 1}, "field 'paid': expected bool, got 1"),
        ({"paid": "true"}, "field 'paid': expected bool, got 'true'"),
        ({"buyer_id": 7}, "field 'buyer_id': expected str, got 7"),
        (
            {"at": 1_700_000_000},
            "field 'at': expected datetime, got 1700000000 (an epoch number? declare its unit: "
            "field(timestamp=True, unit='ms'), or 's'/'us')",
        ),
        ({"at": "2024-13-01T00:00:00"}, "field 'at': expected datetime, got '2024-13-01T00:00:00'"),
        ({"at": "01/02/2024"}, "field 'at': expected datetime, got '01/02/2024'"),
        ({"tags": ["x"]}, "field 'tags': expected list[float], got ['x']"),
        ({"tags": [1.0, True]}, "field 'tags': expected list[float], got [1.0, True]"),
        ({"tags": "1,2"}, "field 'tags': expected list[float], got '1,2'"),
        ({"tags": None}, "field 'tags': null in a non-Optional field"),
    ],
)
def test_a_bad_value_rejects_only_its_row(overrides: dict[str, object], reason: str) -> None:
    rows = [good(buyer_id="first"), good(**overrides), good(buyer_id="last")]
    df, rejected = conform(rows, SCHEMA, source="orders")
    assert df["buyer_id"].to_list() == ["first", "last"]
    assert df.schema == pl.Schema(SCHEMA.polars_schema())
    assert [(r.source, r.reason, r.record) for r in rejected] == [("orders", reason, rows[1])]


def test_a_missing_field_is_named() -> None:
    row = good()
    del row["buyer_id"]
    assert reasons([row]) == ["field 'buyer_id': missing"]


def test_every_problem_of_a_row_is_reported_in_field_order() -> None:
    row = good(quantity="x", product_price=None)
    del row["buyer_id"]
    assert reasons([row]) == [
        "field 'buyer_id': missing; field 'product_price': null in a non-Optional field; "
        "field 'quantity': expected int, got 'x'"
    ]


def test_a_record_that_is_not_a_dict_or_entity_is_rejected() -> None:
    _, rejected = conform([good(), ("b", 1)], SCHEMA, source="orders")
    assert [r.reason for r in rejected] == ["expected an entity instance or a dict, got tuple"]


def test_long_values_are_shortened_in_reasons() -> None:
    (reason,) = reasons([good(quantity="z" * 500)])
    assert reason.startswith("field 'quantity': expected int, got 'zzz") and reason.endswith("...")
    assert len(reason) < 150


# --------------------------------------------------------------------------- DataFrames


def frame(**columns: list[object]) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    base = {k: [v] * n for k, v in good().items() if k not in columns}
    return pl.DataFrame({**base, **columns}, strict=False)


def test_frame_casts_compatible_columns() -> None:
    df, rejected = conform(
        frame(quantity=pl.Series([1, 2], dtype=pl.Int32), product_price=pl.Series([1, 2], dtype=pl.UInt8)),
        SCHEMA,
        source="orders",
    )
    assert rejected == []
    assert df.schema == pl.Schema(SCHEMA.polars_schema())
    assert df["quantity"].to_list() == [1, 2]


def test_frame_float_column_for_int_field_keeps_only_integral_values() -> None:
    df, rejected = conform(frame(quantity=[1.0, 2.5, float("nan"), 4.0]), SCHEMA, source="orders")
    assert df["quantity"].to_list() == [1, 4]
    assert [r.reason for r in rejected] == [
        "field 'quantity': expected int, got 2.5",
        "field 'quantity': expected int, got nan",
    ]
    assert rejected[0].record["quantity"] == 2.5  # the record is the input row as a dict


def test_frame_string_column_is_not_parsed_as_numbers() -> None:
    assert reasons(frame(quantity=["12", "x"])) == [
        "field 'quantity': expected int, got '12'",
        "field 'quantity': expected int, got 'x'",
    ]


def test_frame_with_wrong_column_type_rejects_each_non_null_row() -> None:
    df, rejected = conform(frame(buyer_id=[1, None]), SCHEMA, source="orders")
    assert df.height == 0
    assert [r.reason for r in rejected] == [
        "field 'buyer_id': expected str, got 1",
        "field 'buyer_id': null in a non-Optional field",
    ]


def test_frame_missing_columns_read_as_missing_or_null() -> None:
    df, rejected = conform(frame(note=[None]).drop("note"), SCHEMA, source="orders")
    assert (df["note"].to_list(), rejected) == ([None], [])
    assert reasons(frame(note=[None]).drop("buyer_id")) == ["field 'buyer_id': missing"]


def test_parse_strings_reads_text_like_csv() -> None:
    text = frame(
        product_price=[" 1.5", "abc", "2"],
        quantity=["3", "4", "4.0"],
        paid=["true", "FALSE", "yes"],
        tags=["[1, 2.5]", "[]", "[1]"],
    )
    df, rejected = conform(text, SCHEMA, source="orders", parse_strings=True)
    assert df.rows() == [("b1", T0_UTC, 1.5, 3, True, None, [1.0, 2.5])]
    assert [r.reason for r in rejected] == [
        "field 'product_price': expected float, got 'abc'",
        "field 'quantity': expected int, got '4.0'; field 'paid': expected bool, got 'yes'",
    ]


def test_conform_indexed_reports_row_positions() -> None:
    rows = [good(), good(quantity="x"), good(), good(buyer_id=None)]
    df, problems = conform_indexed(rows, SCHEMA)
    assert df.height == 2
    assert [i for i, _ in problems] == [1, 3]


def test_require_columns_names_the_missing_fields() -> None:
    assert missing_columns(["buyer_id", "at"], SCHEMA) == ["product_price", "quantity", "paid", "note", "tags"]
    with pytest.raises(ValueError, match=r"source 'orders': file x has no column\(s\) 'paid', 'tags'"):
        require_columns([n for n in SCHEMA.names if n not in ("paid", "tags")], SCHEMA, source="orders", where="file x")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3), st.none(), st.booleans())))
def test_exactly_the_int64_values_survive_in_order(values: list[object]) -> None:
    rows = [good(quantity=v) for v in values]
    df, rejected = conform(rows, SCHEMA, source="orders")
    ok = [v for v in values if type(v) is int and -(2**63) <= v < 2**63]
    assert df["quantity"].to_list() == ok
    assert len(rejected) == len(values) - len(ok)
    assert all("field 'quantity'" in r.reason for r in rejected)


def test_a_clean_two_million_row_frame_conforms_fast() -> None:
    n = 2_000_000
    big = pl.DataFrame(
        {
            "buyer_id": pl.Series(np.arange(n)).cast(pl.String),
            "at": pl.Series(np.arange(n) * 1_000_000).cast(pl.Datetime("ns")),  # naive, ns: needs a cast
            "product_price": np.random.default_rng(0).random(n),
            "quantity": pl.Series(np.arange(n), dtype=pl.Int32),
            "paid": np.ones(n, dtype=bool),
            "note": pl.repeat(None, n, dtype=pl.String, eager=True),
            "tags": pl.repeat([1.0], n, dtype=pl.List(pl.Float64), eager=True),
        }
    )
    started = time.perf_counter()
    df, rejected = conform(big, SCHEMA, source="orders")
    elapsed = time.perf_counter() - started
    assert (df.height, rejected) == (n, [])
    assert df.schema == pl.Schema(SCHEMA.polars_schema())
    assert elapsed < 1.0, f"conform took {elapsed:.2f}s for {n} clean rows"
