"""The DataStream API: general-purpose streaming on Volga's engine.

The Entity API is one way to build a plan for the engine; this is the other, Flink-like
one. Both build nodes of one logical family (``volga.api.nodes.Node``; the Entity API's
are a subset) that one compiler (``volga.plan.compile.compile_graph``) turns into the same
physical steps, run by the same executors, watermarks and operators;
``ctx.from_pipeline(pipeline)`` puts a pipeline's own nodes in a DataStream job and
``plan_of(pipeline)`` prints one as DataStream operators.

>>> from volga.stream import StreamingContext, ListSink
>>> ctx = StreamingContext()
>>> counts = ListSink()
>>> lines = ctx.from_collection(["to be or", "not to be"])
>>> _ = (lines.flat_map(str.split)
...           .map(lambda w: (w, 1))
...           .key_by(lambda kv: kv[0])
...           .reduce(lambda a, b: (a[0], a[1] + b[1]))
...           .sink(counts))
>>> _ = ctx.execute()
>>> dict(counts.items)
{'to': 2, 'be': 2, 'or': 1, 'not': 1}
"""

from __future__ import annotations

from typing import Any

from volga.stream.context import StreamingContext, StreamJob
from volga.stream.datastream import (
    DataStream,
    HoppingWindow,
    KeyedStream,
    SlidingWindow,
    TumblingWindow,
    WindowedStream,
)
from volga.stream.sinks import (
    BatchSink,
    CallableSink,
    FileSink,
    ListSink,
    Sink,
    StoreSink,
)


def plan_of(pipeline: Any, params: Any = None) -> str:
    """An Entity API ``@pipeline`` printed as its DataStream plan (one engine step per line)."""
    ctx = StreamingContext()
    ctx.from_pipeline(pipeline, params).sink(ListSink())
    return ctx.explain()


__all__ = [
    "BatchSink", "CallableSink", "DataStream", "FileSink", "HoppingWindow", "KeyedStream", "ListSink", "Sink",
    "SlidingWindow", "StoreSink", "StreamJob", "StreamingContext", "TumblingWindow", "WindowedStream", "plan_of",
]
