"""Make incoming rows fit an entity's schema, rejecting (never failing on) the rows that don't.

Every connector funnels its data through :func:`conform`, so the rules below are the same
for every source:

* The output has exactly the schema's columns, in schema order, with the schema's dtypes
  (timestamps ``Datetime("us", "UTC")``), in input order. Extra columns are ignored.
* Timestamps: ``datetime`` values and Datetime columns of any unit or time zone are
  converted to UTC; *naive* ones are read as UTC, never local time. ISO-8601 strings
  (``"2024-01-01T12:00:00"``, ``"2024-01-01 12:00:00.5+02:00"``, ``"...Z"``, a bare date)
  are parsed the same way. Numbers are epoch times only in a field declared with a unit,
  ``field(timestamp=True, unit="ms")`` (``"s"``, ``"ms"``, ``"us"``; ints, floats, and in
  text formats numeric text); elsewhere a number is a rejected row whose reason suggests
  ``unit=`` (the unit would be a guess).
* Numbers: ints are fine for float fields; floats for int fields only when integral
  *and* coming from a typed column (a float Python value for an int field is rejected:
  ``1.0`` in a JSON ``int`` field is usually a producer bug worth seeing).
* Strings are **not** silently parsed into numbers or booleans: ``"12"`` for an ``int``
  field is a rejected row. The exception is text formats where every value is a string
  (CSV): they pass ``parse_strings=True``, which parses ints, floats, booleans
  (``true/false/1/0``) and lists (JSON text such as ``[1, 2]``).
* Null is allowed only in ``Optional`` fields. A record (dict) that lacks an Optional
  field's key reads it as null; lacking a non-Optional one is ``missing``.
* A rejected row's reason names every offending field, e.g.
  ``"field 'price': expected float, got 'abc'"``.

DataFrames are converted column by column with vectorised casts (``strict=False``, then the
rows whose cast failed are found by comparing null masks); Python-level work is spent only
on rows that fail. Lists of dicts become columns and take the same path, guarded by a
type check so that polars never coerces e.g. ``True`` into an ``int`` field.

>>> import datetime
>>> from volga.api.entity import entity, entity_schema, field
>>> @entity
... class Order:
...     id: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     price: float
>>> df, bad = conform(
...     [{"id": "a", "at": "2024-01-01T00:00:00", "price": 3},
...      {"id": "b", "at": "2024-01-01T00:00:01", "price": "abc"}],
...     entity_schema(Order), source="orders")
>>> df.rows()
[('a', datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 3.0)]
>>> bad[0].reason
"field 'price': expected float, got 'abc'"
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from polars.datatypes import DataTypeClass

from volga.api.entity import FieldSpec, Schema, to_record
from volga.api.times import to_utc, utc_us_series
from volga.api.types import TIMESTAMP_DTYPE, dtype_name
from volga.sources.base import Rejected

__all__ = ["conform", "conform_indexed", "missing_columns", "require_columns"]

# (row index, reason) pairs: what conform_indexed reports before records are attached.
Problems = list[tuple[int, str]]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ISO_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}"  # date
    r"([T ]\d{2}:\d{2}(:\d{2}([.,]\d{1,9})?)?)?"  # optional time
    r"(Z|z|[+-]\d{2}(:?\d{2})?)?$"  # optional offset
)
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}
_MAX_SHOWN = 80

# Python types that may go straight into pl.Series(..., dtype=..., strict=True) for each
# target dtype; anything else takes the per-value path (which knows numpy scalars etc.).
_NONE = type(None)
_FAST_TYPES: dict[pl.DataType, frozenset[type]] = {
    pl.Int64(): frozenset({int, _NONE}),
    pl.Float64(): frozenset({int, float, _NONE}),
    pl.String(): frozenset({str, _NONE}),
    pl.Boolean(): frozenset({bool, _NONE}),
    TIMESTAMP_DTYPE: frozenset({datetime.datetime, _NONE}),
}


class _BadValue(Exception):
    """A single value does not fit its field; carries nothing, the caller words the reason."""


# --------------------------------------------------------------------------- public API


def conform(
    data: pl.DataFrame | Iterable[Any],
    schema: Schema,
    *,
    source: str,
    parse_strings: bool = False,
) -> tuple[pl.DataFrame, list[Rejected]]:
    """Rows of ``data`` as a DataFrame of ``schema``, plus the rows that don't fit.

    ``data`` is a polars DataFrame or an iterable of dicts / entity instances. Rejected
    records are the input row (a dict for DataFrame input, the original object otherwise).
    See the module docstring for the rules.
    """
    if isinstance(data, pl.DataFrame):
        df, problems = conform_indexed(data, schema, parse_strings=parse_strings)
        return df, [Rejected(source, reason, data.row(i, named=True)) for i, reason in problems]
    items = data if isinstance(data, Sequence) else list(data)
    df, problems = conform_indexed(items, schema, parse_strings=parse_strings)
    return df, [Rejected(source, reason, items[i]) for i, reason in problems]


def conform_indexed(
    data: pl.DataFrame | Sequence[Any],
    schema: Schema,
    *,
    parse_strings: bool = False,
) -> tuple[pl.DataFrame, Problems]:
    """Like :func:`conform`, but reports rejects as ``(row index, reason)``.

    For connectors that keep their own raw records (a JSON line, a Kafka message) and want
    those, not the parsed dict, in :class:`Rejected`.
    """
    if isinstance(data, pl.DataFrame):
        columns, problems = _frame_columns(data, schema, parse_strings)
        n = data.height
    else:
        columns, problems = _record_columns(data, schema, parse_strings)
        n = len(data)
    out = pl.DataFrame(columns)
    if not problems:
        return out, []
    merged = _merge_problems(problems)
    keep = np.ones(n, dtype=bool)
    keep[[i for i, _ in merged]] = False
    return out.filter(pl.Series(keep)), merged


def missing_columns(columns: Iterable[str], schema: Schema) -> list[str]:
    """The schema's fields that are not among ``columns``, in schema order."""
    present = set(columns)
    return [f.name for f in schema.fields if f.name not in present]


def require_columns(columns: Iterable[str], schema: Schema, *, source: str, where: str) -> None:
    """Raise ValueError if a tabular input lacks any of the entity's columns.

    A whole missing column is a schema mismatch (often a typo or the wrong file), not a bad
    row, so tabular sources refuse it up front instead of rejecting every row.
    """
    missing = missing_columns(columns, schema)
    if missing:
        listed = ", ".join(repr(m) for m in missing)
        raise ValueError(
            f"source '{source}': {where} has no column(s) {listed} required by entity "
            f"{schema.name} (expected columns: {schema.names})"
        )


# --------------------------------------------------------------------------- records


def _record_columns(
    items: Sequence[Any], schema: Schema, parse_strings: bool
) -> tuple[list[pl.Series], Problems]:
    """Turn dicts/entity instances into one typed Series per field."""
    records: list[Mapping[str, Any]] = []
    problems: Problems = []
    for i, item in enumerate(items):
        try:
            records.append(to_record(item))
        except TypeError as e:
            problems.append((i, str(e)))
            records.append({})
    not_records = {i for i, _ in problems}
    columns = []
    for f in schema.fields:
        values = [r.get(f.name) for r in records]
        series, bad = _values_to_series(values, f, parse_strings)
        problems += bad
        failed = {i for i, _ in bad} | not_records
        problems += _null_problems(series, f, failed, functools.partial(_lacks, records, f.name))
        columns.append(series)
    return columns, problems


def _values_to_series(values: list[Any], f: FieldSpec, parse_strings: bool) -> tuple[pl.Series, Problems]:
    """A typed Series from Python values: strict fast path when the types allow it."""
    kinds = set(map(type, values))
    fast = _FAST_TYPES.get(f.dtype)
    if fast is not None and kinds <= fast:
        try:
            return pl.Series(f.name, values, dtype=f.dtype, strict=True), []
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            pass  # e.g. an int beyond int64: the per-value path words the reason
    if f.dtype == TIMESTAMP_DTYPE and kinds <= {str, _NONE} and not (parse_strings and f.unit):
        return _strings_to_timestamps(pl.Series(f.name, values, dtype=pl.String), f)
    if f.dtype == TIMESTAMP_DTYPE and f.unit and kinds <= {int, float, _NONE}:
        return _epoch_to_timestamps(pl.Series(f.name, values, dtype=pl.Float64 if float in kinds else pl.Int64), f)
    if isinstance(f.dtype, pl.List) and kinds <= {list, _NONE}:
        series = _list_fast(values, f)
        if series is not None:
            return series, []
    if parse_strings and kinds <= {str, _NONE}:
        return _convert_column(pl.Series(f.name, values, dtype=pl.String), f, parse_strings)
    return _python_values(values, f, parse_strings)


# --------------------------------------------------------------------------- DataFrames


def _frame_columns(df: pl.DataFrame, schema: Schema, parse_strings: bool) -> tuple[list[pl.Series], Problems]:
    """One typed Series per field from a DataFrame's columns (vectorised casts)."""
    problems: Problems = []
    columns = []
    for f in schema.fields:
        if f.name not in df.columns:
            series = pl.Series(f.name, [None] * df.height, dtype=f.dtype)
            problems += _null_problems(series, f, set(), lambda i: True)
            columns.append(series)
            continue
        series, bad = _convert_column(df.get_column(f.name), f, parse_strings)
        problems += bad
        problems += _null_problems(series, f, {i for i, _ in bad}, lambda i: False)
        columns.append(series.alias(f.name))
    return columns, problems


def _convert_column(src: pl.Series, f: FieldSpec, parse_strings: bool) -> tuple[pl.Series, Problems]:
    """Cast one column to its field's dtype; rows whose value doesn't fit are problems."""
    target, have = f.dtype, src.dtype
    if have == target:
        return src, []
    if have == pl.Null:
        return src.cast(target), []
    is_text = have in (pl.String, pl.Categorical) or isinstance(have, pl.Enum)
    if target == TIMESTAMP_DTYPE:
        return _to_timestamps(src, f, parse_strings)
    if target == pl.String:
        return (src.cast(pl.String), []) if is_text else _all_bad(src, f)
    if isinstance(target, pl.List):
        if isinstance(have, pl.List) and have.inner.is_integer() and target.inner == pl.Float64:
            return src.cast(target), []  # ints are fine for floats, items included
        if is_text and not parse_strings:
            return _all_bad(src, f)
        return _python_values(src.to_list(), f, parse_strings)
    if is_text:
        return _parse_text(src.cast(pl.String), f) if parse_strings else _all_bad(src, f)
    if target == pl.Boolean or have == pl.Boolean or not have.is_numeric():
        return _all_bad(src, f)
    out = src.cast(target, strict=False)
    failed = out.is_null() & src.is_not_null()
    if target.is_integer() and not have.is_integer():
        failed = failed | (out.cast(have) != src).fill_null(False)  # 1.5 -> 1 is not an int
    return _with_failures(src, out, failed, f)


def _parse_text(text: pl.Series, f: FieldSpec) -> tuple[pl.Series, Problems]:
    """Numbers and booleans from text (CSV): surrounding spaces are tolerated."""
    stripped = text.str.strip_chars()
    if f.dtype == pl.Boolean:
        out = stripped.str.to_lowercase().replace_strict(_BOOL_TEXT, default=None, return_dtype=pl.Boolean)
    else:
        out = stripped.cast(f.dtype, strict=False)
    return _with_failures(text, out, out.is_null() & text.is_not_null(), f)


def _to_timestamps(src: pl.Series, f: FieldSpec, parse_strings: bool = False) -> tuple[pl.Series, Problems]:
    """Any Datetime/Date/ISO-string column as UTC microseconds (naive means UTC); epoch
    numbers when the field declares their unit."""
    have = src.dtype
    if f.unit and have.is_numeric() and have != pl.Boolean:
        return _epoch_to_timestamps(src, f)
    if f.unit and parse_strings and have == pl.String:
        # text (CSV): ISO strings as usual, numeric text as epoch numbers in the unit
        iso = src.str.contains(_ISO_PATTERN).fill_null(False)
        stripped = src.str.strip_chars()
        numbers = stripped.cast(pl.Int64, strict=False)
        if (numbers.is_null() & stripped.is_not_null() & ~iso).any():
            numbers = stripped.cast(pl.Float64, strict=False)
        epoch, _ = _epoch_to_timestamps(numbers.zip_with(~iso, _nulls(numbers)), f)
        parsed, _ = _strings_to_timestamps(src.zip_with(iso, _nulls(src)), f)
        out = parsed.zip_with(iso, epoch).alias(f.name)
        return _with_failures(src, out, out.is_null() & src.is_not_null(), f)
    if isinstance(have, pl.Datetime):
        return utc_us_series(src), []
    if have == pl.Date:
        return src.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"), []
    if have in (pl.String, pl.Categorical) or isinstance(have, pl.Enum):
        return _strings_to_timestamps(src.cast(pl.String), f)
    if have == pl.Object:
        return _python_values(src.to_list(), f, False)
    return _all_bad(src, f)


_UNIT_FACTOR = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _nulls(like: pl.Series) -> pl.Series:
    return pl.Series(like.name, [None] * len(like), dtype=like.dtype)


def _epoch_to_timestamps(numbers: pl.Series, f: FieldSpec) -> tuple[pl.Series, Problems]:
    """Epoch numbers in the field's unit as UTC microseconds (floats rounded to the
    microsecond); values beyond the timestamp range are problems."""
    factor = _UNIT_FACTOR[f.unit or "us"]
    limit = _INT64_MAX // factor
    if numbers.dtype.is_float():
        finite = numbers.is_finite().fill_null(True) & (numbers.abs() <= limit).fill_null(True)
        us = (numbers * factor).round(0).cast(pl.Int64, strict=False)
    else:
        wide = numbers.cast(pl.Int64, strict=False)
        finite = (wide.abs() <= limit).fill_null(True) & ~(wide.is_null() & numbers.is_not_null())
        us = wide * factor
    out = us.zip_with(finite, _nulls(us)).cast(TIMESTAMP_DTYPE).alias(f.name)
    return _with_failures(numbers, out, out.is_null() & numbers.is_not_null(), f)


def _strings_to_timestamps(text: pl.Series, f: FieldSpec) -> tuple[pl.Series, Problems]:
    """Parse ISO-8601 strings: polars for the common format, Python for the stragglers.

    polars infers one format from the first value, so a column mixing e.g. naive and
    ``Z``-suffixed strings parses partly; the rest goes through ``fromisoformat``.
    """
    iso = text.str.contains(_ISO_PATTERN).fill_null(False)
    try:
        out = text.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
    except pl.exceptions.PolarsError:
        out = pl.Series(text.name, [None] * len(text), dtype=TIMESTAMP_DTYPE)
    not_iso = (~iso & text.is_not_null()).arg_true()
    if len(not_iso):
        out = out.scatter(not_iso, None)
    retry = (out.is_null() & iso).arg_true()
    if len(retry):
        parsed = [_parse_iso(s) for s in text.gather(retry).to_list()]
        out = out.scatter(retry, pl.Series(parsed, dtype=TIMESTAMP_DTYPE))
    return _with_failures(text, out, out.is_null() & text.is_not_null(), f)


def _parse_iso(text: str) -> datetime.datetime | None:
    try:
        return to_utc(datetime.datetime.fromisoformat(text.strip()))
    except ValueError:
        return None


# --------------------------------------------------------------------------- per-value path


def _python_values(values: list[Any], f: FieldSpec, parse_strings: bool) -> tuple[pl.Series, Problems]:
    """Check and convert values one by one (only for inputs the fast paths can't take)."""
    check = _checker(f.dtype, parse_strings)
    if f.dtype == TIMESTAMP_DTYPE and f.unit:
        check = _epoch_checker(check, f.unit, parse_strings)
    converted: list[Any] = []
    problems: Problems = []
    for i, value in enumerate(values):
        try:
            converted.append(None if value is None else check(value))
        except _BadValue:
            converted.append(None)
            problems.append((i, _expected(f, value)))
    return _build(converted, f), problems


Checker = Callable[[Any], Any]


def _checker(dtype: pl.DataType | DataTypeClass, parse_strings: bool) -> Checker:
    """A function converting one non-null value to what polars stores for ``dtype``.

    It raises _BadValue when the value doesn't fit. Built once per column so the per-value
    loop doesn't compare dtypes for every value.
    """
    if isinstance(dtype, pl.List):
        return _list_checker(dtype, parse_strings)
    if dtype == TIMESTAMP_DTYPE:
        return _check_timestamp
    scalar: dict[pl.DataType | DataTypeClass, Checker] = {
        pl.Int64(): _check_int, pl.Float64(): _check_float, pl.String(): _check_str, pl.Boolean(): _check_bool,
    }
    check = scalar.get(dtype)
    if check is None:
        raise TypeError(f"no value check for dtype {dtype}")  # dtype_of never produces one
    return _text_checker(dtype, check) if parse_strings and dtype != pl.String else check


def _epoch_checker(check: Checker, unit: str, parse_strings: bool) -> Checker:
    """Also read epoch numbers (and, in text formats, numeric text) in ``unit``."""
    factor = _UNIT_FACTOR[unit]
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

    def read(value: Any) -> Any:
        number = value
        if parse_strings and isinstance(value, str):
            try:
                number = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
            except ValueError:
                return check(value)
        if isinstance(number, (int, float, np.integer, np.floating)) and not isinstance(number, (bool, np.bool_)):
            try:
                return epoch + datetime.timedelta(microseconds=round(number * factor))
            except (OverflowError, ValueError):
                raise _BadValue from None
        return check(value)

    return read


def _check_int(value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if _INT64_MIN <= int(value) <= _INT64_MAX:
            return int(value)
    raise _BadValue


def _check_float(value: Any) -> float:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise _BadValue


def _check_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _BadValue


def _check_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _BadValue


def _check_timestamp(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return to_utc(value)
    if isinstance(value, str):
        parsed = _parse_iso(value)
        if parsed is not None:
            return parsed
    raise _BadValue


def _text_checker(dtype: pl.DataType | DataTypeClass, check: Checker) -> Checker:
    """Also accept text for numbers/booleans (CSV-like inputs only)."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return check(value)
        text = value.strip()
        try:
            if dtype == pl.Int64:
                return check(int(text))
            if dtype == pl.Float64:
                return float(text)
        except ValueError:
            raise _BadValue from None
        if text.lower() in _BOOL_TEXT:
            return _BOOL_TEXT[text.lower()]
        raise _BadValue

    return parse


def _list_checker(dtype: pl.List, parse_strings: bool) -> Checker:
    """Lists (or tuples/arrays) whose items pass the inner check; JSON text when parsing."""
    item_check = _checker(dtype.inner, False)

    def check(value: Any) -> list[Any]:
        if parse_strings and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise _BadValue from None
        if isinstance(value, (pl.Series, np.ndarray)):
            value = value.tolist() if isinstance(value, np.ndarray) else value.to_list()
        if not isinstance(value, (list, tuple)):
            raise _BadValue
        return [None if item is None else item_check(item) for item in value]

    return check


def _list_fast(values: list[Any], f: FieldSpec) -> pl.Series | None:
    """List values whose items all have exactly the right Python types, built via Arrow.

    polars builds nested Series from Python lists an element at a time; Arrow is ~10x faster.
    Item types are checked first because Arrow, like polars, would turn ``True`` into 1.0.
    """
    inner = f.dtype.inner  # type: ignore[attr-defined]
    fast = _FAST_TYPES.get(inner)
    if fast is None or inner == TIMESTAMP_DTYPE:
        return None
    items = set(map(type, itertools.chain.from_iterable(v for v in values if v is not None)))
    if not items <= fast:
        return None
    try:
        return _build(values, f)
    except (TypeError, OverflowError, pa.ArrowException):
        return None


def _build(values: list[Any], f: FieldSpec) -> pl.Series:
    """A Series of already-checked values (lists go through Arrow, see _list_fast)."""
    if isinstance(f.dtype, pl.List) and f.dtype.inner != TIMESTAMP_DTYPE:
        arrow_type = pl.Series([], dtype=f.dtype).to_arrow().type
        built = pl.from_arrow(pa.array(values, type=arrow_type))
        assert isinstance(built, pl.Series)
        return built.cast(f.dtype).alias(f.name)
    return pl.Series(f.name, values, dtype=f.dtype)


# --------------------------------------------------------------------------- problems


def _with_failures(src: pl.Series, out: pl.Series, failed: pl.Series, f: FieldSpec) -> tuple[pl.Series, Problems]:
    """Null out failed rows and word a reason for each, using the original values."""
    idx = failed.arg_true()
    if not len(idx):
        return out, []
    shown = src.gather(idx).to_list()
    out = out.scatter(idx, None)
    return out, [(i, _expected(f, v)) for i, v in zip(idx.to_list(), shown)]


def _all_bad(src: pl.Series, f: FieldSpec) -> tuple[pl.Series, Problems]:
    """A column whose dtype can't hold the field: every non-null value is a problem."""
    out = pl.Series(f.name, [None] * len(src), dtype=f.dtype)
    return _with_failures(src, out, src.is_not_null(), f)


def _lacks(records: Sequence[Mapping[str, Any]], name: str, i: int) -> bool:
    return name not in records[i]


def _null_problems(
    series: pl.Series, f: FieldSpec, already: set[int], is_missing: Callable[[int], bool]
) -> Problems:
    """Nulls in a non-Optional field (rows already rejected for this field are skipped)."""
    if f.optional or series.null_count() == 0:
        return []
    out: Problems = []
    for i in series.is_null().arg_true().to_list():
        if i in already:
            continue
        problem = "missing" if is_missing(i) else "null in a non-Optional field"
        out.append((i, f"field '{f.name}': {problem}"))
    return out


def _expected(f: FieldSpec, value: Any) -> str:
    reason = f"field '{f.name}': expected {dtype_name(f.dtype)}, got {_show(value)}"
    if f.dtype == TIMESTAMP_DTYPE and not f.unit and _is_number(value):
        reason += " (an epoch number? declare its unit: field(timestamp=True, unit='ms'), or 's'/'us')"
    elif f.dtype == TIMESTAMP_DTYPE and f.unit and _is_number(value):
        reason += f" (out of range as epoch {f.unit})"
    return reason


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    try:
        float(value)
        return isinstance(value, str)
    except (TypeError, ValueError):
        return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _merge_problems(problems: Problems) -> Problems:
    """One entry per row, in row order; a row's reasons joined in field order."""
    by_row: dict[int, list[str]] = {}
    for i, reason in problems:
        by_row.setdefault(i, []).append(reason)
    return [(i, "; ".join(by_row[i])) for i in sorted(by_row)]
