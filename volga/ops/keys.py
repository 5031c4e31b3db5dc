"""Dense integer ids for (composite) keys, so kernels work on plain int arrays."""

from __future__ import annotations

import numpy as np
import polars as pl

_ID = "__volga_kid"


class KeyIndex:
    """Assigns each distinct key a stable id 0, 1, 2, ... in first-seen order."""

    def __init__(self, keys: tuple[str, ...], dtypes: dict[str, pl.DataType]) -> None:
        self.keys = list(keys)
        self._table = pl.DataFrame(schema={**{k: dtypes[k] for k in keys}, _ID: pl.Int64()})

    @property
    def size(self) -> int:
        return self._table.height

    def ids(self, batch: pl.DataFrame) -> np.ndarray:
        """Key id of every row of ``batch`` (new keys are added)."""
        keys = batch.select(self.keys)
        found = keys.join(self._table, on=self.keys, how="left", maintain_order="left", nulls_equal=True)[_ID]
        if found.null_count():
            fresh = keys.filter(found.is_null()).unique(maintain_order=True)
            fresh = fresh.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_ID) + self._table.height)
            self._table = pl.concat([self._table, fresh])
            found = keys.join(self._table, on=self.keys, how="left", maintain_order="left", nulls_equal=True)[_ID]
        return found.to_numpy()

    def snapshot(self) -> pl.DataFrame:
        return self._table.clone()

    def restore(self, table: pl.DataFrame) -> None:
        self._table = table.clone()
