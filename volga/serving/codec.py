"""JSON in and out of the serving layer: orjson, datetimes as ISO 8601 UTC.

Entity instances (dataclasses) serialize as objects of their fields.

>>> import datetime
>>> dumps({"at": datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)})
b'{"at":"2025-01-01T00:00:00+00:00"}'
>>> loads(b'{"n": 3}')
{'n': 3}
"""

from __future__ import annotations

import datetime
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def _fallback(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def parse_datetime_fields(row: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Turn the named ISO 8601 string fields of a response row back into aware datetimes."""
    for name in fields:
        value = row.get(name)
        if isinstance(value, str):
            row[name] = datetime.datetime.fromisoformat(value).astimezone(datetime.timezone.utc)
    return row
