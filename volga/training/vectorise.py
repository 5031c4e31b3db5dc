"""Running an on-demand function over whole columns instead of once per row.

An on-demand function is written for one request: it receives entity instances and
returns one. Many are plain arithmetic over their inputs' fields
(``UserStats(total_spent=spent.avg_spent_7d * spent.num_purchases_1h, ...)``). Such a
function is *traced* once: each dependency parameter receives a stand-in whose fields are
polars column expressions, so the returned instance holds one expression per field, which
polars then evaluates for all distinct inputs at once.

Tracing only applies when the function cannot tell a stand-in from a real row, and the
result is trusted only where it provably equals the row-wise result:

- every input is a ``latest`` row that is present (a missing one makes the result None
  without calling the function, as the server does); ``Optional`` inputs, ``last_n``/``range``
  lists and row-wise dependencies are not traced;
- the stand-ins support ``+ - * /``, unary ``- + abs`` and comparisons with each other and
  with plain scalars; anything else (``if``, ``and``, ``len``, ``round``, f-strings, method
  calls, ...) raises inside the trace, and the function runs row-wise instead;
- each output field must come out with exactly its declared dtype (a constant must have
  the field's Python type);
- inputs that Python would treat differently from polars send the whole node row-wise: a
  null or NaN in a field the function reads, a zero divisor (Python raises);
- finally, a sample of rows is also computed row-wise and must match.

The function is called once more than the row-wise path would call it (the trace), with
stand-ins: a function with side effects should not rely on being called exactly once per
row anyway.
"""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from volga.api.times import to_utc
from volga.ondemand.plan import Node

if TYPE_CHECKING:
    from volga.training.on_demand import NodeResult, OnDemandEvaluator

PRESENT = "__present"
SAMPLE_ROWS = 32
_SCALARS = (bool, int, float, str, datetime.datetime, datetime.timedelta)


class NotVectorisable(Exception):
    """Raised inside a trace when the function does something a column cannot stand in for."""


class _Trace:
    """What a trace touched: the input columns read and the divisors used."""

    def __init__(self) -> None:
        self.read: set[str] = set()
        self.divisors: list[pl.Expr] = []


class _Col:
    """A stand-in for one field's value: a polars expression supporting plain arithmetic."""

    __slots__ = ("expr", "trace")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, expr: pl.Expr, trace: _Trace) -> None:
        self.expr = expr
        self.trace = trace

    def _other(self, other: Any) -> pl.Expr:
        if isinstance(other, _Col):
            return other.expr
        if isinstance(other, _SCALARS):
            return pl.lit(other)
        raise NotVectorisable(f"operand {type(other).__name__}")

    def _op(self, op: str, other: Any, reflected: bool = False) -> _Col:
        a, b = self.expr, self._other(other)
        if reflected:
            a, b = b, a
        return _Col(getattr(a, op)(b), self.trace)

    def __add__(self, o: Any) -> _Col: return self._op("__add__", o)
    def __radd__(self, o: Any) -> _Col: return self._op("__add__", o, True)
    def __sub__(self, o: Any) -> _Col: return self._op("__sub__", o)
    def __rsub__(self, o: Any) -> _Col: return self._op("__sub__", o, True)
    def __mul__(self, o: Any) -> _Col: return self._op("__mul__", o)
    def __rmul__(self, o: Any) -> _Col: return self._op("__mul__", o, True)

    def __truediv__(self, o: Any) -> _Col:
        self._divisor(o)
        return self._op("__truediv__", o)

    def __rtruediv__(self, o: Any) -> _Col:
        self.trace.divisors.append(self.expr)
        return self._op("__truediv__", o, True)

    def _divisor(self, o: Any) -> None:
        if isinstance(o, _Col):
            self.trace.divisors.append(o.expr)
        elif isinstance(o, (int, float)) and o == 0:
            raise NotVectorisable("division by a zero constant")

    def __lt__(self, o: Any) -> _Col: return self._op("__lt__", o)
    def __le__(self, o: Any) -> _Col: return self._op("__le__", o)
    def __gt__(self, o: Any) -> _Col: return self._op("__gt__", o)
    def __ge__(self, o: Any) -> _Col: return self._op("__ge__", o)
    def __eq__(self, o: object) -> _Col: return self._op("__eq__", o)  # type: ignore[override]
    def __ne__(self, o: object) -> _Col: return self._op("__ne__", o)  # type: ignore[override]
    def __neg__(self) -> _Col: return _Col(-self.expr, self.trace)
    def __pos__(self) -> _Col: return self
    def __abs__(self) -> _Col: return _Col(self.expr.abs(), self.trace)

    def _refuse(self, *_: Any) -> Any:
        raise NotVectorisable("the value is used as a Python object")

    __bool__ = __str__ = __format__ = __int__ = __float__ = __index__ = __round__ = __iter__ = __len__ = _refuse
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = _refuse
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __invert__ = __getitem__ = __contains__ = _refuse

    def __getattr__(self, name: str) -> Any:
        raise NotVectorisable(f"attribute {name!r} of a value")


class _Row:
    """A stand-in for a dependency's row: each field is a column of the input frame."""

    def __init__(self, prefix: str, fields: set[str], trace: _Trace) -> None:
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_trace", trace)

    def __getattr__(self, name: str) -> Any:
        if name not in self._fields:
            raise NotVectorisable(f"attribute {name!r} of a row")
        column = f"{self._prefix}{name}"
        self._trace.read.add(column)
        return _Col(pl.col(column), self._trace)

    def __setattr__(self, name: str, value: Any) -> None:
        raise NotVectorisable("assignment to a row")

    def __bool__(self) -> bool:  # `if row:` is a presence test; every traced row is present
        raise NotVectorisable("truth value of a row")


def try_vectorised(
    node: Node, kwargs: dict[str, Any], distinct: pl.DataFrame, dependencies: list[NodeResult | None],
    evaluator: OnDemandEvaluator,
) -> tuple[pl.DataFrame | None, str]:
    """Per distinct signature: the output fields and ``PRESENT`` (or None to run row-wise),
    and why not."""
    defn = node.definition
    if defn is None or not node.inputs or any(i.many or i.optional for i in node.inputs):
        return None, "an input is a list (last_n/range) or Optional"
    if any(dep is not None and dep.table is None for dep in dependencies):
        return None, "a dependency runs row-wise"
    frame, present = _inputs(node, distinct, dependencies, evaluator)
    trace = _Trace()
    proxies = [
        _Row(f"d{j}.", set((evaluator.plan.reads[inp.index].pipeline.schema if inp.read else dep.node.schema).names), trace)  # type: ignore[union-attr]
        for j, (inp, dep) in enumerate(zip(node.inputs, dependencies))
    ]
    key_kwargs = {param: _Col(pl.col(f"k{pos}"), trace) for param, pos in node.key_params}
    try:
        result = defn.fn(*proxies, **kwargs, **key_kwargs)
    except Exception as e:  # noqa: BLE001 - NotVectorisable, or anything a stand-in provoked: row-wise decides
        return None, f"the trace raised {type(e).__name__}: {e}"
    if not isinstance(result, defn.output):
        return None, f"the trace returned {type(result).__name__}"
    exprs = _field_exprs(node, result)
    if exprs is None:
        return None, "a field is not an expression or a constant of its type"
    try:
        rows = frame.filter(present)
        if _python_differs(rows, trace):
            return None, "inputs with nulls, NaN or zero divisors"
        table = frame.select(*exprs, present.alias(PRESENT))
    except Exception as e:  # noqa: BLE001 - e.g. an operation polars has no kernel for: row-wise decides
        return None, f"evaluating raised {type(e).__name__}: {e}"
    wrong = [f.name for f in node.schema.fields if table.schema[f.name] != f.dtype]
    if wrong:
        return None, f"field(s) {wrong} come out with another dtype"
    if not _sample_agrees(node, kwargs, distinct, dependencies, evaluator, table):
        return None, "a sample computed row-wise differs"
    return table, "vectorised"


def _inputs(
    node: Node, distinct: pl.DataFrame, dependencies: list[NodeResult | None], evaluator: OnDemandEvaluator
) -> tuple[pl.DataFrame, pl.Expr]:
    """The distinct signatures with every input row's fields as ``d<j>.<field>`` columns."""
    columns: list[pl.Series] = [s for s in distinct.iter_columns() if s.name.startswith("k")]
    present = pl.lit(True)
    for j, (inp, dep) in enumerate(zip(node.inputs, dependencies)):
        refs = distinct.get_column(f"i{j}")
        if inp.read:
            source, ts = evaluator.read_frame(inp, evaluator.input_columns[node.index][j])
            present = present & pl.col(f"i{j}").is_not_null()
            if ts is not None:
                present = present & pl.col(f"d{j}.{ts}").is_not_null()
        else:
            assert dep is not None and dep.table is not None
            source = dep.table
            present = present & pl.col(f"d{j}.{PRESENT}").fill_null(False)
        gathered = source.select(pl.all().gather(refs))
        columns.extend(s.alias(f"d{j}.{s.name}") for s in gathered.iter_columns())
        columns.append(refs)
    return pl.DataFrame(columns), present


def _field_exprs(node: Node, result: Any) -> list[pl.Expr] | None:
    exprs = []
    for f in node.schema.fields:
        value = getattr(result, f.name)
        if isinstance(value, _Col):
            exprs.append(value.expr.alias(f.name))
        elif value is None or type(value) in _SCALARS:
            want = pl.Series([value]).dtype if value is not None else f.dtype
            if value is not None and not _same_kind(want, f.dtype):
                return None
            exprs.append(pl.lit(value, dtype=f.dtype).alias(f.name))
        else:
            return None
    return exprs


def _same_kind(have: pl.DataType, want: pl.DataType) -> bool:
    if isinstance(want, pl.Datetime):
        return isinstance(have, pl.Datetime)
    return have == want


def _python_differs(rows: pl.DataFrame, trace: _Trace) -> bool:
    """True when some input would behave differently in Python: nulls, NaN, zero divisors."""
    checks = []
    for column in trace.read:
        checks.append(pl.col(column).is_null().any())
        if rows.schema[column].is_float():
            checks.append(pl.col(column).is_nan().any())
    checks.extend((d == 0).any() for d in trace.divisors)
    if not checks or rows.height == 0:
        return False
    return any(v is True for v in rows.select(c.alias(f"check{i}") for i, c in enumerate(checks)).row(0))


def _sample_agrees(
    node: Node, kwargs: dict[str, Any], distinct: pl.DataFrame, dependencies: list[NodeResult | None],
    evaluator: OnDemandEvaluator, table: pl.DataFrame,
) -> bool:
    """Compute a sample of signatures row-wise too; every field must agree."""
    from volga.training.on_demand import call_one

    present = np.flatnonzero(table.get_column(PRESENT).to_numpy())
    if len(present) == 0:
        return True
    picks = np.unique(np.concatenate([present[: SAMPLE_ROWS // 2], present[np.linspace(0, len(present) - 1, SAMPLE_ROWS // 2).astype(np.int64)]]))
    sample = distinct[picks]
    n_keys = sum(1 for c in distinct.columns if c.startswith("k"))
    signatures = sample.rows()
    values = [
        evaluator._input_values(inp, [sig[n_keys + j] for sig in signatures], dep, cols)
        for j, (inp, dep, cols) in enumerate(zip(node.inputs, dependencies, evaluator.input_columns[node.index]))
    ]
    fields = [f.name for f in node.schema.fields]
    got_rows = table[picks].select(fields).rows()
    for i, sig in enumerate(signatures):
        want = call_one(node, sig[:n_keys], [v[i] for v in values], kwargs)
        if want is None:
            return False
        for name, got in zip(fields, got_rows[i]):
            if not _same_value(got, getattr(want, name)):
                return False
    return True


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return got == want or (math.isnan(got) and math.isnan(want))
    if isinstance(want, datetime.datetime) and isinstance(got, datetime.datetime):
        return got == to_utc(want)
    return type(got) is type(want) and got == want
