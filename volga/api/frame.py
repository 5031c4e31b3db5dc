"""The symbolic ``Entity`` frame that pipeline bodies operate on.

A pipeline body runs once, at definition, on these frames; each operator returns a new
frame wrapping a logical node with its inferred schema. Mistakes (unknown columns, type
errors, bad joins) raise here, naming the pipeline.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import Any, Literal

import polars as pl

from volga.api import nodes
from volga.api.aggregates import Aggregate
from volga.api.entity import FieldSpec, Schema
from volga.api.types import TIMESTAMP_DTYPE, casts_losslessly, dtype_name, dtype_of, unwrap_optional

col = pl.col


class PipelineDefinitionError(ValueError):
    """A pipeline body does something its input schemas do not allow."""


class Entity:
    """A typed, keyed, timestamped stream of rows inside a ``@pipeline`` body.

    The examples use ``orders`` and ``users`` from :mod:`volga.testing.examples`: frames over
    the quickstart's ``Order`` and ``User`` entities, as a pipeline body receives them.

    >>> from volga.testing.examples import orders
    >>> orders  # doctest: +NORMALIZE_WHITESPACE
    Entity<source[orders]>(buyer_id: str, product_id: str, product_type: str, purchased_at: datetime,
                           product_price: float; keys=['buyer_id'], timestamp='purchased_at')
    """

    def __init__(self, node: nodes.Node, where: str) -> None:
        self._node = node
        self._where = where

    # -- introspection ---------------------------------------------------------
    @property
    def schema(self) -> Schema:
        return self._node.schema

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @property
    def node(self) -> nodes.Node:
        return self._node

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}: {f.type_name}" for f in self.schema.fields)
        return f"Entity<{self._node.label()}>({fields}; keys={list(self.schema.keys)}, timestamp={self.schema.timestamp!r})"

    def _new(self, node: nodes.Node) -> Entity:
        return Entity(node, self._where)

    def _error(self, message: str) -> PipelineDefinitionError:
        return PipelineDefinitionError(f"{self._where}: {message}")

    def _require(self, names: Sequence[str], what: str) -> None:
        for name in names:
            if not self.schema.has(name):
                raise self._error(f"{what}: unknown column '{name}'; available: {self.columns}")

    # -- stateless operators ---------------------------------------------------
    def filter(self, predicate: Callable[[dict[str, Any]], bool] | pl.Expr) -> Entity:
        """Keep rows where ``predicate`` holds: a row function or a boolean polars expression.

        >>> from volga.testing.examples import orders
        >>> orders.filter(pl.col("product_price") > 100).columns == orders.columns
        True
        >>> orders.filter(lambda o: o["product_type"] == "ON_SALE")
        Entity<filter>(buyer_id: str, ...)
        >>> orders.filter(pl.col("product_price") * 2)
        Traceback (most recent call last):
        volga.api.frame.PipelineDefinitionError: example frame orders: filter: expression must be boolean, got float
        """
        if isinstance(predicate, pl.Expr):
            out = _expr_dtype(self, predicate, "filter")
            if out != pl.Boolean():
                raise self._error(f"filter: expression must be boolean, got {dtype_name(out)}")
        else:
            _probe_row_fn(self, predicate, "filter")
        return self._new(nodes.FilterNode(self.schema, self._node, predicate))

    def transform(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any]] | pl.Expr | Sequence[pl.Expr],
        schema: dict[str, Any] | None = None,
    ) -> Entity:
        """Map rows: a row function returning a dict (the whole new row), or polars
        expressions applied like ``with_columns``.

        A row function's output columns are inferred at definition time by calling it on
        sample rows built from this frame's schema: the keys it returns are the output
        columns (new keys become columns, keys it leaves out are dropped), the type of a
        new key is read off its sample value's Python type. Keys and the timestamp must
        be kept. If the function cannot run on the samples, or a new key's type cannot be
        read off its value (None, an empty list...), pass ``schema={name: type}`` for
        the whole output; ``schema=`` always overrides the inference.

        At run time a row whose returned keys differ from the output columns (extra or
        missing keys; with ``schema=`` only missing ones) is set aside in
        ``job.rejected`` with a reason naming them, like a row whose function raises.
        """
        if isinstance(fn, pl.Expr) or (isinstance(fn, Sequence) and all(isinstance(e, pl.Expr) for e in fn)):
            exprs = (fn,) if isinstance(fn, pl.Expr) else tuple(fn)
            out_schema = _exprs_schema(self, exprs, "transform")
            fields = _fields_from_polars(self.schema, out_schema, self._where, _expr_roots(exprs))
            return self._new(nodes.TransformNode(_with_fields(self.schema, fields), self._node, exprs))
        if not callable(fn):
            raise self._error("transform: expected a row function or polars expressions")
        if schema is None:
            new_schema = _with_fields(self.schema, _infer_row_fn_fields(self, fn))
            return self._new(nodes.TransformNode(new_schema, self._node, fn))
        fields = []
        for name, annotation in schema.items():
            try:
                dtype = dtype_of(annotation)
            except TypeError as e:
                raise self._error(f"transform: column '{name}': {e}") from None
            # the declared type is the contract: a None in a non-Optional column is a
            # rejected row at run time (volga.ops.stateless)
            optional = unwrap_optional(annotation)[1]
            fields.append(
                FieldSpec(name, dtype, optional=optional,
                          key=name in self.schema.keys, timestamp=name == self.schema.timestamp,
                          nullable_by=f"transform schema= declares '{name}' Optional" if optional else "")
            )
        missing = [n for n in (*self.schema.keys, self.schema.timestamp) if n not in schema]
        if missing:
            raise self._error(f"transform: output schema must keep key/timestamp columns {missing}")
        new_schema = _with_fields(self.schema, fields)
        _probe_row_fn(self, fn, "transform")
        return self._new(nodes.TransformNode(new_schema, self._node, fn, exact_keys=False))

    def assign(self, column: str, type: Any, fn: Callable[[dict[str, Any]], Any] | pl.Expr) -> Entity:
        """Add (or replace) ``column`` of ``type`` computed by a row function or an expression.

        >>> from volga.testing.examples import orders
        >>> orders.assign("with_tax", float, pl.col("product_price") * 1.2).columns[-1]
        'with_tax'
        >>> orders.assign("is_sale", bool, lambda o: o["product_type"] == "ON_SALE").schema.field("is_sale").type_name
        'bool'
        """
        try:
            dtype = dtype_of(type)
        except TypeError as e:
            raise self._error(f"assign '{column}': {e}") from None
        if column in self.schema.keys or column == self.schema.timestamp:
            raise self._error(f"assign '{column}': cannot overwrite a key or the timestamp column")
        if isinstance(fn, pl.Expr):
            got = _expr_dtype(self, fn, f"assign '{column}'")
            if not casts_losslessly(got, dtype):
                raise self._error(
                    f"assign '{column}': the expression gives {dtype_name(got)}, which {dtype_name(dtype)} cannot "
                    f"hold without loss; declare {dtype_name(got)}, or convert explicitly (e.g. .round().cast(int))"
                )
        else:
            _probe_row_fn(self, fn, f"assign '{column}'")
        # `type` is enforced per row (volga.ops.stateless): a None for a non-Optional
        # type, or a value the type cannot hold (2.5 for int), is a rejected row
        optional = unwrap_optional(type)[1]
        fields = [f for f in self.schema.fields if f.name != column] + [
            FieldSpec(column, dtype, optional=optional, nullable_by=f"assign '{column}' declares it Optional" if optional else "")
        ]
        return self._new(nodes.AssignNode(_with_fields(self.schema, fields), self._node, column, fn))

    def rename(self, columns: dict[str, str]) -> Entity:
        """Rename columns; keys and timestamp keep their role under the new name.

        >>> from volga.testing.examples import orders
        >>> renamed = orders.rename({"buyer_id": "user_id", "purchased_at": "timestamp"})
        >>> renamed.schema.keys, renamed.schema.timestamp
        (('user_id',), 'timestamp')
        """
        self._require(list(columns), "rename")
        mapping = dict(columns)
        names = [mapping.get(n, n) for n in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise self._error(f"rename: would create duplicate column(s) {dupes}")
        fields = tuple(dataclasses.replace(f, name=mapping.get(f.name, f.name)) for f in self.schema.fields)
        schema = Schema(
            self.schema.name,
            fields,
            tuple(mapping.get(k, k) for k in self.schema.keys),
            mapping.get(self.schema.timestamp, self.schema.timestamp),
        )
        return self._new(nodes.RenameNode(schema, self._node, tuple(mapping.items())))

    def drop(self, columns: Sequence[str]) -> Entity:
        """Remove value columns (keys and the timestamp cannot be dropped).

        >>> from volga.testing.examples import orders
        >>> orders.drop(["product_id", "product_type"]).columns
        ['buyer_id', 'purchased_at', 'product_price']
        """
        columns = [columns] if isinstance(columns, str) else list(columns)
        self._require(columns, "drop")
        protected = [c for c in columns if c in self.schema.keys or c == self.schema.timestamp]
        if protected:
            raise self._error(f"drop: cannot drop key/timestamp column(s) {protected}")
        return self.select([c for c in self.columns if c not in columns])

    def select(self, columns: Sequence[str]) -> Entity:
        """Keep only these columns, plus the keys and timestamp (always kept).

        >>> from volga.testing.examples import orders
        >>> orders.select(["product_price"]).columns
        ['buyer_id', 'purchased_at', 'product_price']
        """
        columns = [columns] if isinstance(columns, str) else list(columns)
        self._require(columns, "select")
        keep = set(columns) | set(self.schema.keys) | {self.schema.timestamp}
        fields = tuple(f for f in self.schema.fields if f.name in keep)
        schema = dataclasses.replace(self.schema, fields=fields)
        return self._new(nodes.SelectNode(schema, self._node, tuple(f.name for f in fields)))

    def dropnull(self, columns: Sequence[str] | None = None) -> Entity:
        """Drop rows with a null in ``columns`` (default: every Optional column).

        >>> from volga.testing.examples import orders, users
        >>> joined = orders.join(users, left_on="buyer_id", right_on="user_id")  # a left join: name is Optional
        >>> joined.schema.field("name").optional, joined.dropnull(["name"]).schema.field("name").optional
        (True, False)
        """
        if columns is None:
            columns = [f.name for f in self.schema.fields if f.optional]
        columns = [columns] if isinstance(columns, str) else list(columns)
        self._require(columns, "dropnull")
        fields = tuple(dataclasses.replace(f, optional=False, nullable_by="") if f.name in columns else f for f in self.schema.fields)
        schema = dataclasses.replace(self.schema, fields=fields)
        return self._new(nodes.DropNullNode(schema, self._node, tuple(columns)))

    # -- stateful operators ----------------------------------------------------
    def join(
        self,
        other: Entity,
        on: Sequence[str] | None = None,
        *,
        left_on: Sequence[str] | None = None,
        right_on: Sequence[str] | None = None,
        how: Literal["left", "inner"] = "left",
        suffix: str = "_right",
    ) -> Entity:
        """As-of join: each row is matched with ``other``'s latest row of the same key
        whose timestamp is <= this row's timestamp.

        The output keeps this frame's columns, keys and timestamp (the output timestamp
        is this row's), then ``other``'s value columns: not its join keys (they equal this
        frame's) and not its timestamp. A value column of ``other`` whose name is already
        taken gets ``suffix`` appended; if that name is taken too, the join is an error
        (never a silent overwrite). To keep the matched row's time, ``assign`` it to a
        value column of ``other`` before the join.

        >>> from volga.testing.examples import orders, users
        >>> orders.join(users, left_on=["buyer_id"], right_on=["user_id"]).columns
        ['buyer_id', 'product_id', 'product_type', 'purchased_at', 'product_price', 'name']
        >>> orders.join(users, left_on=["product_id"], right_on=["name"])
        Traceback (most recent call last):
        volga.api.frame.PipelineDefinitionError: example frame orders: join: right_on ['name'] must be the key of User ...
        """
        if not isinstance(other, Entity):
            raise self._error(f"join: expected an Entity frame, got {type(other).__name__}")
        if how not in ("left", "inner"):
            raise self._error(f"join: how must be 'left' or 'inner', not {how!r}")
        if on is not None:
            if left_on is not None or right_on is not None:
                raise self._error("join: pass either on= or left_on=/right_on=, not both")
            left_on = right_on = [on] if isinstance(on, str) else list(on)
        if left_on is None or right_on is None:
            raise self._error("join: pass on= or both left_on= and right_on=")
        left_keys = [left_on] if isinstance(left_on, str) else list(left_on)
        right_keys = [right_on] if isinstance(right_on, str) else list(right_on)
        if len(left_keys) != len(right_keys) or not left_keys:
            raise self._error(f"join: left_on {left_keys} and right_on {right_keys} must have the same, non-zero length")
        self._require(left_keys, "join left_on")
        for name in right_keys:
            if not other.schema.has(name):
                raise self._error(f"join right_on: unknown column '{name}' in {other.schema.name}; available: {other.columns}")
        for lk, rk in zip(left_keys, right_keys):
            ld, rd = self.schema.field(lk).dtype, other.schema.field(rk).dtype
            if ld != rd:
                raise self._error(f"join: key types differ: '{lk}' is {dtype_name(ld)} but '{rk}' is {dtype_name(rd)}")
        if sorted(right_keys) != sorted(other.schema.keys):
            raise self._error(
                f"join: right_on {right_keys} must be the key of {other.schema.name} {list(other.schema.keys)} "
                "(an as-of join looks up the latest row per right key)"
            )
        taken = set(self.columns)
        right_columns: list[tuple[str, str]] = []
        fields = list(self.schema.fields)
        for f in other.schema.fields:
            if f.name in right_keys or f.name == other.schema.timestamp:
                continue  # keys equal the left ones; the output timestamp is the left row's
            out = f.name
            if out in taken:
                out = f.name + suffix
                if out in taken:
                    raise self._error(f"join: right column '{f.name}' collides with '{f.name}' and '{out}'; rename it first")
            taken.add(out)
            right_columns.append((f.name, out))
            if how == "left":
                why = f"join(how='left') with {other.schema.name}: null when a row has no match"
            else:
                why = f.nullable_by or f"Optional in {other.schema.name}"
            fields.append(FieldSpec(out, f.dtype, optional=f.optional or how == "left", nullable_by=why if f.optional or how == "left" else ""))
        schema = dataclasses.replace(self.schema, fields=tuple(fields))
        node = nodes.JoinNode(
            schema, self._node, other._node, tuple(left_keys), tuple(right_keys), how, tuple(right_columns)
        )
        return self._new(node)

    def group_by(self, keys: Sequence[str] | str) -> GroupBy:
        """Group by key columns, then ``.aggregate([...])`` (see :meth:`GroupBy.aggregate`).

        >>> from volga import Count
        >>> from volga.testing.examples import orders
        >>> orders.group_by("product_type").aggregate([Count(window="1h", into="n")]).schema.keys
        ('product_type',)
        """
        keys = [keys] if isinstance(keys, str) else list(keys)
        if not keys:
            raise self._error("group_by: needs at least one key column")
        self._require(keys, "group_by")
        for k in keys:
            f = self.schema.field(k)
            if isinstance(f.dtype, pl.List) or k == self.schema.timestamp:
                raise self._error(f"group_by: '{k}' ({f.type_name}) cannot be a group key")
        return GroupBy(self, tuple(keys))


class GroupBy:
    def __init__(self, frame: Entity, keys: tuple[str, ...]) -> None:
        self._frame, self._keys = frame, keys

    def aggregate(self, aggregates: Sequence[Aggregate]) -> Entity:
        """One output row per input row: the keys, the timestamp, and each aggregate
        over the key's events in ``[t - window, t]`` up to and including this row.

        >>> from volga import Avg, Count
        >>> from volga.testing.examples import orders
        >>> orders.group_by("buyer_id").aggregate(
        ...     [Count(window="1h", into="orders_1h"), Avg(on="product_price", window="7d", into="avg_price_7d")]
        ... )
        Entity<aggregate>(buyer_id: str, purchased_at: datetime, orders_1h: int, avg_price_7d: float; keys=['buyer_id'], timestamp='purchased_at')
        """
        frame = self._frame
        if not aggregates:
            raise frame._error("aggregate: needs at least one aggregate")
        fields = [dataclasses.replace(frame.schema.field(k), key=True, optional=False) for k in self._keys]
        fields.append(dataclasses.replace(frame.schema.field(frame.schema.timestamp), timestamp=True))
        seen = {f.name for f in fields}
        for agg in aggregates:
            if not isinstance(agg, Aggregate):
                raise frame._error(f"aggregate: expected Count/Sum/Avg/..., got {agg!r}")
            if agg.into in seen:
                raise frame._error(f"aggregate: output column '{agg.into}' is used twice (or is a key/timestamp)")
            seen.add(agg.into)
            in_dtype = None
            # Every window holds the current event, so an aggregate is null only when all
            # its values can be null (a nullable input column), or when one value is not
            # enough (``null_below`` 2: Stddev, Variance); Count/CountDistinct (0) and
            # LastN ([]) are never null (``null_below`` 0).
            optional, why = False, ""
            label = f"{type(agg).__name__}(into={agg.into!r})"
            if agg.on is not None:
                frame._require([agg.on], f"{label} on")
                in_field = frame.schema.field(agg.on)
                in_dtype = in_field.dtype
                agg.check_input(in_dtype, frame._where)
                if agg.null_below > 0:
                    if agg.null_below > 1:
                        optional, why = True, f"{label}: null below {_NUMBERS.get(agg.null_below, agg.null_below)} values"
                    elif in_field.optional:
                        optional = True
                        why = f"{label}: null while its window has no non-null '{agg.on}' ({in_field.nullable_by or 'Optional'})"
            elif agg.needs_on:
                raise frame._error(f"{label} needs on=")
            fields.append(FieldSpec(agg.into, agg.output_dtype(in_dtype), optional=optional, nullable_by=why))
        schema = Schema(frame.schema.name, tuple(fields), self._keys, frame.schema.timestamp)
        return frame._new(nodes.AggregateNode(schema, frame._node, self._keys, tuple(aggregates)))


_NUMBERS = {2: "two", 3: "three"}


# -- schema inference helpers ----------------------------------------------------------
def _with_fields(schema: Schema, fields: Sequence[FieldSpec]) -> Schema:
    return dataclasses.replace(schema, fields=tuple(fields))


def _exprs_schema(frame: Entity, exprs: Sequence[pl.Expr], what: str) -> dict[str, pl.DataType]:
    try:
        return dict(pl.LazyFrame(schema=frame.schema.polars_schema()).with_columns(*exprs).collect_schema())
    except Exception as e:  # polars raises several error types for bad expressions
        raise frame._error(f"{what}: invalid expression: {_first_line(e)}") from None


def _expr_dtype(frame: Entity, expr: pl.Expr, what: str) -> pl.DataType:
    try:
        schema = pl.LazyFrame(schema=frame.schema.polars_schema()).select(expr).collect_schema()
    except Exception as e:
        raise frame._error(f"{what}: invalid expression: {_first_line(e)}; columns are {frame.columns}") from None
    return next(iter(schema.values()))


def _fields_from_polars(
    schema: Schema, out: dict[str, pl.DataType], where: str, roots: dict[str, tuple[str, ...]] | None = None
) -> list[FieldSpec]:
    roots = roots or {}
    fields = []
    for name, dtype in out.items():
        # a column an expression writes is nullable when the expression reads a nullable
        # column; one that makes nulls from non-null input (when/then without
        # otherwise...) has those rows rejected at run time (volga.ops.stateless)
        nullable = [r for r in roots.get(name, ()) if schema.has(r) and schema.field(r).optional]
        why = f"transform: '{name}' reads nullable '{nullable[0]}' ({schema.field(nullable[0]).nullable_by or 'Optional'})" if nullable else ""
        if schema.has(name):
            old = schema.field(name)
            if (old.key or old.timestamp) and dtype != old.dtype:
                raise PipelineDefinitionError(f"{where}: transform changes the type of key/timestamp '{name}'")
            if old.optional or old.key or old.timestamp or not nullable:
                fields.append(dataclasses.replace(old, dtype=dtype))
            else:
                fields.append(dataclasses.replace(old, dtype=dtype, optional=True, nullable_by=why))
        else:
            fields.append(FieldSpec(name, dtype, optional=bool(nullable), nullable_by=why))
    return fields


def _expr_roots(exprs: Sequence[pl.Expr]) -> dict[str, tuple[str, ...]]:
    """Output column name -> the columns its expression reads."""
    out: dict[str, tuple[str, ...]] = {}
    for e in exprs:
        try:
            out[e.meta.output_name()] = tuple(e.meta.root_names())
        except Exception:  # a multi-output expression: no single name; its columns exist already
            continue
    return out


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class _UnknownColumn(KeyError):
    pass


class _ProbeRow(dict):  # type: ignore[type-arg]
    """A sample row that reports reads of columns the schema does not have."""

    def __missing__(self, key: str) -> Any:
        raise _UnknownColumn(key)


_SAMPLES: dict[Any, Any] = {
    pl.String(): "",
    pl.Int64(): 0,
    pl.Float64(): 0.0,
    pl.Boolean(): False,
    TIMESTAMP_DTYPE: datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
}


def _probe_row_fn(frame: Entity, fn: Callable[..., Any], what: str) -> None:
    """Call a row function once on a sample row to catch unknown column names early.

    Only a read of a missing column is reported; any other exception from the sample
    values (division by zero...) is ignored: it says nothing about real rows.
    """
    if not callable(fn):
        raise frame._error(f"{what}: expected a row function or a polars expression, got {type(fn).__name__}")
    row = _ProbeRow({f.name: _SAMPLES.get(f.dtype, []) for f in frame.schema.fields})
    try:
        fn(row)
    except _UnknownColumn as e:
        raise frame._error(f"{what}: the row function reads unknown column {e}; columns are {frame.columns}") from None
    except Exception:
        pass


# Sample values for inferring a row function's output: the first set is tried first; the
# second avoids the usual failures of the first (division by zero, empty strings/lists).
_SAMPLES_NONZERO: dict[Any, Any] = {
    pl.String(): "a",
    pl.Int64(): 1,
    pl.Float64(): 1.0,
    pl.Boolean(): True,
    TIMESTAMP_DTYPE: datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc),
}


def _sample_value(dtype: pl.DataType, samples: dict[Any, Any]) -> Any:
    if isinstance(dtype, pl.List):
        return [_sample_value(dtype.inner, samples)] if samples is _SAMPLES_NONZERO else []  # type: ignore[arg-type]
    return samples.get(dtype)


def _value_dtype(value: Any) -> pl.DataType | None:
    """The column type of a Python value, or None when it says nothing (None, [])."""
    if value is None:
        return None
    if isinstance(value, list):
        inner = next((_value_dtype(v) for v in value if v is not None), None)
        return None if inner is None else pl.List(inner)
    for py in (bool, int, float, str, datetime.datetime):  # bool before int: True is an int
        if type(value) is py or (py is datetime.datetime and isinstance(value, datetime.datetime)):
            return dtype_of(py)
    return None


def _infer_row_fn_fields(frame: Entity, fn: Callable[..., Any]) -> list[FieldSpec]:
    """The output columns of a ``transform`` row function, by calling it on sample rows.

    Columns are the keys of the first sample result, in its order; each column's type is
    the input column's type, or (new or retyped columns) the type of its sample value.
    """
    schema = frame.schema
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for samples in (_SAMPLES, _SAMPLES_NONZERO):
        row = _ProbeRow({f.name: _sample_value(f.dtype, samples) for f in schema.fields})
        try:
            out = fn(row)
        except _UnknownColumn as e:
            raise frame._error(f"transform: the row function reads unknown column {e}; columns are {frame.columns}") from None
        except Exception as e:
            errors.append(f"{type(e).__name__}: {_first_line(e)}")
            continue
        if not isinstance(out, dict):
            raise frame._error(f"transform: the row function must return a dict (the whole new row), got {type(out).__name__}")
        results.append(out)
    if not results:
        raise frame._error(
            "transform: cannot infer the output columns: the row function raised on every sample row "
            f"({errors[0]}); pass schema={{name: type}} for its output"
        )
    names = list(results[0])
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise frame._error(f"transform: the row function returns non-string key(s) {bad}")
    missing = [n for n in (*schema.keys, schema.timestamp) if n not in names]
    if missing:
        raise frame._error(f"transform: the row function must keep key/timestamp columns {missing}")
    fields: list[FieldSpec] = []
    for name in names:
        dtype = next((d for d in (_value_dtype(r.get(name)) for r in results) if d is not None), None)
        if schema.has(name):
            old = schema.field(name)
            if dtype is None or dtype == old.dtype or (isinstance(old.dtype, pl.List) and isinstance(dtype, pl.List)):
                fields.append(old)
            elif old.key or old.timestamp:
                raise frame._error(
                    f"transform: the row function changes the type of key/timestamp '{name}' "
                    f"({old.type_name} -> {dtype_name(dtype)})"
                )
            else:
                fields.append(dataclasses.replace(old, dtype=dtype))
        elif dtype is None:
            value = next((r[name] for r in results if name in r), None)
            raise frame._error(
                f"transform: cannot infer the type of new column '{name}' from its sample value {value!r}; "
                "pass schema={name: type} for the output"
            )
        else:
            # None at run time in a non-Optional column is a rejected row (volga.ops.stateless)
            fields.append(FieldSpec(name, dtype, optional=False))
    return fields
