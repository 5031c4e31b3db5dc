"""Schema <-> JSON round trips (the offline store's ``_schema.json``)."""

from __future__ import annotations

import datetime
import json
from typing import Optional

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from volga.api.entity import entity, entity_schema, field
from volga.storage.schema_json import (
    dtype_from_str,
    dtype_to_str,
    schema_from_dict,
    schema_from_json,
    schema_to_dict,
    schema_to_json,
)


@entity
class Everything:
    user_id: str = field(key=True)
    shard: int = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    score: float
    active: bool
    nickname: Optional[str]
    seen: list[datetime.datetime]
    matrix: list[list[float]]
    flags: Optional[list[bool]]


def test_an_entity_schema_round_trips() -> None:
    schema = entity_schema(Everything)

    text = schema_to_json(schema)

    assert schema_from_json(text) == schema
    data = json.loads(text)
    assert data["keys"] == ["user_id", "shard"] and data["timestamp"] == "at"
    assert {f["name"]: f["dtype"] for f in data["fields"]} == {
        "user_id": "String",
        "shard": "Int64",
        "at": "Datetime(us,UTC)",
        "score": "Float64",
        "active": "Boolean",
        "nickname": "String",
        "seen": "List(Datetime(us,UTC))",
        "matrix": "List(List(Float64))",
        "flags": "List(Boolean)",
    }
    assert [f["name"] for f in data["fields"] if f["optional"]] == ["nickname", "flags"]


_LEAVES = st.sampled_from(
    [pl.String(), pl.Int64(), pl.Float64(), pl.Boolean(), pl.Datetime("us", "UTC"), pl.Int32(), pl.UInt32(), pl.Date()]
)
_DTYPES = st.recursive(_LEAVES, lambda inner: inner.map(pl.List), max_leaves=4)


@given(_DTYPES)
def test_dtype_strings_round_trip(dtype: pl.DataType) -> None:
    assert dtype_from_str(dtype_to_str(dtype)) == dtype


@pytest.mark.parametrize("text", ["Decimal", "List(", "Datetime(h,UTC)", "list(Int64)", ""])
def test_unknown_dtype_strings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="dtype"):
        dtype_from_str(text)


def test_an_unsupported_dtype_cannot_be_written() -> None:
    with pytest.raises(TypeError, match="Struct"):
        dtype_to_str(pl.Struct({"a": pl.Int64}))


def test_an_unknown_format_version_is_rejected() -> None:
    data = schema_to_dict(entity_schema(Everything))
    data["format"] = 99

    with pytest.raises(ValueError, match="format"):
        schema_from_dict(data)
