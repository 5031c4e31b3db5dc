"""Dense integer ids for (composite) keys, so kernels work on plain int arrays."""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import polars as pl

_ID = "__volga_kid"


class KeyIndex:
    """Assigns each distinct key a stable id 0, 1, 2, ... in first-seen order.

    Small batches (streaming) look keys up in a dict; large ones (backfills) join against
    a key table, which is rebuilt from the dict only when it is stale.
    """

    DICT_BELOW_ROWS = 20_000

    def __init__(self, keys: tuple[str, ...], dtypes: dict[str, pl.DataType]) -> None:
        self.keys = list(keys)
        self.dtypes = {k: dtypes[k] for k in keys}
        self._ids: dict[Any, int] = {}
        self._table: pl.DataFrame | None = None

    @property
    def size(self) -> int:
        return len(self._ids)

    def ids(self, batch: pl.DataFrame) -> np.ndarray:
        """Key id of every row of ``batch`` (new keys are added)."""
        if batch.height < self.DICT_BELOW_ROWS:
            return self._ids_by_dict(batch)
        return self._ids_by_join(batch)

    def _key_values(self, frame: pl.DataFrame) -> list[Any]:
        if len(self.keys) == 1:
            return frame[self.keys[0]].to_list()
        return list(zip(*(frame[k].to_list() for k in self.keys)))

    def _ids_by_dict(self, batch: pl.DataFrame) -> np.ndarray:
        ids, out = self._ids, []
        for key in self._key_values(batch):
            found = ids.get(key)
            if found is None:
                found = ids[key] = len(ids)
                self._table = None
            out.append(found)
        return np.array(out, dtype=np.int64)

    def _ids_by_join(self, batch: pl.DataFrame) -> np.ndarray:
        keys = batch.select(self.keys)
        fresh = keys.unique(maintain_order=True)
        if self._table is not None:
            fresh = fresh.join(self._table, on=self.keys, how="anti", nulls_equal=True)
        for key in self._key_values(fresh):  # new keys only: first-seen order
            self._ids.setdefault(key, len(self._ids))
        if self._table is None or fresh.height:
            self._table = self._build_table()
        return keys.join(self._table, on=self.keys, how="left", maintain_order="left", nulls_equal=True)[_ID].to_numpy()

    def _build_table(self) -> pl.DataFrame:
        if len(self.keys) == 1:
            columns = {self.keys[0]: list(self._ids)}
        else:
            columns = {k: [key[i] for key in self._ids] for i, k in enumerate(self.keys)}
        frame = pl.DataFrame(columns, schema=self.dtypes)
        return frame.with_columns(pl.Series(_ID, list(self._ids.values()), dtype=pl.Int64))

    def snapshot(self) -> pl.DataFrame:
        """Every key (one column per key column) with its id, in id order."""
        return self._build_table()

    def restore(self, table: pl.DataFrame) -> None:
        ids = table[_ID].to_list()
        self._ids = dict(zip(self._key_values(table), ids))
        self._table = None


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
