"""The state contract every physical operator keeps: ``snapshot()`` and ``restore()``.

An operator's whole state is a :data:`State`: a dict with string keys whose values are

* columnar data: 1-D ``numpy`` arrays, ``polars.Series`` and ``polars.DataFrame``
  (written to Arrow IPC files by checkpoints),
* plain metadata: ``None``, ``bool``, ``int``, ``float``, ``str`` and lists of them
  (written as JSON),
* nested :data:`State` dicts,
* ``bytes``: opaque blobs, used only for the Python objects a DataStream pipeline keeps
  (e.g. a ``reduce`` accumulator), which are pickled. Nothing else is pickled.

``snapshot()`` returns state that no later call mutates (copies, or frames polars never
changes in place); ``restore(state)`` is called on a freshly built operator of the same
definition and makes it behave exactly as the snapshotted one would from there on.
A stateless operator returns ``{}``.

>>> import numpy as np
>>> check_state({"rows": {"ts": np.arange(3)}, "size": 3}, where="window")
>>> check_state({"ids": {("a", 1): 0}}, where="window")
Traceback (most recent call last):
...
TypeError: window: state key ('a', 1) at 'ids' is not a string (a State dict has str keys)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

__all__ = ["State", "Stateful", "check_state"]

State = dict[str, Any]

_PLAIN = (type(None), bool, int, float, str)


@runtime_checkable
class Stateful(Protocol):
    """What a runtime needs of an operator to checkpoint it."""

    def snapshot(self) -> State: ...

    def restore(self, state: State) -> None: ...


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
