"""Schema <-> JSON, so a store can answer ``schema(name)`` in a new process.

Dtypes are written as short strings: ``String``, ``Int64``, ``Float64``, ``Boolean``,
``Datetime(us,UTC)``, ``List(Float64)``, ``List(List(String))``... (the other integer
widths, ``Float32`` and ``Date`` are accepted too, for computed columns).

>>> import datetime
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Spend:
...     user_id: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     tags: list[str]
>>> schema = entity_schema(Spend)
>>> schema_from_json(schema_to_json(schema)) == schema
True
>>> dtype_to_str(schema.field("at").dtype)
'Datetime(us,UTC)'
"""

# No `from __future__ import annotations` here: the docstring example's @entity class needs
# its annotations evaluated where it is defined (doctest inherits a module's future flags).

import json
from typing import Any

import polars as pl
from polars.datatypes import DataTypeClass

from volga.api.entity import FieldSpec, Schema

FORMAT_VERSION = 1

_SIMPLE: dict[str, pl.DataType] = {
    "String": pl.String(),
    "Boolean": pl.Boolean(),
    "Float32": pl.Float32(),
    "Float64": pl.Float64(),
    "Int8": pl.Int8(),
    "Int16": pl.Int16(),
    "Int32": pl.Int32(),
    "Int64": pl.Int64(),
    "UInt8": pl.UInt8(),
    "UInt16": pl.UInt16(),
    "UInt32": pl.UInt32(),
    "UInt64": pl.UInt64(),
    "Date": pl.Date(),
}


def dtype_to_str(dtype: pl.DataType | DataTypeClass) -> str:
    """``Datetime("us", "UTC")`` -> ``"Datetime(us,UTC)"``; raise TypeError if unsupported."""
    if isinstance(dtype, pl.List):
        return f"List({dtype_to_str(dtype.inner)})"
    if isinstance(dtype, pl.Datetime):
        tz = dtype.time_zone
        return f"Datetime({dtype.time_unit},{tz})" if tz else f"Datetime({dtype.time_unit})"
    for text, simple in _SIMPLE.items():
        if dtype == simple:
            return text
    raise TypeError(f"dtype {dtype} cannot be stored in a schema file (supported: {sorted(_SIMPLE)}, Datetime, List)")


def dtype_from_str(text: str) -> pl.DataType:
    """Inverse of :func:`dtype_to_str`; raise ValueError on anything else."""
    text = text.strip()
    if text in _SIMPLE:
        return _SIMPLE[text]
    if text.startswith("List(") and text.endswith(")"):
        return pl.List(dtype_from_str(text[5:-1]))
    if text.startswith("Datetime(") and text.endswith(")"):
        unit, _, tz = (part.strip() for part in text[9:-1].partition(","))
        if unit in ("ms", "us", "ns"):
            return pl.Datetime(unit, tz or None)  # type: ignore[arg-type]
    raise ValueError(f"unknown dtype {text!r} in schema file")


def schema_to_dict(schema: Schema) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "name": schema.name,
        "keys": list(schema.keys),
        "timestamp": schema.timestamp,
        "fields": [
            {
                "name": f.name,
                "dtype": dtype_to_str(f.dtype),
                "optional": f.optional,
                "key": f.key,
                "timestamp": f.timestamp,
            }
            for f in schema.fields
        ],
    }


def schema_from_dict(data: dict[str, Any]) -> Schema:
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"schema file format {data.get('format')!r} is not supported (expected {FORMAT_VERSION})")
    fields = tuple(
        FieldSpec(
            name=f["name"],
            dtype=dtype_from_str(f["dtype"]),
            optional=bool(f.get("optional", False)),
            key=bool(f.get("key", False)),
            timestamp=bool(f.get("timestamp", False)),
        )
        for f in data["fields"]
    )
    return Schema(data["name"], fields, tuple(data["keys"]), data["timestamp"])


def schema_to_json(schema: Schema) -> str:
    return json.dumps(schema_to_dict(schema), indent=2)


def schema_from_json(text: str) -> Schema:
    return schema_from_dict(json.loads(text))
