"""The step loop both runtimes drive a plan with: the embedded executors over the whole
plan, each Ray task over its stage's steps.

Every operator is driven the same way (``ops.protocol``): its inputs' new rows and
watermarks in, its rows and watermark out. Only where an input comes from differs: the
output of the step before it, or (on Ray) rows merged from other actors; ``read_input``
says which.

>>> import polars as pl
>>> from volga.ops.protocol import RowOperator
>>> class Plus1(RowOperator):
...     def apply(self, batch): return batch.with_columns(pl.col("x") + 1)
>>> outputs, watermarks = {0: pl.DataFrame({"x": [1]})}, {0: (10, False)}
>>> run_steps([1, 2], {1: [0], 2: [1]}, {1: Plus1(), 2: Plus1()}, outputs, watermarks)
>>> outputs[2]["x"].to_list(), watermarks[2]
([3], (10, False))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence

import polars as pl

from volga.ops.protocol import Input, Operator, Watermark

ReadInput = Callable[[int, int, int], Input]  # (step id, input index, source step id) -> its input


def run_steps(
    step_ids: Sequence[int],
    inputs_of: Mapping[int, Sequence[int]],
    ops: Mapping[int, Operator],
    outputs: MutableMapping[int, pl.DataFrame | None],
    watermarks: MutableMapping[int, Watermark],
    read_input: ReadInput | None = None,
    timers: Mapping[int, Callable[[float], None]] | None = None,
    keep_empty: bool = False,
) -> None:
    """Advance every step of ``step_ids`` (inputs before consumers) not already in
    ``outputs`` (sources, filled by the caller). An empty output is stored as ``None``
    (streaming: nothing new), unless ``keep_empty`` (batch: a typed, empty frame).

    ``read_input(step, index, source)``: where input ``index`` of ``step`` comes from when
    not from ``outputs``/``watermarks`` of ``source`` (default). ``timers``: step id ->
    called with the seconds each advance took."""
    for step_id in step_ids:
        if step_id in outputs:
            continue
        sources = inputs_of[step_id]
        if read_input is None:
            inputs = [(outputs[src], watermarks[src]) for src in sources]
        else:
            inputs = [read_input(step_id, i, src) for i, src in enumerate(sources)]
        timer = timers.get(step_id) if timers else None
        started = time.perf_counter() if timer is not None else 0.0
        out, watermarks[step_id] = ops[step_id].advance(inputs)
        if timer is not None:
            timer(time.perf_counter() - started)
        outputs[step_id] = out if out is not None and (out.height or keep_empty) else None
