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


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from volga import Last  # noqa: E402

# (key, minutes since the previous row, value or None)
STEPS = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5), st.one_of(st.none(), st.integers(0, 6))), min_size=1, max_size=120)


# a run of the window: its rows, window length, micro-batch size and compaction slack
RUNS = {"steps": STEPS, "window": st.sampled_from(["1m", "3m", "10m", "forever"]),
        "batch": st.integers(1, 20), "slack": st.integers(0, 8)}


def steps_frame(steps):
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    ts, rows = 0, []
    for key, gap, value in steps:
        ts += gap
        rows.append({"k": key, "ts": base + datetime.timedelta(minutes=ts), "v": None if value is None else float(value)})
    return pl.DataFrame(rows, schema={"k": pl.String, "ts": pl.Datetime("us", "UTC"), "v": pl.Float64})


ALL_KINDS = [
    lambda w: Count(window=w, into="n"), lambda w: Count(on="v", window=w, into="nv"),
    lambda w: Sum(on="v", window=w, into="s"), lambda w: Avg(on="v", window=w, into="a"),
    lambda w: Stddev(on="v", window=w, into="sd"), lambda w: Min(on="v", window=w, into="lo"),
    lambda w: Max(on="v", window=w, into="hi"), lambda w: First(on="v", window=w, into="f"),
    lambda w: Last(on="v", window=w, into="l"), lambda w: CountDistinct(on="v", window=w, into="d"),
    lambda w: LastN(3, on="v", window=w, into="l3"),
]


@settings(max_examples=150, deadline=None)
@given(
    **RUNS,
    kinds=st.lists(st.sampled_from(range(len(ALL_KINDS))), min_size=1, max_size=3, unique=True),
)
def test_compaction_never_changes_results(steps, window, batch, slack, kinds):
    """Dropping rows no window can see, at any point, gives bitwise the same outputs."""
    frame = steps_frame(steps)
    aggs = [ALL_KINDS[i](window) for i in kinds]  # few at a time: one kind's kept rows can't mask another's
    compacting, plain = make_op(aggs), make_op(aggs)
    compacting.compact_slack_rows = slack
    got = pl.concat([compacting.apply(frame.slice(i, batch)) for i in range(0, frame.height, batch)])
    assert got.equals(plain.apply(frame))


@settings(max_examples=150, deadline=None)
@given(
    **RUNS,
    cut=st.integers(0, 1000),
)
def test_a_restored_window_resumes_bitwise(steps, window, batch, slack, cut):
    """Snapshots hold no derived row arrays (the row chain, the front parts of sums, moments
    and extremes); an operator restored from one at any batch boundary, after any
    compactions, rebuilds them and goes on with bitwise the outputs of one never stopped."""
    frame = steps_frame(steps)
    batches = [frame.slice(i, batch) for i in range(0, frame.height, batch)]
    aggs = [kind(window) for kind in ALL_KINDS]
    stopped, restored, plain = make_op(aggs), make_op(aggs), make_op(aggs)
    stopped.compact_slack_rows = restored.compact_slack_rows = slack
    at = cut % (len(batches) + 1)
    for b in batches[:at]:
        stopped.apply(b)
    snap = stopped.snapshot()
    assert not {"prev", "nxt"} & snap["rows"].keys() and not any(n.startswith("f_") for n in snap["rows"])
    restored.restore(snap)
    _assert_same(restored.snapshot(), snap, "restored")
    expected = plain.apply(frame).slice(sum(b.height for b in batches[:at]))
    got = [restored.apply(b) for b in batches[at:]]
    assert (pl.concat(got) if got else expected.clear()).equals(expected)


@entity
class Labelled:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    s: str
    v: float


def _frozen_copy(state):
    if isinstance(state, dict):
        return {name: _frozen_copy(value) for name, value in state.items()}
    if isinstance(state, np.ndarray):
        return state.copy()
    return state.clone() if isinstance(state, (pl.Series, pl.DataFrame)) else state


def _assert_same(state, copy, where=""):
    if isinstance(state, dict):
        assert state.keys() == copy.keys(), where
        for name in state:
            _assert_same(state[name], copy[name], f"{where}/{name}")
    elif isinstance(state, np.ndarray):
        assert np.array_equal(state, copy), f"{where} was written after the snapshot"
    elif isinstance(state, (pl.Series, pl.DataFrame)):
        assert state.equals(copy), where
    else:
        assert state == copy, where


def test_a_snapshot_is_not_written_as_the_operator_goes_on():
    """Snapshots share the append-only row columns with the operator (no copy): appending,
    compacting and relabelling string values afterwards must leave every snapshot as taken."""
    schema = entity_schema(Labelled)
    aggs = (Max(on="s", window="3m", into="hi"), Sum(on="v", window="3m", into="sv"), Count(window="forever", into="n"))
    out = Entity(nodes.SourceNode(schema, None), "test").group_by("k").aggregate(list(aggs))
    op = WindowAggregateOp(schema, out.schema, ("k",), aggs)
    op.compact_slack_rows = 4
    # "a" < ... < "aaab" < "aab" < "ab" < "b": each new value halves one gap until the labels run out
    values = ["a", "b", *("a" * i + "b" for i in range(1, 30))]
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    labels, relabels = op.order_labels["s"], []
    label = labels.label

    def counted(series):
        out = label(series)
        relabels.append(labels.relabelled)
        return out

    labels.label = counted
    taken = []
    for i, value in enumerate(values):
        batch = pl.DataFrame({"k": [str(i % 2)] * 3, "ts": [base + datetime.timedelta(minutes=2 * i)] * 3,
                              "s": [value] * 3, "v": [float(i)] * 3},
                             schema={"k": pl.String, "ts": pl.Datetime("us", "UTC"), "s": pl.String, "v": pl.Float64})
        op.apply(batch)
        snap = op.snapshot()
        taken.append((snap, _frozen_copy(snap)))
    assert any(relabels) and op.live_after_compaction > 0  # both rewrites happened
    for i, (snap, copy) in enumerate(taken):
        _assert_same(snap, copy, f"snapshot {i}")
    fresh = WindowAggregateOp(schema, out.schema, ("k",), aggs)
    fresh.restore(taken[10][0])
    assert fresh.snapshot()["rows"]["kid"].tolist() == taken[10][1]["rows"]["kid"].tolist()
