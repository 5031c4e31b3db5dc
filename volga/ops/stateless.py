"""Row-local operators on columnar batches: filter, transform, assign, rename, select, dropnull.

Polars expressions run vectorised (the fast path). Python row functions get one dict
per row (the slow path, as Volga users write them), except simple filter predicates,
which run as the equivalent polars expression (``volga.ops.row_predicates``). A row
function that raises does not kill the job: the row is set aside with the error as its
reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from volga.api import nodes
from volga.api.types import dtype_name, value_fits
from volga.errors import Rejected
from volga.ops.protocol import OperatorSpec, RowOperator, State, code_digest
from volga.ops.routing import SEQ
from volga.ops.row_predicates import RowPredicate, translate

HIDDEN_PREFIX = "__volga_"  # columns carried for request-time evaluation (volga.plan.request_time)

StatelessNode = nodes.STATELESS


class StatelessChain(RowOperator):
    """Consecutive stateless nodes fused into one operator (no hop between them)."""

    def __init__(self, steps: list[nodes.UnaryNode], where: str) -> None:
        self.steps = steps
        self.where = where
        self.rejected: list[Rejected] = []
        self._predicates: dict[int, RowPredicate | None] = {}  # FilterNode id -> its expression, if simple

    @property
    def schema(self) -> Any:
        return self.steps[-1].schema

    def snapshot(self) -> dict[str, Any]:
        """Stateless: nothing to keep (``ops.protocol``)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        for step in self.steps:
            if batch.height == 0:
                return pl.DataFrame(schema=self.schema.polars_schema())
            batch = self._apply_one(step, batch)
        return batch

    def _apply_one(self, step: nodes.UnaryNode, batch: pl.DataFrame) -> pl.DataFrame:
        if isinstance(step, nodes.FilterNode):
            if isinstance(step.predicate, pl.Expr):
                return batch.filter(step.predicate)
            predicate = self._predicate(step, step.predicate)
            if predicate is not None and predicate.applies_to(batch):
                return batch.filter(predicate.expr)
            batch, mask = self._row_values(step, batch, step.predicate)
            return batch.filter(pl.Series(mask, dtype=pl.Boolean).fill_null(False))
        if isinstance(step, nodes.TransformNode):
            schema = step.schema.polars_schema()
            if isinstance(step.fn, tuple):
                out = batch.with_columns(*step.fn).select(list(schema))
                return self._reject_nulls(step, batch, out, _non_null_outputs(step, batch))
            hidden = _hidden(step.schema)
            if hidden:  # carried past the row function, which never sees them
                schema = {k: v for k, v in schema.items() if k not in hidden}
            batch, rows = self._row_values(step, batch, step.fn)
            out = pl.from_dicts(rows, schema=schema, strict=False) if rows else pl.DataFrame(schema=schema)
            return out.hstack(batch.select(hidden)) if hidden else out
        if isinstance(step, nodes.AssignNode):
            dtype = step.schema.field(step.column).dtype
            if isinstance(step.fn, pl.Expr):
                out = batch.with_columns(step.fn.cast(dtype).alias(step.column))
                checked = [] if step.schema.field(step.column).optional else [step.column]
                return self._reject_nulls(step, batch, out, checked)
            batch, values = self._row_values(step, batch, step.fn)
            return batch.with_columns(pl.Series(step.column, values, dtype=dtype, strict=False))
        if isinstance(step, nodes.RenameNode):
            return batch.rename(dict(step.mapping))
        if isinstance(step, nodes.SelectNode):
            return batch.select(list(step.columns))
        if isinstance(step, nodes.DropNullNode):
            return batch.drop_nulls(list(step.columns))
        raise AssertionError(f"not a stateless node: {step!r}")

    def _reject_nulls(self, step: nodes.UnaryNode, before: pl.DataFrame, out: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
        """Set aside the rows where an expression left a null in a non-Optional column."""
        if not columns:
            return out
        nulls = pl.any_horizontal([pl.col(c).is_null() for c in columns])
        bad = out.select(nulls.alias("bad")).to_series()
        if not bad.any():
            return out
        for index in bad.arg_true().to_list():
            names = [c for c in columns if out[c][index] is None]
            self.rejected.append(Rejected(
                f"{self.where} {step.label()}",
                f"{step.label()}: null in non-Optional column(s) {names} (declare them Optional to keep such rows)",
                before.row(index, named=True),
            ))
        return out.filter(~bad)

    def _predicate(self, step: nodes.FilterNode, fn: Callable[[dict[str, Any]], Any]) -> RowPredicate | None:
        if id(step) not in self._predicates:
            self._predicates[id(step)] = translate(fn, step.schema.polars_schema())
        return self._predicates[id(step)]

    def _row_values(self, step: nodes.UnaryNode, batch: pl.DataFrame, fn: Callable[[dict[str, Any]], Any]) -> tuple[pl.DataFrame, list[Any]]:
        """Apply ``fn`` to every row; rows where it raises (or, for ``transform``, returns
        other keys than the step's columns) are set aside and dropped."""
        if isinstance(step, nodes.TransformNode):
            check = _transform_check(step)
        elif isinstance(step, nodes.AssignNode):
            check = _assign_check(step)
        else:
            check = None
        values: list[Any] = []
        failed: list[int] = []
        hidden = _hidden(step.schema)
        visible = batch.drop(hidden) if hidden else batch
        for index, row in enumerate(visible.iter_rows(named=True)):
            try:
                value = fn(row)
            except Exception as e:  # a user function's bug must not kill the stream
                failed.append(index)
                self.rejected.append(Rejected(f"{self.where} {step.label()}", f"{type(e).__name__}: {e}", row))
                continue
            if check is not None:
                reason = check(value)
                if reason is not None:
                    failed.append(index)
                    self.rejected.append(Rejected(f"{self.where} {step.label()}", reason, row))
                    continue
            values.append(value)
        if failed:
            keep = pl.Series([True] * batch.height).scatter(failed, False)
            batch = batch.filter(keep)
        return batch, values


class SeqChain(StatelessChain):
    """The fused chain carrying the sequence column (``ops.routing.SEQ``) on every row.

    Row functions never see the column; ``select`` and ``transform`` carry it over."""

    def _apply_one(self, step: nodes.UnaryNode, batch: pl.DataFrame) -> pl.DataFrame:
        if SEQ not in batch.columns:
            return super()._apply_one(step, batch)
        if isinstance(step, nodes.SelectNode):
            return batch.select([*step.columns, SEQ])
        if isinstance(step, nodes.TransformNode):
            if isinstance(step.fn, tuple):
                return batch.with_columns(*step.fn).select([*step.schema.names, SEQ])
            kept, rows = self._row_values(step, batch, step.fn)
            schema = step.schema.polars_schema()
            out = pl.from_dicts(rows, schema=schema, strict=False) if rows else pl.DataFrame(schema=schema)
            return out.with_columns(kept[SEQ])
        return super()._apply_one(step, batch)

    def _row_values(self, step: nodes.UnaryNode, batch: pl.DataFrame, fn: Any) -> tuple[pl.DataFrame, list[Any]]:
        if SEQ in batch.columns:
            user_fn = fn

            def fn(row: dict[str, Any]) -> Any:
                row.pop(SEQ, None)
                return user_fn(row)

        return super()._row_values(step, batch, fn)

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        out = super().apply(batch)
        if SEQ in batch.columns and SEQ not in out.columns:  # an emptied batch
            out = out.with_columns(pl.lit(None, dtype=pl.Int64).alias(SEQ))
        return out


@dataclasses.dataclass
class ChainSpec(OperatorSpec):
    """A fused run of stateless nodes (the compiler appends to ``steps`` while fusing).

    >>> ChainSpec([], "pipeline p").rescale([{}, {}], None, 3)
    [{}, {}, {}]
    """

    steps: list[nodes.UnaryNode]
    where: str

    def build(self, *, sequenced: bool = False) -> StatelessChain:
        return (SeqChain if sequenced else StatelessChain)(list(self.steps), self.where)

    def label(self) -> str:
        return "chain " + " -> ".join(s.label() for s in self.steps)

    def routed_after(self, routed: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return track_partition(routed, self.steps)

    def fingerprint(self) -> list[str]:
        out = []
        for s in self.steps:  # row functions by their code
            fn = getattr(s, "fn", None) or getattr(s, "predicate", None)
            if fn is not None:
                out.append(f"{s.label()} code {code_digest(fn)}")
        return out

    def rescale(self, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
        return [{} for _ in range(n)]


def track_partition(cols: tuple[str, ...] | None, chain_steps: Sequence[nodes.Node]) -> tuple[str, ...] | None:
    """The routing columns after a stateless chain, or None if the chain may change them.

    >>> track_partition(("buyer_id",), [])
    ('buyer_id',)
    """
    if cols is None:
        return None
    current = list(cols)
    for node in chain_steps:
        if isinstance(node, nodes.RenameNode):
            mapping = dict(node.mapping)
            current = [mapping.get(c, c) for c in current]
        elif isinstance(node, nodes.SelectNode):
            if not set(current) <= set(node.columns):
                return None
        elif isinstance(node, nodes.AssignNode):
            if node.column in current:
                return None
        elif isinstance(node, nodes.TransformNode):
            return None
    return tuple(current)


def _hidden(schema: Any) -> list[str]:
    return [n for n in schema.names if n.startswith(HIDDEN_PREFIX)]


def _non_null_outputs(step: nodes.TransformNode, batch: pl.DataFrame) -> list[str]:
    """Columns of an expression transform that must not be null: non-Optional ones the
    expressions write (a column passed through unchanged was checked upstream)."""
    return [f.name for f in step.schema.fields if not f.optional and (f.name not in batch.columns or _writes(step, f.name))]


def _writes(step: nodes.TransformNode, name: str) -> bool:
    for expr in step.fn:  # type: ignore[union-attr]
        try:
            if expr.meta.output_name() == name:
                return True
        except Exception:  # multi-output expressions (pl.all()...): assume they write it
            return True
    return False


def _assign_check(step: nodes.AssignNode) -> Callable[[Any], str | None]:
    """A check of one ``assign`` row function value against the declared type: None if it
    fits, else the reason to reject the row (as a source rejects a value that does not
    fit its field: never a silent truncation such as 2.985 -> 2)."""
    spec = step.schema.field(step.column)

    def check(value: Any) -> str | None:
        if value is None:
            if spec.optional:
                return None
            return f"assign '{step.column}': the row function returned None for non-Optional {spec.type_name}"
        if value_fits(value, spec.dtype):
            return None
        return f"assign '{step.column}': value {value!r} does not fit {dtype_name(spec.dtype)}"

    return check


def _transform_check(step: nodes.TransformNode) -> Callable[[Any], str | None]:
    """A check of one row function result against the step's columns: None if it fits,
    else the reason to reject the row (naming the extra/missing keys, a None in a
    non-Optional column, or a value its column's type cannot hold). Hidden columns are
    not the function's: they ride past it."""
    names = [n for n in step.schema.names if not n.startswith(HIDDEN_PREFIX)]
    wanted = frozenset(names)
    exact = step.exact_keys
    required = frozenset(f.name for f in step.schema.fields if not f.optional)
    dtypes = [(f.name, f.dtype) for f in step.schema.fields if f.name in wanted]

    def values_fit(value: dict[str, Any]) -> str | None:
        for name, dtype in dtypes:
            v = value[name]
            if v is None:
                if name in required:
                    return f"transform: the row function returned None for non-Optional column '{name}'"
            elif not value_fits(v, dtype):
                return f"transform: column '{name}': value {v!r} does not fit {dtype_name(dtype)}"
        return None

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"transform: the row function returned {type(value).__name__}, not a dict"
        keys = value.keys()
        if keys == wanted:
            return values_fit(value)
        missing = [n for n in names if n not in value]
        extra = [k for k in keys if k not in wanted] if exact else []
        if not missing and not extra:
            return values_fit(value)
        problems = ([f"extra key(s) {extra}"] if extra else []) + ([f"missing key(s) {missing}"] if missing else [])
        return f"transform: the row function returned keys that differ from its columns {names}: {'; '.join(problems)}"

    return check
