"""Row-local operators on columnar batches: filter, transform, assign, rename, select, dropnull.

Polars expressions run vectorised (the fast path). Python row functions get one dict
per row (the slow path, as Volga users write them). A row function that raises does not
kill the job: the row is set aside with the error as its reason.
"""

from __future__ import annotations

from typing import Any, Callable

import polars as pl

from volga.api import nodes
from volga.errors import Rejected

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

    def _row_values(self, step: nodes.UnaryNode, batch: pl.DataFrame, fn: Callable[[dict[str, Any]], Any]) -> tuple[pl.DataFrame, list[Any]]:
        """Apply ``fn`` to every row; rows where it raises are set aside and dropped."""
        values: list[Any] = []
        failed: list[int] = []
        for index, row in enumerate(batch.iter_rows(named=True)):
            try:
                values.append(fn(row))
            except Exception as e:  # a user function's bug must not kill the stream
                failed.append(index)
                self.rejected.append(Rejected(f"{self.where} {step.label()}", f"{type(e).__name__}: {e}", row))
        if failed:
            keep = pl.Series([True] * batch.height).scatter(failed, False)
            batch = batch.filter(keep)
        return batch, values
