"""One generated Python loop for a run of row callables (``map``, ``filter``, ``key_by``,
optionally ending in a keyed ``reduce``).

Calling user functions is the cost of the row path; what the engine adds per element
should be next to nothing. Instead of one pass (and one list) per step, the steps of a
run are written out as straight-line code inside a single ``for`` loop, compiled once.
A ``try`` costs nothing in CPython 3.11+ until it raises, so every element gets its own
error handling for free: a raising callable sets that element aside and the loop goes on.
Which step raised is read from the traceback's line number, so the loop does no
bookkeeping per element for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

StepKind = Literal["map", "filter", "key_by", "reduce"]


class RowLoopResult(NamedTuple):
    values: list[Any]  # each kept element's final value (empty when no step changes elements)
    keys: list[Any]  # its key, when the run's last key_by comes after its last map (else empty)
    kept: np.ndarray | None  # input position of each kept element; None: every element, in order


class RowLoop:
    """``run(items, state, reject)`` applies ``steps`` to every element.

    ``reject(step_index, error, element)`` is called for an element whose step raised, with
    the element as that step received it. ``state`` is the reduce's dict (key -> value so
    far); a reduce needs a key_by before it in the same run.
    """

    def __init__(self, steps: list[tuple[StepKind, Callable[..., Any]]]) -> None:
        self.steps = steps
        kinds = [kind for kind, _ in steps]
        if "reduce" in kinds:
            assert kinds[-1] == "reduce" and "key_by" in kinds[:-1], kinds
        last_change = max((i for i, k in enumerate(kinds) if k in ("map", "reduce")), default=-1)
        self.changes_values = last_change >= 0
        self.emits_keys = any(k == "key_by" and i > last_change for i, k in enumerate(kinds)) or kinds[-1:] == ["reduce"]
        self.step_at_line: dict[int, int] = {}
        self._run = self._compile()

    def _compile(self) -> Callable[..., Any]:
        # When every element ends in ``values`` or ``dropped``, its position is their total
        # length: no enumerate() needed.
        position = "len(values) + len(dropped)" if self.changes_values else "i"
        header = [
            "def run(items, state, reject):",
            "    values, keys, dropped = [], [], []",
            "    vappend, kappend, drop = values.append, keys.append, dropped.append",
            "    for x in items:" if self.changes_values else "    for i, x in enumerate(items):",
            "        try:",
        ]
        lines = list(header)
        names: dict[str, Any] = {}
        for step, (kind, fn) in enumerate(self.steps):
            names[f"f{step}"] = fn
            if kind == "map":
                body = [f"x = f{step}(x)"]
            elif kind == "filter":
                body = [f"if not f{step}(x):", f"    drop({position})", "    continue"]
            elif kind == "key_by":
                body = [f"k = f{step}(x)"]
            else:  # reduce: the key's value so far combined with this element
                body = ["if k in state:", f"    x = f{step}(state[k], x)", "state[k] = x"]
            for line in body:
                lines.append("            " + line)
                self.step_at_line[len(lines)] = step  # compiled line numbers start at 1
        lines += [
            "        except Exception as e:",
            f"            drop({position})",
            "            reject(e.__traceback__.tb_lineno, e, x)",
            "            continue",
        ]
        if self.changes_values:
            lines.append("        vappend(x)")
        if self.emits_keys:
            lines.append("        kappend(k)")
        lines.append("    return values, keys, dropped")
        exec(compile("\n".join(lines), "<volga row loop>", "exec"), names)
        return names["run"]

    def run(self, items: list[Any], state: dict[Any, Any], reject: Callable[[int, Exception, Any], None]) -> RowLoopResult:
        def rejected(line: int, error: Exception, item: Any) -> None:
            reject(self.step_at_line[line], error, item)

        values, keys, dropped = self._run(items, state, rejected)
        if not dropped:
            return RowLoopResult(values, keys, None)
        keep = np.ones(len(items), dtype=bool)
        keep[dropped] = False
        return RowLoopResult(values, keys, np.flatnonzero(keep))
