"""Aggregate specifications for ``group_by(...).aggregate([...])``.

Each aggregate is a small frozen description (input column, window, output name) whose
class owns everything the engine needs to compute it, in one interface that every mode
dispatches through (no mode names an aggregate):

- ``output_dtype``/``check_input``: its output type and the input types it accepts;
- ``sliding`` (+ ``finish``): the incremental state a per-event sliding window keeps
  (``volga.ops.sliding`` implements each ``Sliding`` state with a numba kernel) and, for
  the numeric states, the value computed from it;
- ``expr``: its value over a closed window's rows as a polars expression (DataStream
  tumbling and hopping windows, ``volga.stream.ops``);
- ``reduce``: its value over a window's values in plain Python (request-time lookups,
  ``volga.ondemand.request_time``);
- ``null_below``: its part of the null rule.

So a new aggregate over an existing state is one class here plus its reference
implementation (``volga.testing.reference``); the consistency property tests then check
it in every mode.

Null rule (identical in every mode): nulls are ignored by every aggregate except
``Count()`` without ``on``, which counts rows. NaN counts as null (missing) for every
aggregate. An aggregate over fewer non-missing values than its ``null_below`` is null:
one value for most, two for ``Stddev``/``Variance`` (the sample statistics, ddof=1), and
never for ``Count``/``CountDistinct`` (0) and ``LastN`` (empty list). ``First``/``Last``
are the earliest/latest non-null values in processing order; ``LastN(n)`` lists the last
n non-null values, most recent first.

``reduce`` is an aggregate's value over a window's values, oldest first (nulls and NaN
already left out): what a request-time lookup computes from a key's stored events.

>>> Sum(on="x", into="s").reduce([1.0, 2.5]), Count(into="n").reduce([]), LastN(2, on="x", into="l").reduce([1, 2, 3])
(3.5, 0, [3, 2])
>>> Variance(on="x", into="v").reduce([1.0, 3.0]), Variance(on="x", into="v").reduce([1.0]) is None
(2.0, True)

>>> Avg(on="price", window="7d", into="avg_7d").window_us
604800000000
>>> Count(window="forever", into="n").window_us is None
True
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import polars as pl

from volga.api.types import FOREVER, parse_duration_us


class Sliding(enum.Enum):
    """The incremental state a per-event sliding window keeps for an aggregate.

    ``volga.ops.sliding`` implements each with a numba kernel over the row log. The
    numeric states (COUNT, SUM, MOMENTS, DISTINCT) hand the aggregate ``Partials`` to
    ``finish``; the others pick rows, whose values are the aggregate's value.
    """

    COUNT = "count"        # number of present values (rows, for Count() without on=)
    SUM = "sum"            # number and float64 sum of present values
    MOMENTS = "moments"    # number of present values and M2, their sum of squared deviations
    DISTINCT = "distinct"  # number of distinct present values
    MIN = "min"            # the row with the least present value (earliest among equals)
    MAX = "max"            # the row with the greatest present value (earliest among equals)
    FIRST = "first"        # the earliest row with a present value
    LAST = "last"          # the latest row with a present value
    LAST_N = "last_n"      # the latest n rows with a present value, newest first


@dataclasses.dataclass(frozen=True)
class Partials:
    """A numeric ``Sliding`` state's value at each output row (numpy arrays, one entry a
    row): ``count`` of present values (distinct ones for DISTINCT), ``total`` their sum
    (SUM), ``m2`` their sum of squared deviations from their mean (MOMENTS)."""

    count: np.ndarray
    total: np.ndarray | None = None
    m2: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """Base: ``on`` (input column), ``window`` (duration or "forever"), ``into`` (output column)."""

    on: str | None = None
    window: str | datetime.timedelta = FOREVER
    into: str = ""
    sliding: ClassVar[Sliding]
    # Null rule: over fewer non-missing values than this the aggregate is null (0: never null).
    null_below: ClassVar[int] = 1
    needs_on: ClassVar[bool] = True
    numeric_only: ClassVar[bool] = False
    compares: ClassVar[bool] = False  # orders or compares values (so not lists)
    # A column of Python objects (DataStream map without a schema) is read as floats.
    reads_objects_as_float: ClassVar[bool] = False

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

    def check_input(self, dtype: pl.DataType, where: str) -> None:
        """Raise TypeError if the input column's type cannot be aggregated this way."""
        label = f"{where}: {type(self).__name__}(on={self.on!r}, into={self.into!r})"
        if self.numeric_only and dtype not in (pl.Int64(), pl.Float64()):
            raise TypeError(f"{label} needs a numeric column (int or float), but '{self.on}' is {dtype}")
        if isinstance(dtype, pl.List) and self.compares:
            raise TypeError(f"{label} cannot order or compare list values of '{self.on}'")

    def finish(self, partials: Partials) -> np.ndarray:
        """The aggregate at each output row from a numeric ``sliding`` state (rows with
        fewer than ``null_below`` values are masked to null afterwards)."""
        raise NotImplementedError(f"{type(self).__name__} keeps a row state ({self.sliding}), not a numeric one")

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        """The aggregate over a closed window's rows: ``values`` is the input column with
        NaN already null (None for ``Count()`` without ``on``)."""
        raise NotImplementedError(type(self).__name__)

    def closed_window_expr(self, input_dtype: pl.DataType | None) -> pl.Expr:
        """``expr`` over the input column (NaN is missing, like null), cast to the output
        type and named ``into``."""
        values = None if self.on is None else pl.col(self.on)
        if values is not None and input_dtype is not None and input_dtype.is_float():
            values = values.fill_nan(None)
        return self.expr(values).cast(self.output_dtype(input_dtype)).alias(self.into)

    def reduce(self, values: Sequence[Any]) -> Any:
        """The aggregate over ``values`` (a window's non-missing values, oldest first)."""
        raise NotImplementedError(type(self).__name__)


def _present(values: pl.Expr | None) -> pl.Expr:
    assert values is not None, "the aggregate needs on="
    return values


@dataclasses.dataclass(frozen=True)
class Count(Aggregate):
    """Number of events in the window (``on=col``: number of non-null values of col)."""

    sliding: ClassVar[Sliding] = Sliding.COUNT
    null_below: ClassVar[int] = 0
    needs_on: ClassVar[bool] = False
    reads_objects_as_float: ClassVar[bool] = True

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Int64()

    def finish(self, partials: Partials) -> np.ndarray:
        return partials.count

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return pl.len() if values is None else values.count()

    def reduce(self, values: Sequence[Any]) -> Any:
        return len(values)


@dataclasses.dataclass(frozen=True)
class Sum(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.SUM
    numeric_only: ClassVar[bool] = True
    reads_objects_as_float: ClassVar[bool] = True

    def finish(self, partials: Partials) -> np.ndarray:
        assert partials.total is not None
        return partials.total

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        c = _present(values)
        return pl.when(c.count() > 0).then(c.sum())

    def reduce(self, values: Sequence[Any]) -> Any:
        return _sum(values) if values else None


@dataclasses.dataclass(frozen=True)
class Avg(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.SUM
    numeric_only: ClassVar[bool] = True
    reads_objects_as_float: ClassVar[bool] = True

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Float64()

    def finish(self, partials: Partials) -> np.ndarray:
        assert partials.total is not None
        return partials.total / np.maximum(partials.count, 1)

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).mean()

    def reduce(self, values: Sequence[Any]) -> Any:
        return _sum(values) / len(values) if values else None


@dataclasses.dataclass(frozen=True)
class Variance(Aggregate):
    """Sample variance (ddof=1): null below two values.

    ``Variance(on="amount", window="7d", into="amount_var_7d")``; its square root is ``Stddev``.

    >>> Variance(on="x", into="v").reduce([2.0, 4.0, 6.0])
    4.0
    """

    sliding: ClassVar[Sliding] = Sliding.MOMENTS
    null_below: ClassVar[int] = 2
    numeric_only: ClassVar[bool] = True
    reads_objects_as_float: ClassVar[bool] = True

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Float64()

    def finish(self, partials: Partials) -> np.ndarray:
        assert partials.m2 is not None
        return np.maximum(partials.m2, 0.0) / np.maximum(partials.count - 1, 1)

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        c = _present(values)
        return pl.when(c.count() >= 2).then(c.var(ddof=1))

    def reduce(self, values: Sequence[Any]) -> Any:
        return _sample_variance(values)


@dataclasses.dataclass(frozen=True)
class Stddev(Variance):
    """Sample standard deviation (ddof=1): null below two values. The square root of
    ``Variance`` over the same state."""

    def finish(self, partials: Partials) -> np.ndarray:
        return np.sqrt(super().finish(partials))

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        c = _present(values)
        return pl.when(c.count() >= 2).then(c.std(ddof=1))

    def reduce(self, values: Sequence[Any]) -> Any:
        variance = super().reduce(values)
        return None if variance is None else math.sqrt(variance)


@dataclasses.dataclass(frozen=True)
class Min(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.MIN
    compares: ClassVar[bool] = True
    reads_objects_as_float: ClassVar[bool] = True

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).min()

    def reduce(self, values: Sequence[Any]) -> Any:
        return min(values) if values else None


@dataclasses.dataclass(frozen=True)
class Max(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.MAX
    compares: ClassVar[bool] = True
    reads_objects_as_float: ClassVar[bool] = True

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).max()

    def reduce(self, values: Sequence[Any]) -> Any:
        return max(values) if values else None


@dataclasses.dataclass(frozen=True)
class First(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.FIRST

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).drop_nulls().first()

    def reduce(self, values: Sequence[Any]) -> Any:
        return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class Last(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.LAST

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).drop_nulls().last()

    def reduce(self, values: Sequence[Any]) -> Any:
        return values[-1] if values else None


@dataclasses.dataclass(frozen=True)
class CountDistinct(Aggregate):
    sliding: ClassVar[Sliding] = Sliding.DISTINCT
    null_below: ClassVar[int] = 0
    compares: ClassVar[bool] = True

    def output_dtype(self, input_dtype: pl.DataType | None) -> pl.DataType:
        return pl.Int64()

    def finish(self, partials: Partials) -> np.ndarray:
        return partials.count

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).drop_nulls().n_unique()

    def reduce(self, values: Sequence[Any]) -> Any:
        return len(set(values))


@dataclasses.dataclass(frozen=True)
class LastN(Aggregate):
    """The last ``n`` non-null values in the window, most recent first.

    ``LastN(3, on="category", window="30d", into="recent")`` or ``LastN(n=3, ...)``.
    """

    n: int = 0
    sliding: ClassVar[Sliding] = Sliding.LAST_N
    null_below: ClassVar[int] = 0

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

    def expr(self, values: pl.Expr | None) -> pl.Expr:
        return _present(values).drop_nulls().tail(self.n).reverse().implode()

    def reduce(self, values: Sequence[Any]) -> Any:
        return list(reversed(values[-self.n:])) if values else []


ALL_AGGREGATES = (Count, Sum, Avg, Stddev, Variance, Min, Max, First, Last, CountDistinct, LastN)


def _sum(values: Sequence[Any]) -> Any:
    """Ints sum exactly; floats as the window kernels do (float64 additions)."""
    total = 0.0 if isinstance(values[0], float) else 0
    for v in values:
        total += v
    return total


def _sample_variance(values: Sequence[Any]) -> float | None:
    if len(values) < 2:
        return None
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
