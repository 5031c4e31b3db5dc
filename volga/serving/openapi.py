"""What the server serves, as data: ``GET /features`` and the OpenAPI document.

Both are built from the registered definitions each time they are asked for (they are
not on the hot path), so features registered after the server started appear too.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

import polars as pl

from volga.api.decorators import PipelineDef
from volga.api.entity import Schema
from volga.api.on_demand import QUERY_ARGS, OnDemandDef, OnDemandDefinitionError, dependency_order
from volga.api.types import dtype_name, dtype_of, unwrap_optional

VERSION = "0.1.0"


def _type_name(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    inner, optional = unwrap_optional(annotation)
    try:
        name = dtype_name(dtype_of(inner))
    except TypeError:
        name = getattr(annotation, "__name__", None) or repr(annotation)
    return f"Optional[{name}]" if optional else name


def _query_args(defn: OnDemandDef, definitions: Mapping[str, Any]) -> dict[str, list[str]]:
    """Query arguments every pipeline read of ``defn`` (and what it chains on) needs."""
    out: dict[str, list[str]] = {}
    for node in dependency_order([defn], definitions):
        for dep, target in node.resolved(definitions):
            for arg in QUERY_ARGS[dep.query]:
                if isinstance(target, PipelineDef) and arg not in out.setdefault(target.name, []):
                    out[target.name].append(arg)
    return {name: args for name, args in out.items() if args}


def describe(definition: Any, definitions: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of ``GET /features``."""
    schema: Schema = definition.schema
    entry: dict[str, Any] = {"name": definition.name, "keys": list(schema.keys), "output": schema.describe()}
    if isinstance(definition, PipelineDef):
        entry["kind"] = "pipeline"
        entry["query"] = "latest"
        return entry
    entry["kind"] = "on_demand"
    entry["dependencies"] = [
        {"name": dep.name, "query": dep.query, "param": dep.param, **({"query_args": dict(dep.query_args)} if dep.query_args else {})}
        for dep in definition.dependencies
    ]
    entry["args"] = [
        {"name": a.name, "type": _type_name(a.annotation), "default": a.default}
        for a in definition.args
        if a.name not in schema.keys
    ]
    try:
        entry["query_args"] = _query_args(definition, definitions)
    except OnDemandDefinitionError as e:
        entry["error"] = str(e)
    return entry


def servable(definitions: Mapping[str, Any]) -> list[Any]:
    return [d for _, d in sorted(definitions.items()) if isinstance(d, (OnDemandDef, PipelineDef))]


def feature_listing(definitions: Mapping[str, Any]) -> dict[str, Any]:
    """The body of ``GET /features``."""
    return {"features": [describe(d, definitions) for d in servable(definitions)]}


def _json_schema(dtype: pl.DataType, optional: bool) -> dict[str, Any]:
    if isinstance(dtype, pl.List):
        out: dict[str, Any] = {"type": "array", "items": _json_schema(typing.cast(pl.DataType, dtype.inner), False)}
    elif isinstance(dtype, pl.Datetime):
        out = {"type": "string", "format": "date-time"}
    else:
        out = {"type": {"String": "string", "Int64": "integer", "Float64": "number", "Boolean": "boolean"}.get(type(dtype).__name__, "string")}
    if optional:
        out["type"] = [out["type"], "null"]
    return out


def _entity_schema(schema: Schema) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _json_schema(f.dtype, f.optional) for f in schema.fields},
        "required": [f.name for f in schema.fields if not f.optional],
    }


def openapi_spec(definitions: Mapping[str, Any], *, auth: bool) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the server, with one output schema per feature."""
    features = servable(definitions)
    names = [d.name for d in features]
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "examples": ["BadRequest", "InvalidKeys", "FeatureNotFound"]},
                        "status": {"type": "integer"},
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "the request field at fault, e.g. feature_keys.f[0].user_id"},
                        "feature": {"type": "string", "description": "FeatureFunctionError: the on-demand feature that raised"},
                        "exception": {"type": "string", "description": "FeatureFunctionError: the exception type"},
                    },
                    "required": ["type", "status", "message"],
                }
            },
        },
        "Key": {"type": "object", "description": "the feature's key fields (see GET /features)"},
        "FeaturesRequest": {
            "type": "object",
            "required": ["target_features"],
            "additionalProperties": False,
            "properties": {
                "target_features": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": names}},
                "feature_keys": {
                    "type": "object",
                    "description": "keys per target feature",
                    "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
                },
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}, "description": "keys shared by all targets"},
                "query_args": {
                    "type": "object",
                    "description": "n (last_n), start/end (range; ISO 8601 or null): shared, or per pipeline {name: {...}}",
                },
                "udf_args": {"type": "object", "description": "function arguments: shared, or per feature {name: {...}}"},
            },
        },
    }
    results: dict[str, Any] = {}
    for d in features:
        component = f"{d.name}.{d.schema.name}"
        schemas[component] = _entity_schema(d.schema)
        results[d.name] = {"type": "array", "items": {"anyOf": [{"$ref": f"#/components/schemas/{component}"}, {"type": "null"}]}}
    schemas["FeaturesResponse"] = {
        "type": "object",
        "properties": {"results": {"type": "object", "properties": results, "description": "one entry per key, in order"}},
    }

    def errors(*statuses: int) -> dict[str, Any]:
        return {str(s): {"description": _ERROR_TEXT[s], "content": _json("Error")} for s in statuses}

    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Volga feature server", "version": VERSION},
        "paths": {
            "/features": {
                "post": {
                    "summary": "Compute on-demand features (and latest pipeline rows) for keys",
                    "requestBody": {"required": True, "content": _json("FeaturesRequest")},
                    "responses": {"200": {"description": "results", "content": _json("FeaturesResponse")}, **errors(400, 401, 404, 413, 500)},
                },
                "get": {
                    "summary": "What is served: kinds, keys, output schemas, arguments",
                    "responses": {"200": {"description": "the features", "content": {"application/json": {"schema": {"type": "object"}}}}, **errors(401)},
                },
            },
            "/health": {
                "get": {"summary": "Liveness (never needs auth)", "security": [],
                        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}},
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}},
            },
        },
        "components": {"schemas": schemas},
    }
    if auth:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec


_ERROR_TEXT = {
    400: "bad request: the error names the field",
    401: "missing or wrong bearer token",
    404: "unknown feature",
    413: "body larger than the server's limit",
    500: "an on-demand function raised (feature and exception type given)",
}


def _json(component: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}}


__all__ = ["describe", "feature_listing", "openapi_spec"]
