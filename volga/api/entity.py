"""``@entity`` and ``field``: typed records with keys and one event-time field.

>>> import datetime
>>> @entity
... class Click:
...     user_id: str = field(key=True)
...     at: datetime.datetime = field(timestamp=True)
...     url: str
>>> entity_schema(Click).keys, entity_schema(Click).timestamp
(('user_id',), 'at')
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import functools
import inspect
import sys
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl

from volga.api.times import to_utc
from volga.api.types import TIMESTAMP_DTYPE, dtype_name, dtype_of, unwrap_optional

SCHEMA_ATTR = "__volga_schema__"
RESERVED_PREFIXES = ("__", "_volga")
T = TypeVar("T")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtype: pl.DataType
    optional: bool = False
    key: bool = False
    timestamp: bool = False
    # why the column can be null (the step that made it so), for definition errors;
    # not part of the type, so two fields differing only here compare equal
    nullable_by: str = dataclasses.field(default="", compare=False)
    # the unit of epoch numbers in a datetime field ("s", "ms", "us"), read by sources
    unit: str | None = dataclasses.field(default=None, compare=False)

    @property
    def type_name(self) -> str:
        base = dtype_name(self.dtype)
        return f"Optional[{base}]" if self.optional else base


@dataclass(frozen=True)
class Schema:
    """The typed shape of an entity or of a frame in a pipeline."""

    name: str
    fields: tuple[FieldSpec, ...]
    keys: tuple[str, ...]
    timestamp: str

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names in {names}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def value_names(self) -> list[str]:
        return [f.name for f in self.fields if f.name not in self.keys and f.name != self.timestamp]

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {f.name: f.dtype for f in self.fields}

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (used by the HTTP layer and error messages)."""
        return {
            "name": self.name,
            "keys": list(self.keys),
            "timestamp": self.timestamp,
            "fields": {f.name: f.type_name for f in self.fields},
        }


class _FieldMarker:
    __slots__ = ("key", "timestamp", "default", "unit")

    def __init__(self, key: bool, timestamp: bool, default: Any, unit: str | None = None) -> None:
        self.key, self.timestamp, self.default, self.unit = key, timestamp, default, unit


_MISSING: Any = dataclasses.MISSING
EPOCH_UNITS = ("s", "ms", "us")


def field(*, key: bool = False, timestamp: bool = False, default: Any = _MISSING, unit: str | None = None) -> Any:
    """Mark an entity field as (part of) the key, or as the event-time field.

    ``unit`` ("s", "ms" or "us", datetime fields only) lets sources read epoch numbers
    (ints, or floats for fractions) in that unit, as Kafka/JSON events usually carry them;
    without it a number for a datetime field is a rejected row.

    >>> import datetime
    >>> @entity
    ... class Tap:
    ...     device: str = field(key=True)
    ...     at: datetime.datetime = field(timestamp=True, unit="ms")
    >>> entity_schema(Tap).field("at").unit
    'ms'
    """
    return _FieldMarker(key, timestamp, default, unit)


def _type_hints(cls: type, depth: int = 2) -> dict[str, Any]:
    """Resolve annotations; string annotations (``from __future__ import annotations``)
    may name types imported inside the function that defines the class."""
    try:
        return typing.get_type_hints(cls)
    except NameError:
        frame = sys._getframe(depth)
        return typing.get_type_hints(cls, localns={**frame.f_globals, **frame.f_locals})


def _declared_twice(cls: type) -> str | None:
    """A field annotated twice in the class body (Python keeps only the last annotation,
    so this is only visible in the source; None when the source is unavailable)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return None
    body = next((node.body for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == cls.__name__), [])
    seen: set[str] = set()
    for statement in body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            if statement.target.id in seen:
                return statement.target.id
            seen.add(statement.target.id)
    return None


def entity(cls: type[T]) -> type[T]:
    """Turn an annotated class into a typed, keyword-constructed record type.

    Raises ``TypeError``/``ValueError`` naming the class and field when the
    declaration is invalid (no or two timestamps, unsupported type, Optional key...).

    >>> import datetime
    >>> from typing import Optional
    >>> @entity
    ... class Payment:
    ...     account: str = field(key=True)
    ...     paid_at: datetime.datetime = field(timestamp=True)
    ...     amount: float
    ...     note: Optional[str] = field(default=None)
    >>> Payment(account="a1", paid_at=datetime.datetime(2025, 1, 1), amount=9.5).note is None
    True
    >>> @entity
    ... class NoTime:
    ...     account: str = field(key=True)
    Traceback (most recent call last):
    ValueError: entity NoTime: no timestamp field; mark one datetime field with field(timestamp=True)
    """
    where = cls.__name__
    own = dict(cls.__dict__.get("__annotations__", {}))
    hints = _type_hints(cls)
    inherited: dict[str, FieldSpec] = {}
    for base in cls.__mro__[1:]:
        base_schema: Schema | None = base.__dict__.get(SCHEMA_ATTR)
        if base_schema is not None:
            for f in base_schema.fields:
                inherited.setdefault(f.name, f)
    specs: list[FieldSpec] = list(inherited.values())
    defaults: dict[str, Any] = {}
    for name in own:
        if name in inherited:
            raise ValueError(f"entity {where}: field '{name}' is declared twice (also in a base entity)")
        if name.startswith(RESERVED_PREFIXES):
            raise ValueError(
                f"entity {where}: field name '{name}' is reserved (names starting with "
                f"{' or '.join(repr(p) for p in RESERVED_PREFIXES)} are used internally)"
            )
        marker = cls.__dict__.get(name)
        key, ts, default, unit = False, False, _MISSING, None
        if isinstance(marker, _FieldMarker):
            key, ts, default, unit = marker.key, marker.timestamp, marker.default, marker.unit
        elif name in cls.__dict__:
            default = cls.__dict__[name]
        annotation = hints[name]
        try:
            dtype = dtype_of(annotation)
        except TypeError as e:
            raise TypeError(f"entity {where}: field '{name}': {e}") from None
        _, optional = unwrap_optional(annotation)
        if key and optional:
            raise TypeError(f"entity {where}: key field '{name}' cannot be Optional (keys are never null)")
        if key and isinstance(dtype, pl.List):
            raise TypeError(f"entity {where}: key field '{name}' cannot be a list")
        if ts and dtype != TIMESTAMP_DTYPE:
            raise TypeError(f"entity {where}: timestamp field '{name}' must be datetime.datetime, not {annotation!r}")
        if unit is not None and (unit not in EPOCH_UNITS or dtype != TIMESTAMP_DTYPE):
            raise ValueError(
                f"entity {where}: field '{name}': unit={unit!r} "
                + ("must be one of 's', 'ms', 'us'" if unit not in EPOCH_UNITS else "applies to datetime fields only")
            )
        if ts and optional:
            raise TypeError(f"entity {where}: timestamp field '{name}' cannot be Optional")
        if default is not _MISSING:
            defaults[name] = default
        elif optional:
            defaults[name] = None
        specs.append(FieldSpec(name, dtype, optional, key, ts, nullable_by=f"Optional in {where}" if optional else "", unit=unit))

    repeated = _declared_twice(cls)
    if repeated:
        raise ValueError(f"entity {where}: field '{repeated}' is declared twice in the class body (the later one would silently win)")
    lowered: dict[str, str] = {}
    for f in specs:
        other = lowered.setdefault(f.name.lower(), f.name)
        if other != f.name:
            raise ValueError(
                f"entity {where}: fields '{other}' and '{f.name}' differ only in case; "
                "stores and file formats would treat them as one column"
            )
    if not specs:
        raise ValueError(f"entity {where}: declares no fields")

    timestamps = [f.name for f in specs if f.timestamp]
    if len(timestamps) > 1:
        raise ValueError(f"entity {where}: two timestamp fields {timestamps}; mark exactly one with field(timestamp=True)")
    if not timestamps:
        datetimes = [f.name for f in specs if f.dtype == TIMESTAMP_DTYPE and not f.key]
        if len(datetimes) != 1:
            raise ValueError(
                f"entity {where}: no timestamp field; mark one datetime field with field(timestamp=True)"
                + (f" (candidates: {datetimes})" if datetimes else "")
            )
        specs = [dataclasses.replace(f, timestamp=True) if f.name == datetimes[0] else f for f in specs]
        timestamps = datetimes
    keys = tuple(f.name for f in specs if f.key)
    schema = Schema(where, tuple(specs), keys, timestamps[0])

    namespace: dict[str, Any] = {
        "__annotations__": {f.name: hints.get(f.name, Any) for f in specs},
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    for name, value in cls.__dict__.items():
        if name not in own and name not in ("__dict__", "__weakref__", "__annotations__"):
            namespace.setdefault(name, value)
    for name, value in defaults.items():
        # a list default is copied per instance (never one list shared by every instance)
        namespace[name] = dataclasses.field(default_factory=functools.partial(list, value)) if isinstance(value, list) else value
    new_cls = type(cls.__name__, cls.__bases__, namespace)
    new_cls = dataclass(kw_only=True)(new_cls)
    setattr(new_cls, SCHEMA_ATTR, schema)
    for name, method in _ROW_METHODS.items():
        if name not in namespace:  # the entity's own definitions win
            setattr(new_cls, name, method)
    return typing.cast(type[T], new_cls)


def _getitem(self: Any, name: str) -> Any:
    if not isinstance(name, str) or name not in self.__dataclass_fields__:
        raise KeyError(f"{type(self).__name__} has no field {name!r} (its fields: {list(self.__dataclass_fields__)})")
    return getattr(self, name)


def _to_dict(self: Any) -> dict[str, Any]:
    """The instance's fields as a plain dict (field order)."""
    return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _keys(self: Any) -> list[str]:
    return list(self.__dataclass_fields__)


# Entity instances read like the dict rows of on-demand results: row["field"], row.to_dict(),
# dict(row) (the same shape whichever lookup returned them).
_ROW_METHODS = {"__getitem__": _getitem, "to_dict": _to_dict, "keys": _keys}


def is_entity(obj: Any) -> bool:
    return isinstance(obj, type) and isinstance(obj.__dict__.get(SCHEMA_ATTR), Schema)


def entity_schema(cls: Any) -> Schema:
    schema = getattr(cls, SCHEMA_ATTR, None)
    if not isinstance(schema, Schema):
        raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not an @entity class")
    return schema


def to_record(obj: Any) -> dict[str, Any]:
    """An entity instance or a mapping as a plain dict."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"expected an entity instance or a dict, got {type(obj).__name__}")


def make_instance(cls: type[T], row: dict[str, Any]) -> T:
    """Build an entity instance from a row dict produced by the engine (UTC datetimes)."""
    schema = entity_schema(cls)
    values = {f.name: row.get(f.name) for f in schema.fields}
    ts = values.get(schema.timestamp)
    if isinstance(ts, datetime.datetime):  # always datetime.timezone.utc, whatever tz object polars used
        values[schema.timestamp] = to_utc(ts)
    return cls(**values)
