"""Property test: a row-function ``transform`` whose output columns are inferred (new keys
added, keys dropped, some rows returning other keys) gives the same rows offline, online
(any micro-batch size) and in a plain-Python reference, and rejects the same rows."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import volga
from tests import test_consistency as tc
from volga import Count, Entity, Last, Sum, pipeline, source
from volga.sources import MemorySource
from volga.testing import reference as ref

OUT_FIELDS = [("k", str), ("ts", datetime.datetime), ("n", int), ("q2_sum", int), ("last_label", str)]


def row_fn(r: dict[str, Any]) -> dict[str, Any]:
    """Adds q2 and label, drops v and tag; rows with q < -40 return other keys (rejected)."""
    if r["q"] < -40:
        return {"k": r["k"], "ts": r["ts"], "q": r["q"], "q2": r["q"] * 2, "oops": True}
    return {"k": r["k"], "ts": r["ts"], "q": r["q"], "q2": r["q"] * 2, "label": f"{r['tag']}:{r['k']}"}


def build(rows: list[dict[str, Any]], window: str) -> Any:
    Ev = tc.make_entity("Ev", tc.EVENT_FIELDS, keys=["k"], timestamp="ts")
    Out = tc.make_entity("TOut", OUT_FIELDS, keys=["k"], timestamp="ts")

    @source(Ev)
    def evs() -> volga.Source:
        return MemorySource(rows)

    @pipeline(dependencies=[evs], output=Out)
    def transformed(e: Entity) -> Entity:
        t = e.transform(row_fn)
        assert t.columns == ["k", "ts", "q", "q2", "label"]
        return t.group_by("k").aggregate([
            Count(window=window, into="n"),
            Sum(on="q2", window=window, into="q2_sum"),
            Last(on="label", window="forever", into="last_label"),
        ])

    return transformed


def reference(rows: list[dict[str, Any]], window: str) -> tuple[list[dict[str, Any]], int]:
    ordered = ref.sort_events(rows, "ts")
    mapped = [row_fn(dict(r)) for r in ordered]
    kept = [m for m in mapped if set(m) == {"k", "ts", "q", "q2", "label"}]
    out = ref.window_aggregate(kept, ["k"], "ts", [
        ref.Agg("Count", window_us=ref.duration_us(window), into="n"),
        ref.Agg("Sum", on="q2", window_us=ref.duration_us(window), into="q2_sum"),
        ref.Agg("Last", on="label", window_us=None, into="last_label"),
    ])
    return out, len(mapped) - len(kept)


@tc.SETTINGS
@given(rows=tc.event_rows(), window=st.sampled_from(("5m", "1h", "forever")), batch_size=st.integers(1, 20))
def test_inferred_transform_batch_stream_reference(rows: list[dict[str, Any]], window: str, batch_size: int) -> None:
    pipe = build(rows, window)
    want, n_rejected = reference(rows, window)
    columns = [name for name, _ in OUT_FIELDS]
    with tc.fresh_client() as client:
        batch_job = client.materialize([pipe], mode="offline")
        batch = client.get_offline(pipe.name)
        stream_job = client.materialize([pipe], mode="online", write_offline=True, batch_size=batch_size)
        stream = client.get_offline(pipe.name)
    tc.assert_rows_match(batch, want, columns, "batch vs reference")
    tc.assert_rows_match(stream, want, columns, f"streaming (batch_size={batch_size}) vs reference")
    for job in (batch_job, stream_job):
        assert len(job.rejected) == n_rejected
        assert all("extra key(s) ['oops']" in r.reason and "missing key(s) ['label']" in r.reason for r in job.rejected)
