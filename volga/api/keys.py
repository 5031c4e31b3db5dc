"""Lookup keys as users hold them, turned into one shape: a list of ``{field: value}``.

Accepted everywhere a lookup takes keys (``get_latest``, ``get_last_n``, ``get_range``,
``get_on_demand``): a list of dicts, a single dict (one key), or a polars/pandas DataFrame
whose columns are the key fields; numpy scalars (``np.int64(7)``, ``np.str_("a")``) count
as the Python values they hold, and pandas/numpy datetimes as ``datetime``.

>>> import numpy as np
>>> key_records({"user_id": np.str_("7")})
[{'user_id': '7'}]
>>> key_records([{"n": np.int64(3)}])
[{'n': 3}]
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


def key_records(keys: Any) -> Any:
    """``keys`` as a list of dicts of plain Python values; anything else is returned as
    given, for the caller's checks to name."""
    if isinstance(keys, Mapping):
        keys = [keys]
    elif _is_frame(keys):
        keys = _frame_records(keys)
    if isinstance(keys, (list, tuple)):
        return [{k: plain(v) for k, v in key.items()} if isinstance(key, Mapping) else key for key in keys]
    return keys


def plain(value: Any) -> Any:
    """A numpy/pandas scalar as the Python value it holds; other values unchanged."""
    module = type(value).__module__
    if module.startswith(("numpy", "pandas")):
        if hasattr(value, "to_pydatetime"):  # pandas Timestamp
            return value.to_pydatetime()
        if type(value).__name__ == "datetime64":
            return datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=int(value.astype("datetime64[us]").astype("int64")))
        if hasattr(value, "item"):
            return value.item()
    return value


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and type(value).__module__.split(".")[0] in ("polars", "pandas")


def _frame_records(frame: Any) -> list[dict[str, Any]]:
    if type(frame).__module__.split(".")[0] == "polars":
        return list(frame.to_dicts())
    return list(frame.to_dict("records"))
