"""Row-local operators on columnar batches: filter, transform, assign, rename, select, dropnull.

Polars expressions run vectorised (the fast path). Python row functions get one dict
per row (the slow path, as Volga users write them), except simple filter predicates,
which run as the equivalent polars expression (``volga.ops.row_predicates``). A row
function that raises does not kill the job: the row is set aside with the error as its
reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from volga.api import nodes
from volga.errors import Rejected
from volga.ops.row_predicates import RowPredicate, translate

StatelessNode = (
    nodes.FilterNode,
    nodes.TransformNode,
    nodes.AssignNode,
    nodes.RenameNode,
    nodes.SelectNode,
    nodes.DropNullNode,
)


class StatelessChain:
    """Consecutive stateless nodes fused into one operator (no hop between them)."""

    def __init__(self, steps: list[nodes.UnaryNode], where: str) -> None:
        self.steps = steps
        self.where = where
        self.rejected: list[Rejected] = []
        self._predicates: dict[int, RowPredicate | None] = {}  # FilterNode id -> its expression, if simple

    @property
    def schema(self) -> Any:
        return self.steps[-1].schema

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
                return batch.with_columns(*step.fn).select(list(schema))
            batch, rows = self._row_values(step, batch, step.fn)
            return pl.from_dicts(rows, schema=schema, strict=False) if rows else pl.DataFrame(schema=schema)
        if isinstance(step, nodes.AssignNode):
            dtype = step.schema.field(step.column).dtype
            if isinstance(step.fn, pl.Expr):
                return batch.with_columns(step.fn.cast(dtype).alias(step.column))
            batch, values = self._row_values(step, batch, step.fn)
            return batch.with_columns(pl.Series(step.column, values, dtype=dtype, strict=False))
        if isinstance(step, nodes.RenameNode):
            return batch.rename(dict(step.mapping))
        if isinstance(step, nodes.SelectNode):
            return batch.select(list(step.columns))
        if isinstance(step, nodes.DropNullNode):
            return batch.drop_nulls(list(step.columns))
        raise AssertionError(f"not a stateless node: {step!r}")

    def _predicate(self, step: nodes.FilterNode, fn: Callable[[dict[str, Any]], Any]) -> RowPredicate | None:
        if id(step) not in self._predicates:
            self._predicates[id(step)] = translate(fn, step.schema.polars_schema())
        return self._predicates[id(step)]

    def _row_values(self, step: nodes.UnaryNode, batch: pl.DataFrame, fn: Callable[[dict[str, Any]], Any]) -> tuple[pl.DataFrame, list[Any]]:
        """Apply ``fn`` to every row; rows where it raises (or, for ``transform``, returns
        other keys than the step's columns) are set aside and dropped."""
        check = _transform_check(step) if isinstance(step, nodes.TransformNode) else None
        values: list[Any] = []
        failed: list[int] = []
        for index, row in enumerate(batch.iter_rows(named=True)):
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


def _transform_check(step: nodes.TransformNode) -> Callable[[Any], str | None]:
    """A check of one row function result against the step's columns: None if it fits,
    else the reason to reject the row (naming the extra/missing keys)."""
    names = step.schema.names
    wanted = frozenset(names)
    exact = step.exact_keys

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"transform: the row function returned {type(value).__name__}, not a dict"
        keys = value.keys()
        if keys == wanted:
            return None
        missing = [n for n in names if n not in value]
        extra = [k for k in keys if k not in wanted] if exact else []
        if not missing and not extra:
            return None
        problems = ([f"extra key(s) {extra}"] if extra else []) + ([f"missing key(s) {missing}"] if missing else [])
        return f"transform: the row function returned keys that differ from its columns {names}: {'; '.join(problems)}"

    return check
