"""Eager frame steps for the per-micro-batch path that bypass polars' lazy engine.

``DataFrame.select``/``with_columns`` and ``Series.dt.epoch`` build a lazy query and
collect it: 20-80 us each, whatever the batch size. Run a few per micro-batch and small
batches (low-latency streaming) spend most of their time there. These do the same with
direct column operations (1-7 us).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
import pyarrow as pa


def pick(frame: pl.DataFrame, names: Iterable[str]) -> pl.DataFrame:
    """``frame.select(names)`` for plain column names."""
    return pl.DataFrame([frame.get_column(n) for n in names])


def assemble(columns: dict[str, pl.Series], names: Iterable[str]) -> pl.DataFrame:
    """A frame of ``columns`` in the order of ``names`` (each Series renamed to its name)."""
    return pl.DataFrame([columns[n].alias(n) for n in names])


def epoch_us(times: pl.Series) -> np.ndarray:
    """Microseconds since the epoch of a Datetime column, as int64 (nulls not allowed)."""
    dtype = times.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_unit == "us":
        return times.cast(pl.Int64).to_numpy()  # the physical value; to_physical() goes through the lazy engine
    return times.dt.epoch("us").to_numpy()


def masked(values: np.ndarray, valid: np.ndarray) -> pl.Series:
    """``values`` with nulls where ``valid`` is false (``pl.when(valid).then(values)``)."""
    if valid.all():
        return pl.Series(values)
    return pl.from_arrow(pa.array(values, mask=~valid))  # type: ignore[return-value]


def not_null_mask(series: pl.Series) -> np.ndarray:
    """``series.is_not_null()`` as a numpy bool array (free when there are no nulls)."""
    if series.null_count() == 0:
        return np.ones(len(series), dtype=bool)
    return series.is_not_null().to_numpy()


def take(series: pl.Series, idx: np.ndarray) -> pl.Series:
    """``series.gather(idx)``; a negative index gives null."""
    if idx.size and idx.min() < 0:
        return series.gather(masked(idx, idx >= 0))
    return series[idx]
