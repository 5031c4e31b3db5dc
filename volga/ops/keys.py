"""Dense integer ids for (composite) keys, so kernels work on plain int arrays."""

from __future__ import annotations

import bisect

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


class OrderLabels:
    """Numbers that order like the strings they label, stable across batches.

    Min/Max kernels compare floats; for a string column each distinct value gets a label
    between its neighbours' labels. When a gap is exhausted everything is relabelled
    (rare) and ``relabelled`` tells the caller to recompute stored labels.
    """

    SPACING = float(2**20)

    def __init__(self) -> None:
        self.values: list[str] = []  # sorted distinct values
        self.labels: list[float] = []
        self.relabelled = False

    def label(self, series: pl.Series) -> np.ndarray:
        """Labels for ``series`` (nulls get 0.0; callers track validity separately)."""
        self.relabelled = False
        fresh = [v for v in series.drop_nulls().unique().sort().to_list() if not self._known(v)]
        for value in fresh:
            self._insert(value)
        mapping = dict(zip(self.values, self.labels))
        return series.replace_strict(mapping, default=0.0, return_dtype=pl.Float64).to_numpy()

    def _known(self, value: str) -> bool:
        i = bisect.bisect_left(self.values, value)
        return i < len(self.values) and self.values[i] == value

    def _insert(self, value: str) -> None:
        i = bisect.bisect_left(self.values, value)
        below = self.labels[i - 1] if i > 0 else None
        above = self.labels[i] if i < len(self.labels) else None
        if below is None and above is None:
            label = 0.0
        elif below is None:
            label = above - self.SPACING  # type: ignore[operator]
        elif above is None:
            label = below + self.SPACING
        elif above - below >= 2.0:
            label = (below + above) / 2.0
        else:
            self.values.insert(i, value)
            self.labels = [j * self.SPACING for j in range(len(self.values))]
            self.relabelled = True
            return
        self.values.insert(i, value)
        self.labels.insert(i, label)
