"""DataStream operators under checkpoints: crash at random operator calls, restore from the
checkpoint directory, continue: the sinks get exactly the rows of an uninterrupted run.

``StreamingContext.execute`` takes no checkpoint_dir; this drives the embedded runtime with
the compiled plan directly, the way ``client.materialize(checkpoint_dir=...)`` does.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volga import Count, Sum
from volga.errors import JobFailed
from volga.runtime.checkpoint import CheckpointStore
from volga.runtime.local.checkpointing import CheckpointOptions
from volga.runtime.local.executors import StreamOptions
from volga.runtime.local.runtime import LocalRuntime
from volga.stream import ListSink, StreamingContext, TumblingWindow
from volga.stream import ops as stream_ops

UTC = datetime.timezone.utc
CLICKS = [(f"u{i % 7}", i * 2) for i in range(120)]
VIEWS = [(f"u{i % 5}", i * 3 + 1) for i in range(90)]


class Crash(RuntimeError):
    pass


class Outputs:
    """The sinks' rows, kept across restarts (like a store outside the process)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, name: str, frame: pl.DataFrame) -> None:
        self.rows.setdefault(name, []).extend(frame.drop("__seq", strict=False).to_dicts())

    def snapshot(self) -> dict[str, Any]:
        return {"written": {n: len(r) for n, r in self.rows.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        written = state["written"]
        self.rows = {n: r[: written.get(n, 0)] for n, r in self.rows.items()}

    def start_fresh(self) -> None:
        self.rows = {}

    def reset(self) -> None:
        self.rows = {}


def plan() -> Any:
    ctx = StreamingContext()
    clicks = ctx.from_collection(CLICKS).timestamp_assigner(lambda e: datetime.datetime.fromtimestamp(e[1], UTC)).key_by(lambda e: e[0])
    views = ctx.from_collection(VIEWS).timestamp_assigner(lambda e: datetime.datetime.fromtimestamp(e[1], UTC)).key_by(lambda e: e[0])
    clicks.reduce(lambda a, b: (a[0], a[1] + b[1])).sink(ListSink())                      # pickled accumulators
    records = ctx.from_collection([{"user": u, "t": t} for u, t in CLICKS])
    records.timestamp_assigner(lambda r: datetime.datetime.fromtimestamp(r["t"], UTC)).key_by("user").window(TumblingWindow("20s")).aggregate(
        [Count(into="n"), Sum(on="t", into="s")]).sink(ListSink())                          # event windows
    clicks.union(views).sink(ListSink())                                                    # union buffers
    clicks.join(views, kind="interval", how="inner", between=("-4s", "4s")).sink(ListSink())  # interval join
    clicks.join(views, how="left").sink(ListSink())                                         # as-of join, object keys
    return ctx.compile().plan


def run(root: Path, outputs: Outputs) -> None:
    options = CheckpointOptions(CheckpointStore(root), 0.0, outputs)
    LocalRuntime().start(plan(), "online", None, outputs, block=True, options=StreamOptions(batch_size=7), checkpoint=options)


def _crash_at(mp: pytest.MonkeyPatch, call: int) -> None:
    seen = [0]
    for cls, method in [(stream_ops.UnionOp, "release"), (stream_ops.EventWindowOp, "release"), (stream_ops.IntervalJoinOp, "release"),
                        (stream_ops.AsOfJoin, "release"), (stream_ops.FusedKeyedReduce, "apply"), (stream_ops.KeyedReduceOp, "apply")]:
        original = getattr(cls, method)

        def counted(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            seen[0] += 1
            if seen[0] == call:
                raise Crash(f"crash at operator call {call}")
            return __original(self, *args, **kwargs)

        mp.setattr(cls, method, counted)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    outputs = Outputs()
    run(tmp_path_factory.mktemp("ds-uninterrupted"), outputs)
    assert len(outputs.rows) == 5 and all(outputs.rows.values())
    return outputs.rows


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crashes=st.lists(st.integers(min_value=1, max_value=150), min_size=1, max_size=3))
def test_datastream_jobs_crashed_at_random_operator_calls_resume_to_the_same_sink_rows(
    tmp_path_factory: pytest.TempPathFactory, uninterrupted: dict[str, list[dict[str, Any]]], crashes: list[int]
) -> None:
    root = tmp_path_factory.mktemp("ds-crashing")
    outputs = Outputs()
    crashed = 0
    for call in crashes:
        with pytest.MonkeyPatch.context() as mp:
            _crash_at(mp, call)
            try:
                run(root, outputs)
            except JobFailed as e:
                assert isinstance(e.__cause__, Crash)
                crashed += 1
    run(root, outputs)
    assert outputs.rows == uninterrupted, f"sink rows differ after crashes at {crashes}"
