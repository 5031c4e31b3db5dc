"""The contract every physical operator keeps, and the one runtimes rely on.

**Driving.** A runtime calls ``advance(inputs)`` once per step per micro-batch, with each
input's new rows (or ``None``) and its :data:`Watermark`; the operator returns its output
rows (or ``None``) and its output watermark. Two kinds of operator implement it:

* :class:`RowOperator`: one input, output at once (stateless chains, per-event windows,
  keyed reduces); the watermark passes through;
* :class:`BufferedOperator`: rows wait until the slowest non-idle input's watermark
  passes them (joins, unions, tumbling windows).

Rows an operator sets aside (a row function that raised) leave through
``drain_rejected()``; rows it refused as late through ``late_rows()``.

**Specs.** A compiled plan holds an :class:`OperatorSpec` per step, not an operator: a
picklable description that each runtime builds fresh operators from (``build()``; a Ray
actor builds the variant that carries the arrival sequence column). The spec also says
how the operator's rows must be partitioned (``input_keys``), and how its state is
redistributed over another number of partitions (``rescale``).

**State.** ``snapshot()`` and ``restore()``.

An operator's whole state is a :data:`State`: a dict with string keys whose values are

* columnar data: 1-D ``numpy`` arrays, ``polars.Series`` and ``polars.DataFrame``
  (written to Arrow IPC files by checkpoints),
* plain metadata: ``None``, ``bool``, ``int``, ``float``, ``str`` and lists of them
  (written as JSON),
* nested :data:`State` dicts,
* ``bytes``: opaque blobs, used only for the Python objects a DataStream pipeline keeps
  (e.g. a ``reduce`` accumulator), which are pickled. Nothing else is pickled.

``snapshot()`` returns state that no later call mutates (copies, frames polars never
changes in place, or views of memory the operator only appends to): the checkpoint writer
reads it while the job goes on, and knows an unchanged chunk at the next checkpoint by its
memory alone; ``restore(state)`` is called on a freshly built operator of the same
definition and makes it behave exactly as the snapshotted one would from there on.
State the operator can recompute from the rest (an index, a partial aggregate) may be
left out of the snapshot and rebuilt by ``restore``.
A stateless operator returns ``{}``.

>>> import numpy as np
>>> check_state({"rows": {"ts": np.arange(3)}, "size": 3}, where="window")
>>> check_state({"ids": {("a", 1): 0}}, where="window")
Traceback (most recent call last):
...
TypeError: window: state key ('a', 1) at 'ids' is not a string (a State dict has str keys)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from volga.errors import Rejected

__all__ = [
    "FINISHED_WM", "NO_WM", "BufferedOperator", "Input", "NotRescalable", "Operator", "OperatorSpec", "RowOperator",
    "State", "Stateful", "Watermark", "check_state", "code_digest",
]

FINISHED_WM = 2**62  # watermark of an input that will never send another row
NO_WM = -(2**62)

State = dict[str, Any]
Watermark = tuple[int, bool]  # (every later row has ts >= this, in microseconds; the input is idle)
Input = tuple["pl.DataFrame | None", Watermark]

_PLAIN = (type(None), bool, int, float, str)


@runtime_checkable
class Stateful(Protocol):
    """What a runtime needs of an operator to checkpoint it."""

    def snapshot(self) -> State: ...

    def restore(self, state: State) -> None: ...


@runtime_checkable
class Operator(Stateful, Protocol):
    """What every runtime needs of a physical operator."""

    @property
    def buffered_rows(self) -> int: ...

    def advance(self, inputs: Sequence[Input]) -> tuple[pl.DataFrame | None, Watermark]: ...

    def drain_rejected(self) -> list[Rejected]: ...

    def late_rows(self) -> pl.DataFrame | None: ...


class NotRescalable(Exception):
    """An operator's state cannot be redistributed over another number of partitions."""


class OperatorSpec:
    """How to build one step's operator (see the module docstring). Subclasses are small
    dataclasses next to their operator."""

    def build(self, *, sequenced: bool = False) -> Operator:
        """A fresh operator with empty state; ``sequenced``: one that carries the arrival
        sequence column (``ops.routing.SEQ``) through, for runtimes that merge partitions."""
        raise NotImplementedError

    def label(self) -> str | None:
        """How ``explain()`` names the step (None: by its kind)."""
        return None

    def input_keys(self) -> list[tuple[str, ...]] | None:
        """Per input, the columns rows must be partitioned by (``()``: all rows on one
        partition), or None for a row-local operator that runs wherever its input is."""
        return None

    def routed_after(self, routed: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """A row-local operator: the columns rows are partitioned by after it, given those
        before it (None: unknown; the operator may change them)."""
        return None

    def detached(self) -> OperatorSpec:
        """The spec a remote worker builds from: side outputs that the driver writes (late
        sinks) removed. Default: the same."""
        return self

    def fingerprint(self) -> list[str]:
        """What a checkpoint of the operator's state depends on, as text: a checkpoint of a
        definition with another fingerprint is not restored."""
        return []

    def rescale(self, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
        """The states of the old partitions (their rows partitioned by ``routed``) laid
        out for ``n`` partitions. Raises :class:`NotRescalable` unless the operator says how."""
        raise NotRescalable(type(self).__name__)


def code_digest(fn: Any) -> str:
    """A function by its bytecode and constants (the same in every process)."""
    import hashlib

    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn)
    return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:12]


class _Driven:
    """What every operator shares: no rows set aside unless it says so."""

    def snapshot(self) -> State:
        raise NotImplementedError

    def restore(self, state: State) -> None:
        raise NotImplementedError

    @property
    def buffered_rows(self) -> int:
        """Rows held until a watermark passes them (none for an operator that holds none)."""
        return 0

    def drain_rejected(self) -> list[Rejected]:
        """Rows a row function raised on since the last call (stateless ones keep none)."""
        rejected: list[Rejected] | None = getattr(self, "rejected", None)
        if not rejected:
            return []
        self.rejected: list[Rejected] = []
        return rejected

    def late_rows(self) -> pl.DataFrame | None:
        """Rows that came after the operator had emitted their result (none by default)."""
        return None

    def sequenced(self) -> Operator:
        """This operator, carrying the arrival sequence column through (default: it does)."""
        return self  # type: ignore[return-value]


class RowOperator(_Driven):
    """One input, output at once; the watermark passes through.

    >>> class Double(RowOperator):
    ...     def apply(self, batch): return batch.with_columns(pl.col("x") * 2)
    >>> out, wm = Double().advance([(pl.DataFrame({"x": [1, 2]}), (5, False))])
    >>> out["x"].to_list(), wm
    ([2, 4], (5, False))
    """

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def advance(self, inputs: Sequence[Input]) -> tuple[pl.DataFrame | None, Watermark]:
        batch, watermark = inputs[0]
        return (self.apply(batch) if batch is not None else None), watermark


class BufferedOperator(_Driven):
    """Rows are ``push``-ed per input and ``release``-d up to the operator's watermark: the
    lowest of its non-idle inputs' (all idle or finished: everything).

    >>> class Hold(BufferedOperator):
    ...     rows: list = []
    ...     def push(self, side, batch): self.rows = [*self.rows, *batch["ts"].to_list()]
    ...     @property
    ...     def buffered_rows(self): return len(self.rows)
    ...     def release(self, bound_us):
    ...         out = [t for t in self.rows if bound_us is None or t < bound_us]
    ...         self.rows = [t for t in self.rows if t not in out]
    ...         return pl.DataFrame({"ts": out}, schema={"ts": pl.Int64})
    >>> hold = Hold()
    >>> out, wm = hold.advance([(pl.DataFrame({"ts": [1, 7]}), (5, False)), (None, (9, False))])
    >>> out["ts"].to_list(), wm, hold.rows
    ([1], (5, False), [7])
    """

    def push(self, side: int, batch: pl.DataFrame) -> None:
        raise NotImplementedError

    def release(self, bound_us: int | None) -> pl.DataFrame:
        """Rows with ts < ``bound_us`` (None: every row; the inputs are finished)."""
        raise NotImplementedError

    def output_watermark(self, bound: int) -> int:
        """The watermark of the output when the inputs' is ``bound`` (an operator whose
        output trails its inputs, like an interval join, lowers it)."""
        return bound

    def release_at(self, bound: int, inputs: Sequence[Input]) -> pl.DataFrame:
        return self.release(None if bound >= FINISHED_WM else bound)

    def advance(self, inputs: Sequence[Input]) -> tuple[pl.DataFrame | None, Watermark]:
        for side, (batch, _) in enumerate(inputs):
            if batch is not None:
                self.push(side, batch)
        active = [wm for _, (wm, idle) in inputs if not idle]
        bound = min(active) if active else FINISHED_WM
        # finished inputs release even when empty: a batch run's output is then a typed, empty frame
        finished = all(wm >= FINISHED_WM for _, (wm, _) in inputs)
        out = self.release_at(bound, inputs) if self.buffered_rows or finished else None
        return out, (self.output_watermark(bound), not active)


def check_state(state: State, *, where: str, path: str = "") -> None:
    """Raise ``TypeError`` naming ``where`` and the path of the first value a State cannot hold."""
    if not isinstance(state, dict):
        raise TypeError(f"{where}: state at {path or 'the top'!r} is a {type(state).__name__}, not a dict")
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: state key {key!r} at {path!r} is not a string (a State dict has str keys)")
        here = f"{path}/{key}" if path else key
        if isinstance(value, dict):
            check_state(value, where=where, path=here)
        elif isinstance(value, np.ndarray):
            if value.ndim != 1 or value.dtype == object:
                raise TypeError(f"{where}: state array {here!r} must be 1-D and not of object dtype (got {value.dtype}, ndim {value.ndim})")
        elif isinstance(value, (pl.Series, pl.DataFrame, bytes)):
            continue
        elif isinstance(value, list):
            if not all(isinstance(v, _PLAIN) for v in value):
                raise TypeError(f"{where}: state list {here!r} may hold only None/bool/int/float/str")
        elif not isinstance(value, _PLAIN):
            raise TypeError(f"{where}: state value {here!r} is a {type(value).__name__}; use arrays, frames or plain values")
