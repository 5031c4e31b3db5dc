"""JSON in and out of the serving layer: orjson, datetimes as ISO 8601 UTC.

Entity instances (dataclasses) serialize as objects of their fields; naive datetimes are
UTC. Response rows are :class:`Row` dicts.

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

from volga.api.times import parse_utc
from volga.ondemand.rows import Row  # noqa: F401 - re-exported: response rows

JSONDecodeError = orjson.JSONDecodeError


def _fallback(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)




def parse_datetime_fields(row: dict[str, Any], fields: list[str], list_fields: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Turn the named ISO 8601 string fields of a response row (and the items of the
    ``list_fields``) back into aware UTC datetimes; naive strings are UTC."""
    for name in fields:
        value = row.get(name)
        if isinstance(value, str):
            row[name] = parse_utc(value)
    for name in list_fields:
        value = row.get(name)
        if isinstance(value, list):
            row[name] = [parse_utc(v) if isinstance(v, str) else v for v in value]
    return row
