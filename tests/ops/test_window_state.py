"""Window state stays bounded: rows older than the largest window are evicted, and
forever windows keep only what their aggregate needs."""

import datetime

import numpy as np
import polars as pl

from volga import Avg, Count, CountDistinct, Entity, First, LastN, Max, Min, Stddev, Sum, entity, field
from volga.api import nodes
from volga.api.entity import entity_schema
from volga.ops.window import WindowAggregateOp


@entity
class Tick:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    v: float


def make_op(aggs):
    schema = entity_schema(Tick)
    out = Entity(nodes.SourceNode(schema, None), "test").group_by("k").aggregate(aggs)
    return WindowAggregateOp(schema, out.schema, ("k",), tuple(aggs))


def ticks(n, keys=3, step_s=60, start=0):
    ts = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    return pl.DataFrame(
        {
            "k": [str(i % keys) for i in range(start, start + n)],
            "ts": [ts + datetime.timedelta(seconds=step_s * i) for i in range(start, start + n)],
            "v": np.arange(start, start + n, dtype=float) % 17,
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def test_time_windows_evict_old_rows():
    op = make_op([Count(window="10m", into="n"), Avg(on="v", window="5m", into="a")])
    op.compact_slack_rows = 100
    for start in range(0, 3000, 100):
        op.apply(ticks(100, start=start))
        # one event per minute over 3 keys: a 10-minute window holds ~11 rows; the log is
        # compacted whenever it exceeds twice the surviving rows plus the slack
        assert op.state_rows <= 2 * 12 + 100 + 100
    op._compact()
    assert op.state_rows <= 12


def test_forever_windows_keep_only_what_they_need():
    op = make_op([
        Count(window="forever", into="n"), Sum(on="v", window="forever", into="s"),
        Stddev(on="v", window="forever", into="sd"), Min(on="v", window="forever", into="lo"),
        Max(on="v", window="forever", into="hi"), First(on="v", window="forever", into="f"),
        LastN(2, on="v", window="forever", into="last2"), CountDistinct(on="v", window="forever", into="d"),
    ])
    op.compact_slack_rows = 100
    outs = [op.apply(ticks(100, start=start)) for start in range(0, 3000, 100)]
    op._compact()
    # per key: min row, max row, first row, 2 last rows, one row per distinct value (17)
    assert op.state_rows <= 3 * (1 + 1 + 1 + 2 + 17)
    final = pl.concat(outs).filter(pl.col("k") == "0").tail(1).row(0, named=True)
    values = [float(i % 17) for i in range(0, 3000, 3)]
    assert final["n"] == 1000 and final["s"] == sum(values)
    assert final["lo"] == 0.0 and final["hi"] == 16.0 and final["f"] == 0.0 and final["d"] == 17
    assert final["last2"] == [values[-1], values[-2]]
    assert abs(final["sd"] - float(np.std(values, ddof=1))) < 1e-9


def test_snapshot_restore_resumes_identically():
    aggs = [Count(window="10m", into="n"), Sum(on="v", window="forever", into="s")]
    a, b = make_op(aggs), make_op(aggs)
    a.apply(ticks(50))
    snap = a.snapshot()
    expected = a.apply(ticks(50, start=50))
    b.restore(snap)
    assert b.apply(ticks(50, start=50)).equals(expected)
