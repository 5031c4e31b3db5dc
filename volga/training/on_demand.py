"""On-demand features as of each spine row: what ``get_on_demand`` would have returned at t.

The requested features compile into the plan serving uses (its store reads and the
functions, dependencies first, :mod:`volga.ondemand.plan`), with the same argument
checks and calling rules; only the online store is replaced by the offline rows as of
each spine time t:

- ``latest`` -> the as-of row (the last row of the key with ts <= t), or None;
- ``last_n`` -> the last n rows of the key with ts <= t, oldest first;
- ``range(start, end)`` -> the rows of the key with start <= ts <= end and ts <= t;

each capped, like the online store, to the last ``history`` rows the store keeps per key,
so that the answer is exactly the one served at t. A function's result depends only on its
key and on those inputs, so the function runs once per distinct (key, inputs) among the
spine rows, not once per row: a spine with many rows per key and few events costs few
calls. Functions whose every input is a plain ``latest`` row may run vectorised (see
:mod:`volga.training.vectorise`); the others run row-wise, exactly as the server calls them.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from volga.api.types import dtype_name
from volga.ondemand.calls import Call, call_all, call_kwargs
from volga.ondemand.errors import FeatureFunctionError
from volga.ondemand.plan import Input, Node, Plan, _RowBuilder
from volga.training.lookup import PipelineRows
from volga.training.vectorise import PRESENT, try_vectorised

log = logging.getLogger("volga.training")


@dataclasses.dataclass
class NodeResult:
    """An on-demand function evaluated for every spine row."""

    node: Node
    ids: pl.Series  # per spine row: an index into the per-signature results (UInt32, no nulls)
    built: list[Any] | None = None  # per distinct (key, inputs): the function's result, or None
    table: pl.DataFrame | None = None  # vectorised: the output fields and "__present", per signature

    @property
    def objects(self) -> list[Any]:
        """Per signature: the output instance or None (built from ``table`` when vectorised)."""
        if self.built is None:
            assert self.table is not None
            fields = [f.name for f in self.node.schema.fields]
            build = _RowBuilder(self.node.definition.output, fields)  # type: ignore[union-attr]
            present = self.table.get_column(PRESENT).to_list()
            self.built = [build(r) if ok else None for r, ok in zip(self.table.select(fields).rows(), present)]
        return self.built

    def column(self, field: str, dtype: pl.DataType, feature: str) -> pl.Series:
        """``field`` of each spine row's result (null where the result is None)."""
        if self.table is not None:
            values = self.table.select(pl.when(pl.col(PRESENT)).then(pl.col(field))).to_series()
        else:
            raw = [None if o is None else getattr(o, field) for o in self.objects]
            try:
                values = pl.Series(field, raw, dtype=dtype, strict=True)
            except Exception as e:  # name the first value that does not fit
                loose = pl.Series(field, raw, dtype=dtype, strict=False)
                bad = next((v for v, got in zip(raw, loose) if v is not None and got is None), None)
                shown = f"returned {bad!r} there" if bad is not None else str(e)
                raise FeatureFunctionError.wrap(
                    feature, TypeError(f"field '{field}' holds {dtype_name(dtype)}, but the function {shown}")
                ) from e
        return values.gather(self.ids)


class OnDemandEvaluator:
    """Evaluates the nodes of one compiled plan over the spine, each once per key source."""

    def __init__(
        self,
        plan: Plan,
        node_kwargs: Sequence[dict[str, Any]],
        read_args: Sequence[tuple[Any, ...]],
        rows: Mapping[str, PipelineRows],
        times: pl.Series,
        key_series: Callable[[str, pl.DataType, str], pl.Series],
        history_rows: int | None,
        vectorise: bool = True,
        on_error: str = "raise",
    ) -> None:
        self.plan = plan
        self.node_kwargs = node_kwargs
        self.read_args = read_args
        self.rows = rows
        self.times = times
        self.key_series = key_series  # (spine column, dtype, wanted_by) -> checked key values
        self.history_rows = history_rows
        self.vectorise = vectorise
        self._results: dict[tuple[int, tuple[str, ...]], NodeResult] = {}
        self._positions: dict[tuple[str, bool, tuple[str, ...]], pl.Series] = {}
        self._instances: dict[tuple[str, bool], dict[int, Any]] = {}
        # request-time pipelines read `latest`: their distinct rows at the spine times, per key columns
        self._at_times: dict[tuple[str, tuple[str, ...]], tuple[pl.DataFrame, list[Any]]] = {}
        self.input_columns: dict[int, list[tuple[str, ...]]] = {}  # node index -> key columns of each input
        self.paths: dict[str, str] = {}  # node name -> "vectorised" or "row-wise" (for tests and logs)
        self.on_error = on_error  # "raise": the first failing call stops training; "null": its rows get nulls
        self.failed: dict[str, int] = {}  # node name -> spine rows whose call failed (on_error="null")

    def evaluate(self, node_index: int, columns: tuple[str, ...]) -> NodeResult:
        """Node ``node_index`` with its key fields read from spine ``columns`` (in key order)."""
        memo = (node_index, columns)
        result = self._results.get(memo)
        if result is None:
            result = self._results[memo] = self._evaluate(self.plan.nodes[node_index], columns)
        return result

    # -- one node -----------------------------------------------------------------------
    def _evaluate(self, node: Node, columns: tuple[str, ...]) -> NodeResult:
        schema = node.schema
        keys = [self.key_series(c, schema.field(k).dtype, f"on-demand feature '{node.name}'") for k, c in zip(schema.keys, columns)]
        inputs: list[pl.Series] = []
        dependencies: list[NodeResult | None] = []
        input_columns: list[tuple[str, ...]] = []
        for inp in node.inputs:
            cols = columns if inp.projection is None else tuple(columns[i] for i in inp.projection)
            input_columns.append(cols)
            self.input_columns[node.index] = input_columns
            if inp.read:
                inputs.append(self._read_positions(inp, cols))
                dependencies.append(None)
            else:
                dependency = self.evaluate(inp.index, cols)
                inputs.append(dependency.ids)
                dependencies.append(dependency)
        takes_now = node.definition is not None and node.definition.takes_now
        frame = pl.DataFrame(
            [*(s.alias(f"k{i}") for i, s in enumerate(keys)), *(s.alias(f"i{i}") for i, s in enumerate(inputs)),
             *([self.times.alias("now")] if takes_now else [])]
        )
        distinct = frame.unique(maintain_order=True)
        ids = frame.join(distinct.with_row_index("__sig"), on=frame.columns, how="left", nulls_equal=True, maintain_order="left")
        n_keys = len(keys)
        kwargs = self.node_kwargs[node.index] if self.node_kwargs else {}
        sig_ids = ids.get_column("__sig")
        if self.vectorise and not takes_now and not inspect.iscoroutinefunction(getattr(node.definition, "fn", None)):
            table, why = try_vectorised(node, kwargs, distinct, dependencies, self)
            if table is not None:
                self.paths[node.name] = "vectorised"
                log.debug("on-demand feature %s: vectorised over %d distinct inputs", node.name, distinct.height)
                return NodeResult(node, sig_ids, table=table)
        else:
            why = "vectorise=False" if not self.vectorise else "reads the request time, or is async"
        self.paths[node.name] = f"row-wise ({why})"
        log.debug("on-demand feature %s: row-wise over %d distinct inputs (%s)", node.name, distinct.height, why)
        signatures = distinct.rows()
        values = [
            self._input_values(inp, [sig[n_keys + j] for sig in signatures], dep, cols)
            for j, (inp, dep, cols) in enumerate(zip(node.inputs, dependencies, input_columns))
        ]
        objects: list[Any] = [None] * len(signatures)
        calls: list[tuple[int, Call]] = []
        for i, sig in enumerate(signatures):
            args = [v[i] for v in values]
            if any(a is None and not (inp.many or inp.optional) for a, inp in zip(args, node.inputs)):
                continue  # a required input is missing: None, as served
            now = sig[-1] if takes_now else None
            calls.append((i, (sig[:n_keys], args, call_kwargs(node, sig[:n_keys], kwargs, now))))
        assert node.definition is not None
        results = call_all(node.definition, [c for _, c in calls], concurrency=64, capture=True)
        failed = 0
        for (i, _), result in zip(calls, results):
            if not isinstance(result, FeatureFunctionError):
                objects[i] = result
                continue
            rows = (sig_ids == i).arg_true()
            if self.on_error == "raise":
                result.message = f"{result.message} at spine row {rows[0]} (time {self.times[rows[0]]})"
                result.args = (result.message,)
                raise result
            failed += len(rows)
        if failed:
            self.failed[node.name] = self.failed.get(node.name, 0) + failed
        return NodeResult(node, sig_ids, built=objects)

    def _is_at_times(self, inp: Input) -> bool:
        return inp.read and self.plan.reads[inp.index].query == "latest" and self.rows[self.plan.reads[inp.index].name].shape is not None

    def _read_positions(self, inp: Input, columns: tuple[str, ...]) -> pl.Series:
        read = self.plan.reads[inp.index]
        grouped = read.query != "latest"
        memo = (read.name, grouped, columns)
        found = self._positions.get(memo)
        if found is None:
            table = self.rows[read.name]
            schema = read.pipeline.schema
            keys = [self.key_series(c, schema.field(k).dtype, f"pipeline '{read.name}'") for k, c in zip(schema.keys, columns)]
            found = table.asof(keys, self.times, grouped=grouped)
            if self._is_at_times(inp):  # its value at each spine time: ids of the distinct values
                found = self._values_at_times(read.name, table, keys, found, columns)
            self._positions[memo] = found
        return found

    def _values_at_times(self, name: str, table: PipelineRows, keys: list[pl.Series], asof: pl.Series, columns: tuple[str, ...]) -> pl.Series:
        rows = table.at_times(keys, self.times)
        distinct = rows.unique(maintain_order=True)
        ids = rows.join(distinct.with_row_index("__id"), on=rows.columns, how="left", nulls_equal=True, maintain_order="left")
        build = _RowBuilder(table.pipeline.output, distinct.columns)
        ts = distinct.columns.index(table.ts)
        self._at_times[(name, columns)] = (distinct, [None if r[ts] is None else build(r) for r in distinct.rows()])
        return ids.get_column("__id")

    def read_frame(self, inp: Input, columns: tuple[str, ...]) -> tuple[pl.DataFrame, str | None]:
        """The rows an input's refs point into, and (request-time reads) the column that is
        null where a ref points at no row."""
        read = self.plan.reads[inp.index]
        if self._is_at_times(inp):
            return self._at_times[(read.name, columns)][0], self.rows[read.name].ts
        return self.rows[read.name].frame, None

    # -- inputs for the distinct signatures -----------------------------------------------
    def _input_values(self, inp: Input, refs: list[Any], dependency: NodeResult | None, columns: tuple[str, ...]) -> list[Any]:
        """The value each signature passes for one input: a row, a list of rows, or a result."""
        if dependency is not None:
            objects = dependency.objects
            return [objects[i] for i in refs]
        read = self.plan.reads[inp.index]
        if self._is_at_times(inp):
            values = self._at_times[(read.name, columns)][1]
            return [values[i] for i in refs]
        table = self.rows[read.name]
        if read.query == "latest":
            instances = self._instances_at(read.name, False, np.array([p for p in refs if p is not None], dtype=np.int64))
            return [None if p is None else instances[p] for p in refs]
        grouped = table.group()
        pos = np.array([-1 if p is None else p for p in refs], dtype=np.int64)
        present = pos >= 0
        safe = np.where(present, pos, 0)
        history = self.history_rows or (1 << 62)
        if grouped.frame.height == 0:
            return [[] for _ in refs]
        if read.query == "last_n":
            (n,) = self.read_args[read.index]
            lo = np.maximum(grouped.starts[safe], safe - min(n, history) + 1)
            hi = safe.copy()
        else:
            start_us, end_us = self.read_args[read.index]
            lo_row, hi_row = _range_bounds(grouped.times_us, grouped.starts, grouped.ends, start_us, end_us)
            lo = np.maximum(lo_row[safe], safe - history + 1)
            hi = np.minimum(safe, hi_row[safe])
        hi = np.where(present, hi, lo - 1)  # no as-of row: no rows at all
        instances = self._instances_at(read.name, True, _covered(lo, hi, grouped.frame.height))
        return [[instances[p] for p in range(a, b + 1)] for a, b in zip(lo.tolist(), hi.tolist())]

    def _instances_at(self, name: str, grouped: bool, positions: np.ndarray) -> dict[int, Any]:
        cache = self._instances.setdefault((name, grouped), {})
        todo = np.unique(positions)
        if cache:
            todo = np.array([p for p in todo.tolist() if p not in cache], dtype=np.int64)
        if len(todo):
            table = self.rows[name]
            frame = table.group().frame if grouped else table.frame
            build = _RowBuilder(table.pipeline.output, frame.columns)
            cache.update(zip(todo.tolist(), map(build, frame[todo].rows())))
        return cache


def call_one(node: Node, key: tuple[Any, ...], values: list[Any], kwargs: dict[str, Any]) -> Any:
    """One call as the server makes it: None when a required input is missing."""
    if any(v is None and not (inp.many or inp.optional) for v, inp in zip(values, node.inputs)):
        return None
    assert node.definition is not None
    return call_all(node.definition, [(key, values, call_kwargs(node, key, kwargs, None))])[0]


def _range_bounds(
    times_us: np.ndarray, starts: np.ndarray, ends: np.ndarray, start_us: int | None, end_us: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the first and last position of its key group inside ``[start, end]``."""
    first = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]]) if len(starts) else np.zeros(0, dtype=np.int64)
    if start_us is None:
        lo = starts
    else:
        below = np.add.reduceat((times_us < start_us).astype(np.int64), first)
        lo = starts + np.repeat(below, np.diff(np.append(first, len(starts))))
    if end_us is None:
        hi = ends - 1
    else:
        upto = np.add.reduceat((times_us <= end_us).astype(np.int64), first)
        hi = starts + np.repeat(upto, np.diff(np.append(first, len(starts)))) - 1
    return lo, hi


def _covered(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """Every position inside some non-empty ``[lo, hi]`` interval, sorted."""
    keep = lo <= hi
    if not keep.any():
        return np.zeros(0, dtype=np.int64)
    marks = np.zeros(n + 1, dtype=np.int64)
    np.add.at(marks, lo[keep], 1)
    np.add.at(marks, hi[keep] + 1, -1)
    return np.flatnonzero(np.cumsum(marks[:-1]) > 0)
