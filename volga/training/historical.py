"""``client.get_historical_features``: a training set, point-in-time correct.

One row per spine row, in spine order, spine columns first and untouched, then one column
per requested feature field. Each value is what the online path would have answered at
the spine row's time t: a pipeline feature's latest row for the keys with ts <= t (null
before any, or when older than its ttl), an on-demand feature's function applied to its
dependencies as of t (see :mod:`volga.training.on_demand`).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

import polars as pl

from volga.api.decorators import PipelineDef
from volga.api.types import Duration
from volga.ondemand.plan import check_args, compile_on_demand
from volga.plan.request_time import request_time_shape
from volga.training.lookup import PipelineRows
from volga.training.on_demand import OnDemandEvaluator
from volga.training.request import (
    FeatureRequest,
    apply_key_map,
    apply_ttl,
    check_columns,
    parse_features,
)
from volga.training.spine import Spine


def get_historical_features(
    client: Any,
    spine: Any,
    features: Sequence[str],
    *,
    timestamp_column: str = "timestamp",
    key_map: Mapping[str, Any] | None = None,
    ttl: Duration | Mapping[str, Duration] | None = None,
    args: Mapping[str, Any] | None = None,
    full_names: bool = False,
    compute: bool = False,
    progress: TextIO | None = sys.stderr,
    as_of: str = "request_time",
    on_error: str = "raise",
) -> Any:
    """The training set for ``spine`` and ``features`` from ``client``'s offline store.

    See :meth:`volga.Client.get_historical_features` for the options. ``progress`` is
    where ``compute=True`` reports on a backfill that takes more than a few seconds
    (None: silent).
    """
    if on_error not in ("raise", "null"):
        raise ValueError(f"get_historical_features: on_error must be 'raise' or 'null', got {on_error!r}")
    if as_of not in ("request_time", "last_event"):
        raise ValueError(f"get_historical_features: as_of must be 'request_time' or 'last_event', got {as_of!r}")
    checked = Spine.of(spine, timestamp_column)
    requests = parse_features(features, client.definitions)
    apply_key_map(requests, key_map)
    apply_ttl(requests, ttl)
    out_names = check_columns(requests, checked.frame.columns, full_names)
    keys = _KeyColumns(checked)
    for request in requests:  # every key column checked before any work is done
        for key, column in request.key_columns.items():
            keys(column, request.schema.field(key).dtype, _what(request))

    on_demand = [r for r in requests if not r.is_pipeline]
    plan = compile_on_demand(client.definitions, [r.name for r in on_demand], field="features") if on_demand else None
    if plan is not None:
        node_kwargs, read_args = check_args(plan, args, args, "args", "args")
    elif args:
        raise ValueError(f"args={dict(args)!r}: only on-demand features take arguments, and none is requested")

    needed = _pipelines_needed(requests, plan)
    if compute:
        backfill(client, [pipe for pipe, _, _ in needed.values()], progress)
    # Pipelines load and look up concurrently: polars releases the GIL, and one as-of join
    # by key does not keep every core busy on its own.
    with ThreadPoolExecutor(max_workers=max(1, min(len(needed), 4)), thread_name_prefix="volga-training") as pool:
        until: Any = checked.times.max() if checked.height else None  # a datetime
        loading = {
            name: pool.submit(
                PipelineRows.load, client.offline_store, pipe, sorted(columns), " and ".join(dict.fromkeys(users)),
                until=until, keys=_keys_asked(name, requests, plan, keys),
                shape=request_time_shape(pipe, client.definitions) if as_of == "request_time" else None,
            )
            for name, (pipe, columns, users) in needed.items()
        }
        looked_up = {
            r.name: pool.submit(_pipeline_values, r, loading[r.name], keys, checked)
            for r in requests if r.is_pipeline
        }
        rows = {name: future.result() for name, future in loading.items()}
        evaluator = None
        if plan is not None:
            history = getattr(client.online_store, "history", None)
            evaluator = OnDemandEvaluator(
                plan, node_kwargs, read_args, rows, checked.times, keys, history if isinstance(history, int) else None,
                on_error=on_error,
            )
        produced: list[pl.Series] = []
        for request in requests:
            if request.is_pipeline:
                produced.extend(looked_up[request.name].result())
            else:
                produced.extend(_on_demand_values(request, evaluator, plan))
    if evaluator is not None and evaluator.failed:
        counts = ", ".join(f"'{name}': {n} row(s)" for name, n in evaluator.failed.items())
        warnings.warn(f"get_historical_features: on-demand functions raised, their features are null there "
                      f"(on_error='null'): {counts}", FeatureErrorsWarning, stacklevel=3)
    return _attach(checked, pl.DataFrame([s.alias(name) for s, name in zip(produced, out_names)]))


class FeatureErrorsWarning(UserWarning):
    """``on_error="null"``: some on-demand calls raised; the message counts the rows per feature."""


def _what(request: FeatureRequest) -> str:
    return f"{'pipeline' if request.is_pipeline else 'on-demand feature'} '{request.name}'"


class _KeyColumns:
    """Spine key columns, checked and converted once per (column, dtype)."""

    def __init__(self, spine: Spine) -> None:
        self.spine = spine
        self._cache: dict[tuple[str, str], pl.Series] = {}

    def __call__(self, column: str, dtype: pl.DataType, wanted_by: str) -> pl.Series:
        memo = (column, str(dtype))
        found = self._cache.get(memo)
        if found is None:
            found = self._cache[memo] = self.spine.key_column(column, dtype, wanted_by)
        return found


def _pipelines_needed(requests: Sequence[FeatureRequest], plan: Any) -> dict[str, tuple[PipelineDef, set[str], list[str]]]:
    """Pipeline name -> (definition, columns to load, what needs it)."""
    needed: dict[str, tuple[PipelineDef, set[str], list[str]]] = {}
    for request in requests:
        if isinstance(request.definition, PipelineDef):
            entry = needed.setdefault(request.name, (request.definition, set(), []))
            entry[1].update(request.fields)
            entry[2].append(f"features entry '{request.name}'")
    for read in plan.reads if plan is not None else ():
        entry = needed.setdefault(read.name, (read.pipeline, set(), []))
        entry[1].update(read.pipeline.schema.names)
        entry[2].extend(f"on-demand feature '{user}'" for user in read.users)
    return needed


def _keys_asked(name: str, requests: Sequence[FeatureRequest], plan: Any, keys: _KeyColumns) -> pl.DataFrame | None:
    """The key values a pipeline is looked up with, when only its own request reads it
    (on-demand reads derive their keys through the DAG: they read every key)."""
    if plan is not None and any(read.name == name for read in plan.reads):
        return None
    request = next(r for r in requests if r.name == name)
    schema = request.schema
    return pl.DataFrame([keys(request.key_columns[k], schema.field(k).dtype, _what(request)).alias(k) for k in schema.keys])


def _pipeline_values(request: FeatureRequest, loading: Future[PipelineRows], keys: _KeyColumns, spine: Spine) -> list[pl.Series]:
    table = loading.result()
    schema = request.schema
    key_values = [keys(request.key_columns[k], schema.field(k).dtype, _what(request)) for k in schema.keys]
    if table.shape is not None:  # evaluated at the spine times
        values = table.values(request.fields, None, spine.times, request.ttl_us, table.at_times(key_values, spine.times))
    else:
        values = table.values(request.fields, table.asof(key_values, spine.times), spine.times, request.ttl_us)
    return list(values.iter_columns())


def _on_demand_values(request: FeatureRequest, evaluator: OnDemandEvaluator | None, plan: Any) -> list[pl.Series]:
    assert evaluator is not None
    schema = request.schema
    node = plan.target_nodes[plan.targets.index(request.name)]
    result = evaluator.evaluate(node, tuple(request.key_columns[k] for k in schema.keys))
    return [result.column(f, schema.field(f).dtype, request.name) for f in request.fields]


def _attach(spine: Spine, features: pl.DataFrame) -> Any:
    """Spine columns (as given) followed by the feature columns, polars or pandas like the spine."""
    if not spine.is_pandas:
        return spine.frame.hstack(features) if features.width else spine.frame.clone()
    return _to_pandas(spine.original, features)


def _to_pandas(original: Any, features: pl.DataFrame) -> Any:
    import pandas as pd  # type: ignore[import-untyped]
    import pyarrow as pa

    nullable = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    frame = features.to_arrow().to_pandas(types_mapper=nullable.get)
    frame.index = original.index
    return pd.concat([original, frame], axis=1)


def backfill(client: Any, pipelines: Sequence[PipelineDef], progress: TextIO | None, *, quiet_s: float = 3.0) -> None:
    """``client.materialize(pipelines, mode="offline")``, reporting on ``progress`` (elapsed
    time and rows read, about every 10 s; in place on a terminal) once it has taken ``quiet_s``."""
    names = ", ".join(p.name for p in pipelines)
    job = client.materialize(list(pipelines), mode="offline", block=False)
    started = time.perf_counter()
    shown = False
    while True:
        try:
            job.wait(timeout=1.0)
            break
        except TimeoutError:
            elapsed = time.perf_counter() - started
            if progress is not None and elapsed >= quiet_s:
                rows_in = sum(job.metrics.rows_in.values())
                line = f"volga: computing {names} from their sources (compute=True): {elapsed:.0f}s, {rows_in:,} rows read"
                tty = getattr(progress, "isatty", lambda: False)()
                if tty or not shown or int(elapsed) % 10 == 0:
                    print(("\r" if tty else "") + line, end="" if tty else "\n", file=progress, flush=True)
                shown = True
    if shown and progress is not None:
        elapsed = time.perf_counter() - started
        print(f"\nvolga: computed {names} in {elapsed:.1f}s" if getattr(progress, "isatty", lambda: False)() else
              f"volga: computed {names} in {elapsed:.1f}s", file=progress, flush=True)
