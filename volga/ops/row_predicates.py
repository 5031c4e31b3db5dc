"""Simple row predicates as polars expressions, so ``filter(lambda row: ...)`` runs columnar.

Volga users write filters as row functions (``lambda o: o["product_type"] == "ON_SALE"``);
calling one per row costs a Python call and a dict per row, ~5x the whole pipeline. A
predicate made only of the pieces below is read from its bytecode (CPython 3.11) and
turned into the equivalent polars expression:

- ``row["col"]`` compared (``<  <=  ==  !=  >  >=``) with a constant of the column's kind
  (str for strings, int for integers, int or float for floats, bool for booleans), or with
  another column of the same type;
- ``row["col"] in (...)`` / ``not in`` a tuple of such constants;
- a boolean column on its own, ``not``, and chains of ``and`` or of ``or``.

Anything else (calls, arithmetic, closures, globals, other Python versions) stays a row
function. The expression keeps exactly the rows the function keeps as long as every
value it reads is a plain value of its column's type, so a batch where one of those
columns holds a null (``None`` compares unlike polars' null: ``None > 1`` raises) or a
NaN (Python's NaN compares false, polars orders it last) runs the row function instead.
"""

from __future__ import annotations

import dataclasses
import dis
import math
import operator
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import polars as pl

_SWAPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
}
_EXACT_FLOAT_INT = 2**53  # ints up to this compare with floats exactly after polars casts them


@dataclasses.dataclass(frozen=True)
class RowPredicate:
    """The expression for a row predicate, and the columns it reads."""

    expr: pl.Expr
    columns: tuple[str, ...]
    floats: tuple[str, ...]  # read columns of a float type (NaN forces the row function)

    def applies_to(self, batch: pl.DataFrame) -> bool:
        """True when ``expr`` keeps exactly the rows the row function keeps in ``batch``."""
        if any(batch.get_column(c).null_count() for c in self.columns):
            return False
        return not any(np.isnan(batch.get_column(c).to_numpy()).any() for c in self.floats)


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    dtype: pl.DataType


@dataclasses.dataclass(frozen=True)
class _Const:
    value: Any


@dataclasses.dataclass(frozen=True)
class _Bool:
    expr: pl.Expr


class _NotSimple(Exception):
    """The function uses something this module does not translate."""


def translate(fn: Callable[..., Any], dtypes: Mapping[str, pl.DataType]) -> RowPredicate | None:
    """``fn`` (a one-argument row predicate over columns ``dtypes``) as a ``RowPredicate``,
    or None when it is not one of the simple forms above."""
    code = getattr(fn, "__code__", None)
    if sys.version_info[:2] != (3, 11) or code is None or code.co_argcount != 1 or code.co_freevars:
        return None
    if getattr(fn, "__defaults__", None) or getattr(fn, "__kwdefaults__", None):
        return None
    try:
        result = _run(list(dis.get_instructions(code)), code.co_varnames[0], dtypes)
    except Exception:  # _NotSimple, or a constant polars cannot hold in the column's type
        return None
    expr = _as_bool(result)
    read = sorted(_columns_of(result))
    if expr is None or not read:
        return None
    floats = tuple(c for c in read if dtypes[c].is_float())
    return RowPredicate(expr, tuple(read), floats)


def _run(instructions: list[dis.Instruction], arg: str, dtypes: Mapping[str, pl.DataType]) -> Any:
    stack: list[Any] = []
    pending: list[tuple[str, Any, int]] = []  # ("and" | "or", left operand, jump target)
    for ins in instructions:
        while pending and pending[-1][2] == ins.offset:  # the end of an and/or chain
            kind, left, _ = pending.pop()
            right = _as_bool(stack.pop())
            if right is None or (pending and pending[-1][2] == ins.offset and pending[-1][0] != kind):
                raise _NotSimple  # mixed and/or chains: left to the row function
            stack.append(_Bool(left & right if kind == "and" else left | right))
        name = ins.opname
        if name in ("RESUME", "NOP", "CACHE"):
            continue
        if name == "LOAD_FAST" and ins.argval == arg:
            stack.append(arg)
        elif name == "LOAD_CONST":
            stack.append(_Const(ins.argval))
        elif name == "BINARY_SUBSCR":
            key, target = stack.pop(), stack.pop()
            if target != arg or not isinstance(key, _Const) or not isinstance(key.value, str) or key.value not in dtypes:
                raise _NotSimple
            stack.append(_Column(key.value, dtypes[key.value]))
        elif name == "COMPARE_OP":
            right, left = stack.pop(), stack.pop()
            stack.append(_compare(ins.argval, left, right))
        elif name == "CONTAINS_OP":
            options, value = stack.pop(), stack.pop()
            stack.append(_contains(value, options, negate=bool(ins.arg)))
        elif name == "UNARY_NOT":
            operand = _as_bool(stack.pop())
            if operand is None:
                raise _NotSimple
            stack.append(_Bool(~operand))
        elif name in ("JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP"):
            left = _as_bool(stack.pop())
            if left is None:
                raise _NotSimple
            pending.append(("and" if name == "JUMP_IF_FALSE_OR_POP" else "or", left, ins.argval))
        elif name == "RETURN_VALUE":
            if pending or len(stack) != 1:
                raise _NotSimple
            return stack.pop()
        else:
            raise _NotSimple
    raise _NotSimple


def _kind_fits(dtype: pl.DataType, value: Any) -> bool:
    """Whether Python compares ``value`` with this column's values the way polars does."""
    if isinstance(value, bool):
        return dtype == pl.Boolean
    if isinstance(value, str):
        return dtype == pl.String
    if isinstance(value, int):
        return (dtype.is_integer() and abs(value) < 2**63) or (dtype.is_float() and abs(value) <= _EXACT_FLOAT_INT)
    if isinstance(value, float):
        return dtype.is_float() and math.isfinite(value)
    return False


def _compare(op: str, left: Any, right: Any) -> _Bool:
    if op not in _COMPARE:
        raise _NotSimple
    if isinstance(left, _Const) and isinstance(right, _Column):
        left, right, op = right, left, _SWAPPED[op]
    if not isinstance(left, _Column):
        raise _NotSimple
    if isinstance(right, _Column):
        if right.dtype != left.dtype or left.dtype == pl.Boolean and op not in ("==", "!="):
            raise _NotSimple
        return _Bool(_COMPARE[op](pl.col(left.name), pl.col(right.name)))
    if not isinstance(right, _Const) or not _kind_fits(left.dtype, right.value):
        raise _NotSimple
    if left.dtype == pl.Boolean and op not in ("==", "!="):
        raise _NotSimple
    return _Bool(_COMPARE[op](pl.col(left.name), pl.lit(right.value)))


def _contains(value: Any, options: Any, *, negate: bool) -> _Bool:
    if not isinstance(value, _Column) or not isinstance(options, _Const) or not isinstance(options.value, (tuple, frozenset)):
        raise _NotSimple
    items = list(options.value)
    if not items or not all(_kind_fits(value.dtype, v) for v in items):
        raise _NotSimple
    expr = pl.col(value.name).is_in(pl.Series(items, dtype=value.dtype).implode())
    return _Bool(~expr if negate else expr)


def _as_bool(value: Any) -> pl.Expr | None:
    if isinstance(value, _Bool):
        return value.expr
    if isinstance(value, _Column) and value.dtype == pl.Boolean:  # a boolean column's truthiness
        return pl.col(value.name)
    return None


def _columns_of(value: Any) -> set[str]:
    if isinstance(value, _Column):
        return {value.name}
    if isinstance(value, _Bool):
        return set(value.expr.meta.root_names())
    return set()
