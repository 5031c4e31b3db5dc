"""What a ``get_historical_features`` call asks for: features, output columns, keys, ttl.

``features`` names pipelines and on-demand features, whole (``"user_spent"``: every value
field, i.e. every field but the keys and the timestamp) or one field at a time
(``"user_spent.avg_spent_7d"``; any field may be named this way, the timestamp too).
Output columns are named by field, or ``"<feature>.<field>"`` with ``full_names=True``.

``key_map`` maps a feature's key field to the spine column holding it: ``{"user_id":
"buyer"}`` for every requested feature with a ``user_id`` key, or ``{"user_spent":
{"user_id": "buyer"}}`` for one feature. By default a key field is read from the spine
column of the same name.

``ttl`` (pipeline features only): ``"1h"`` for all of them, or ``{"user_spent": "1h"}``
per feature. A value whose row is older than the ttl at the spine time (``t - ts > ttl``)
is null, as ``client.get_latest(..., ttl=...)`` returns None online.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from volga.api.decorators import PipelineDef
from volga.api.entity import Schema
from volga.api.on_demand import OnDemandDef
from volga.api.types import Duration, parse_duration_us
from volga.errors import UnknownFeature, naming_hint


@dataclasses.dataclass
class FeatureRequest:
    """One requested pipeline or on-demand feature, with the fields wanted from it."""

    name: str
    definition: PipelineDef | OnDemandDef
    fields: list[str]  # in request order, each once
    key_columns: dict[str, str] = dataclasses.field(default_factory=dict)  # feature key -> spine column
    ttl_us: int | None = None

    @property
    def schema(self) -> Schema:
        return self.definition.schema

    @property
    def is_pipeline(self) -> bool:
        return isinstance(self.definition, PipelineDef)

    def column_names(self, full_names: bool) -> list[str]:
        return [f"{self.name}.{f}" if full_names else f for f in self.fields]


def parse_features(features: Any, definitions: Mapping[str, Any]) -> list[FeatureRequest]:
    """Group ``features`` by feature, in first-mention order; errors name the culprit."""
    if isinstance(features, str) or not isinstance(features, Sequence) or not features:
        raise TypeError(
            f"features must be a non-empty list of names like ['user_spent', 'user_spent.avg_spent_7d'], got {features!r}"
        )
    requests: dict[str, FeatureRequest] = {}
    for item in features:
        if not isinstance(item, str):
            raise TypeError(f"features: each entry must be a name (str), got {item!r}")
        name, dot, field_name = item.partition(".")
        definition = definitions.get(name)
        if not isinstance(definition, (PipelineDef, OnDemandDef)):
            known = sorted(n for n, d in definitions.items() if isinstance(d, (PipelineDef, OnDemandDef)))
            raise UnknownFeature(
                f"unknown feature {name!r} in features entry {item!r}; known pipelines and on-demand features: "
                f"{known} (client.register(...) makes one known){naming_hint(item)}"
            )
        schema = definition.schema
        if dot:
            if not schema.has(field_name):
                raise UnknownFeature(f"feature {name!r} has no field {field_name!r} (its fields: {schema.names})")
            wanted = [field_name]
        else:
            wanted = schema.value_names
        request = requests.setdefault(name, FeatureRequest(name, definition, []))
        for f in wanted:
            if f in request.fields:
                raise ValueError(f"features: {name}.{f} is requested twice (features={list(features)!r})")
            request.fields.append(f)
    return list(requests.values())


def check_columns(requests: Sequence[FeatureRequest], spine_columns: Sequence[str], full_names: bool) -> list[str]:
    """The output column names; a clash between features or with the spine is an error."""
    owners: dict[str, str] = {}
    spine = set(spine_columns)
    for request in requests:
        for field_name, column in zip(request.fields, request.column_names(full_names)):
            where = f"{request.name}.{field_name}"
            if column in spine:
                raise ValueError(
                    f"feature column {column!r} (from {where}) clashes with the spine column of that name; "
                    + ("rename the spine column" if full_names else "pass full_names=True to name columns '<feature>.<field>', or rename the spine column")
                )
            if column in owners:
                raise ValueError(
                    f"column {column!r} would come from both {owners[column]} and {where}; "
                    "pass full_names=True to name columns '<feature>.<field>', or request only one of them"
                )
            owners[column] = where
    return list(owners)


def apply_key_map(requests: Sequence[FeatureRequest], key_map: Mapping[str, Any] | None) -> None:
    """Fill each request's ``key_columns`` (feature key -> spine column)."""
    key_map = {} if key_map is None else key_map
    if not isinstance(key_map, Mapping):
        raise TypeError(f"key_map must be a dict like {{'user_id': 'spine_column'}}, got {key_map!r}")
    by_name = {r.name: r for r in requests}
    global_map: dict[str, str] = {}
    scoped: dict[str, Mapping[str, Any]] = {}
    for key, value in key_map.items():
        if isinstance(value, Mapping):
            if key not in by_name:
                raise ValueError(f"key_map[{key!r}]: {key!r} is not one of the requested features {list(by_name)}")
            scoped[key] = value
        elif isinstance(value, str):
            global_map[key] = value
        else:
            raise TypeError(f"key_map[{key!r}] must be a spine column name (str) or, per feature, a dict; got {value!r}")
    all_keys = {k for r in requests for k in r.schema.keys}
    for key in global_map:
        if key not in all_keys:
            raise ValueError(f"key_map: {key!r} is not a key field of any requested feature (their keys: {sorted(all_keys)})")
    for request in requests:
        own = scoped.get(request.name, {})
        for key, column in own.items():
            if key not in request.schema.keys:
                raise ValueError(f"key_map[{request.name!r}]: {key!r} is not a key field of {request.name} (keys: {list(request.schema.keys)})")
            if not isinstance(column, str):
                raise TypeError(f"key_map[{request.name!r}][{key!r}] must be a spine column name (str), got {column!r}")
        request.key_columns = {k: own.get(k, global_map.get(k, k)) for k in request.schema.keys}


def apply_ttl(requests: Sequence[FeatureRequest], ttl: Duration | Mapping[str, Duration] | None) -> None:
    """Set each pipeline request's ``ttl_us``; a ttl for an on-demand feature is an error."""
    if ttl is None:
        return
    if isinstance(ttl, Mapping):
        by_name = {r.name: r for r in requests}
        for name, value in ttl.items():
            request = by_name.get(name)
            if request is None:
                raise ValueError(f"ttl[{name!r}]: {name!r} is not one of the requested features {list(by_name)}")
            if not request.is_pipeline:
                raise ValueError(
                    f"ttl[{name!r}]: ttl applies to pipeline features; {name} is an on-demand feature, computed as "
                    "get_on_demand would at the spine time (which has no ttl)"
                )
            request.ttl_us = parse_duration_us(value, what=f"ttl[{name!r}]")
        return
    ttl_us = parse_duration_us(ttl, what="ttl")
    for request in requests:
        if request.is_pipeline:
            request.ttl_us = ttl_us
