"""One generated Python loop for a run of row callables (``map``, ``filter``, ``key_by``,
optionally ending in a keyed ``reduce``).

Calling user functions is the cost of the row path; what the engine adds per element
should be next to nothing. Instead of one pass (and one list) per step, the steps of a
run are written out as straight-line code inside a single ``for`` loop, compiled once.
A ``try`` costs nothing in CPython 3.11+ until it raises, so every element gets its own
error handling for free: a raising callable sets that element aside and the loop goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

MISSING: Any = object()
StepKind = Literal["map", "filter", "key_by", "reduce"]


class RowLoopResult(NamedTuple):
    values: list[Any]  # each kept element's final value (empty when no step changes elements)
    keys: list[Any]  # its key, when the run's last key_by comes after its last map (else empty)
    positions: list[int]  # its position in the input


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
        self._run = self._compile()

    def _compile(self) -> Callable[..., None]:
        body: list[str] = []
        names: dict[str, Any] = {"MISSING": MISSING}
        for i, (kind, fn) in enumerate(self.steps):
            names[f"f{i}"] = fn
            body.append(f"s = {i}")
            if kind == "map":
                body.append(f"x = f{i}(x)")
            elif kind == "filter":
                body.append(f"if not f{i}(x): continue")
            elif kind == "key_by":
                body.append(f"k = f{i}(x)")
            else:  # reduce: the key's value so far combined with this element
                body += ["a = get(k, MISSING)", f"x = x if a is MISSING else f{i}(a, x)", "state[k] = x"]
        keep = ["pappend(i)"]
        if self.changes_values:
            keep.append("vappend(x)")
        if self.emits_keys:
            keep.append("kappend(k)")
        lines = [
            "def run(items, state, reject):",
            "    values, keys, positions = [], [], []",
            "    vappend, kappend, pappend = values.append, keys.append, positions.append",
            "    get = state.get",
            "    for i, x in enumerate(items):",
            "        try:",
            *("            " + line for line in body),
            "        except Exception as e:",
            "            reject(s, e, x)",
            "            continue",
            *("        " + line for line in keep),
            "    return values, keys, positions",
        ]
        code = compile("\n".join(lines), "<volga row loop>", "exec")
        exec(code, names)
        return names["run"]  # type: ignore[no-any-return]

    def run(self, items: list[Any], state: dict[Any, Any], reject: Callable[[int, Exception, Any], None]) -> RowLoopResult:
        return RowLoopResult(*self._run(items, state, reject))
