"""Aggregate specifications for ``group_by(...).aggregate([...])``.

Each aggregate is a small frozen description (kind, input column, window, output name);
the physical window operator computes them over columnar batches.

Null rule (identical in every mode): nulls are ignored by every aggregate except
``Count()`` without ``on``, which counts rows. An aggregate over no non-null value is
null, except ``Count``/``CountDistinct`` (0) and ``LastN`` (empty list). ``Stddev`` is
the sample standard deviation (ddof=1): null below two values. ``First``/``Last`` are
the earliest/latest non-null values in processing order; ``LastN(n)`` lists the last n
non-null values, most recent first. NaN counts as null (missing) for every aggregate.

``reduce`` is an aggregate's value over a window's values, oldest first (nulls and NaN
already left out): what a request-time lookup computes from a key's stored events.

>>> Sum(on="x", into="s").reduce([1.0, 2.5]), Count(into="n").reduce([]), LastN(2, on="x", into="l").reduce([1, 2, 3])
(3.5, 0, [3, 2])

>>> Avg(on="price", window="7d", into="avg_7d").window_us
604800000000
>>> Count(window="forever", into="n").window_us is None
True
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import polars as pl

from volga.api.types import FOREVER, parse_duration_us


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """Base: ``on`` (input column), ``window`` (duration or "forever"), ``into`` (output column)."""

    on: str | None = None
    window: str | datetime.timedelta = FOREVER
    into: str = ""
    kind: ClassVar[str] = ""
    needs_on: ClassVar[bool] = True
    numeric_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        label = type(self).__name__
        if not self.into or not isinstance(self.into, str):
            raise ValueError(f"{label}(on={self.on!r}): `into=` (the output column name) is required")
        if self.needs_on and not self.on:
            raise ValueError(f"{label}(into={self.into!r}): `on=` (the input column) is required")
        if self.window != FOREVER:
            parse_duration_us(self.window, what=f"{label}(into={self.into!r}) window")

    @functools.cached_property
    def window_us(self) -> int | None:
        """Window length in microseconds; None for "forever"."""
        if self.window == FOREVER:
            return None
        return parse_duration_us(self.window)

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        assert input_dtype is not None
        return input_dtype

    def reduce(self, values: Sequence[Any]) -> Any:
        """The aggregate over ``values`` (a window's non-missing values, oldest first)."""
        raise NotImplementedError(type(self).__name__)

    def check_input(self, dtype: pl.DataType, where: str) -> None:
        """Raise TypeError if the input column's type cannot be aggregated this way."""
        label = f"{where}: {type(self).__name__}(on={self.on!r}, into={self.into!r})"
        if self.numeric_only and dtype not in (pl.Int64(), pl.Float64()):
            raise TypeError(f"{label} needs a numeric column (int or float), but '{self.on}' is {dtype}")
        if isinstance(dtype, pl.List) and self.kind in ("min", "max", "count_distinct"):
            raise TypeError(f"{label} cannot order or compare list values of '{self.on}'")


@dataclasses.dataclass(frozen=True)
class Count(Aggregate):
    """Number of events in the window (``on=col``: number of non-null values of col)."""

    kind: ClassVar[str] = "count"
    needs_on: ClassVar[bool] = False

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Int64()

    def reduce(self, values: Sequence[Any]) -> Any:
        return len(values)


@dataclasses.dataclass(frozen=True)
class Sum(Aggregate):
    kind: ClassVar[str] = "sum"
    numeric_only: ClassVar[bool] = True

    def reduce(self, values: Sequence[Any]) -> Any:
        return _sum(values) if values else None


@dataclasses.dataclass(frozen=True)
class Avg(Aggregate):
    kind: ClassVar[str] = "avg"
    numeric_only: ClassVar[bool] = True

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Float64()

    def reduce(self, values: Sequence[Any]) -> Any:
        return _sum(values) / len(values) if values else None


@dataclasses.dataclass(frozen=True)
class Stddev(Aggregate):
    """Sample standard deviation (ddof=1)."""

    kind: ClassVar[str] = "stddev"
    numeric_only: ClassVar[bool] = True

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Float64()

    def reduce(self, values: Sequence[Any]) -> Any:
        if len(values) < 2:
            return None
        mean = math.fsum(values) / len(values)
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclasses.dataclass(frozen=True)
class Min(Aggregate):
    kind: ClassVar[str] = "min"

    def reduce(self, values: Sequence[Any]) -> Any:
        return min(values) if values else None


@dataclasses.dataclass(frozen=True)
class Max(Aggregate):
    kind: ClassVar[str] = "max"

    def reduce(self, values: Sequence[Any]) -> Any:
        return max(values) if values else None


@dataclasses.dataclass(frozen=True)
class First(Aggregate):
    kind: ClassVar[str] = "first"

    def reduce(self, values: Sequence[Any]) -> Any:
        return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class Last(Aggregate):
    kind: ClassVar[str] = "last"

    def reduce(self, values: Sequence[Any]) -> Any:
        return values[-1] if values else None


@dataclasses.dataclass(frozen=True)
class CountDistinct(Aggregate):
    kind: ClassVar[str] = "count_distinct"

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Int64()

    def reduce(self, values: Sequence[Any]) -> Any:
        return len(set(values))


@dataclasses.dataclass(frozen=True)
class LastN(Aggregate):
    """The last ``n`` non-null values in the window, most recent first.

    ``LastN(3, on="category", window="30d", into="recent")`` or ``LastN(n=3, ...)``.
    """

    n: int = 0
    kind: ClassVar[str] = "last_n"

    def __init__(
        self,
        n: int | None = None,
        *,
        on: str | None = None,
        window: str | datetime.timedelta = FOREVER,
        into: str = "",
    ) -> None:
        object.__setattr__(self, "n", n if n is not None else 0)
        object.__setattr__(self, "on", on)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "into", into)
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"LastN(into={into!r}): n must be a positive int, got {n!r}")
        self.__post_init__()

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        assert input_dtype is not None
        return pl.List(input_dtype)

    def reduce(self, values: Sequence[Any]) -> Any:
        return list(reversed(values[-self.n:])) if values else []


ALL_AGGREGATES = (Count, Sum, Avg, Stddev, Min, Max, First, Last, CountDistinct, LastN)


def _sum(values: Sequence[Any]) -> Any:
    """Ints sum exactly; floats as the window kernels do (float64 additions)."""
    total = 0.0 if isinstance(values[0], float) else 0
    for v in values:
        total += v
    return total
